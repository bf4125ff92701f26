"""Tapiriik's ``common_sync_errors``: every connection's errors, grouped.

The parsing and the grouping run on the server, in one aggregation pipeline
over ``connections``: SecantusDB and MongoDB both run every operator it uses
(``$split``, ``$substrCP``, ``$arrayElemAt``, ``$rtrim``, ``$switch``,
``$type``, ``$addToSet``), so no message crosses the network and only the
groups come back. Map-reduce, which Tapiriik used, is gone from pymongo 4.

The groups are written to a uniquely named collection that is then renamed
over ``common_sync_errors`` with ``dropTarget``. MongoDB renames an unsharded
collection atomically, and this one is tiny and never sharded, so readers see
the old groups or the new ones, never a part. SecantusDB, the embedded
default, moves a renamed collection's documents one by one: a reader there
can catch part of the new set for the moment the rename takes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from syncstats._mongo import Document

__all__ = [
    "COLLECTION",
    "LOCALS_MARKER",
    "STEM_LENGTH",
    "ErrorGroup",
    "ErrorGroupsReport",
    "read_common_errors",
    "rebuild_common_errors",
]

logger = logging.getLogger(__name__)

COLLECTION = "common_sync_errors"
"""The collection of the main database that holds one document per group."""

LOCALS_MARKER = "\n\nLOCALS:"
"""What follows an error's naming line: a blank line, then Tapiriik's locals."""

STEM_LENGTH = 60
"""How many characters of the naming line, counted in code points, group errors."""

BUILD_PREFIX = f"{COLLECTION}_build_"
"""The start of the name of the collection a rebuild fills before renaming it."""


@dataclass(frozen=True)
class ErrorGroup:
    """Error records of one service whose naming lines share their stem.

    ``service`` is None for connections without a string ``Service``.
    ``recency`` is the summed age in seconds, at the run's ``now``, of the
    ``ts_count`` records that carry a date; ``recency_avg`` is its mean, None
    when no record carries one. ``connections`` holds each affected
    connection's ``_id`` once, in id order; ``exemplar`` is the group's first
    naming line in code-point order.
    """

    service: str | None
    stem: str
    count: int
    ts_count: int
    recency: float
    recency_avg: float | None
    connections: list[Any]
    exemplar: str

    def document(self) -> Document:
        """The group as Tapiriik stores it: ``{_id: {service, stem}, value}``."""
        return {
            "_id": {"service": self.service, "stem": self.stem},
            "value": {
                "count": self.count,
                "ts_count": self.ts_count,
                "recency": self.recency,
                "recency_avg": self.recency_avg,
                "connections": self.connections,
                "exemplar": self.exemplar,
            },
        }

    def as_dict(self) -> Document:
        """The group as plain JSON-ready values; connection ids become strings."""
        return {
            "service": self.service,
            "stem": self.stem,
            "count": self.count,
            "ts_count": self.ts_count,
            "recency": self.recency,
            "recency_avg": self.recency_avg,
            "connections": [_plain(value) for value in self.connections],
            "exemplar": self.exemplar,
        }


@dataclass(frozen=True)
class ErrorGroupsReport:
    """What `rebuild_common_errors` found, and stored unless it was a dry run.

    ``records`` counts every error record read, ``skipped`` those without a
    naming line; ``groups`` come most errors first.
    """

    groups: list[ErrorGroup] = field(default_factory=list)
    records: int = 0
    skipped: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        """One line: records, groups and skipped records; whether it was a dry run."""
        suffix = " (dry run)" if self.dry_run else ""
        return (
            f"{self.records} records in {len(self.groups)} groups, "
            f"{self.skipped} skipped{suffix}"
        )

    def as_dict(self) -> Document:
        """The report as plain JSON-ready values."""
        return {
            "records": self.records,
            "skipped": self.skipped,
            "dry_run": self.dry_run,
            "groups": [group.as_dict() for group in self.groups],
        }

    def __str__(self) -> str:
        return f"common sync errors: {self.summary()}"


def rebuild_common_errors(
    db: Database[Document], now: datetime, *, dry_run: bool = False
) -> ErrorGroupsReport:
    """Group every connection's ``SyncErrors`` and replace ``common_sync_errors``.

    An error's naming line is the last line of its ``Message`` before the last
    ``LOCALS_MARKER``, without trailing carriage returns: Tapiriik appends one
    locals section, at the end, whose values are reprs on one line each, while
    the exception text at the start may hold anything. Records whose
    ``Message`` is not a string, lacks the marker or leaves that line empty
    are skipped and counted, as is a ``SyncErrors`` that is present but not an
    array. A ``Timestamp`` counts when it is a date; ages are taken at
    ``now`` (aware UTC). With ``dry_run`` nothing is written. The previous
    groups stay in place when the rebuild fails.

    Limits: one group, with its connection ids, must fit in a 16 MB document
    (about half a million connections); a process killed mid-rebuild leaves
    its ``BUILD_PREFIX`` collection behind; the next rebuild drops it.
    """
    rows = db.connections.aggregate(_pipeline(now), allowDiskUse=True)
    report = _report(rows, dry_run)

    if not dry_run:
        _replace(db, [group.document() for group in report.groups])
    logger.debug("%s", report)

    return report


def read_common_errors(db: Database[Document]) -> list[Document]:
    """The stored groups as Tapiriik shapes them, most errors first.

    Groups with the same count come by service, then by stem.
    """
    order = [("value.count", -1), ("_id.service", 1), ("_id.stem", 1)]
    return list(db[COLLECTION].find().sort(order))


def _is(expression: Any, bson_type: str) -> Document:
    return {"$eq": [{"$type": expression}, bson_type]}


def _let(name: str, value: Any, body: Any) -> Document:
    return {"$let": {"vars": {name: value}, "in": body}}


# Service ids are strings. Anything else groups under null, and so does a
# missing Service, which would otherwise drop the key from the group's _id.
_SERVICE = {"$cond": [_is("$Service", "string"), "$Service", None]}

# Only an array holds error records. Anything else that is not null stands
# for one unreadable record, so that it is counted as skipped.
_RECORDS = {
    "$switch": {
        "branches": [
            {"case": {"$isArray": "$SyncErrors"}, "then": "$SyncErrors"},
            {"case": _is("$SyncErrors", "null"), "then": []},
        ],
        "default": [None],
    }
}

# When the piece before the last marker holds no newline, the line started
# inside an earlier marker, just after its "\n\n".
_LAST_LINE = _let(
    "before",
    {"$arrayElemAt": ["$$parts", -2]},
    _let(
        "lines",
        {"$split": ["$$before", "\n"]},
        {
            "$cond": [
                {
                    "$or": [
                        {"$eq": [{"$size": "$$parts"}, 2]},
                        {"$gt": [{"$size": "$$lines"}, 1]},
                    ]
                },
                {"$arrayElemAt": ["$$lines", -1]},
                {"$concat": ["LOCALS:", "$$before"]},
            ]
        },
    ),
)

_NAMING_LINE = _let(
    "parts",
    {
        "$cond": [
            _is("$record.Message", "string"),
            {"$split": ["$record.Message", LOCALS_MARKER]},
            [],
        ]
    },
    {
        "$cond": [
            {"$lt": [{"$size": "$$parts"}, 2]},
            None,
            _let(
                "line",
                {"$rtrim": {"input": _LAST_LINE, "chars": "\r"}},
                {"$cond": [{"$eq": ["$$line", ""]}, None, "$$line"]},
            ),
        ]
    },
)


def _pipeline(now: datetime) -> list[Document]:
    """Unwind the error records, name each, and group them by service and stem."""
    return [
        {"$match": {"SyncErrors": {"$exists": True}}},
        {"$project": {"service": _SERVICE, "record": _RECORDS}},
        {"$unwind": "$record"},
        {"$project": {"service": 1, "line": _NAMING_LINE, "age": _age(now)}},
        {
            "$project": {
                "service": 1,
                "line": 1,
                "age": 1,
                "stem": _unless_unnamed({"$substrCP": ["$line", 0, STEM_LENGTH]}),
                "connection": _unless_unnamed("$_id", otherwise="$$REMOVE"),
            }
        },
        {
            "$group": {
                "_id": {"service": "$service", "stem": "$stem"},
                "count": {"$sum": 1},
                "ts_count": {"$sum": {"$cond": [{"$eq": ["$age", None]}, 0, 1]}},
                "recency": {"$sum": "$age"},
                "connections": {"$addToSet": "$connection"},
                "exemplar": {"$min": "$line"},
            }
        },
        {"$sort": {"count": -1, "_id.service": 1, "_id.stem": 1}},
    ]


def _unless_unnamed(value: Any, otherwise: Any = None) -> Document:
    return {"$cond": [{"$eq": ["$line", None]}, otherwise, value]}


def _age(now: datetime) -> Document:
    """Seconds from the record's ``Timestamp`` to ``now``; null without a date."""
    elapsed = {"$subtract": [now, "$record.Timestamp"]}
    return {
        "$cond": [_is("$record.Timestamp", "date"), {"$divide": [elapsed, 1000]}, None]
    }


