"""Provider rate limits shared by every worker through Tapiriik's ``limits``."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import ValidationError
from pymongo import IndexModel, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from syncstats._mongo import describe_error
from syncstats._windows import window_bounds
from syncstats.errors import (
    ConfigError,
    DatabaseUnavailable,
    HeaderFormatError,
    RateLimitError,
    RateLimitExceeded,
)
from syncstats.settings import RateWindow, Settings

__all__ = [
    "COLLECTION",
    "HEADER_WINDOWS",
    "REQUIRED_INDEXES",
    "HeaderFormatError",
    "IndexSpec",
    "RateLimitExceeded",
    "RateLimiter",
    "RefreshReport",
    "WindowState",
    "ensure_indexes",
    "refresh_windows",
]

logger = logging.getLogger(__name__)

Document = dict[str, Any]
Limits = Mapping[str, Iterable[tuple[float, int]]]
Observation = str | Mapping[float, int] | None

COLLECTION = "limits"
"""The collection of the rate-limit database that holds one document per window."""

HEADER_WINDOWS = (900.0, 86400.0)
"""The windows, in seconds, of the values in Strava-style ``X-RateLimit-*``
headers: ``"quarter-hour,daily"``."""

_DUPLICATE_KEY = 11000
_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class IndexSpec:
    """An index of the rate-limit database that the limiter relies on."""

    collection: str
    name: str
    keys: tuple[tuple[str, int], ...]
    unique: bool = False

    def model(self) -> IndexModel:
        """The pymongo description of this index, for ``create_indexes``."""
        return IndexModel(list(self.keys), name=self.name, unique=self.unique)


REQUIRED_INDEXES = (
    IndexSpec(
        COLLECTION,
        "Key_Duration_Expires",
        (("Key", 1), ("Duration", 1), ("Expires", 1)),
        unique=True,
    ),
)
"""Indexes of the rate-limit database: a window's lookup is a point read, and a
window cannot be opened twice by workers racing to open it."""


@dataclass(frozen=True)
class WindowState:
    """The current calendar window of one limit and the calls spent in it.

    ``max`` is the lower of the configured maximum and the one stored in the
    window (a provider may have lowered it); ``resets_at`` is aware UTC.
    """

    key: str
    seconds: float
    max: int
    used: int
    resets_at: datetime

    @property
    def remaining(self) -> int:
        """Calls left in the window; 0 when it is full."""
        return max(0, self.max - self.used)

    @property
    def full(self) -> bool:
        """Whether the window refuses calls until it resets."""
        return self.used >= self.max


@dataclass(frozen=True)
class RefreshReport:
    """What `refresh_windows` did, or would do in a dry run, in windows."""

    removed: int = 0
    collapsed: int = 0
    created: int = 0
    updated: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        """One line: the count of each kind of change, and whether it was a dry run."""
        suffix = " (dry run)" if self.dry_run else ""
        return (
            f"{self.removed} removed, {self.collapsed} collapsed, "
            f"{self.created} created, {self.updated} updated{suffix}"
        )

    def as_dict(self) -> dict[str, int | bool]:
        """The report as plain JSON-ready values."""
        return asdict(self)

    def __str__(self) -> str:
        return f"rate-limit windows: {self.summary()}"


class RateLimiter:
    """Spend provider calls against budgets shared by every worker.

    ``database`` is the rate-limit database; ``limits`` maps a key (a
    service id) to ``(seconds, max)`` pairs: at most ``max`` calls in each
    calendar window of ``seconds`` anchored at UTC midnight. Counts live in
    Tapiriik's ``limits`` documents, so Tapiriik's own workers share them.
    Raises `ConfigError` for a malformed limit. Methods that touch the
    database raise `DatabaseUnavailable` when it cannot be reached.
    """

    def __init__(self, database: Database[Document], limits: Limits) -> None:
        self._limits = _configured(limits)
        self._store = _WindowStore(database[COLLECTION])
        self._tried_first: dict[str, float] = {}
        self._indexed = False

    @classmethod
    def from_settings(
        cls, target: MongoClient[Document] | Database[Document], settings: Settings
    ) -> RateLimiter:
        """A limiter with the ``rate_limits`` of syncstats' settings.

        ``target`` is a client (its ``ratelimit_database`` is used) or the
        rate-limit database itself.
        """
        if isinstance(target, MongoClient):
            target = target[settings.ratelimit_database]

        return cls(target, settings.limits())

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys that have limits, in configuration order."""
        return tuple(self._limits)

    def acquire(self, key: str, now: datetime | None = None) -> None:
        """Spend one call in every current window of ``key``, or raise.

        Raises `RateLimitExceeded` naming a full window, with ``retry_after``
        the seconds until it ends, and then spends nothing: a slot already
        taken in another window is given back, so a concurrent caller may
        see that window full for the moment in between. A window is full
        when its count reaches its max. A window whose document is missing
        is opened; ended windows are ignored. A key without limits is not
        limited and nothing is written. ``now`` defaults to the clock; naive
        values are read as UTC.
        """
        windows = self._ordered(key)
        if not windows:
            return
        now = _utc(now)

        with _database_errors():
            self._ensure_indexes()
            self._spend_all(key, windows, now)

    def observe(
        self,
        key: str,
        limit: Observation = None,
        usage: Observation = None,
        now: datetime | None = None,
    ) -> None:
        """Take in what the provider says its limits and our usage are.

        ``limit`` and ``usage`` are the values of Strava's
        ``X-RateLimit-Limit`` and ``X-RateLimit-Usage`` headers
        (``"quarter-hour,daily"``, see `HEADER_WINDOWS`), or mappings of
        window seconds to calls for other providers. Counts of matching
        windows rise to the provider's usage when it is higher; ``Max``
        falls to the provider's limit when it is below the configured one,
        until the window ends. Windows that are not configured are ignored.
        Raises `HeaderFormatError` for malformed values, changing nothing.
        """
        usages = _observed(usage, "usage")
        maxima = _observed(limit, "limit")
        now = _utc(now)

        with _database_errors():
            for window in self._limits.get(key, ()):
                seen_usage = usages.get(window.window)
                seen_max = maxima.get(window.window)
                lower = seen_max if seen_max is not None else window.max
                if seen_usage is None and lower >= window.max:
                    continue
                self._ensure_indexes()
                end = window_bounds(now, window.window)[1]
                self._store.record(key, window, end, seen_usage, lower)

    def windows(self, key: str, now: datetime | None = None) -> list[WindowState]:
        """The current windows of ``key``, shortest first; empty without limits.

        A window whose document does not exist yet shows 0 calls used.
        """
        windows = self._limits.get(key, ())
        if not windows:
            return []
        now = _utc(now)
        ends = {
            window.window: window_bounds(now, window.window)[1] for window in windows
        }

        with _database_errors():
            docs = self._store.read(key, ends)

        return [
            _window_state(key, window, ends[window.window], docs.get(window.window))
            for window in windows
        ]

    def delay(self, key: str, workers: int = 1, now: datetime | None = None) -> float:
        """Seconds a worker should wait before its next call to ``key``.

        The pace makes the remaining budget of every window last until the
        window ends when ``workers`` workers share it. It is 0 while every
        window is at or behind an even spend (the unused part of its budget
        is never less than its share of the time left); a full window
        yields the seconds until it ends.
        """
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        now = _utc(now)

        pauses = [_pause(state, workers, now) for state in self.windows(key, now)]

        return max(pauses, default=0.0)

    def _ordered(self, key: str) -> tuple[RateWindow, ...]:
        # The window that refused last is tried first: a refusal then costs
        # one round trip and no slot has to be given back.
        windows = self._limits.get(key, ())
        first = self._tried_first.get(key)
        if first is None:
            return windows

        return tuple(sorted(windows, key=lambda window: window.window != first))

    def _spend_all(
        self, key: str, windows: tuple[RateWindow, ...], now: datetime
    ) -> None:
        spent: list[object] = []
        try:
            for window in windows:
                spent.append(self._spend(key, window, now))
        except BaseException:
            self._store.release(spent)
            raise

    def _spend(self, key: str, window: RateWindow, now: datetime) -> object:
        end = window_bounds(now, window.window)[1]
        attempt = self._store.spend(key, window, end)
        if attempt.doc_id is None:
            self._tried_first[key] = window.window
            retry_after = (end - now).total_seconds()
            raise RateLimitExceeded(key, window.window, attempt.max, retry_after)

        return attempt.doc_id

    def _ensure_indexes(self) -> None:
        if self._indexed:
            return
        try:
            ensure_indexes(self._store.collection.database)
        except RateLimitError as exc:
            # Counting stays exact without the index (windows we open have a
            # fixed _id), but lookups scan and a window Tapiriik's refresh
            # opens at the same instant as a worker could be doubled.
            logger.warning("%s", exc)
        self._indexed = True


