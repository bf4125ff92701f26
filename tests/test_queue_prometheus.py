"""Tests of the queue counts read from RabbitMQ's Prometheus plugin."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.database import Database

from syncstats._mongo import Document
from syncstats.errors import QueueStatsError
from syncstats.queue import (
    QueueSample,
    fetch_prometheus_sample,
    measure_queue,
    parse_prometheus_reply,
    wait_from_samples,
)
from tests.conftest import NOW

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURES = FIXTURES / "prometheus"
COLLECTOR_OFF = (
    FIXTURES
    / "rabbitmq"
    / ("k0_metrics_collector_disabled_consumer_acking__with_params.json")
)
QUEUE = "tapiriik-users"
LATER = NOW + timedelta(seconds=600)
PASSWORD = "s3cretPW"

# Written after RabbitMQ 4.x's documented queue_delivery_metrics family: there
# is no 4.x broker here to capture from. 4.x keeps the per-channel counters.
RABBITMQ_4_REPLY = """\
# TYPE rabbitmq_detailed_queue_messages_ready gauge
rabbitmq_detailed_queue_messages_ready{vhost="/",queue="tapiriik-users"} 120
rabbitmq_detailed_queue_messages_ready{vhost="/",queue="other"} 7
# TYPE rabbitmq_detailed_queue_messages_acked_total counter
rabbitmq_detailed_queue_messages_acked_total{vhost="/",queue="tapiriik-users"} 1600
rabbitmq_detailed_queue_messages_acked_total{vhost="/",queue="other"} 3
# TYPE rabbitmq_detailed_channel_messages_acked_total counter
rabbitmq_detailed_channel_messages_acked_total{channel="<0.9.0>",vhost="/",\
queue="tapiriik-users"} 40
"""


def capture(name: str) -> str:
    """The text of a captured reply."""
    return (CAPTURES / f"{name}.txt").read_text()


def parse(text: str, vhost: str = "/", name: str = QUEUE) -> QueueSample:
    """The sample of ``name`` in ``text``, dated NOW."""
    return parse_prometheus_reply(text, vhost, name, NOW)


# The captured replies


@pytest.mark.parametrize(
    ("name", "ready", "acks"),
    [
        ("p0_declared_no_consumer", 0, 0),
        ("p1_published_500_no_consumer", 500, 0),
        ("p2_two_consumers_acked_100", 400, 100),
        ("p3_two_consumers_acked_250", 250, 250),
        ("p4_one_consumer_closed", 250, 100),
        ("p5_all_consumers_closed", 250, 0),
    ],
)
def test_parse_sums_the_channel_counters_of_rabbitmq_3(
    name: str, ready: int, acks: int
) -> None:
    """3.x counts acks per channel: the queue's counter is their sum."""
    assert parse(capture(name)) == QueueSample(NOW, ready, acks, "prometheus-channels")


def test_wait_between_two_captures_is_ready_over_ack_rate() -> None:
    """150 acks in 600 s with 250 ready make a wait of 1000 s."""
    earlier = parse(capture("p2_two_consumers_acked_100"))
    later = parse_prometheus_reply(
        capture("p3_two_consumers_acked_250"), "/", QUEUE, LATER
    )

    assert wait_from_samples(earlier, later) == 1000.0


def test_wait_after_a_consumer_closed_is_unknown() -> None:
    """A closed channel takes its count along: the sum drops, no estimate."""
    earlier = parse(capture("p3_two_consumers_acked_250"))
    later = parse_prometheus_reply(capture("p4_one_consumer_closed"), "/", QUEUE, LATER)

    assert later.ack_total < earlier.ack_total
    assert wait_from_samples(earlier, later) is None


def test_parse_prefers_the_queue_counter_of_rabbitmq_4() -> None:
    """4.x counts acks per queue, closed channels included: that one is read."""
    assert parse(RABBITMQ_4_REPLY) == QueueSample(NOW, 120, 1600, "prometheus-queue")


