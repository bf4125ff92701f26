"""Distance synced, all time and recent, overall and per destination service.

The all-time figures are kept incrementally in syncstats' own
``syncstats_state`` collection, so a run reads only the activities created
since the previous one instead of the whole, ever-growing ``sync_stats``.

Each ``sync_stats`` document with an ObjectId ``_id`` falls on one side of a
*boundary* ObjectId built from ``now - margin``. Documents before it are
*settled*: their sums are stored. Documents at or after it are *fresh*: they
are summed again by every run. A run settles the documents between the
stored boundary and its own, re-sums the fresh ones, and stores the new
sums and boundary in one write of one document. The ``_id`` time is when
the document was created (a re-upload updates an old document and keeps its
``_id``), so it tells new activities from re-uploads.

The documents a run reads are found by the ``Timestamp`` index: every upload
sets ``Timestamp``, so a document created after the stored boundary has a
``Timestamp`` after it too, give or take the margin. Its range holds the new
activities and the recent re-uploads (which the ``_id`` test then drops), on
a replica set or a sharded cluster alike. A range on ``_id`` would need no
such rule, but the embedded server walks its whole ``_id`` index for one.

A full recount replaces the stored sums when there is no state, when the
last one is older than ``reconcile_every``, or when ``now`` is earlier than
the stored checkpoint. It absorbs what the increments cannot see: distances
changed in place, destinations added to old activities, deleted documents,
documents whose ``_id`` is not an ObjectId or whose ``Timestamp`` is not a
date, and documents that became visible, or whose ``Timestamp`` was set,
more than ``margin`` away from their ``_id`` time.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from bson import ObjectId
from bson.decimal128 import Decimal128
from pymongo import MongoClient, ReadPreference
from pymongo.collection import Collection
from pymongo.database import Database

from syncstats._mongo import Document
from syncstats.stats import VALID_AMOUNT

logger = logging.getLogger(__name__)

STATE_COLLECTION = "syncstats_state"
STATE_ID = "distance"
SCHEMA = 1
MARGIN = 3600.0
"""Seconds by which a new document may become visible after its ``_id`` time,
or carry a ``Timestamp`` before it, and still be counted by the increments:
clock skew between hosts, slow writes and a secondary's replication lag
together must stay below it."""

DEFAULT_RECONCILE_EVERY = 86400.0

ReadPreferenceName = Literal[
    "primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"
]
RecountReason = Literal["no state", "reconcile due", "clock went back"]

_READ_PREFERENCES = {
    "primary": ReadPreference.PRIMARY,
    "primaryPreferred": ReadPreference.PRIMARY_PREFERRED,
    "secondary": ReadPreference.SECONDARY,
    "secondaryPreferred": ReadPreference.SECONDARY_PREFERRED,
    "nearest": ReadPreference.NEAREST,
}

# One row per entry of DestinationServices, or one row for a document without
# any; each row knows its position, so each document can be counted once.
_INDEX = "syncstats_destination_index"
_UNWIND_DESTINATIONS = {
    "$unwind": {
        "path": "$DestinationServices",
        "includeArrayIndex": _INDEX,
        "preserveNullAndEmptyArrays": True,
    }
}
# The first row of a document: index 0, or null (sorted before 0) when it
# has no array of destinations.
_FIRST_ROW = {"$lte": [f"${_INDEX}", 0]}
# One for each document whose distance ``$sum`` adds: an array holding a
# valid number passes the filter, but ``$sum`` skips arrays.
_ONE = {"$cond": [{"$isArray": "$Distance"}, 0, 1]}


@dataclass(frozen=True)
class DestinationTotals:
    """Distance synced to one destination service, in metres.

    An activity's distance counts once for each entry of its
    ``DestinationServices`` that is a non-empty string.
    """

    total: float
    last_day: float
    last_hour: float


@dataclass(frozen=True)
class DistanceReport:
    """Distance synced in metres, and how the all-time figures were found.

    ``counted`` is the number of documents in ``total``. ``recount`` names
    why everything was recounted, or is ``None`` for an incremental run;
    ``drift`` is how far a scheduled recount moved the total from what the
    increments alone would have given. ``stored`` says whether the state
    was written (never in a dry run).
    """

    total: float
    last_day: float
    last_hour: float
    by_destination: dict[str, DestinationTotals]
    counted: int
    recount: RecountReason | None
    drift: float | None
    stored: bool


@dataclass(frozen=True)
class _Tally:
    """Sums over a set of documents: all of them, and per destination."""

    total: float = 0.0
    count: int = 0
    destinations: dict[str, float] = field(default_factory=dict)

    def __add__(self, other: _Tally) -> _Tally:
        services = sorted(self.destinations.keys() | other.destinations.keys())
        return _Tally(
            self.total + other.total,
            self.count + other.count,
            {
                name: self.destinations.get(name, 0.0)
                + other.destinations.get(name, 0.0)
                for name in services
            },
        )


@dataclass(frozen=True)
class _State:
    """What the last run stored: see docs/scale.md for the document."""

    run: str
    checkpoint: datetime
    reconciled: datetime
    boundary: ObjectId
    settled: _Tally


@dataclass(frozen=True)
class _Windows:
    """Sums of the last day and the last hour: all documents, per destination."""

    day: float = 0.0
    hour: float = 0.0
    day_by_service: dict[str, float] = field(default_factory=dict)
    hour_by_service: dict[str, float] = field(default_factory=dict)


def reading_database(
    client: MongoClient[Document], name: str, read_preference: ReadPreferenceName
) -> Database[Document]:
    """The database ``name`` read with ``read_preference``, for the heavy reads.

    Writes through it would still go to the primary, but syncstats writes
    through the primary-reading database only.
    """
    return client.get_database(name, read_preference=_READ_PREFERENCES[read_preference])


def compute_distance(
    db: Database[Document],
    now: datetime,
    *,
    reconcile_every: float = DEFAULT_RECONCILE_EVERY,
    margin: float = MARGIN,
    dry_run: bool = False,
    read_db: Database[Document] | None = None,
) -> DistanceReport:
    """Distance synced over all time, the last 24 hours and the last hour.

    ``now`` is aware UTC; windows hold the documents whose ``Timestamp`` is
    a date after ``now`` minus the window. Valid distances are finite
    numbers >= 0. ``reconcile_every`` and ``margin`` are seconds. The state
    is read from and written to ``db`` (on the primary); ``sync_stats`` is
    read through ``read_db`` when given, which may prefer secondaries.
    Between recounts the all-time figures drift by in-place changes to old
    documents, as the module docstring says.
    """
    read_db = db if read_db is None else read_db
    state = _load_state(db)
    reason = _recount_reason(state, now, reconcile_every)
    boundary = ObjectId.from_datetime(now - timedelta(seconds=margin))

    drift = None
    if reason is None and state is not None:
        boundary = max(boundary, state.boundary)
        settled, fresh = _advance(read_db, state, boundary, margin)
        reconciled = state.reconciled
    else:
        logger.info("recounting all distances: %s", reason)
        settled, fresh = _partition(read_db, [], boundary)
        reconciled = now
        if reason == "reconcile due" and state is not None:
            drift = _drift(read_db, state, boundary, margin, settled + fresh)
    windows = _windowed(read_db, now)

    stored = False
    if not dry_run:
        new_state = _State(uuid.uuid4().hex, now, reconciled, boundary, settled)
        stored = _store_state(db, state, new_state, margin)

    return _report(settled + fresh, windows, reason, drift, stored)


def _advance(
    read_db: Database[Document], state: _State, boundary: ObjectId, margin: float
) -> tuple[_Tally, _Tally]:
    """Settle the documents up to ``boundary``; sum the fresh ones after it."""
    uploaded_since = state.boundary.generation_time - timedelta(seconds=margin)
    scope: list[Document] = [
        # Alone in the first stage so that every planner sees an index range.
        {"$match": {"Timestamp": {"$gte": uploaded_since}}},
        {"$match": {"_id": {"$gte": state.boundary}}},
    ]
    newly_settled, fresh = _partition(read_db, scope, boundary)

    return state.settled + newly_settled, fresh


def _drift(
    read_db: Database[Document],
    state: _State,
    boundary: ObjectId,
    margin: float,
    recount: _Tally,
) -> float:
    """How far ``recount`` is from what the increments would have given."""
    settled, fresh = _advance(read_db, state, boundary, margin)
    drift = recount.total - (settled + fresh).total
    logger.info("recount moved the distance total by %.1f m", drift)

    return drift


def _recount_reason(
    state: _State | None, now: datetime, reconcile_every: float
) -> RecountReason | None:
    if state is None:
        return "no state"
    if now < state.checkpoint:
        # A run with a later clock stored the state; trusting it could hide
        # documents created before its boundary, so start again from here.
        return "clock went back"
    if (now - state.reconciled).total_seconds() >= reconcile_every:
        return "reconcile due"
    return None


def _partition(
    read_db: Database[Document], scope: list[Document], boundary: ObjectId
) -> tuple[_Tally, _Tally]:
    """Sum the documents in ``scope`` in one pass: the settled, then the fresh."""
    key = {"service": "$DestinationServices", "fresh": _is_fresh(boundary)}
    rows = read_db.sync_stats.aggregate(
        [
            *scope,
            {"$match": {"Distance": VALID_AMOUNT}},
            _UNWIND_DESTINATIONS,
            {"$group": {"_id": key, **_sums("all", True)}},
        ]
    )
    parts: dict[bool, _Tally] = {False: _Tally(), True: _Tally()}
    for row in rows:
        fresh = bool(row["_id"]["fresh"])
        service = row["_id"].get("service")
        parts[fresh] += _Tally(
            _number(row["all_documents"]),
            int(row["all_count"]),
            {service: _number(row["all_entries"])} if _is_service(service) else {},
        )

    return parts[False], parts[True]


def _windowed(read_db: Database[Document], now: datetime) -> _Windows:
    """Sums of the last 24 hours and the last hour, by the ``Timestamp`` index."""
    in_hour = {"$gt": ["$Timestamp", now - timedelta(hours=1)]}
    rows = read_db.sync_stats.aggregate(
        [
            # Alone in the first stage so that every planner sees an index range.
            {"$match": {"Timestamp": {"$gt": now - timedelta(hours=24)}}},
            {"$match": {"Distance": VALID_AMOUNT}},
            _UNWIND_DESTINATIONS,
            {
                "$group": {
                    "_id": "$DestinationServices",
                    **_sums("day", True),
                    **_sums("hour", in_hour),
                }
            },
        ]
    )
    windows = _Windows()
    for row in rows:
        service = row["_id"]
        windows = _Windows(
            windows.day + _number(row["day_documents"]),
            windows.hour + _number(row["hour_documents"]),
            windows.day_by_service | _entry(service, row["day_entries"]),
            windows.hour_by_service | _entry(service, row["hour_entries"]),
        )

    return windows


def _sums(name: str, when: object) -> Document:
    """``$group`` accumulators over the rows for which ``when`` holds.

    ``<name>_entries`` sums every row (one per destination), while
    ``<name>_documents`` and ``<name>_count`` take each document once.
    """
    first = {"$and": [when, _FIRST_ROW]}
    return {
        f"{name}_entries": {"$sum": {"$cond": [when, "$Distance", 0]}},
        f"{name}_documents": {"$sum": {"$cond": [first, "$Distance", 0]}},
        f"{name}_count": {"$sum": {"$cond": [first, _ONE, 0]}},
    }


def _is_fresh(boundary: ObjectId) -> Document:
    """Whether a document is fresh: an ObjectId ``_id`` at or after ``boundary``.

    The type test keeps other ``_id`` types settled: BSON orders dates after
    ObjectIds.
    """
    return {
        "$and": [
            {"$eq": [{"$type": "$_id"}, "objectId"]},
            {"$gte": ["$_id", boundary]},
        ]
    }


def _is_service(value: object) -> bool:
    """Whether a destination entry names a service: a non-empty string."""
    return isinstance(value, str) and value != ""


def _entry(service: object, value: object) -> dict[str, float]:
    return {str(service): _number(value)} if _is_service(service) else {}


def _number(value: object) -> float:
    """A server-side sum as a float: ``$sum`` yields int, double or Decimal128."""
    if isinstance(value, Decimal128):
        return float(value.to_decimal())
    if isinstance(value, int | float):
        return float(value)
    return 0.0


def _report(
    tally: _Tally,
    windows: _Windows,
    reason: RecountReason | None,
    drift: float | None,
    stored: bool,
) -> DistanceReport:
    services = tally.destinations.keys() | windows.day_by_service.keys()
    by_destination = {
        name: DestinationTotals(
            total=tally.destinations.get(name, 0.0),
            last_day=windows.day_by_service.get(name, 0.0),
            last_hour=windows.hour_by_service.get(name, 0.0),
        )
        for name in sorted(services)
    }

    return DistanceReport(
        total=tally.total,
        last_day=windows.day,
        last_hour=windows.hour,
        by_destination=by_destination,
        counted=tally.count,
        recount=reason,
        drift=drift,
        stored=stored,
    )


def _state_collection(db: Database[Document]) -> Collection[Document]:
    # Always the primary: the state must be read as the last run wrote it.
    return db.get_collection(STATE_COLLECTION, read_preference=ReadPreference.PRIMARY)


def _load_state(db: Database[Document]) -> _State | None:
    """The stored state; ``None`` when absent or not in a shape we know."""
    document = _state_collection(db).find_one({"_id": STATE_ID})
    if document is None:
        return None
    try:
        return _parse_state(document)
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("ignoring the stored distance state: %s", exc)
        return None


def _parse_state(document: Document) -> _State:
    if document.get("schema") != SCHEMA:
        raise ValueError(f"schema {document.get('schema')!r} is not {SCHEMA}")
    boundary = document["boundary"]
    if not isinstance(boundary, ObjectId):
        raise TypeError("boundary is not an ObjectId")

    return _State(
        run=str(document["run"]),
        checkpoint=_aware(document["checkpoint"]),
        reconciled=_aware(document["reconciled"]),
        boundary=boundary,
        settled=_Tally(
            float(document["settled"]["total"]),
            int(document["settled"]["count"]),
            {
                str(entry["service"]): float(entry["total"])
                for entry in document["destinations"]
            },
        ),
    )


def _aware(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{value!r} is not a date")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _state_document(state: _State, margin: float) -> Document:
    return {
        "_id": STATE_ID,
        "schema": SCHEMA,
        "run": state.run,
        "checkpoint": state.checkpoint,
        "reconciled": state.reconciled,
        "boundary": state.boundary,
        "margin": margin,
        "settled": {"total": state.settled.total, "count": state.settled.count},
        "destinations": [
            {"service": name, "total": total}
            for name, total in state.settled.destinations.items()
        ],
    }


def _store_state(
    db: Database[Document], previous: _State | None, state: _State, margin: float
) -> bool:
    """Replace the state in one write, unless another run replaced it first."""
    query: Document = {"_id": STATE_ID}
    if previous is not None:
        query["run"] = previous.run
    result = _state_collection(db).replace_one(
        query, _state_document(state, margin), upsert=previous is None
    )
    if result.matched_count == 0 and result.upserted_id is None:
        logger.warning("the distance state changed during this run; not stored")
        return False

    return True