def ensure_indexes(database: Database[Document]) -> list[str]:
    """Create the `REQUIRED_INDEXES` of the rate-limit database; idempotent.

    Returns their names. Raises `RateLimitError` when the server refuses one,
    typically because old duplicate windows break the unique index:
    `refresh_windows` collapses those of the keys it manages.
    """
    names: list[str] = []
    for spec in REQUIRED_INDEXES:
        try:
            names += database[spec.collection].create_indexes([spec.model()])
        except OperationFailure as exc:
            cause = (
                "duplicate windows prevent it"
                if exc.code == _DUPLICATE_KEY
                else _first_line(exc)
            )
            raise RateLimitError(
                f"cannot create index {spec.name} on {spec.collection}: {cause}"
            ) from exc

    return names


def refresh_windows(
    database: Database[Document],
    limits: Limits,
    now: datetime,
    *,
    dry_run: bool = False,
) -> RefreshReport:
    """Tidy the windows of every key in ``limits``; other keys are untouched.

    Removes windows that have ended (``Expires <= now``), whose ``Duration``
    is not configured, or that lack a usable ``Duration`` or ``Expires``;
    collapses the live documents of one ``Duration`` into one at the end of
    the current window keeping the highest ``Count`` (Tapiriik's workers add
    every call to each of them, so the highest is the truth); sets ``Max`` to
    the configured value, or to a lower limit a provider reported for that
    window; creates each missing current window with ``Count`` 0. A window
    already open for the next period (a host whose clock runs ahead) is kept.
    Then creates the `REQUIRED_INDEXES`, logging a warning when duplicates of
    other keys prevent it. ``dry_run`` computes the report and writes nothing.
    """
    now = _utc(now)
    collection = database[COLLECTION]
    plan = _Plan()

    with _database_errors():
        for key, windows in _configured(limits).items():
            docs = list(collection.find({"Key": key}))
            _plan_key(plan, key, windows, docs, now)
        created = len(plan.inserts) if dry_run else _apply(collection, plan)
        if not dry_run:
            _ensure_indexes_or_warn(database)

    report = RefreshReport(
        plan.removed, plan.collapsed, created, plan.updated, dry_run=dry_run
    )
    logger.debug("%s", report)

    return report


