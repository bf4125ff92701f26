"""The indexes that syncstats' queries and the rate limiter rely on."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pymongo.database import Database
from pymongo.errors import PyMongoError

from syncstats import ratelimit
from syncstats._mongo import Databases, Document

logger = logging.getLogger(__name__)

Role = Literal["main", "ratelimit"]
State = Literal["present", "missing", "created", "failed"]
Keys = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class RequiredIndex:
    """An index a query relies on: where, on which keys, and why.

    ``role`` names the database: ``main`` (setting ``database``) or
    ``ratelimit`` (setting ``ratelimit_database``). ``used_by`` names the
    figures that read it, ``why`` says what it saves.
    """

    role: Role
    collection: str
    keys: Keys
    used_by: str
    why: str
    unique: bool = False
    name: str | None = None

    @property
    def label(self) -> str:
        """The key pattern as people write it: ``{SynchronizationWorker: 1, ...}``."""
        return "{" + ", ".join(f"{key}: {order}" for key, order in self.keys) + "}"


@dataclass(frozen=True)
class IndexStatus:
    """A required index and what the server holds for it.

    ``name`` is the existing (or created) index that serves it; ``error``
    the server's one-line reason when creating it failed.
    """

    index: RequiredIndex
    database: str
    state: State
    name: str | None = None
    error: str | None = None


REQUIRED_INDEXES: tuple[RequiredIndex, ...] = (
    RequiredIndex(
        "main",
        "sync_stats",
        (("Timestamp", 1),),
        "distance: all time, day, hour",
        "each run reads the recent uploads only, for the all-time increments and "
        "the last-day and last-hour sums, instead of every activity",
    ),
    RequiredIndex(
        "main",
        "users",
        (("SynchronizationWorker", 1), ("QueuedAt", 1)),
        "locked users, enqueue wait",
        "locked users are the non-null part of it; the enqueue wait reads "
        "unlocked queued users in QueuedAt order from it. One index for both "
        "keeps Tapiriik's writes to users cheap",
    ),
    RequiredIndex(
        "main",
        "users",
        (("NextSynchronization", 1),),
        "pending users",
        "pending users are the range before now",
    ),
    RequiredIndex(
        "main",
        "users",
        (("NonblockingSyncErrorCount", 1),),
        "users with errors",
        "users with errors and their error total read only the users above 0",
    ),
    RequiredIndex(
        "main",
        "sync_worker_stats",
        (("Timestamp", 1),),
        "syncs, worker time",
        "the last hour's syncs and the prune of older records read a Timestamp range",
    ),
    RequiredIndex(
        "main",
        "sync_status_stats",
        (("Timestamp", 1),),
        "history graphs, prune",
        "the history graphs read the last day and the history prune deletes "
        "the oldest, by Timestamp",
    ),
    *(
        RequiredIndex(
            "ratelimit",
            spec.collection,
            spec.keys,
            "rate limiter",
            "a worker's window lookup is a point read, and the unique key stops "
            "racing workers from opening one window twice",
            unique=spec.unique,
            name=spec.name,
        )
        for spec in ratelimit.REQUIRED_INDEXES
    ),
)
"""Every index syncstats relies on, beyond the ``_id`` index of each collection."""


def check_indexes(
    dbs: Databases, required: Iterable[RequiredIndex] = REQUIRED_INDEXES
) -> list[IndexStatus]:
    """Each required index with ``present`` or ``missing``, in order.

    An existing index serves a required one when its key pattern starts
    with the required keys (or their mirror, every direction reversed),
    and it is neither partial, sparse nor hidden; a unique requirement
    needs a unique index on exactly those keys. Names are not compared.
    Raises pymongo's errors when the indexes cannot be listed.
    """
    listed: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    statuses = []
    for index in required:
        db = _database(dbs, index.role)
        key = (db.name, index.collection)
        if key not in listed:
            listed[key] = list(db[index.collection].list_indexes())
        name = _serving(index, listed[key])
        state: State = "missing" if name is None else "present"
        statuses.append(IndexStatus(index, db.name, state, name))

    return statuses


def missing_indexes(dbs: Databases) -> list[IndexStatus]:
    """The required indexes the server lacks."""
    return [status for status in check_indexes(dbs) if status.state == "missing"]


def apply_indexes(dbs: Databases) -> list[IndexStatus]:
    """Create the missing indexes; return every index with its new state.

    MongoDB 4.2 and later build without blocking; the old ``background``
    option is not passed, since some servers then see the same index asked
    for without it as a conflict. A refused index is reported as ``failed``
    and the others are still built.
    Idempotent: present indexes are left alone.
    """
    return [
        _create(dbs, status) if status.state == "missing" else status
        for status in check_indexes(dbs)
    ]


def warn_missing(dbs: Databases) -> list[IndexStatus]:
    """Log one warning per missing index and return them; never raise.

    A server that refuses to list indexes costs one warning too.
    """
    try:
        missing = missing_indexes(dbs)
    except PyMongoError as exc:
        logger.warning("could not check the indexes: %s", _first_line(exc))
        return []
    for status in missing:
        logger.warning(
            "missing index %s on %s.%s (%s): its queries scan the collection "
            "until `syncstats indexes --apply` creates it",
            status.index.label,
            status.database,
            status.index.collection,
            status.index.why,
        )

    return missing


def _database(dbs: Databases, role: Role) -> Database[Document]:
    return dbs.main if role == "main" else dbs.ratelimit


def _serving(index: RequiredIndex, existing: Sequence[Mapping[str, Any]]) -> str | None:
    """The name of the first existing index that serves ``index``."""
    wanted = list(index.keys)
    mirrored = [(key, -order) for key, order in index.keys]
    for info in existing:
        if any(info.get(option) for option in ("partialFilterExpression", "sparse")):
            continue
        if info.get("hidden"):
            continue
        keys = [(key, _order(value)) for key, value in info["key"].items()]
        if index.unique:
            serves = bool(info.get("unique")) and keys in (wanted, mirrored)
        else:
            serves = keys[: len(wanted)] in (wanted, mirrored)
        if serves:
            return str(info["name"])

    return None


def _order(value: Any) -> Any:
    """A key's direction as an int; special kinds (``"hashed"``) unchanged."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return value


def _create(dbs: Databases, status: IndexStatus) -> IndexStatus:
    index = status.index
    options: dict[str, Any] = {}
    if index.unique:
        options["unique"] = True
    if index.name is not None:
        options["name"] = index.name
    collection = _database(dbs, index.role)[index.collection]
    try:
        name = collection.create_index(list(index.keys), **options)
    except PyMongoError as exc:
        logger.warning(
            "could not create index %s on %s.%s: %s",
            index.label,
            status.database,
            index.collection,
            _first_line(exc),
        )
        return replace(status, state="failed", error=_first_line(exc))
    logger.info("created index %s on %s.%s", name, status.database, index.collection)

    return replace(status, state="created", name=name)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
