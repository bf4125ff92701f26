"""Tests of the queue wait from stored samples of RabbitMQ's counters."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.database import Database

from syncstats._mongo import Document
from syncstats.errors import QueueStatsError
from syncstats.queue import (
    SAMPLES_COLLECTION,
    QueueMeasurement,
    QueueSample,
    measure_queue,
    wait_from_samples,
)
from tests.conftest import NOW

REPLIES = Path(__file__).parent / "fixtures" / "rabbitmq"
QUEUE_PATH = "/api/queues/%2F/tapiriik-users"
AGES = "lengths_age=3600&lengths_incr=60&msg_rates_age=3600&msg_rates_incr=60"
INTERVAL = 600.0
LATER = NOW + timedelta(seconds=INTERVAL)


def sample(at: datetime, ready: int, acks: int) -> QueueSample:
    """A sample of the management API's counters."""
    return QueueSample(at, ready, acks)


def reply(name: str, ready: int | None = None, acks: int | None = None) -> bytes:
    """A captured reply, its ready count and ack counter set when given."""
    body: dict[str, Any] = json.loads((REPLIES / name).read_text())
    if ready is not None:
        body["messages_ready"] = ready
    if acks is not None:
        body.setdefault("message_stats", {})["ack"] = acks

    return json.dumps(body).encode()


class Broker:
    """Runs measure_queue against the replay server, one reply per run."""

    def __init__(self, db: Database[Document], replay: tuple[str, Any]) -> None:
        self.db = db
        self.base, self.replies = replay

    def measure(
        self, now: datetime, body: bytes, *, ages: bool = True, **options: Any
    ) -> QueueMeasurement:
        """Serve ``body`` as the queue's reply and measure at ``now``."""
        self.replies.body = body
        url = f"{self.base}{QUEUE_PATH}" + (f"?{AGES}" if ages else "")
        options.setdefault("interval", INTERVAL)
        return measure_queue(self.db, now, stats_url=url, timeout=5, **options)

    def error(self, now: datetime, body: bytes, **options: Any) -> str:
        """The one-line reason measure_queue fails with."""
        with pytest.raises(QueueStatsError) as raised:
            self.measure(now, body, **options)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    def stored(self) -> list[Document]:
        """The stored samples, oldest first, without their ids."""
        cursor = self.db[SAMPLES_COLLECTION].find({}, {"_id": 0}).sort("at", 1)
        return list(cursor)


@pytest.fixture
def broker(db: Database[Document], http_replay: tuple[str, Any]) -> Broker:
    """A replayed management API and a fresh database."""
    return Broker(db, http_replay)


# The pure estimate


def test_wait_of_the_worked_example_is_ready_over_ack_rate() -> None:
    """600 acks in 600 s with 120 ready make a wait of 120 s."""
    earlier = sample(NOW, 400, 1000)
    later = sample(LATER, 120, 1600)

    assert wait_from_samples(earlier, later) == 120.0


def test_wait_of_an_empty_queue_is_zero() -> None:
    """Nothing ready means no wait, whether or not anything was acked."""
    assert wait_from_samples(sample(NOW, 5, 10), sample(LATER, 0, 10)) == 0.0
    assert wait_from_samples(sample(NOW, 5, 10), sample(LATER, 0, 15)) == 0.0


def test_wait_of_a_stalled_queue_is_unknown() -> None:
    """Messages ready and no ack between the samples: the queue is stalled."""
    assert wait_from_samples(sample(NOW, 5, 10), sample(LATER, 7, 10)) is None


def test_wait_after_a_counter_went_down_is_unknown() -> None:
    """A counter lower than before means a restart: the pair says nothing."""
    assert wait_from_samples(sample(NOW, 5, 1000), sample(LATER, 0, 10)) is None


@pytest.mark.parametrize("seconds", [0, -600])
def test_wait_when_time_did_not_advance_is_unknown(seconds: int) -> None:
    """Samples taken at the same time, or out of order, give no rate."""
    later = sample(NOW + timedelta(seconds=seconds), 5, 1600)

    assert wait_from_samples(sample(NOW, 5, 1000), later) is None


def test_wait_from_samples_of_two_counters_is_unknown() -> None:
    """A management sample and a Prometheus one count different things."""
    earlier = QueueSample(NOW, 5, 1000, "management")
    later = QueueSample(LATER, 5, 1600, "prometheus-channels")

    assert wait_from_samples(earlier, later) is None