class _Live(NamedTuple):
    doc: Document
    expires: datetime


class _Attempt(NamedTuple):
    doc_id: object | None
    max: int


class _WindowStore:
    """Where the counts live: one Tapiriik-shaped document per window."""

    def __init__(self, collection: Collection[Document]) -> None:
        self.collection = collection

    def spend(self, key: str, window: RateWindow, end: datetime) -> _Attempt:
        """Add one call to the window unless it is full; open it if missing."""
        doc_id = self._increment(key, window, end)
        if doc_id is not None:
            return _Attempt(doc_id, window.max)
        existing = self.collection.find_one(_window_query(key, window, end), ["Max"])
        if existing is not None:
            return _Attempt(None, _effective_max(window.max, existing))

        new = _new_window(key, window, end, count=1)
        try:
            self.collection.insert_one(new)
        except DuplicateKeyError:
            # Another worker opened it first: take a slot like in any window.
            return _Attempt(self._increment(key, window, end), window.max)

        return _Attempt(new["_id"], window.max)

    def release(self, doc_ids: list[object]) -> None:
        """Give back one call to each window; a failure only logs a warning."""
        if not doc_ids:
            return
        try:
            self.collection.update_many(
                {"_id": {"$in": doc_ids}}, {"$inc": {"Count": -1}}
            )
        except PyMongoError as exc:
            logger.warning(
                "could not give back %d call(s) to their windows: %s",
                len(doc_ids),
                _first_line(exc),
            )

    def record(
        self,
        key: str,
        window: RateWindow,
        end: datetime,
        usage: int | None,
        provider_max: int,
    ) -> None:
        """Raise the window's count to ``usage``; lower its max to ``provider_max``."""
        on_insert: Document = {}
        update: Document = {}
        if usage is None:
            on_insert["Count"] = 0
        else:
            update["$max"] = {"Count": usage}
        if provider_max < window.max:
            update["$min"] = {"Max": provider_max, "ProviderMax": provider_max}
        else:
            on_insert["Max"] = window.max

        query = _window_query(key, window, end)
        on_insert["_id"] = _window_id(key, window, end)
        try:
            self.collection.update_one(
                query, update | {"$setOnInsert": on_insert}, upsert=True
            )
        except DuplicateKeyError:
            # Opened by another worker meanwhile: it exists now.
            self.collection.update_one(query, update)

    def read(self, key: str, ends: Mapping[float, datetime]) -> dict[float, Document]:
        """The document of each window, by length; the fullest of duplicates."""
        query = {
            "Key": key,
            "$or": [
                {"Duration": seconds, "Expires": end} for seconds, end in ends.items()
            ],
        }
        found: dict[float, Document] = {}
        for doc in self.collection.find(query, ["Duration", "Count", "Max"]):
            seconds = float(doc["Duration"])
            if seconds not in found or _count(doc) > _count(found[seconds]):
                found[seconds] = doc

        return found

    def _increment(self, key: str, window: RateWindow, end: datetime) -> object | None:
        query = _window_query(key, window, end) | {
            "Count": {"$lt": window.max},
            "$expr": {"$lt": ["$Count", {"$ifNull": ["$Max", window.max]}]},
        }
        doc = self.collection.find_one_and_update(
            query, {"$inc": {"Count": 1}}, projection=["_id"]
        )

        return None if doc is None else doc["_id"]


