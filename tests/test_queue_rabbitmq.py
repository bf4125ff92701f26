"""Tests of the queue wait against the RabbitMQ broker running on this machine."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest
from pymongo.database import Database

from syncstats._mongo import Document
from syncstats.errors import QueueStatsError
from syncstats.queue import (
    QueueStats,
    estimate_wait,
    fetch_prometheus_sample,
    fetch_queue_stats,
    measure_queue,
)

MANAGEMENT = "http://127.0.0.1:15672"
PROMETHEUS = "http://127.0.0.1:15692"
AGES = "lengths_age=60&lengths_incr=5&msg_rates_age=60&msg_rates_incr=5"
# The management plugin gathers statistics every 5 s; averages need a few.
STATS_DEADLINE = 30.0
RESTART_DEADLINE = 60.0
GUEST_PASSWORD = "guest"
COLLECTOR_OFF = (
    Path(__file__).parent
    / "fixtures"
    / "rabbitmq"
    / "k0_metrics_collector_disabled_consumer_acking__with_params.json"
)
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def stats_url(queue: str, password: str = GUEST_PASSWORD, *, ages: bool = True) -> str:
    """The management API URL of ``queue`` in vhost "/".

    It carries the age parameters unless ``ages`` is false.
    """
    url = f"http://guest:{password}@127.0.0.1:15672/api/queues/%2F/{queue}"
    return f"{url}?{AGES}" if ages else url


def management_answers() -> bool:
    """Whether the management API answers an authenticated request."""
    try:
        response = httpx.get(
            f"{MANAGEMENT}/api/overview", auth=("guest", "guest"), timeout=5
        )
    except httpx.HTTPError:
        return False
    return response.status_code == httpx.codes.OK


@pytest.fixture(scope="module")
def broker() -> None:
    """Fail early, saying what to enable, when the broker cannot be reached."""
    if not management_answers():
        pytest.fail(
            f"RabbitMQ's management API is not reachable at {MANAGEMENT}: "
            "run `rabbitmq-plugins enable rabbitmq_management`"
        )


def connect() -> Any:
    """A blocking AMQP connection to the local broker as guest."""
    parameters = pika.ConnectionParameters(
        "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest")
    )
    try:
        return pika.BlockingConnection(parameters)
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"RabbitMQ does not accept AMQP on 127.0.0.1:5672: {exc!r}")


@pytest.fixture
def channel(broker: None) -> Iterator[Any]:
    """A channel to the local broker with publisher confirms on.

    One connection per test: the restart test closes every connection.
    """
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
    if connection.is_open:
        connection.close()


@pytest.fixture
def queue(channel: Any) -> Iterator[str]:
    """A fresh, uniquely named queue, deleted after the test."""
    name = f"syncstats-test-{uuid.uuid4().hex}"
    channel.queue_declare(name)
    yield name
    channel.queue_delete(name)


def publish(channel: Any, queue: str, count: int) -> None:
    """Put ``count`` confirmed messages on ``queue``."""
    for number in range(count):
        channel.basic_publish("", queue, f"user {number}".encode())


def poll(
    url: str, wanted: Callable[[QueueStats], bool], between: Callable[[], None]
) -> QueueStats:
    """The first statistics at ``url`` that are ``wanted``; ``between`` polls."""
    deadline = time.monotonic() + STATS_DEADLINE
    while True:
        stats = fetch_queue_stats(url, 5)
        if wanted(stats):
            return stats
        if time.monotonic() > deadline:
            pytest.fail(f"no wanted statistics within {STATS_DEADLINE:g} s: {stats}")
        between()


def test_wait_of_a_queue_being_acked_is_ready_over_ack_rate(
    channel: Any, queue: str
) -> None:
    """A steadily acked queue waits mean ready count / mean ack rate, above 0."""
    publish(channel, queue, 500)
    channel.basic_qos(prefetch_count=1)
    deliveries = channel.consume(queue, inactivity_timeout=1)

    def ack_for_a_second() -> None:
        for _ in range(10):
            method, _properties, _body = next(deliveries)
            if method is not None:
                channel.basic_ack(method.delivery_tag)
            channel.connection.sleep(0.1)

    stats = poll(
        stats_url(queue),
        lambda stats: bool(stats.ready_avg and stats.ack_rate_avg),
        ack_for_a_second,
    )
    channel.cancel()

    assert stats.ready_avg is not None
    assert stats.ack_rate_avg is not None
    wait = estimate_wait(stats)
    assert wait == stats.ready_avg / stats.ack_rate_avg
    assert wait is not None
    assert wait > 0
    assert stats.consumers == 1
    assert stats.ack_total is not None
    assert stats.ack_total > 0


def test_wait_of_a_never_used_queue_is_zero(channel: Any, queue: str) -> None:
    """A queue that never held a message has no wait."""
    stats = poll(
        stats_url(queue),
        lambda stats: stats.ready_avg is not None,
        lambda: channel.connection.sleep(1),
    )

    assert stats.messages_ready == 0
    assert estimate_wait(stats) == 0.0


def test_wait_of_a_queue_without_consumer_is_unknown(channel: Any, queue: str) -> None:
    """Messages that nobody consumes make the wait unknown, not an error."""
    publish(channel, queue, 20)

    stats = poll(
        stats_url(queue),
        lambda stats: bool(stats.ready_avg),
        lambda: channel.connection.sleep(1),
    )

    assert stats.messages_ready == 20
    assert stats.consumers == 0
    assert stats.ack_rate_avg is None
    assert estimate_wait(stats) is None


def test_fetch_of_a_missing_queue_says_not_found(channel: Any) -> None:
    """A queue that does not exist is reported as not found."""
    url = stats_url(f"syncstats-test-missing-{uuid.uuid4().hex}")

    with pytest.raises(QueueStatsError, match=r"^queue not found: .*\(404\)$"):
        fetch_queue_stats(url, 5)


def test_fetch_with_a_wrong_password_says_refused(channel: Any) -> None:
    """Wrong credentials are reported as refused, the password kept out."""
    password = f"wrong-{uuid.uuid4().hex}"

    with pytest.raises(QueueStatsError) as raised:
        fetch_queue_stats(stats_url("tapiriik-users", password), 5)

    assert str(raised.value).startswith(
        "RabbitMQ refused the credentials of http://guest:***@127.0.0.1:15672/"
    )
    assert password not in str(raised.value)


# The wait from stored samples


class Acker:
    """Consumes and acks messages of one queue at a steady pace."""

    def __init__(self, channel: Any, queue: str) -> None:
        self.channel = channel
        self.deliveries = channel.consume(queue, inactivity_timeout=0.2)
        self.acked = 0

    def ack(self, count: int) -> None:
        """Ack the next ``count`` messages as they come."""
        target = self.acked + count
        while self.acked < target:
            self.run(0)

    def run(self, seconds: float, pause: float = 0.05) -> None:
        """Ack a message every ``pause`` seconds for ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            method, _properties, _body = next(self.deliveries)
            if method is not None:
                self.channel.basic_ack(method.delivery_tag)
                self.acked += 1
            if time.monotonic() >= deadline:
                return
            self.channel.connection.sleep(pause)


