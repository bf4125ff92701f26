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

from bson import ObjectId
from pymongo.collection import Collection
from pymongo.database import Database

from syncstats._mongo import Document

ENQUEUE_SAMPLE = 10
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
"""The earliest date Python writes: the open lower end of a date range."""

# A finite number >= 0: NaN sorts below every number, and the infinities
# fall outside the upper bound; strings, booleans and null are other types.
VALID_AMOUNT: dict[str, Any] = {"$gte": 0, "$lt": float("inf")}

# Each non-null BSON type a lock holds, as a range an index serves. Both
# servers serve each range from the index; SecantusDB scans the collection
# for ``$ne: null`` and for ``$or``, so the present values are counted type
# by type. NaN sorts below the number range and is matched on its own.
_PRESENT: tuple[Any, ...] = (
    {"$gte": float("-inf")},
    float("nan"),
    {"$gte": ""},
    {"$gte": {}},
    {"$gte": ObjectId(b"\x00" * 12)},
    {"$gte": False, "$lte": True},
    {"$gte": EARLIEST},
)

_NOT_ARRAY: Document = {"$not": {"$type": "array"}}


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

    Counts the ten oldest ``QueuedAt`` dates at or before ``now`` among
    users that are unlocked and not pinned to a host.
    """
    # The index range stands alone in the first stage: some servers' planners
    # use an index only when the first $match holds nothing else.
    unlocked_queued = {
        "SynchronizationWorker": None,
        "QueuedAt": {"$gte": EARLIEST, "$lte": now},
    }
    pipeline: list[Document] = [
        {"$match": unlocked_queued},
        {
            "$match": {
                "SynchronizationHostRestriction": {"$exists": False},
                "QueuedAt": _NOT_ARRAY,
            }
        },
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
    collection = db.sync_worker_stats
    in_hour = _single("Timestamp", {"$gte": now - timedelta(hours=1)})
    syncs = _count(collection, in_hour)
    timed = {"$match": {"TimeTaken": VALID_AMOUNT | _NOT_ARRAY}}
    used, timed_count = _sum_and_count(collection, [*in_hour, timed], "TimeTaken")

    return WorkerTime(
        syncs=syncs,
        time_used=used,
        average_duration=used / timed_count if timed_count else 0.0,
    )


def prune_worker_records(db: Database[Document], now: datetime) -> int:
    """Delete worker records from before the last hour; return how many."""
    result = db.sync_worker_stats.delete_many(
        {"Timestamp": {"$lt": now - timedelta(hours=1)}}
    )
    return result.deleted_count


def count_users(db: Database[Document], now: datetime) -> UserCounts:
    """Count locked, pending and failing users and sum their errors.

    Locked: ``SynchronizationWorker`` present and not null (an empty array,
    or one of nulls only, holds no lock). Pending: ``NextSynchronization`` a
    date before ``now``. Failing: a finite ``NonblockingSyncErrorCount``
    above 0. Every query is an index range.
    """
    users = db.users
    failing = _single("NonblockingSyncErrorCount", {"$gt": 0, "$lt": float("inf")})
    total_errors, error_users = _sum_and_count(
        users, failing, "NonblockingSyncErrorCount"
    )
    overdue = _single("NextSynchronization", {"$gte": EARLIEST, "$lt": now})

    return UserCounts(
        locked=_count_locked(users),
        pending=_count(users, overdue),
        error_users=error_users,
        total_errors=total_errors,
    )


def _count_locked(users: Collection[Document]) -> int:
    """Users whose lock holds any value but null, each counted once."""
    field = "SynchronizationWorker"
    locked = 0
    for n, held in enumerate(_PRESENT):
        stages: list[Document] = [{"$match": {field: held}}]
        if n:
            # An array holding values of several types is counted by the
            # first range it falls in.
            earlier = [{field: before} for before in _PRESENT[:n]]
            stages.append({"$match": {"$nor": earlier}})
        locked += _count(users, stages)

    return locked


def _single(field: str, index_range: Document) -> list[Document]:
    """Stages matching ``index_range`` on ``field`` holding a single value.

    Query operators look into arrays; the second stage keeps a list of
    dates or numbers from counting as one.
    """
    return [
        {"$match": {field: index_range}},
        {"$match": {field: _NOT_ARRAY}},
    ]


def _count(collection: Collection[Document], stages: list[Document]) -> int:
    """The number of documents the ``stages`` let through, on the server."""
    pipeline = [*stages, {"$group": {"_id": None, "n": {"$sum": 1}}}]
    rows = list(collection.aggregate(pipeline))

    return int(rows[0]["n"]) if rows else 0


def _sum_and_count(
    collection: Collection[Document], stages: list[Document], field: str
) -> tuple[float, int]:
    """Sum ``field`` and count the documents the ``stages`` let through."""
    pipeline = [
        *stages,
        {"$group": {"_id": None, "total": {"$sum": f"${field}"}, "n": {"$sum": 1}}},
    ]
    rows = list(collection.aggregate(pipeline))
    if not rows:
        return 0.0, 0

    return float(str(rows[0]["total"])), int(rows[0]["n"])