def test_wait_too_long_to_represent_is_unknown() -> None:
    """A wait that overflows a float is unknown, not infinite."""
    earlier = sample(NOW, 0, 0)
    later = sample(NOW + timedelta(days=3000), 10**400, 1)

    assert wait_from_samples(earlier, later) is None


instants = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - made aware by timezones
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
samples = st.builds(
    QueueSample,
    at=instants,
    messages_ready=st.integers(min_value=0),
    ack_total=st.integers(min_value=0),
    counter=st.sampled_from(["management", "prometheus-queue"]),
)


@settings(deadline=None)
@given(earlier=samples, later=samples)
def test_wait_of_any_pair_is_finite_and_not_negative(
    earlier: QueueSample, later: QueueSample
) -> None:
    """Any two samples give a finite wait >= 0 or None, and never raise."""
    wait = wait_from_samples(earlier, later)

    assert wait is None or (math.isfinite(wait) and wait >= 0)


# Measuring: the management API's counters and syncstats' samples


def test_measure_gives_the_worked_example(broker: Broker) -> None:
    """Ack 1000 at 12:07:30 and 1600 at 12:17:30 with 120 ready: 120 s."""
    name = "c1_consumer_acking_60s__with_params.json"
    first = broker.measure(NOW, reply(name, ready=400, acks=1000))

    second = broker.measure(LATER, reply(name, ready=120, acks=1600))

    assert first.method == "hour-averages"
    assert second == QueueMeasurement(
        wait=120.0,
        length=120.0,
        ack_rate=1.0,
        method="samples",
        sample=QueueSample(LATER, 120, 1600),
    )


def test_measure_stores_one_sample_per_run(broker: Broker) -> None:
    """Each run stores its time, ready count and ack counter, keyed by queue."""
    name = "c1_consumer_acking_60s__no_params.json"
    broker.error(NOW, reply(name, ready=400, acks=1000), ages=False)

    broker.measure(LATER, reply(name, ready=120, acks=1600), ages=False)

    assert broker.stored() == [
        {
            "vhost": "/",
            "queue": "tapiriik-users",
            "counter": "management",
            "at": NOW,
            "messages_ready": 400,
            "ack_total": 1000,
        },
        {
            "vhost": "/",
            "queue": "tapiriik-users",
            "counter": "management",
            "at": LATER,
            "messages_ready": 120,
            "ack_total": 1600,
        },
    ]


def test_measure_beats_the_biased_hour_averages(broker: Broker) -> None:
    """After a restart the samples give the true wait, not the padded average."""
    name = "c1_consumer_acking_60s__with_params.json"
    broker.measure(NOW, reply(name, acks=0))

    # 5 acks/s for 60 s with 1320 ready: 264 s; the averages say 16,740 s.
    measured = broker.measure(NOW + timedelta(seconds=60), reply(name, acks=300))

    assert measured.method == "samples"
    assert measured.wait == pytest.approx(264.0)


def test_measure_falls_back_to_hour_averages_after_twice_the_interval(
    broker: Broker,
) -> None:
    """A previous sample 2 x interval old or more is not used."""
    name = "c1_consumer_acking_60s__with_params.json"
    broker.measure(NOW, reply(name, acks=1000))
    body = json.loads(reply(name, acks=1600))

    measured = broker.measure(
        NOW + timedelta(seconds=2 * INTERVAL), reply(name, acks=1600)
    )

    assert measured.method == "hour-averages"
    assert measured.length == body["messages_ready_details"]["avg"]
    assert measured.ack_rate == body["message_stats"]["ack_details"]["avg_rate"]
    assert measured.wait == measured.length / measured.ack_rate


def test_measure_uses_a_sample_just_younger_than_twice_the_interval(
    broker: Broker,
) -> None:
    """A previous sample a little under 2 x interval old still pairs."""
    name = "c1_consumer_acking_60s__with_params.json"
    broker.measure(NOW, reply(name, acks=1000))

    later = NOW + timedelta(seconds=2 * INTERVAL - 1)
    measured = broker.measure(later, reply(name, ready=0, acks=1600))

    assert measured.method == "samples"
    assert measured.wait == 0.0


def test_measure_after_the_counter_went_down_uses_hour_averages(
    broker: Broker,
) -> None:
    """A counter that went down gives no estimate: the averages are used."""
    name = "c1_consumer_acking_60s__with_params.json"
    broker.measure(NOW, reply(name, acks=5000))

    measured = broker.measure(LATER, reply(name, acks=10))

    assert measured.method == "hour-averages"