def acking(channel: Any, queue: str) -> Acker:
    """An acker of ``queue``, one message in flight at a time."""
    channel.basic_qos(prefetch_count=1)
    return Acker(channel, queue)


def now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def test_measure_of_a_queue_being_acked_uses_the_samples(
    channel: Any, queue: str, db: Database[Document]
) -> None:
    """Two runs ~12 s apart estimate ready / ack rate from the counters."""
    publish(channel, queue, 600)
    acker = acking(channel, queue)
    url = stats_url(queue, ages=False)
    poll(url, lambda stats: bool(stats.ack_total), lambda: acker.run(1))

    with pytest.raises(QueueStatsError, match=r"^no earlier sample yet"):
        measure_queue(db, now(), stats_url=url, timeout=5, interval=60)
    acked, started = acker.acked, time.monotonic()
    # Each run's counts may be up to 5 s old: over 12 s the rate stays
    # within the bounds below however the two lags fall.
    acker.run(12)
    pace = (acker.acked - acked) / (time.monotonic() - started)
    measured = measure_queue(db, now(), stats_url=url, timeout=5, interval=60)
    channel.cancel()

    assert measured.method == "samples"
    assert measured.sample is not None
    assert measured.length == measured.sample.messages_ready
    # The broker publishes its counts every 5 s, later on a loaded machine:
    # the sample lags the consumer, so only the acks so far bound it.
    assert 0 < 600 - acker.acked - 1 <= measured.sample.messages_ready < 600
    assert measured.ack_rate is not None
    assert 0.3 * pace < measured.ack_rate < 2 * pace
    assert measured.wait == measured.length / measured.ack_rate


