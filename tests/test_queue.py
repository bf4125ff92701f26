"""Tests of the queue wait estimate: captured replies, properties, a bad server."""

from __future__ import annotations

import base64
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncstats.errors import QueueStatsError
from syncstats.queue import (
    QueueStats,
    estimate_wait,
    fetch_queue_stats,
    parse_queue_reply,
)

REPLIES = Path(__file__).parent / "fixtures" / "rabbitmq"
QUEUE_REPLIES = sorted(
    path.name for path in REPLIES.glob("*.json") if "error" not in path.read_text()
)
ERROR_REPLIES = sorted(
    path.name for path in REPLIES.glob("*.json") if path.name not in QUEUE_REPLIES
)
PASSWORD = "s3cretPW"


def load(name: str) -> Any:
    """The decoded JSON of a captured reply."""
    return json.loads((REPLIES / name).read_text())


def stats_of(name: str) -> QueueStats:
    """The statistics parsed from a captured reply."""
    return parse_queue_reply(load(name))


def ack_details(reply: dict[str, Any]) -> dict[str, Any]:
    """``message_stats.ack_details`` of a raw reply, empty when absent."""
    return dict(reply.get("message_stats", {}).get("ack_details", {}))


# The captured replies


@pytest.mark.parametrize("name", QUEUE_REPLIES)
def test_parse_reads_the_known_fields_of_every_captured_reply(name: str) -> None:
    """Each field holds the value at its place in the reply, None when absent."""
    reply = load(name)

    assert asdict(parse_queue_reply(reply)) == {
        "ready_avg": reply.get("messages_ready_details", {}).get("avg"),
        "ack_rate_avg": ack_details(reply).get("avg_rate"),
        "messages_ready": reply.get("messages_ready"),
        "ack_total": reply.get("message_stats", {}).get("ack"),
        "consumers": reply.get("consumers"),
    }


def test_wait_of_a_busy_queue_is_mean_ready_over_mean_ack_rate() -> None:
    """A queue acked steadily waits mean ready count / mean acks per second."""
    reply = load("c1_consumer_acking_60s__with_params.json")
    ready_avg = reply["messages_ready_details"]["avg"]
    ack_rate_avg = reply["message_stats"]["ack_details"]["avg_rate"]

    wait = estimate_wait(parse_queue_reply(reply))

    assert wait == ready_avg / ack_rate_avg
    assert wait == pytest.approx(16739.58, abs=0.01)


def test_wait_of_a_never_used_queue_is_zero() -> None:
    """An average of zero ready messages means no wait, whatever the ack rate."""
    stats = stats_of("a1_declared_after_6s__with_params.json")

    assert stats.ready_avg == 0.0
    assert stats.ack_rate_avg is None
    assert stats.messages_ready == 0
    assert estimate_wait(stats) == 0.0


def test_wait_without_a_consumer_is_unknown() -> None:
    """Messages that wait while nothing was ever acked make the wait unknown."""
    stats = stats_of("b1_published_no_consumer__with_params.json")

    assert stats.ready_avg == pytest.approx(20.541, abs=0.001)
    assert stats.ack_rate_avg is None
    assert stats.ack_total is None
    assert stats.consumers == 0
    assert estimate_wait(stats) is None


def test_wait_with_a_consumer_that_never_acks_is_unknown() -> None:
    """A consumer that holds messages without acking leaves the wait unknown."""
    stats = stats_of("c8_consumer_attached_never_acks__with_params.json")

    assert stats.consumers == 1
    assert stats.ack_total == 0
    assert stats.ack_rate_avg == 0.0
    assert stats.ready_avg is not None
    assert stats.ready_avg > 0
    assert estimate_wait(stats) is None


def test_wait_after_the_consumer_stopped_still_uses_the_hour_average() -> None:
    """Acks of the last hour keep the estimate finite after consumers stop."""
    reply = load("d2_consumer_stopped_70s__with_params.json")
    stats = parse_queue_reply(reply)

    ack_rate_avg = ack_details(reply)["avg_rate"]

    assert stats.consumers == 0
    assert ack_rate_avg > 0
    assert stats.ack_rate_avg == ack_rate_avg
    assert estimate_wait(stats) == reply["messages_ready_details"]["avg"] / ack_rate_avg