def test_parse_reads_only_the_queue_asked_for() -> None:
    """Other queues in the reply are left alone."""
    assert parse(RABBITMQ_4_REPLY, name="other") == QueueSample(
        NOW, 7, 3, "prometheus-queue"
    )


# Replies that cannot be read


def ready_line(value: str, vhost: str = "/", queue: str = QUEUE) -> str:
    """A line of the ready gauge."""
    labels = f'vhost="{vhost}",queue="{queue}"'
    return f"rabbitmq_detailed_queue_messages_ready{{{labels}}} {value}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the reply has no rabbitmq_detailed_queue_messages_ready for queue"),
        (ready_line("3", vhost="other"), "has no rabbitmq_detailed_queue_messages"),
        (ready_line("3", queue="users"), "has no rabbitmq_detailed_queue_messages"),
        (ready_line("3") * 2, "rabbitmq_detailed_queue_messages_ready twice"),
        (ready_line("NaN"), "messages_ready is not a finite number"),
        (ready_line("+Inf"), "messages_ready is not a finite number"),
        (ready_line("-1"), "messages_ready is negative"),
        (ready_line("2.5"), "messages_ready is not a whole number"),
        (ready_line("1e30"), "messages_ready is too large"),
        ("<html><body>RabbitMQ</body></html>", "the reply is not Prometheus text"),
        ('{"error": "not_found"}', "the reply is not Prometheus text"),
        (
            ready_line("3")
            + 'rabbitmq_detailed_channel_messages_acked_total{vhost="/",'
            + f'queue="{QUEUE}"}} -4\n',
            "rabbitmq_detailed_channel_messages_acked_total is negative",
        ),
        (
            ready_line("3")
            + 'rabbitmq_detailed_channel_messages_acked_total{channel="a",vhost="/",'
            + f'queue="{QUEUE}"}} 9e18\n'
            + 'rabbitmq_detailed_channel_messages_acked_total{channel="b",vhost="/",'
            + f'queue="{QUEUE}"}} 9e18\n',
            "the sum of rabbitmq_detailed_channel_messages_acked_total is too large",
        ),
    ],
)
def test_parse_refuses_what_is_not_a_count_of_the_queue(
    text: str, message: str
) -> None:
    """A reply without the queue, or with a value that is no count, is refused."""
    with pytest.raises(QueueStatsError, match=message):
        parse(text)


metric_names = st.sampled_from(
    [
        "rabbitmq_detailed_queue_messages_ready",
        "rabbitmq_detailed_queue_messages_acked_total",
        "rabbitmq_detailed_channel_messages_acked_total",
        "rabbitmq_detailed_queue_messages",
        "x",
    ]
)
queue_labels = st.sampled_from(
    [
        f'{{vhost="/",queue="{QUEUE}"}}',
        f'{{channel="<0.1.0>",vhost="/",queue="{QUEUE}"}}',
        f'{{channel="<0.2.0>",vhost="/",queue="{QUEUE}"}}',
        '{vhost="/",queue="other"}',
    ]
)
odd_labels = st.sampled_from(["", "{", '{vhost="/"', '{queue="a",queue="b"}'])
counts = st.integers(min_value=0, max_value=2**64).map(str) | st.sampled_from(
    ["0", "1", "2.5", "NaN", "1e30", "-3"]
)
odd_values = st.floats().map(repr) | st.sampled_from(["+Inf", "", "x", "1 2"])
metric_lines = st.tuples(metric_names, queue_labels, counts).map(" ".join)
odd_lines = (
    st.tuples(metric_names, queue_labels | odd_labels, counts | odd_values).map(
        " ".join
    )
    | st.sampled_from(["# TYPE x counter", "# HELP x text", "# TYPE x", "#", ""])
    | st.text(max_size=20)
)
texts = st.builds(
    lambda good, odd: "\n".join(good + odd),
    st.lists(metric_lines, max_size=8),
    st.lists(odd_lines, max_size=1),
)