@dataclass
class _Plan:
    """The writes of a refresh, and what they amount to."""

    deletes: list[object] = field(default_factory=list)
    updates: list[UpdateOne] = field(default_factory=list)
    inserts: list[Document] = field(default_factory=list)
    removed: int = 0
    collapsed: int = 0
    updated: int = 0


def _plan_key(
    plan: _Plan,
    key: str,
    windows: tuple[RateWindow, ...],
    docs: list[Document],
    now: datetime,
) -> None:
    lengths = {window.window for window in windows}
    live: dict[float, list[_Live]] = {}
    for doc in docs:
        seconds = _number(doc.get("Duration"))
        expires = _expires(doc)
        if seconds not in lengths or expires is None or expires <= now:
            plan.deletes.append(doc["_id"])
            plan.removed += 1
        else:
            live.setdefault(float(seconds), []).append(_Live(doc, expires))

    for window in windows:
        _plan_window(plan, key, window, live.get(window.window, []), now)


def _plan_window(
    plan: _Plan, key: str, window: RateWindow, docs: list[_Live], now: datetime
) -> None:
    end = window_bounds(now, window.window)[1]
    current = [live.doc for live in docs if live.expires <= end]
    for live in docs:
        if live.expires > end:
            _plan_update(plan, live.doc, _target_max(window, [live.doc]))
    if not current:
        plan.inserts.append(_new_window(key, window, end, count=0))
        return

    keep = max(current, key=lambda doc: (_expires(doc) == end, _count(doc)))
    others = [doc["_id"] for doc in current if doc is not keep]
    plan.deletes += others
    plan.collapsed += len(others)
    top = max(_count(doc) for doc in current)
    _plan_update(
        plan,
        keep,
        _target_max(window, current),
        realign={"Expires": end} if _expires(keep) != end else {},
        raise_count={"Count": top} if top > _count(keep) else {},
    )


def _plan_update(
    plan: _Plan,
    doc: Document,
    target_max: int,
    realign: Document | None = None,
    raise_count: Document | None = None,
) -> None:
    changes = dict(realign or {})
    if doc.get("Max") != target_max:
        changes["Max"] = target_max
    update: Document = {}
    if changes:
        update["$set"] = changes
        plan.updated += 1
    if raise_count:
        # $max, not $set: workers keep counting while the refresh runs.
        update["$max"] = raise_count
    if update:
        plan.updates.append(UpdateOne({"_id": doc["_id"]}, update))


def _target_max(window: RateWindow, docs: list[Document]) -> int:
    reported = [_number(doc.get("ProviderMax")) for doc in docs]

    return min([window.max] + [int(value) for value in reported if value is not None])


def _apply(collection: Collection[Document], plan: _Plan) -> int:
    """Write the plan; return how many windows were created."""
    if plan.deletes:
        collection.delete_many({"_id": {"$in": plan.deletes}})
    if plan.updates:
        collection.bulk_write(plan.updates, ordered=False)
    if not plan.inserts:
        return 0
    try:
        collection.insert_many(plan.inserts, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != _DUPLICATE_KEY for error in errors):
            raise
        # Workers opened these windows meanwhile: nothing left to create.
        return len(plan.inserts) - len(errors)

    return len(plan.inserts)


def _ensure_indexes_or_warn(database: Database[Document]) -> None:
    try:
        ensure_indexes(database)
    except RateLimitError as exc:
        logger.warning("%s", exc)


