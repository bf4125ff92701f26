"""Tests of the queue wait against the RabbitMQ broker running on this machine."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pika
import pytest

from syncstats.errors import QueueStatsError
from syncstats.queue import QueueStats, estimate_wait, fetch_queue_stats

MANAGEMENT = "http://127.0.0.1:15672"
AGES = "lengths_age=60&lengths_incr=5&msg_rates_age=60&msg_rates_incr=5"
# The management plugin gathers statistics every 5 s; averages need a few.
STATS_DEADLINE = 30.0
GUEST_PASSWORD = "guest"


def stats_url(queue: str, password: str = GUEST_PASSWORD) -> str:
    """The management API URL of ``queue`` in vhost "/", with the age parameters."""
    return f"http://guest:{password}@127.0.0.1:15672/api/queues/%2F/{queue}?{AGES}"


@pytest.fixture(scope="module")
def channel() -> Iterator[Any]:
    """A channel to the local broker with publisher confirms on."""
    try:
        httpx.get(f"{MANAGEMENT}/api/overview", auth=("guest", "guest"), timeout=5)
    except httpx.HTTPError as exc:
        pytest.fail(
            f"RabbitMQ's management API is not reachable at {MANAGEMENT} ({exc}): "
            "run `rabbitmq-plugins enable rabbitmq_management`"
        )
    parameters = pika.ConnectionParameters(
        "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest")
    )
    try:
        connection = pika.BlockingConnection(parameters)
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"RabbitMQ does not accept AMQP on 127.0.0.1:5672: {exc!r}")
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
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