def _report(rows: Iterable[Document], dry_run: bool) -> ErrorGroupsReport:
    """Split the pipeline's rows into named groups and the skipped count."""
    groups: list[ErrorGroup] = []
    records = skipped = 0
    for row in rows:
        records += row["count"]
        if row["_id"]["stem"] is None:
            skipped += row["count"]
        else:
            groups.append(_group(row))

    return ErrorGroupsReport(groups, records, skipped, dry_run)


def _group(row: Document) -> ErrorGroup:
    ts_count = int(row["ts_count"])
    recency = float(row["recency"])
    return ErrorGroup(
        service=row["_id"]["service"],
        stem=row["_id"]["stem"],
        count=int(row["count"]),
        ts_count=ts_count,
        recency=recency,
        recency_avg=recency / ts_count if ts_count else None,
        connections=sorted(row["connections"], key=_id_order),
        exemplar=row["exemplar"],
    )


def _replace(db: Database[Document], documents: list[Document]) -> None:
    """Fill a new collection with ``documents``, then rename it over the old one.

    An empty list leaves an empty ``common_sync_errors``. On failure the new
    collection is dropped and the old one is left as it was.
    """
    _drop_leftovers(db)
    build = db[f"{BUILD_PREFIX}{uuid.uuid4().hex}"]
    try:
        db.create_collection(build.name)
        if documents:
            build.insert_many(documents)
        build.rename(COLLECTION, dropTarget=True)
    except BaseException:
        _drop_build(build)
        raise


def _drop_leftovers(db: Database[Document]) -> None:
    """Drop build collections a killed rebuild left behind.

    Runs hold the jobs lease, so no other rebuild can be filling one now.
    """
    for name in db.list_collection_names():
        if name.startswith(BUILD_PREFIX):
            logger.info("dropping %s, left behind by an interrupted rebuild", name)
            db.drop_collection(name)


def _drop_build(build: Collection[Document]) -> None:
    try:
        build.drop()
    except PyMongoError as exc:
        logger.warning("could not drop %s after a failed rebuild: %s", build.name, exc)


def _id_order(value: Any) -> tuple[str, str]:
    """Order ids stably: $addToSet promises none, and ids may mix types."""
    return type(value).__name__, str(value)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, ObjectId) else value
