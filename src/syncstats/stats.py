"""The statistics of one run, each computed on the server by one helper.

Every function takes the main database and the run's single ``now`` (aware
UTC). Values that Tapiriik or other tools stored with the wrong type are
skipped by MongoDB's type bracketing: a range on numbers matches numbers
only, a range on dates matches dates only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

from syncstats._mongo import Document

ENQUEUE_SAMPLE = 10
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A finite number >= 0: NaN sorts below every number, and the infinities
# fall outside the upper bound; strings, booleans and null are other types.
VALID_AMOUNT: dict[str, Any] = {"$gte": 0, "$lt": float("inf")}


@dataclass(frozen=True)
class WorkerTime:
    """Worker records of the last hour: syncs, seconds used, mean duration."""

    syncs: int
    time_used: float
    average_duration: float


@dataclass(frozen=True)
class UserCounts:
    """Users locked, overdue, failing, and their non-blocking errors."""

    locked: int
    pending: int
    error_users: int
    total_errors: float


def enqueue_wait(db: Database[Document], now: datetime) -> float:
    """Mean wait in seconds of the longest-queued users; 0 when none waits.

    Counts the ten oldest ``QueuedAt`` at or before ``now`` (and after the
    Unix epoch) among users that are unlocked and not pinned to a host.
    """
    # The index range stands alone in the first stage: some servers' planners
    # use an index only when the first $match holds nothing else.
    unlocked_queued = {
        "SynchronizationWorker": None,
        "QueuedAt": {"$gte": EPOCH, "$lte": now},
    }
    pipeline: list[Document] = [
        {"$match": unlocked_queued},
        {"$match": {"SynchronizationHostRestriction": {"$exists": False}}},
        {"$sort": {"QueuedAt": 1}},
        {"$limit": ENQUEUE_SAMPLE},
        {"$project": {"_id": 0, "QueuedAt": 1}},
    ]
    rows = db.users.aggregate(pipeline)
    waits = [(now - user["QueuedAt"]).total_seconds() for user in rows]

    return sum(waits) / len(waits) if waits else 0.0


def worker_time(db: Database[Document], now: datetime) -> WorkerTime:
    """Syncs of the last hour from ``sync_worker_stats``.

    A record counts when its ``Timestamp`` is a date at or after one hour
    before ``now`` (later dates count too: they are what the hourly prune
    leaves). ``TimeTaken`` counts when it is a finite number >= 0.
    """
    in_hour = {"Timestamp": {"$gte": now - timedelta(hours=1)}}
    collection = db.sync_worker_stats
    syncs = collection.count_documents(in_hour)
    valid = {**in_hour, "TimeTaken": VALID_AMOUNT}
    used, timed = _sum_and_count(collection, valid, "TimeTaken")

    return WorkerTime(
        syncs=syncs, time_used=used, average_duration=used / timed if timed else 0.0
    )


def prune_worker_records(db: Database[Document], now: datetime) -> int:
    """Delete worker records from before the last hour; return how many."""
    result = db.sync_worker_stats.delete_many(
        {"Timestamp": {"$lt": now - timedelta(hours=1)}}
    )
    return result.deleted_count


def count_users(db: Database[Document], now: datetime) -> UserCounts:
    """Count locked, pending and failing users and sum their errors.

    Locked: ``SynchronizationWorker`` a number (a PID) or a string. Pending:
    ``NextSynchronization`` a date before ``now``. Failing: a finite
    ``NonblockingSyncErrorCount`` above 0. Each is one index range; a lock
    of another type (a document, a boolean), which no tool writes, is not
    counted: ``$ne: null`` would count it but scans the whole index.
    """
    users = db.users
    failing = {"NonblockingSyncErrorCount": {"$gt": 0, "$lt": float("inf")}}
    total_errors, error_users = _sum_and_count(
        users, failing, "NonblockingSyncErrorCount"
    )
    locked = sum(
        users.count_documents({"SynchronizationWorker": held})
        for held in ({"$gte": float("-inf")}, {"$gte": ""})
    )
    overdue = {"NextSynchronization": {"$gte": EPOCH, "$lt": now}}

    return UserCounts(
        locked=locked,
        pending=users.count_documents(overdue),
        error_users=error_users,
        total_errors=total_errors,
    )


def _sum_and_count(collection: Any, query: Document, field: str) -> tuple[float, int]:
    """Sum ``field`` and count documents over ``query``, on the server."""
    pipeline = [
        {"$match": query},
        {"$group": {"_id": None, "total": {"$sum": f"${field}"}, "n": {"$sum": 1}}},
    ]
    rows = list(collection.aggregate(pipeline))
    if not rows:
        return 0.0, 0

    return float(str(rows[0]["total"])), int(rows[0]["n"])