def test_measure_after_the_counter_went_down_without_averages_fails(
    broker: Broker,
) -> None:
    """Without averages, a restart between the runs leaves the wait unknown."""
    name = "c1_consumer_acking_60s__no_params.json"
    broker.error(NOW, reply(name, acks=5000), ages=False)

    error = broker.error(LATER, reply(name, acks=10), ages=False)

    assert error.startswith("the ack counter went down since the earlier sample")
    assert error.endswith(
        "and no hour averages: add lengths_age/msg_rates_age to the URL; "
        "the next run will estimate from counters"
    )


def test_measure_after_a_plugin_restart_counts_no_acks_from_zero(
    broker: Broker,
) -> None:
    """A reply without message_stats has counted no ack since the restart."""
    broker.error(NOW, reply("d2_consumer_stopped_70s__no_params.json"), ages=False)
    restarted = "h0_after_mgmt_plugin_reenable__no_params.json"

    error = broker.error(LATER, reply(restarted), ages=False)

    assert "the ack counter went down" in error
    assert broker.stored()[-1]["ack_total"] == 0


@pytest.mark.parametrize(
    "name",
    sorted(
        path.name
        for path in REPLIES.glob("*__no_params.json")
        if '"messages_ready"' in path.read_text()
    ),
)
def test_measure_on_a_bare_reply_fails_first_and_estimates_next(
    broker: Broker, name: str
) -> None:
    """Without averages the first run names the fix, the second run estimates."""
    first = reply(name)
    error = broker.error(NOW, first, ages=False)
    stats = json.loads(first)
    acks = stats.get("message_stats", {}).get("ack", 0)

    measured = broker.measure(LATER, reply(name, acks=acks + 300), ages=False)

    assert error == (
        "no earlier sample yet and no hour averages: add lengths_age/msg_rates_age "
        "to the URL; the next run will estimate from counters"
    )
    assert measured.method == "samples"
    assert measured.ack_rate == 0.5
    assert measured.length == stats["messages_ready"]
    assert measured.wait == stats["messages_ready"] / 0.5


def test_measure_of_a_stalled_queue_is_unknown_at_once(broker: Broker) -> None:
    """A consumer that died shows on the next run, not an hour later."""
    name = "c1_consumer_acking_60s__with_params.json"
    broker.measure(NOW, reply(name, acks=1000))

    measured = broker.measure(LATER, reply(name, acks=1000))

    assert measured.method == "samples"
    assert measured.wait is None
    assert measured.ack_rate == 0.0
    assert measured.length == 1320.0


def test_measure_in_a_dry_run_stores_nothing(broker: Broker) -> None:
    """A dry run reads the previous sample but writes none."""
    name = "c1_consumer_acking_60s__with_params.json"
    broker.measure(NOW, reply(name, acks=1000))

    measured = broker.measure(LATER, reply(name, ready=120, acks=1600), dry_run=True)

    assert measured.wait == 120.0
    assert [document["at"] for document in broker.stored()] == [NOW]


def test_measure_pairs_with_the_latest_earlier_sample(broker: Broker) -> None:
    """The previous sample is the latest one before now, by time."""
    name = "c1_consumer_acking_60s__with_params.json"
    for minutes, acks in [(10, 1600), (0, 1000), (5, 1300), (30, 9000)]:
        at = NOW + timedelta(minutes=minutes)
        broker.measure(at, reply(name, acks=acks), dry_run=minutes == 30)
    broker.db[SAMPLES_COLLECTION].insert_one(
        {**broker.stored()[0], "at": NOW + timedelta(minutes=40), "ack_total": 1}
    )

    measured = broker.measure(NOW + timedelta(minutes=20), reply(name, acks=2200))

    assert measured.ack_rate == 1.0  # 600 acks since the 10-minute sample


def test_measure_keeps_the_samples_of_each_queue_apart(broker: Broker) -> None:
    """A sample of another queue is never paired with this one's."""
    name = "c1_consumer_acking_60s__no_params.json"
    broker.error(NOW, reply(name, acks=1000), ages=False, queue_name="other")

    error = broker.error(LATER, reply(name, acks=1600), ages=False)

    assert error.startswith("no earlier sample yet")


