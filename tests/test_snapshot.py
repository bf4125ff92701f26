"""Tests of how a snapshot is stored in Tapiriik's collections."""

from __future__ import annotations

from datetime import timedelta

from pymongo.database import Database

from syncstats._mongo import Document
from syncstats.snapshot import Snapshot, prune_history, store_snapshot
from tests.conftest import NOW

HOUR = timedelta(hours=1)

FULL = Snapshot(
    NOW,
    total_distance=5000.0,
    last_day_distance=400.0,
    last_hour_distance=30.0,
    enqueue_wait=12.5,
    queue_wait=120.0,
    queue_length=120.0,
    queue_ack_rate=1.0,
    syncs_last_hour=6,
    sync_time_used=90.0,
    average_sync_duration=15.0,
    locked=2,
    pending=3,
    error_users=4,
    total_errors=9.0,
    steps={"distance": True, "queue": True},
)


def test_store_appends_history_with_tapiriik_names(db: Database[Document]) -> None:
    """Each store appends one sync_status_stats document with Tapiriik's fields."""
    store_snapshot(db, FULL)
    store_snapshot(db, FULL.replace(now=NOW + timedelta(minutes=10), locked=5))

    history = list(db.sync_status_stats.find({}, {"_id": 0}).sort("Timestamp", 1))

    assert len(history) == 2
    first = history[0]
    assert first["Timestamp"] == NOW
    assert (first["Locked"], first["Pending"], first["ErrorUsers"]) == (2, 3, 4)
    assert first["TotalErrors"] == 9.0
    assert first["SyncTimeUsed"] == 90.0
    assert first["SyncEnqueueTime"] == 12.5
    assert first["SyncQueueHeadTime"] == 120.0
    assert history[1]["Locked"] == 5


def test_store_leaves_exactly_one_stats_document(db: Database[Document]) -> None:
    """Duplicate stats documents collapse into one holding the new values."""
    db.stats.insert_many(
        [
            {"TotalDistanceSynced": 1.0, "Updated": NOW - timedelta(days=n)}
            for n in (1, 2, 3)
        ]
    )

    store_snapshot(db, FULL)

    documents = list(db.stats.find({}, {"_id": 0, "Steps": 0}))
    assert documents == [
        {
            "TotalDistanceSynced": 5000.0,
            "LastDayDistanceSynced": 400.0,
            "LastHourDistanceSynced": 30.0,
            "TotalSyncTimeUsed": 90.0,
            "AverageSyncDuration": 15.0,
            "LastHourSynchronizationCount": 6,
            "EnqueueTime": 12.5,
            "QueueHeadTime": 120.0,
            "QueueLength": 120.0,
            "QueueAckRate": 1.0,
            "Updated": NOW,
        }
    ]


def test_backdated_store_joins_the_history_and_leaves_later_stats(
    db: Database[Document],
) -> None:
    """A run dated before the live stats adds its entry; the site shows the later."""
    store_snapshot(db, FULL)
    db.stats.insert_one({"TotalDistanceSynced": 1.0, "Updated": NOW - HOUR})
    earlier = NOW - timedelta(hours=2)

    store_snapshot(db, Snapshot(earlier, total_distance=7.0, steps={}))

    [stats] = db.stats.find({})
    assert (stats["Updated"], stats["TotalDistanceSynced"]) == (NOW, 5000.0)
    history = db.sync_status_stats.find({}, sort=[("Timestamp", 1)])
    assert [(d["Timestamp"], d["TotalDistanceSynced"]) for d in history] == [
        (earlier, 7.0),
        (NOW, 5000.0),
    ]


def test_failed_step_keeps_last_good_stats_but_nulls_queue(
    db: Database[Document],
) -> None:
    """A failed step keeps its old stats values; the queue wait becomes null."""
    store_snapshot(db, FULL)
    later = NOW + timedelta(minutes=10)

    store_snapshot(db, Snapshot(later, locked=1, steps={"queue": False}))

    stats = db.stats.find_one({})
    assert stats is not None
    assert stats["TotalDistanceSynced"] == 5000.0
    assert stats["QueueHeadTime"] is None
    assert stats["Updated"] == later
    assert stats["Steps"] == {"queue": False}
    latest = db.sync_status_stats.find_one({"Timestamp": later})
    assert latest is not None
    assert latest["SyncQueueHeadTime"] is None
    assert latest["Pending"] is None
    assert latest["Locked"] == 1


def test_prune_history_keeps_the_last_days(db: Database[Document]) -> None:
    """Entries older than history_days go; the boundary and newer stay."""
    db.sync_status_stats.insert_many(
        [{"Timestamp": NOW - timedelta(days=d)} for d in (0, 89, 90, 90.001, 400)]
        + [{"Timestamp": "old"}]
    )

    assert prune_history(db, NOW, 90) == 2
    assert db.sync_status_stats.count_documents({}) == 4


def test_prune_history_zero_keeps_everything(db: Database[Document]) -> None:
    """history_days = 0 keeps every entry."""
    db.sync_status_stats.insert_one({"Timestamp": NOW - timedelta(days=4000)})

    assert prune_history(db, NOW, 0) == 0
    assert db.sync_status_stats.count_documents({}) == 1