def test_wait_after_the_management_plugin_restarted_is_unknown() -> None:
    """A restarted plugin forgets the ack statistics, so the wait is unknown."""
    stats = stats_of("h0_after_mgmt_plugin_reenable__with_params.json")

    assert stats.messages_ready == 900
    assert stats.ack_total is None
    assert estimate_wait(stats) is None


@pytest.mark.parametrize(
    "name",
    [
        *(name for name in QUEUE_REPLIES if name.endswith("__no_params.json")),
        "a0_declared_immediately__with_params.json",
        "k0_metrics_collector_disabled_consumer_acking__with_params.json",
    ],
)
def test_wait_without_averages_names_the_age_parameters(name: str) -> None:
    """A reply without hour averages cannot be estimated and says what to add."""
    stats = stats_of(name)

    assert stats.ready_avg is None
    with pytest.raises(QueueStatsError, match="lengths_age and msg_rates_age"):
        estimate_wait(stats)


def test_metrics_collector_off_leaves_only_absent_fields() -> None:
    """With the metrics collector off, a queue reply carries no statistics."""
    stats = stats_of("k0_metrics_collector_disabled_consumer_acking__with_params.json")

    assert stats == QueueStats(None, None, None, None, None)


@pytest.mark.parametrize("name", ERROR_REPLIES)
def test_parse_refuses_an_error_body(name: str) -> None:
    """RabbitMQ's error bodies are refused with their error and reason."""
    reply = load(name)

    with pytest.raises(QueueStatsError) as raised:
        parse_queue_reply(reply)

    assert str(raised.value) == (
        f"the reply is an error: {reply['error']} / {reply['reason']}"
    )


# Malformed replies


def queue(**fields: object) -> dict[str, object]:
    """A minimal queue reply holding ``fields``."""
    return {"name": "tapiriik-users", "vhost": "/", **fields}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the reply is a list, not a queue object"),
        ("tapiriik-users", "the reply is a string, not a queue object"),
        (None, "the reply is null, not a queue object"),
        ({"vhost": "/"}, "it has no name"),
        ({"name": 7}, "it has no name"),
        ({"error": 3}, "the reply is an error: no reason given"),
        (queue(consumers="1"), "consumers is a string, not a count"),
        (queue(consumers=True), "consumers is a boolean, not a count"),
        (queue(consumers=1.0), "consumers is a number, not a count"),
        (queue(messages_ready=-1), "messages_ready is negative"),
        (
            queue(messages_ready_details={"avg": "3"}),
            "messages_ready_details.avg is a string, not a number",
        ),
        (
            queue(messages_ready_details={"avg": False}),
            "messages_ready_details.avg is a boolean, not a number",
        ),
        (
            queue(messages_ready_details={"avg": math.nan}),
            "messages_ready_details.avg is not a finite number",
        ),
        (
            queue(messages_ready_details={"avg": 10**400}),
            "messages_ready_details.avg is not a finite number",
        ),
        (
            queue(messages_ready_details={"avg": -0.5}),
            "messages_ready_details.avg is negative",
        ),
        (queue(messages_ready_details=[1]), "messages_ready_details is a list"),
        (
            queue(message_stats={"ack_details": {"avg_rate": math.inf}}),
            "message_stats.ack_details.avg_rate is not a finite number",
        ),
        (
            queue(message_stats={"ack_details": "fast"}),
            "message_stats.ack_details is a string, not an object",
        ),
        (queue(message_stats={"ack": [14]}), "message_stats.ack is a list"),
    ],
)
def test_parse_refuses_a_malformed_reply(body: object, message: str) -> None:
    """Anything but a queue object with well-typed fields is refused by name."""
    with pytest.raises(QueueStatsError, match=message):
        parse_queue_reply(body)


def test_parse_takes_null_for_absent() -> None:
    """A JSON null in a known field reads as an absent field."""
    body = queue(consumers=None, message_stats=None, messages_ready_details=None)

    assert parse_queue_reply(body) == QueueStats(None, None, None, None, None)


def test_wait_too_long_to_represent_is_unknown() -> None:
    """A wait that overflows a float is reported as unknown, not infinite."""
    stats = QueueStats(1e300, 1e-300, None, None, None)

    assert estimate_wait(stats) is None


# Properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
numbers = st.integers() | st.floats()
counts = st.integers(min_value=0)
averages = st.floats(min_value=0, allow_infinity=False) | counts