def test_real_plugin_reply_parses_and_serves_the_collector_off_case(
    channel: Any, queue: str, db: Database[Document], http_replay: tuple[str, Any]
) -> None:
    """The plugin's counts match the broker's; they estimate with the collector off."""
    publish(channel, queue, 300)
    acker = acking(channel, queue)
    acker.run(1)

    def counts_settled() -> bool:
        sample = fetch_prometheus_sample(PROMETHEUS, "/", queue, 5, now())
        # The next message may already be out to the consumer, not yet acked.
        ready = {300 - acker.acked, 300 - acker.acked - 1}
        return sample.messages_ready in ready and sample.ack_total == acker.acked

    deadline = time.monotonic() + STATS_DEADLINE
    while not counts_settled():
        assert time.monotonic() < deadline, "the plugin's counts never settled"
        channel.connection.sleep(0.5)
    base, replies = http_replay
    replies.body = COLLECTOR_OFF.read_bytes()
    url = f"{base}/api/queues/%2F/{queue}"

    def measure() -> Any:
        return measure_queue(
            db, now(), stats_url=url, timeout=5, interval=60, prometheus_url=PROMETHEUS
        )

    with pytest.raises(QueueStatsError, match=r"^no earlier sample yet"):
        measure()
    acker.run(6)
    measured = measure()
    channel.cancel()

    assert measured.method == "samples"
    assert measured.sample is not None
    assert measured.sample.counter in {"prometheus-channels", "prometheus-queue"}
    assert measured.ack_rate is not None
    assert measured.ack_rate > 0
    assert measured.wait == measured.length / measured.ack_rate


# A broker that stops and starts again


def rabbitmqctl(*arguments: str) -> None:
    """Run ``rabbitmqctl`` with ``arguments``, failing the test if it fails."""
    program = shutil.which("rabbitmqctl")
    if program is None:
        pytest.fail("rabbitmqctl is not on the PATH")
    try:
        subprocess.run(
            [program, *arguments], check=True, capture_output=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"rabbitmqctl {' '.join(arguments)} failed: {exc}")


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait up to RESTART_DEADLINE seconds for ``condition``."""
    deadline = time.monotonic() + RESTART_DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {RESTART_DEADLINE:g} s")
        time.sleep(0.5)


def reply_has(url: str, wanted: Callable[[QueueStats], bool]) -> Callable[[], bool]:
    """A condition: the statistics at ``url`` are ``wanted``."""

    def check() -> bool:
        try:
            return wanted(fetch_queue_stats(url, 5))
        except QueueStatsError:
            return False

    return check


@pytest.fixture
def durable_queue(broker: None) -> Iterator[str]:
    """A durable queue holding 40 persistent messages, 15 of them acked."""
    name = f"syncstats-test-restart-{uuid.uuid4().hex}"
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(name, durable=True)
    for number in range(40):
        channel.basic_publish("", name, f"user {number}".encode(), PERSISTENT)
    channel.basic_qos(prefetch_count=1)
    Acker(channel, name).ack(15)
    channel.cancel()
    # Closed only once counted: a channel's last acks may not reach the stats.
    counted = reply_has(stats_url(name, ages=False), lambda s: s.ack_total == 15)
    wait_for(counted, "no acks counted")
    connection.close()
    yield name
    wait_for(management_answers, "the management API did not answer")
    connection = connect()
    connection.channel().queue_delete(name)
    connection.close()


def test_broker_restart_gives_no_estimate_from_the_pair_across_it(
    durable_queue: str, db: Database[Document]
) -> None:
    """Stopped: one clear line. Restarted: counters reset, no estimate from them."""
    bare, aged = stats_url(durable_queue, ages=False), stats_url(durable_queue)
    with pytest.raises(QueueStatsError, match=r"^no earlier sample yet"):
        measure_queue(db, now(), stats_url=bare, timeout=5, interval=600)

    rabbitmqctl("stop_app")
    try:
        with pytest.raises(QueueStatsError) as stopped:
            measure_queue(db, now(), stats_url=bare, timeout=5, interval=600)
    finally:
        rabbitmqctl("start_app")
        wait_for(management_answers, "the management API did not answer")
    wait_for(reply_has(bare, lambda s: s.messages_ready == 25), "no counts")
    with pytest.raises(QueueStatsError) as restarted:
        measure_queue(db, now(), stats_url=bare, timeout=5, interval=600, dry_run=True)
    wait_for(reply_has(aged, lambda s: s.ready_avg is not None), "no averages")
    measured = measure_queue(db, now(), stats_url=aged, timeout=5, interval=600)

    assert str(stopped.value) == (
        f"cannot connect to {stats_url(durable_queue, '***', ages=False)}: "
        "Connection refused"
    )
    assert str(restarted.value).startswith(
        "the ack counter went down since the earlier sample"
    )
    assert "\n" not in str(restarted.value)
    assert measured.method == "hour-averages"
    assert measured.sample is not None
    assert measured.sample.ack_total == 0
