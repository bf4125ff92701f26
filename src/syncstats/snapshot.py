"""The snapshot a run stores, in Tapiriik's ``stats`` and ``sync_status_stats``.

Inside Python the figures have snake_case names; Tapiriik's field names
appear only in the two mappings below, at the storage edge.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import DESCENDING
from pymongo.database import Database

from syncstats._mongo import Document

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """Every figure of one run; ``None`` where its step failed or is unknown.

    Distances are metres, durations and waits seconds, ``now`` aware UTC.
    ``by_destination`` maps a destination service to its distance synced
    all time, in the last 24 hours and in the last hour.
    """

    now: datetime
    total_distance: float | None = None
    last_day_distance: float | None = None
    last_hour_distance: float | None = None
    enqueue_wait: float | None = None
    queue_wait: float | None = None
    queue_length: float | None = None
    queue_ack_rate: float | None = None
    syncs_last_hour: int | None = None
    sync_time_used: float | None = None
    average_sync_duration: float | None = None
    locked: int | None = None
    pending: int | None = None
    error_users: int | None = None
    total_errors: float | None = None
    by_destination: dict[str, tuple[float, float, float]] | None = None
    steps: dict[str, bool] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Snapshot:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


# Tapiriik's field name for each figure, per collection. Fields after the
# Tapiriik ones are syncstats' own additions, which Tapiriik ignores.
STATS_FIELDS = {
    "TotalDistanceSynced": "total_distance",
    "LastDayDistanceSynced": "last_day_distance",
    "LastHourDistanceSynced": "last_hour_distance",
    "TotalSyncTimeUsed": "sync_time_used",
    "AverageSyncDuration": "average_sync_duration",
    "LastHourSynchronizationCount": "syncs_last_hour",
    "EnqueueTime": "enqueue_wait",
    "QueueHeadTime": "queue_wait",
    "QueueLength": "queue_length",
    "QueueAckRate": "queue_ack_rate",
}
STATUS_FIELDS = {
    "Locked": "locked",
    "Pending": "pending",
    "ErrorUsers": "error_users",
    "TotalErrors": "total_errors",
    "SyncTimeUsed": "sync_time_used",
    "SyncEnqueueTime": "enqueue_wait",
    "SyncQueueHeadTime": "queue_wait",
    "TotalDistanceSynced": "total_distance",
    "LastDayDistanceSynced": "last_day_distance",
    "LastHourDistanceSynced": "last_hour_distance",
    "LastHourSynchronizationCount": "syncs_last_hour",
    "AverageSyncDuration": "average_sync_duration",
    "QueueLength": "queue_length",
    "QueueAckRate": "queue_ack_rate",
}

DESTINATION_FIELDS = (
    "TotalDistanceSynced",
    "LastDayDistanceSynced",
    "LastHourDistanceSynced",
)

# Figures a failed step leaves unknown but that must still be stored as null
# in ``stats``: Tapiriik shows users a wait from QueueHeadTime, and a stale
# one would mislead them.
ALWAYS_WRITTEN = frozenset({"queue_wait", "queue_length", "queue_ack_rate"})


def status_document(snapshot: Snapshot) -> Document:
    """The ``sync_status_stats`` document of a snapshot: the history entry."""
    document: Document = {"Timestamp": snapshot.now}
    document.update(
        (name, getattr(snapshot, attr)) for name, attr in STATUS_FIELDS.items()
    )
    _add_destinations(document, snapshot)
    document["Steps"] = dict(snapshot.steps)

    return document


def stats_document(snapshot: Snapshot) -> Document:
    """The fields a snapshot sets in ``stats``.

    A figure whose step failed is left out, so ``stats`` keeps its last
    good value, except the queue figures, which become null.
    """
    document: Document = {
        name: getattr(snapshot, attr)
        for name, attr in STATS_FIELDS.items()
        if getattr(snapshot, attr) is not None or attr in ALWAYS_WRITTEN
    }
    document["Updated"] = snapshot.now
    _add_destinations(document, snapshot)
    document["Steps"] = dict(snapshot.steps)

    return document


def _add_destinations(document: Document, snapshot: Snapshot) -> None:
    if snapshot.by_destination is None:
        return
    document["ByDestination"] = {
        service: dict(zip(DESTINATION_FIELDS, figures, strict=True))
        for service, figures in sorted(snapshot.by_destination.items())
    }


def store_snapshot(db: Database[Document], snapshot: Snapshot) -> None:
    """Append the history entry and leave exactly one ``stats`` document.

    Each document is written by one atomic operation. Duplicate ``stats``
    documents (Tapiriik reads the first with ``find_one()``) are removed
    after the newest is updated, so a crash in between leaves only whole
    documents, and the next run collapses them.
    """
    db.sync_status_stats.insert_one(status_document(snapshot))

    fields = stats_document(snapshot)
    keep = db.stats.find_one(
        {}, {"_id": 1, "Updated": 1}, sort=[("Updated", DESCENDING)]
    )
    if keep is None:
        db.stats.insert_one(fields)
        return
    updated = keep.get("Updated")
    if isinstance(updated, datetime) and _utc(updated) > snapshot.now:
        # A backdated run (--now in the past) joins the history; the site
        # keeps showing the later pass.
        logger.info("kept the stats of the later pass at %s", updated.isoformat())
    else:
        db.stats.update_one({"_id": keep["_id"]}, {"$set": fields})
    db.stats.delete_many({"_id": {"$ne": keep["_id"]}})


def _utc(instant: datetime) -> datetime:
    """``instant`` as aware UTC; a naive one is read as UTC, as Tapiriik writes."""
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant


def prune_history(db: Database[Document], now: datetime, days: float) -> int:
    """Delete history entries older than ``days`` before ``now``; 0 keeps all.

    Returns how many were deleted.
    """
    if days <= 0:
        return 0
    cutoff = now - timedelta(days=days)

    return db.sync_status_stats.delete_many(
        {"Timestamp": {"$lt": cutoff}}
    ).deleted_count


# What readers of the history need from each ``sync_status_stats`` entry.
HISTORY_PROJECTION = {
    "_id": 0,
    "Timestamp": 1,
    "Steps": 1,
    "ByDestination": 1,
} | dict.fromkeys(STATUS_FIELDS, 1)


def latest_snapshot(db: Database[Document]) -> Snapshot | None:
    """The newest history entry as a `Snapshot`; ``None`` when there is none."""
    document = latest_status(db)

    return None if document is None else snapshot_from_document(document)


def latest_status(
    db: Database[Document], as_of: datetime | None = None
) -> Document | None:
    """The newest ``sync_status_stats`` document, or ``None`` when there is none.

    The search starts at the ``stats`` document's ``Updated``, the instant of
    the last pass, so it reads one entry instead of sorting the history.
    With ``as_of``, the newest document dated at or before it.
    """
    history = db.sync_status_stats
    if as_of is not None:
        return history.find_one(
            {"Timestamp": {"$lte": as_of}},
            HISTORY_PROJECTION,
            sort=[("Timestamp", DESCENDING)],
        )
    stats = db.stats.find_one({}, {"Updated": 1}, sort=[("Updated", DESCENDING)])
    updated = stats.get("Updated") if stats else None
    document = None
    if isinstance(updated, datetime):
        document = history.find_one(
            {"Timestamp": {"$gte": updated}},
            HISTORY_PROJECTION,
            sort=[("Timestamp", DESCENDING)],
        )
    if document is None:
        document = history.find_one(
            {}, HISTORY_PROJECTION, sort=[("Timestamp", DESCENDING)]
        )

    return document


def snapshot_from_document(document: Document) -> Snapshot | None:
    """The `Snapshot` a ``sync_status_stats`` document holds.

    Figures that are not numbers become ``None``; a naive ``Timestamp`` is
    read as UTC. ``None`` when the document has no usable ``Timestamp``.
    """
    timestamp = document.get("Timestamp")
    if not isinstance(timestamp, datetime):
        return None
    timestamp = _utc(timestamp)
    figures = {
        attr: number_or_none(document.get(name)) for name, attr in STATUS_FIELDS.items()
    }
    steps = document.get("Steps")
    if not isinstance(steps, dict):
        steps = {}
    outcomes = {str(name): bool(ok) for name, ok in steps.items()}

    return Snapshot(timestamp, steps=outcomes).replace(**figures)


def number_or_none(value: object) -> float | None:
    """``value`` when it is a finite number (not a boolean), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None

    return value if math.isfinite(value) else None