def _configured(limits: Limits) -> dict[str, tuple[RateWindow, ...]]:
    """Validated windows per key, shortest first; `ConfigError` if malformed."""
    configured: dict[str, tuple[RateWindow, ...]] = {}
    for key, pairs in limits.items():
        try:
            windows = [RateWindow(window=seconds, max=most) for seconds, most in pairs]
        except (ValidationError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"rate_limits.{key}: {_validation_message(exc)}"
            ) from None
        lengths = [window.window for window in windows]
        if len(set(lengths)) != len(lengths):
            raise ConfigError(f"rate_limits.{key}: two windows of the same length")
        if windows:
            configured[key] = tuple(sorted(windows, key=lambda window: window.window))

    return configured


def _validation_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{error['loc'][0]}: {error['msg'].removeprefix('Value error, ')}"

    return "expected (seconds, max) pairs"


def _observed(value: Observation, name: str) -> dict[float, int]:
    """Calls per window length from a header value or a mapping."""
    if value is None:
        return {}
    if isinstance(value, str):
        return _observed_header(value, name)

    return _observed_mapping(value, name)


def _observed_header(value: str, name: str) -> dict[float, int]:
    parts = [part.strip() for part in value.split(",")]
    if len(parts) != len(HEADER_WINDOWS) or not all(
        _NUMBER.fullmatch(part) for part in parts
    ):
        raise HeaderFormatError(
            f"X-RateLimit-{name.title()} {_clip(value)} is malformed: expected "
            f"{len(HEADER_WINDOWS)} whole numbers as 'quarter-hour,daily'"
        )

    return dict(zip(HEADER_WINDOWS, map(int, parts), strict=True))


def _observed_mapping(value: Mapping[float, int], name: str) -> dict[float, int]:
    observed: dict[float, int] = {}
    for seconds, calls in value.items():
        length = _number(seconds)
        if length is None or length <= 0 or not _is_count(calls):
            raise HeaderFormatError(
                f"rate-limit {name} {_clip(value)} is malformed: expected window "
                "seconds mapped to whole numbers >= 0"
            )
        observed[length] = calls

    return observed


def _window_state(
    key: str, window: RateWindow, end: datetime, doc: Document | None
) -> WindowState:
    if doc is None:
        return WindowState(key, window.window, window.max, 0, end)

    return WindowState(
        key, window.window, _effective_max(window.max, doc), _count(doc), end
    )


def _pause(state: WindowState, workers: int, now: datetime) -> float:
    start = window_bounds(now, state.seconds)[0]
    left = (state.resets_at - now).total_seconds()
    length = (state.resets_at - start).total_seconds()
    if state.remaining <= 0:
        return left
    if state.remaining * length >= state.max * left:
        return 0.0

    return min(left, workers * left / state.remaining)


def _window_query(key: str, window: RateWindow, end: datetime) -> Document:
    return {"Key": key, "Duration": window.window, "Expires": end}


def _new_window(key: str, window: RateWindow, end: datetime, count: int) -> Document:
    return {
        "_id": _window_id(key, window, end),
        "Key": key,
        "Duration": float(window.window),
        "Max": window.max,
        "Count": count,
        "Expires": end,
    }


def _window_id(key: str, window: RateWindow, end: datetime) -> str:
    # A fixed _id per window: two workers opening it at once clash on the
    # always-present _id index even where the unique index is missing.
    return f"{key}/{float(window.window)!r}/{end.isoformat(timespec='milliseconds')}"


def _effective_max(configured: int, doc: Document) -> int:
    stored = _number(doc.get("Max"))

    return configured if stored is None else min(configured, int(stored))


def _count(doc: Document) -> int:
    return int(_number(doc.get("Count")) or 0)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None

    return float(value) if math.isfinite(value) else None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _expires(doc: Document) -> datetime | None:
    value = doc.get("Expires")

    return _utc(value) if isinstance(value, datetime) else None


def _utc(now: datetime | None) -> datetime:
    """``now`` as aware UTC; the clock when None; naive values read as UTC."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)

    return now.astimezone(UTC)


def _clip(value: object) -> str:
    text = repr(value)

    return text if len(text) <= 60 else f"{text[:57]}..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()

    return lines[0][:200] if lines else type(exc).__name__


@contextmanager
def _database_errors() -> Iterator[None]:
    """Turn a lost connection into `DatabaseUnavailable`, keeping the cause."""
    try:
        yield
    except ConnectionFailure as exc:
        raise DatabaseUnavailable(
            f"the rate-limit database: MongoDB: {describe_error(exc)}"
        ) from exc
