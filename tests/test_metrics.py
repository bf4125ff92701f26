"""Tests of /metrics: the stored snapshot and the windows, read at scrape time."""

from __future__ import annotations

import warnings
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.exceptions import StarletteDeprecationWarning

from syncstats._mongo import Databases
from syncstats.ratelimit import RateLimiter
from syncstats.settings import Settings, load_settings
from syncstats.snapshot import Snapshot, status_document, store_snapshot
from syncstats.web import create_app
from tests.conftest import NOW

with warnings.catch_warnings():
    # Starlette asks for httpx2 behind its test client; httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

SNAPSHOT = Snapshot(
    NOW - timedelta(minutes=2),
    total_distance=123_456_789.5,
    last_day_distance=2_345_678.25,
    last_hour_distance=98_765.5,
    enqueue_wait=42.5,
    queue_wait=310.0,
    queue_length=12.5,
    queue_ack_rate=0.25,
    syncs_last_hour=87,
    sync_time_used=1834.75,
    average_sync_duration=21.0,
    locked=3,
    pending=17,
    error_users=5,
    total_errors=9,
    steps={"distance": True, "queue": True, "users": False},
)
LIMITS = {
    "strava": [{"window": "15m", "max": 600}, {"window": "1d", "max": 30000}],
    "runkeeper": [{"window": "1h", "max": 100}],
}