def details(
    key: str, values: st.SearchStrategy[object], other: st.SearchStrategy[object]
) -> st.SearchStrategy[object]:
    """A ``*_details`` object that may hold ``key``, or a value from ``other``."""
    return st.fixed_dictionaries({}, optional={key: values, "rate": numbers}) | other


def queue_replies(
    count: st.SearchStrategy[object],
    average: st.SearchStrategy[object],
    other: st.SearchStrategy[object],
) -> st.SearchStrategy[dict[str, object]]:
    """Queue replies with known fields drawn from the strategies.

    Each nested object may instead be a value drawn from ``other``.
    """
    message_stats = st.fixed_dictionaries(
        {},
        optional={"ack": count, "ack_details": details("avg_rate", average, other)},
    )
    return st.fixed_dictionaries(
        {"name": st.text()},
        optional={
            "messages_ready": count,
            "consumers": count,
            "messages_ready_details": details("avg", average, other),
            "message_stats": message_stats | other,
        },
    )


@given(
    body=json_values
    | queue_replies(json_values | numbers, json_values | numbers, json_values)
)
def test_parse_raises_only_queue_stats_error_on_any_json(body: object) -> None:
    """Any JSON value parses, or is refused with QueueStatsError; nothing else."""
    try:
        stats = parse_queue_reply(body)
    except QueueStatsError:
        return

    try:
        wait = estimate_wait(stats)
    except QueueStatsError:
        assert stats.ready_avg is None
    else:
        assert wait is None or (math.isfinite(wait) and wait >= 0)


@given(body=queue_replies(counts, averages, st.nothing()))
def test_wait_of_any_valid_reply_is_finite_and_not_negative(
    body: dict[str, object],
) -> None:
    """A well-typed reply yields a wait >= 0, None, or the missing-averages error."""
    stats = parse_queue_reply(body)

    try:
        wait = estimate_wait(stats)
    except QueueStatsError:
        assert stats.ready_avg is None
    else:
        assert wait is None or (math.isfinite(wait) and wait >= 0)


# Fetching from a server that misbehaves


def captured(name: str) -> bytes:
    """The raw bytes of a captured reply."""
    return (REPLIES / name).read_bytes()


ANSWERS = {
    "/ok": (200, captured("c1_consumer_acking_60s__with_params.json")),
    "/unauthorized": (401, captured("f0_wrong_password__no_params.json")),
    "/missing": (404, captured("e1_queue_missing_name__no_params.json")),
    "/broken": (500, b"internal error"),
    "/html": (200, b"<html><body>RabbitMQ Management</body></html>"),
    "/list": (200, b"[]"),
}


class MisbehavingServer(ThreadingHTTPServer):
    """An HTTP server whose answer depends on the request's path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), MisbehavingHandler)
        self.stopping = threading.Event()
        self.authorizations: list[str | None] = []

    def url(self, path: str, password: str = PASSWORD) -> str:
        """The URL of ``path`` on this server, with credentials."""
        port = self.server_address[1]
        return f"http://guest:{password}@127.0.0.1:{port}{path}?lengths_age=60"


class MisbehavingHandler(BaseHTTPRequestHandler):
    """Answers as the last part of the path says."""

    server: MisbehavingServer

    def do_GET(self) -> None:
        """Record the credentials, then answer, stall or trickle."""
        self.server.authorizations.append(self.headers.get("Authorization"))
        path = self.path.partition("?")[0]
        try:
            self.answer(path)
        except OSError:
            return  # the client gave up: that is what these tests provoke

    def answer(self, path: str) -> None:
        """Act out the behaviour that ``path`` names."""
        if path == "/silent":
            self.server.stopping.wait()
        elif path == "/trickle-headers":
            self.trickle(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"." * 1000)
        elif path == "/trickle-body":
            self.send(200, b"")
            self.trickle(b"{" + b" " * 1000)
        else:
            self.send(*ANSWERS[path])

    def send(self, status: int, body: bytes) -> None:
        """Answer ``status`` with ``body``, announcing 1001 bytes if empty."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) or 1001))
        self.end_headers()
        self.wfile.write(body)

    def trickle(self, data: bytes) -> None:
        """Send ``data`` a byte every 50 ms, quick enough for every read."""
        for byte in data:
            if self.server.stopping.wait(0.05):
                return
            self.wfile.write(bytes([byte]))

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture(scope="module")
def server() -> Iterator[MisbehavingServer]:
    """A misbehaving HTTP server on a free local port."""
    server = MisbehavingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def fetch_error(url: str, timeout: float = 1) -> QueueStatsError:
    """The error fetching ``url`` raises, checked free of the password."""
    with pytest.raises(QueueStatsError) as raised:
        fetch_queue_stats(url, timeout)
    error: BaseException | None = raised.value
    while error is not None:
        assert PASSWORD not in str(error)
        assert PASSWORD not in repr(error)
        error = error.__cause__ or error.__context__

    return raised.value