@settings(deadline=None)
@given(first=texts, second=texts)
def test_parse_raises_only_queue_stats_error_and_waits_are_finite(
    first: str, second: str
) -> None:
    """Any text is read or refused with QueueStatsError; waits are >= 0 or None."""
    try:
        earlier = parse(first)
        later = parse_prometheus_reply(second, "/", QUEUE, LATER)
    except QueueStatsError:
        return

    wait = wait_from_samples(earlier, later)
    assert wait is None or (math.isfinite(wait) and wait >= 0)
    assert 0 <= later.messages_ready < 2**63
    assert 0 <= later.ack_total < 2**63


# Fetching and measuring through a server


class Routes(ThreadingHTTPServer):
    """A local HTTP server answering each path with a status and a body."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RoutesHandler)
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.stopping = threading.Event()

    def url(self, path: str = "", password: str = PASSWORD) -> str:
        """The URL of ``path`` on this server, with credentials."""
        return f"http://guest:{password}@127.0.0.1:{self.server_address[1]}{path}"


class RoutesHandler(BaseHTTPRequestHandler):
    """Answers from the server's table; stalls on /stall."""

    server: Routes

    def do_GET(self) -> None:
        """Record the request, then answer it."""
        self.server.requests.append((self.path, self.headers.get("Accept")))
        path = urlsplit(self.path).path
        if path.startswith("/stall"):
            self.server.stopping.wait()
            return
        status, body = self.server.answers.get(path, (404, b"not found"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture(scope="module")
def routes() -> Iterator[Routes]:
    """The routing server, serving the collector-off management reply."""
    server = Routes()
    server.answers["/api/queues/%2F/tapiriik-users"] = (200, COLLECTOR_OFF.read_bytes())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def stats_url(routes: Routes) -> str:
    """The collector-off management URL of tapiriik-users."""
    return routes.url("/api/queues/%2F/tapiriik-users?lengths_age=3600")


def measure_off(
    db: Database[Document], routes: Routes, prometheus: str | None, at: Any
) -> Any:
    """Measure tapiriik-users with the collector off at ``at``."""
    return measure_queue(
        db,
        at,
        stats_url=stats_url(routes),
        timeout=5,
        interval=600,
        prometheus_url=prometheus,
    )


def test_measure_with_the_collector_off_reads_the_plugin(
    db: Database[Document], routes: Routes, http_replay: tuple[str, Any]
) -> None:
    """Collector off: the plugin's counts give an estimate from the second run."""
    prometheus, replies = http_replay
    replies.body = capture("p2_two_consumers_acked_100").encode()
    with pytest.raises(QueueStatsError) as first:
        measure_off(db, routes, prometheus, NOW)
    replies.body = capture("p3_two_consumers_acked_250").encode()

    measured = measure_off(db, routes, prometheus, LATER)

    assert str(first.value) == (
        "no earlier sample yet and no hour averages: "
        "the next run will estimate from counters"
    )
    assert measured.method == "samples"
    assert (measured.wait, measured.length, measured.ack_rate) == (1000, 250, 0.25)
    assert measured.sample == QueueSample(LATER, 250, 250, "prometheus-channels")
    assert replies.headers[-1]["Accept"] == "text/plain"


def test_measure_with_the_collector_off_and_no_plugin_says_what_to_set(
    db: Database[Document], routes: Routes
) -> None:
    """Collector off and no Prometheus URL: the step fails naming the setting."""
    with pytest.raises(QueueStatsError) as raised:
        measure_off(db, routes, None, NOW)

    assert str(raised.value) == (
        "the reply has no counts: the queue was declared moments ago, or "
        "RabbitMQ's metrics collector is off; for the latter set "
        "rabbitmq_prometheus_url to the Prometheus plugin (rabbitmq_prometheus, "
        "port 15692)"
    )


def test_fetch_asks_the_detailed_endpoint_for_the_queue_families(
    routes: Routes,
) -> None:
    """The request goes to /metrics/detailed with the families and the vhost."""
    routes.answers["/metrics/detailed"] = (200, RABBITMQ_4_REPLY.encode())

    sample = fetch_prometheus_sample(routes.url("/"), "/", QUEUE, 5, NOW)

    path, accept = routes.requests[-1]
    assert urlsplit(path).path == "/metrics/detailed"
    assert parse_qsl(urlsplit(path).query) == [
        ("family", "queue_coarse_metrics"),
        ("family", "queue_delivery_metrics"),
        ("family", "channel_queue_metrics"),
        ("vhost", "/"),
    ]
    assert accept == "text/plain"
    assert sample.ack_total == 1600


@pytest.mark.parametrize(
    "given", ["/metrics/detailed/", "/metrics", "/proxy/metrics/", "/proxy"]
)
def test_fetch_reads_the_endpoint_under_any_page_of_the_plugin(
    routes: Routes, given: str
) -> None:
    """The base URL, /metrics or /metrics/detailed: each leads to the endpoint."""
    prefix = "/proxy" if given.startswith("/proxy") else ""
    routes.answers[f"{prefix}/metrics/detailed"] = (200, RABBITMQ_4_REPLY.encode())

    fetch_prometheus_sample(routes.url(given), "/", QUEUE, 5, NOW)

    assert urlsplit(routes.requests[-1][0]).path == f"{prefix}/metrics/detailed"


def fetch_error(url: str, timeout: float = 5) -> str:
    """The message fetch_prometheus_sample fails with, checked free of secrets."""
    with pytest.raises(QueueStatsError) as raised:
        fetch_prometheus_sample(url, "/", QUEUE, timeout, NOW)
    error: BaseException | None = raised.value
    while error is not None:
        assert PASSWORD not in str(error)
        error = error.__cause__ or error.__context__
    assert "\n" not in str(raised.value)

    return str(raised.value)


def test_fetch_says_when_the_url_is_not_the_plugin(routes: Routes) -> None:
    """A 404 says there are no Prometheus metrics there, URL masked."""
    error = fetch_error(routes.url("/nothing"))

    assert error.startswith(f"no Prometheus metrics at {routes.url('', '***')}")
    assert error.endswith("(404)")


def test_fetch_says_when_the_queue_is_missing(routes: Routes) -> None:
    """A reply without the queue names the metric, the queue and the URL."""
    routes.answers["/empty/metrics/detailed"] = (200, b"# TYPE x gauge\nx 1\n")

    error = fetch_error(routes.url("/empty"))

    assert error.startswith(f"unexpected reply from {routes.url('', '***')}/empty/")
    assert error.endswith(
        ": the reply has no rabbitmq_detailed_queue_messages_ready "
        "for queue 'tapiriik-users' in vhost '/'"
    )


def test_fetch_names_a_refused_connection() -> None:
    """A closed port is reported as refused, the password masked."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    error = fetch_error(f"http://guest:{PASSWORD}@127.0.0.1:{port}")

    assert error.startswith(f"cannot connect to http://guest:***@127.0.0.1:{port}/")
    assert error.endswith(": Connection refused")


def test_fetch_refuses_an_invalid_url_without_quoting_it() -> None:
    """A URL httpx cannot parse is refused without echoing any part of it."""
    error = fetch_error(f"http://guest:{PASSWORD}/x@127.0.0.1:1/")

    assert error == "the RabbitMQ Prometheus URL is not valid"


def test_measure_spends_one_timeout_on_both_requests(
    db: Database[Document], routes: Routes
) -> None:
    """A plugin that never answers gets what the management API left over."""
    start = time.monotonic()
    with pytest.raises(QueueStatsError, match=r"^no answer from .* within"):
        measure_queue(
            db,
            NOW,
            stats_url=stats_url(routes),
            timeout=2,
            interval=600,
            prometheus_url=routes.url("/stall"),
        )

    # A fresh timeout for the plugin would take 4 s; the slack is for load.
    assert time.monotonic() - start < 3