BY_DESTINATION = {
    "strava": {
        "TotalDistanceSynced": 100_000_000.25,
        "LastDayDistanceSynced": 2_000_000.5,
        "LastHourDistanceSynced": 80_000.0,
    },
    "garminconnect": {
        "TotalDistanceSynced": 30_000_000.0,
        "LastDayDistanceSynced": 600_000.75,
        "LastHourDistanceSynced": 0.0,
    },
}
DISTANCE = "syncstats_distance_synced_meters"
OVERALL = {
    (DISTANCE, (("window", "all"),)): 123_456_789.5,
    (DISTANCE, (("window", "24h"),)): 2_345_678.25,
    (DISTANCE, (("window", "1h"),)): 98_765.5,
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def limited(settings: Settings) -> Settings:
    """The test's settings with rate limits for two services."""
    return load_settings(
        overrides={
            "mongo_uri": settings.mongo_uri,
            "database": settings.database,
            "ratelimit_database": settings.ratelimit_database,
            "rate_limits": LIMITS,
        }
    )


def scrape(settings: Settings, dbs: Databases) -> Samples:
    """Every sample of /metrics by name and sorted labels."""
    client = TestClient(create_app(settings, dbs, clock=lambda: NOW))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_every_figure_equals_the_stored_snapshot(
    limited: Settings, dbs: Databases
) -> None:
    """Each snapshot gauge carries the value stored by the last pass."""
    store_snapshot(dbs.main, SNAPSHOT)

    samples = scrape(limited, dbs)

    assert {name: value for (name, labels), value in samples.items() if not labels} == {
        "syncstats_queue_wait_seconds": 310.0,
        "syncstats_enqueue_wait_seconds": 42.5,
        "syncstats_worker_busy_seconds": 1834.75,
        "syncstats_sync_duration_average_seconds": 21.0,
        "syncstats_syncs_last_hour": 87.0,
        "syncstats_users_locked": 3.0,
        "syncstats_users_pending": 17.0,
        "syncstats_users_with_errors": 5.0,
        "syncstats_sync_errors": 9.0,
        "syncstats_snapshot_timestamp_seconds": SNAPSHOT.now.timestamp(),
    }
    distance = "syncstats_distance_synced_meters"
    assert samples[distance, (("window", "all"),)] == 123_456_789.5
    assert samples[distance, (("window", "24h"),)] == 2_345_678.25
    assert samples[distance, (("window", "1h"),)] == 98_765.5


def store_with_destinations(dbs: Databases, by_destination: object) -> None:
    """Store SNAPSHOT with ``by_destination`` as its history entry's ByDestination."""
    store_snapshot(dbs.main, SNAPSHOT)
    dbs.main.sync_status_stats.update_one(
        {"Timestamp": SNAPSHOT.now}, {"$set": {"ByDestination": by_destination}}
    )


def distance_samples(samples: Samples) -> Samples:
    """The samples of the distance family only."""
    return {key: value for key, value in samples.items() if key[0] == DISTANCE}


def test_distance_per_destination_equals_the_stored_values(
    settings: Settings, dbs: Databases
) -> None:
    """Each destination has one distance series per window, as stored."""
    store_with_destinations(dbs, BY_DESTINATION)

    samples = scrape(settings, dbs)

    per_destination = {
        (labels["destination"], labels["window"]): value
        for (name, pairs), value in samples.items()
        if name == DISTANCE and "destination" in (labels := dict(pairs))
    }
    assert per_destination == {
        ("strava", "all"): 100_000_000.25,
        ("strava", "24h"): 2_000_000.5,
        ("strava", "1h"): 80_000.0,
        ("garminconnect", "all"): 30_000_000.0,
        ("garminconnect", "24h"): 600_000.75,
        ("garminconnect", "1h"): 0.0,
    }


def test_overall_distance_keeps_the_window_label_alone(
    settings: Settings, dbs: Databases
) -> None:
    """With destinations stored, the overall series are exactly as without them."""
    store_with_destinations(dbs, BY_DESTINATION)

    samples = scrape(settings, dbs)

    overall = {
        key: value
        for key, value in distance_samples(samples).items()
        if "destination" not in dict(key[1])
    }
    assert overall == OVERALL


def test_no_destination_series_without_by_destination(
    settings: Settings, dbs: Databases
) -> None:
    """A snapshot without ByDestination gives the overall distance series only."""
    store_snapshot(dbs.main, SNAPSHOT)

    samples = scrape(settings, dbs)

    assert distance_samples(samples) == OVERALL


def test_malformed_destination_figures_are_left_out(
    settings: Settings, dbs: Databases
) -> None:
    """Destination entries or figures that are not numbers have no sample."""
    store_with_destinations(
        dbs,
        {
            "strava": {"TotalDistanceSynced": 5.0, "LastDayDistanceSynced": None},
            "runkeeper": "broken",
            "polarflow": {"LastHourDistanceSynced": "12"},
        },
    )

    samples = scrape(settings, dbs)

    assert distance_samples(samples) == OVERALL | {
        (DISTANCE, (("destination", "strava"), ("window", "all"))): 5.0
    }


def test_a_malformed_by_destination_is_ignored(
    settings: Settings, dbs: Databases
) -> None:
    """A ByDestination that is not a document leaves the overall series alone."""
    store_with_destinations(dbs, ["strava", 12.0])

    samples = scrape(settings, dbs)

    assert distance_samples(samples) == OVERALL


def test_step_success_is_one_per_step_that_succeeded(
    settings: Settings, dbs: Databases
) -> None:
    """syncstats_step_success is 1 for a step that succeeded, 0 for a failed one."""
    store_snapshot(dbs.main, SNAPSHOT)

    samples = scrape(settings, dbs)

    steps = {
        dict(labels)["step"]: value
        for (name, labels), value in samples.items()
        if name == "syncstats_step_success"
    }
    assert steps == {"distance": 1.0, "queue": 1.0, "users": 0.0}


def test_rate_limit_gauges_show_each_current_window(
    limited: Settings, dbs: Databases
) -> None:
    """Used and max gauges exist per service and window length, with the counts."""
    limiter = RateLimiter(dbs.ratelimit, limited.limits())
    for _ in range(7):
        limiter.acquire("strava", NOW)
    limiter.acquire("runkeeper", NOW - timedelta(hours=1))  # an ended window

    samples = scrape(limited, dbs)

    def window(service: str, seconds: str) -> tuple[tuple[str, str], ...]:
        return (("service", service), ("window_seconds", seconds))

    assert {
        labels: value
        for (name, labels), value in samples.items()
        if name == "syncstats_ratelimit_used"
    } == {
        window("strava", "900"): 7.0,
        window("strava", "86400"): 7.0,
        window("runkeeper", "3600"): 0.0,
    }
    assert {
        labels: value
        for (name, labels), value in samples.items()
        if name == "syncstats_ratelimit_max"
    } == {
        window("strava", "900"): 600.0,
        window("strava", "86400"): 30000.0,
        window("runkeeper", "3600"): 100.0,
    }


def test_null_figures_are_absent(settings: Settings, dbs: Databases) -> None:
    """A figure stored as null, such as an unknown queue wait, has no sample."""
    store_snapshot(dbs.main, SNAPSHOT.replace(queue_wait=None, last_hour_distance=None))

    samples = scrape(settings, dbs)

    names = {name for name, _ in samples}
    assert "syncstats_queue_wait_seconds" not in names
    assert ("syncstats_distance_synced_meters", (("window", "1h"),)) not in samples
    assert samples["syncstats_enqueue_wait_seconds", ()] == 42.5


def test_the_newest_snapshot_is_the_one_shown(
    settings: Settings, dbs: Databases
) -> None:
    """Older history entries do not show; the latest Timestamp wins."""
    store_snapshot(dbs.main, SNAPSHOT.replace(pending=99))
    store_snapshot(
        dbs.main, SNAPSHOT.replace(now=SNAPSHOT.now - timedelta(minutes=10), pending=1)
    )

    samples = scrape(settings, dbs)

    assert samples["syncstats_users_pending", ()] == 99.0
    assert samples["syncstats_snapshot_timestamp_seconds", ()] == (
        SNAPSHOT.now.timestamp()
    )


def test_no_snapshot_leaves_only_window_gauges(
    limited: Settings, dbs: Databases
) -> None:
    """Before the first pass, /metrics answers with the rate-limit gauges only."""
    samples = scrape(limited, dbs)

    assert {name for name, _ in samples} == {
        "syncstats_ratelimit_used",
        "syncstats_ratelimit_max",
    }


def test_scraping_writes_nothing(limited: Settings, dbs: Databases) -> None:
    """A scrape neither stores a snapshot nor opens a rate-limit window."""
    store_snapshot(dbs.main, SNAPSHOT)

    scrape(limited, dbs)

    assert dbs.main.sync_status_stats.count_documents({}) == 1
    assert dbs.ratelimit.limits.count_documents({}) == 0


def test_history_written_apart_from_stats_still_shows(
    settings: Settings, dbs: Databases
) -> None:
    """A history entry older than stats' Updated (another writer) is still found."""
    dbs.main.sync_status_stats.insert_one(status_document(SNAPSHOT))
    dbs.main.stats.insert_one({"Updated": SNAPSHOT.now + timedelta(seconds=1)})

    samples = scrape(settings, dbs)

    assert samples["syncstats_users_pending", ()] == 17.0