def test_measure_prunes_samples_older_than_a_day(broker: Broker) -> None:
    """Samples too old to pair with any run are deleted as new ones come."""
    name = "c1_consumer_acking_60s__with_params.json"
    broker.measure(NOW - timedelta(days=1, seconds=1), reply(name))
    broker.measure(NOW - timedelta(hours=23), reply(name))

    broker.measure(NOW, reply(name))

    assert [document["at"] for document in broker.stored()] == [
        NOW - timedelta(hours=23),
        NOW,
    ]


def test_measure_ignores_a_malformed_stored_sample(broker: Broker) -> None:
    """A stored sample of the wrong shape is skipped, not trusted."""
    broker.db[SAMPLES_COLLECTION].insert_one(
        {
            "vhost": "/",
            "queue": "tapiriik-users",
            "counter": "management",
            "at": NOW,
            "messages_ready": "many",
            "ack_total": 1000,
        }
    )

    name = "c1_consumer_acking_60s__no_params.json"
    error = broker.error(LATER, reply(name, acks=1600), ages=False)

    assert error.startswith("no earlier sample yet")


def test_measure_reads_a_naive_stored_date_as_utc(broker: Broker) -> None:
    """A sample dated without a zone, as other tools may write, is UTC."""
    broker.db[SAMPLES_COLLECTION].insert_one(
        {
            "vhost": "/",
            "queue": "tapiriik-users",
            "counter": "management",
            "at": NOW.replace(tzinfo=None),
            "messages_ready": 400,
            "ack_total": 1000,
        }
    )

    name = "c1_consumer_acking_60s__no_params.json"
    measured = broker.measure(LATER, reply(name, ready=120, acks=1600), ages=False)

    assert measured.wait == 120.0


def test_measure_without_counts_or_averages_names_the_plugin(broker: Broker) -> None:
    """A reply with nothing to count from says to set the Prometheus URL."""
    name = "k0_metrics_collector_disabled_consumer_acking__with_params.json"

    error = broker.error(NOW, reply(name))

    assert error == (
        "the reply has no counts: the queue was declared moments ago, or "
        "RabbitMQ's metrics collector is off; for the latter set "
        "rabbitmq_prometheus_url to the Prometheus plugin (rabbitmq_prometheus, "
        "port 15692)"
    )
    assert broker.stored() == []


def test_measure_passes_on_the_fetch_errors(broker: Broker) -> None:
    """A failing management API fails the measure with fetch_queue_stats' line."""
    broker.replies.status = 401

    error = broker.error(NOW, reply("f0_wrong_password__no_params.json"))

    assert error.startswith("RabbitMQ refused the credentials of http://127.0.0.1:")
    assert broker.stored() == []


# Which queue the samples belong to


@pytest.mark.parametrize(
    ("path", "vhost", "queue"),
    [
        ("/api/queues/%2F/tapiriik-users", "/", "tapiriik-users"),
        ("/rabbitmq/api/queues/prod/users%2Fq/", "prod", "users/q"),
        ("/api/queues/%2Fsync/tapiriik%20users", "/sync", "tapiriik users"),
    ],
)
def test_measure_keys_the_samples_by_the_queue_in_the_url(
    broker: Broker, path: str, vhost: str, queue: str
) -> None:
    """The vhost and name come from the URL's path, percent-decoded."""
    broker.replies.body = reply("c1_consumer_acking_60s__with_params.json")

    measure_queue(
        broker.db, NOW, stats_url=broker.base + path, timeout=5, interval=INTERVAL
    )

    stored = broker.stored()[0]
    assert (stored["vhost"], stored["queue"]) == (vhost, queue)


def test_measure_refuses_a_url_that_names_no_queue(broker: Broker) -> None:
    """Samples need a queue: a URL without /api/queues/<vhost>/<name> fails."""
    broker.replies.body = reply("c1_consumer_acking_60s__with_params.json")

    with pytest.raises(QueueStatsError, match="does not end in /api/queues/"):
        measure_queue(
            broker.db,
            NOW,
            stats_url=f"{broker.base}/api/queues/%2F",
            timeout=5,
            interval=INTERVAL,
        )


def test_measure_takes_the_queue_given_over_the_url(broker: Broker) -> None:
    """An explicit vhost and queue name win over the URL's."""
    broker.measure(
        NOW,
        reply("c1_consumer_acking_60s__with_params.json"),
        vhost="sync",
        queue_name="users",
    )

    stored = broker.stored()[0]
    assert (stored["vhost"], stored["queue"]) == ("sync", "users")
