"""Tests of the figures, on a real Mongo-wire server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from bson import ObjectId
from bson.decimal128 import Decimal128
from pymongo.database import Database

from syncstats import stats
from syncstats._mongo import Document
from syncstats.totals import compute_distance
from tests.conftest import NOW

HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
TINY = timedelta(microseconds=1000)  # BSON dates keep milliseconds


def test_distance_sums_valid_values_per_window(db: Database[Document]) -> None:
    """Each total sums finite non-negative distances with a date in its window."""
    db.sync_stats.insert_many(
        [
            {"Distance": 1000.0, "Timestamp": NOW},
            {"Distance": 200, "Timestamp": NOW - HOUR + TINY},
            {"Distance": 30.5, "Timestamp": NOW - HOUR},
            {"Distance": 4.0, "Timestamp": NOW - DAY + TINY},
            {"Distance": 0.25, "Timestamp": NOW - DAY},
            {"Distance": 7, "Timestamp": NOW - 30 * DAY},
            {"Distance": Decimal128(Decimal("1.5")), "Timestamp": NOW},
        ]
    )

    totals = compute_distance(db, NOW)

    assert totals.total == pytest.approx(1000 + 200 + 30.5 + 4 + 0.25 + 7 + 1.5)
    assert totals.last_day == pytest.approx(1000 + 200 + 30.5 + 4 + 1.5)
    assert totals.last_hour == pytest.approx(1000 + 200 + 1.5)


def test_distance_skips_invalid_values(db: Database[Document]) -> None:
    """Null, strings, booleans, NaN, infinities and negatives add nothing."""
    db.sync_stats.insert_many(
        [
            {"Distance": None, "Timestamp": NOW},
            {"Distance": "1000", "Timestamp": NOW},
            {"Distance": True, "Timestamp": NOW},
            {"Distance": float("nan"), "Timestamp": NOW},
            {"Distance": float("inf"), "Timestamp": NOW},
            {"Distance": float("-inf"), "Timestamp": NOW},
            {"Distance": -5.0, "Timestamp": NOW},
            {"Timestamp": NOW},
            {"Distance": [3.0], "Timestamp": NOW},
            {"Distance": 12.0, "Timestamp": NOW},
        ]
    )

    totals = compute_distance(db, NOW)

    assert (totals.total, totals.last_day, totals.last_hour) == (12.0, 12.0, 12.0)


def test_distance_outside_windows_without_a_date(db: Database[Document]) -> None:
    """A Timestamp that is not a date counts in the total only."""
    db.sync_stats.insert_many(
        [
            {"Distance": 5.0, "Timestamp": NOW.isoformat()},
            {"Distance": 6.0, "Timestamp": None},
            {"Distance": 7.0},
            {"Distance": 8.0, "Timestamp": NOW.timestamp()},
        ]
    )

    totals = compute_distance(db, NOW)

    assert (totals.total, totals.last_day, totals.last_hour) == (26.0, 0.0, 0.0)


def test_distance_of_an_empty_collection_is_zero(db: Database[Document]) -> None:
    """With no activities every total is 0."""
    totals = compute_distance(db, NOW)

    assert (totals.total, totals.last_day, totals.last_hour) == (0.0, 0.0, 0.0)


def test_distance_reads_naive_tapiriik_dates_as_utc(db: Database[Document]) -> None:
    """Naive UTC datetimes written by Tapiriik fall in the right window."""
    naive = (NOW - HOUR + timedelta(seconds=1)).replace(tzinfo=None)
    db.sync_stats.insert_one({"Distance": 9.0, "Timestamp": naive})

    assert compute_distance(db, NOW).last_hour == 9.0


def test_enqueue_wait_averages_ten_oldest_eligible(db: Database[Document]) -> None:
    """The mean wait of the ten oldest queued, unlocked, unpinned users."""
    waits = [600 * (i + 1) for i in range(12)]
    db.users.insert_many(
        [{"QueuedAt": NOW - timedelta(seconds=w)} for w in waits]
        + [{"QueuedAt": NOW - timedelta(seconds=w), "SynchronizationWorker": None}
           for w in (1, 2)]
    )  # fmt: skip

    expected = sum(sorted([*waits, 1, 2], reverse=True)[:10]) / 10

    assert stats.enqueue_wait(db, NOW) == pytest.approx(expected)


def test_enqueue_wait_ignores_locked_pinned_and_future(db: Database[Document]) -> None:
    """Locked users, pinned users (even pinned to null) and later dates are out."""
    db.users.insert_many(
        [
            {"QueuedAt": NOW - DAY, "SynchronizationWorker": 4242},
            {"QueuedAt": NOW - DAY, "SynchronizationWorker": 1},
            {"QueuedAt": NOW - DAY, "SynchronizationHostRestriction": "sync-2"},
            {"QueuedAt": NOW - DAY, "SynchronizationHostRestriction": None},
            {"QueuedAt": NOW + HOUR},
            {"QueuedAt": None},
            {"QueuedAt": "yesterday"},
            {"QueuedAt": NOW - timedelta(seconds=90)},
            {"QueuedAt": NOW},
        ]
    )

    assert stats.enqueue_wait(db, NOW) == pytest.approx(45.0)


def test_enqueue_wait_skips_a_list_of_dates(db: Database[Document]) -> None:
    """A QueuedAt holding a list is no queue date: it neither counts nor fails."""
    db.users.insert_many(
        [
            {"QueuedAt": [NOW - DAY, NOW - HOUR]},
            {"QueuedAt": NOW - timedelta(seconds=30)},
        ]
    )

    assert stats.enqueue_wait(db, NOW) == pytest.approx(30.0)


def test_enqueue_wait_is_zero_when_nobody_waits(db: Database[Document]) -> None:
    """With no eligible queued user the wait is 0."""
    db.users.insert_one({"QueuedAt": None})

    assert stats.enqueue_wait(db, NOW) == 0.0


def test_worker_time_counts_the_last_hour(db: Database[Document]) -> None:
    """Syncs since an hour ago count; valid TimeTaken values are summed."""
    db.sync_worker_stats.insert_many(
        [
            {"Timestamp": NOW - HOUR, "TimeTaken": 10.0},
            {"Timestamp": NOW - timedelta(minutes=5), "TimeTaken": 30},
            {"Timestamp": NOW, "TimeTaken": "slow"},
            {"Timestamp": NOW, "TimeTaken": float("nan")},
            {"Timestamp": NOW, "TimeTaken": -3.0},
            {"Timestamp": NOW, "TimeTaken": None},
            {"Timestamp": NOW},
            {"Timestamp": NOW - HOUR - TINY, "TimeTaken": 1000.0},
            {"Timestamp": "now", "TimeTaken": 1000.0},
            {"Timestamp": [NOW], "TimeTaken": 1000.0},
            {"Timestamp": NOW, "TimeTaken": [5.0]},
        ]
    )

    hour = stats.worker_time(db, NOW)

    assert hour.syncs == 8
    assert hour.time_used == 40.0
    assert hour.average_duration == 20.0


def test_worker_time_of_no_records_is_zero(db: Database[Document]) -> None:
    """With no worker records, count, time and mean are 0."""
    hour = stats.worker_time(db, NOW)

    assert (hour.syncs, hour.time_used, hour.average_duration) == (0, 0.0, 0.0)


def test_prune_deletes_records_before_the_hour(db: Database[Document]) -> None:
    """Records older than an hour go; the boundary and non-dates stay."""
    db.sync_worker_stats.insert_many(
        [
            {"Timestamp": NOW - HOUR - TINY},
            {"Timestamp": NOW - DAY},
            {"Timestamp": NOW - HOUR},
            {"Timestamp": "old"},
            {"Timestamp": NOW},
        ]
    )

    assert stats.prune_worker_records(db, NOW) == 2
    assert db.sync_worker_stats.count_documents({}) == 3


def test_count_users_applies_each_rule(db: Database[Document]) -> None:
    """Locked, pending and failing users follow their field rules."""
    db.users.insert_many(
        [
            {"SynchronizationWorker": 4242},
            {"SynchronizationWorker": 1},
            {"SynchronizationWorker": 0},
            {"SynchronizationWorker": "sync-3:977"},
            {"SynchronizationWorker": None},
            # Types no tool writes as a lock still hold one.
            {"SynchronizationWorker": {"pid": 5}},
            {"SynchronizationWorker": True},
            {"SynchronizationWorker": NOW},
            {"SynchronizationWorker": ObjectId()},
            {"SynchronizationWorker": float("nan")},
            {"SynchronizationWorker": [7, "sync-1"]},
            {"SynchronizationWorker": []},
            {"NextSynchronization": NOW - TINY},
            {"NextSynchronization": NOW},
            {"NextSynchronization": None},
            {"NextSynchronization": "2020-01-01"},
            {"NonblockingSyncErrorCount": 3},
            {"NonblockingSyncErrorCount": 2.5},
            {"NonblockingSyncErrorCount": 0},
            {"NonblockingSyncErrorCount": -4},
            {"NonblockingSyncErrorCount": "7"},
            {"NonblockingSyncErrorCount": True},
            {"NonblockingSyncErrorCount": float("nan")},
            {"NonblockingSyncErrorCount": float("inf")},
            {"NonblockingSyncErrorCount": None},
        ]
    )

    counts = stats.count_users(db, NOW)

    assert counts.locked == 10
    assert counts.pending == 1
    assert counts.error_users == 2
    assert counts.total_errors == 5.5


def test_count_users_reads_no_list_as_a_date_or_a_count(
    db: Database[Document],
) -> None:
    """A list of dates is not overdue and a list of numbers is no error count."""
    db.users.insert_many(
        [
            {"NextSynchronization": [NOW - DAY]},
            {"NextSynchronization": NOW - DAY},
            {"NonblockingSyncErrorCount": [5]},
            {"NonblockingSyncErrorCount": 2},
        ]
    )

    counts = stats.count_users(db, NOW)

    assert (counts.pending, counts.error_users, counts.total_errors) == (1, 1, 2)


def test_count_users_finds_dates_before_1970(db: Database[Document]) -> None:
    """An overdue date before the Unix epoch is still before now."""
    db.users.insert_one({"NextSynchronization": datetime(1960, 5, 1, tzinfo=UTC)})

    assert stats.count_users(db, NOW).pending == 1


def test_count_users_of_an_empty_collection(db: Database[Document]) -> None:
    """With no users every count is 0."""
    counts = stats.count_users(db, NOW)

    assert (counts.locked, counts.pending, counts.error_users) == (0, 0, 0)
    assert counts.total_errors == 0