def elapsed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes."""
    start = time.monotonic()
    action()
    return time.monotonic() - start


def test_fetch_reads_the_reply_with_basic_auth(server: MisbehavingServer) -> None:
    """The URL's user-info arrives as basic auth and the reply is parsed."""
    stats = fetch_queue_stats(server.url("/ok"), 5)

    expected = base64.b64encode(f"guest:{PASSWORD}".encode()).decode()
    assert server.authorizations[-1] == f"Basic {expected}"
    assert stats == stats_of("c1_consumer_acking_60s__with_params.json")


def test_fetch_decodes_a_percent_encoded_password(server: MisbehavingServer) -> None:
    """A password spelt with %-escapes is sent decoded and shown masked."""
    error = fetch_error(server.url("/unauthorized", password="p%40ss%2Fw0rd"))

    expected = base64.b64encode(b"guest:p@ss/w0rd").decode()
    assert server.authorizations[-1] == f"Basic {expected}"
    assert "guest:***@127.0.0.1" in str(error)
    assert "p%40ss" not in str(error)
    assert "w0rd" not in str(error)


def test_fetch_without_credentials_sends_no_auth(server: MisbehavingServer) -> None:
    """A URL without user-info sends no Authorization header."""
    port = server.server_address[1]

    fetch_queue_stats(f"http://127.0.0.1:{port}/ok", 5)

    assert server.authorizations[-1] is None


def test_fetch_names_a_refused_connection() -> None:
    """A closed port is reported as a refused connection, URL masked."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://guest:{PASSWORD}@127.0.0.1:{port}/api/queues/%2F/q"

    error = fetch_error(url)

    assert str(error) == (
        f"cannot connect to http://guest:***@127.0.0.1:{port}/api/queues/%2F/q: "
        "Connection refused"
    )


@pytest.mark.parametrize("path", ["/silent", "/trickle-headers", "/trickle-body"])
def test_fetch_gives_up_when_the_timeout_is_spent(
    server: MisbehavingServer, path: str
) -> None:
    """A server that is silent or trickles is abandoned within the timeout."""
    errors: list[QueueStatsError] = []

    seconds = elapsed(lambda: errors.append(fetch_error(server.url(path), 1)))

    # A client that waits out the trickle takes 50 s; the slack is for load.
    assert 0.9 <= seconds < 5
    assert str(errors[0]) == (
        f"no answer from {server.url(path, password='***')} within 1 s"
    )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/unauthorized", "RabbitMQ refused the credentials of {url} (401)"),
        ("/missing", "queue not found: {url} (404)"),
        ("/broken", "{url} answered HTTP 500 Internal Server Error"),
        ("/html", "{url} answered with something not JSON"),
        ("/list", "unexpected reply from {url}: the reply is a list, not a queue"),
    ],
)
def test_fetch_says_what_went_wrong(
    server: MisbehavingServer, path: str, message: str
) -> None:
    """Each failure is one line naming what happened and the masked URL."""
    error = fetch_error(server.url(path))

    assert str(error).startswith(message.format(url=server.url(path, "***")))
    assert "\n" not in str(error)


def test_fetch_masks_a_password_holding_an_at_sign(server: MisbehavingServer) -> None:
    """A password with a raw "@" is still masked whole in the message."""
    error = fetch_error(server.url("/missing", password=f"{PASSWORD}@x"))

    assert str(error).startswith("queue not found: http://guest:***@127.0.0.1:")


def test_fetch_refuses_an_invalid_url_without_quoting_it() -> None:
    """A URL httpx cannot parse is refused without echoing any part of it."""
    error = fetch_error(f"http://guest:{PASSWORD}/x@127.0.0.1:1/")

    assert str(error) == "the RabbitMQ statistics URL is not valid"
