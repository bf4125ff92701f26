"""Tests of the shared rate limiter, the window refresh and ``syncstats limits``."""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pymongo import MongoClient
from pymongo.database import Database

from syncstats import _cli_limits
from syncstats._cli_limits import format_seconds, limits
from syncstats._mongo import Document, make_client
from syncstats.errors import ConfigError, DatabaseUnavailable, RateLimitError
from syncstats.ratelimit import (
    REQUIRED_INDEXES,
    HeaderFormatError,
    RateLimiter,
    RateLimitExceeded,
    RefreshReport,
    WindowState,
    ensure_indexes,
    refresh_windows,
)
from syncstats.settings import Settings

NOW = datetime(2026, 12, 3, 12, 7, 30, tzinfo=UTC)
QUARTER_START = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
QUARTER_END = datetime(2026, 12, 3, 12, 15, tzinfo=UTC)
DAY_END = datetime(2026, 12, 4, tzinfo=UTC)
SMALL = {"strava": [(900, 3), (86400, 5)]}
STRAVA = {"strava": [(900, 200), (86400, 2000)]}
RACE = {"strava": [(900, 100), (86400, 60)]}

Window = tuple[float, datetime, int, int]


def _windows(database: Database[Document], key: str = "strava") -> list[Window]:
    """(Duration, Expires, Count, Max) of every document of ``key``, sorted."""
    return sorted(
        (doc["Duration"], doc["Expires"], doc["Count"], doc["Max"])
        for doc in database.limits.find({"Key": key})
    )


def _insert(
    database: Database[Document],
    seconds: float,
    expires: datetime,
    count: int,
    most: int,
    key: str = "strava",
    **extra: Any,
) -> None:
    database.limits.insert_one(
        {
            "Key": key,
            "Duration": float(seconds),
            "Max": most,
            "Count": count,
            "Expires": expires,
            **extra,
        }
    )


def _spend(limiter: RateLimiter, times: int, now: datetime = NOW) -> None:
    for _ in range(times):
        limiter.acquire("strava", now)


def _old_worker_limit(database: Database[Document], key: str) -> bool:
    """Tapiriik's read-then-increment: refuse only when a count passed its max."""
    for window in database.limits.find({"Key": key}, {"Max": 1, "Count": 1}):
        if window["Max"] < window["Count"]:
            return False
    database.limits.update_many({"Key": key}, {"$inc": {"Count": 1}})
    return True


# acquire


def test_acquire_counts_the_call_in_every_window(
    ratelimit_db: Database[Document],
) -> None:
    """One call adds one to the quarter-hour and to the daily window."""
    limiter = RateLimiter(ratelimit_db, SMALL)

    _spend(limiter, 2)

    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 2, 3),
        (86400.0, DAY_END, 2, 5),
    ]


def test_acquire_opens_missing_windows_as_tapiriik_documents(
    ratelimit_db: Database[Document],
) -> None:
    """A missing window is opened with Tapiriik's fields and a float Duration."""
    RateLimiter(ratelimit_db, SMALL).acquire("strava", NOW)

    docs = list(ratelimit_db.limits.find({}, {"_id": 0}))

    assert sorted(docs, key=lambda doc: doc["Duration"]) == [
        {
            "Key": "strava",
            "Duration": 900.0,
            "Max": 3,
            "Count": 1,
            "Expires": QUARTER_END,
        },
        {
            "Key": "strava",
            "Duration": 86400.0,
            "Max": 5,
            "Count": 1,
            "Expires": DAY_END,
        },
    ]
    assert all(isinstance(doc["Duration"], float) for doc in docs)


def test_acquire_opens_a_missing_window_beside_an_existing_one(
    ratelimit_db: Database[Document],
) -> None:
    """With only the daily window present, the quarter hour is opened."""
    _insert(ratelimit_db, 86400, DAY_END, 4, 5)

    RateLimiter(ratelimit_db, SMALL).acquire("strava", NOW)

    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 1, 3),
        (86400.0, DAY_END, 5, 5),
    ]


def test_full_window_refuses_and_spends_nothing(
    ratelimit_db: Database[Document],
) -> None:
    """Count equal to Max means full: the call is refused until the window ends."""
    limiter = RateLimiter(ratelimit_db, SMALL)
    _spend(limiter, 3)

    with pytest.raises(RateLimitExceeded) as refused:
        limiter.acquire("strava", NOW)

    assert (refused.value.key, refused.value.window_seconds) == ("strava", 900)
    assert (refused.value.limit, refused.value.retry_after) == (3, 450.0)
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 3, 3),
        (86400.0, DAY_END, 3, 5),
    ]


def test_refusal_by_a_later_window_gives_back_the_earlier_slot(
    ratelimit_db: Database[Document],
) -> None:
    """When the daily window is full the quarter-hour slot taken is returned."""
    limiter = RateLimiter(ratelimit_db, {"strava": [(900, 5), (86400, 2)]})
    _spend(limiter, 2)

    for _ in range(3):
        with pytest.raises(RateLimitExceeded) as refused:
            limiter.acquire("strava", NOW)

    assert refused.value.window_seconds == 86400
    assert refused.value.retry_after == 11 * 3600 + 52 * 60 + 30
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 2, 5),
        (86400.0, DAY_END, 2, 2),
    ]


def test_window_rolls_over_exactly_at_its_end(ratelimit_db: Database[Document]) -> None:
    """A full quarter hour refuses until its end and the next one opens at it."""
    limiter = RateLimiter(ratelimit_db, {"strava": [(900, 3), (86400, 10)]})
    _spend(limiter, 3)
    just_before = QUARTER_END - timedelta(microseconds=1)

    with pytest.raises(RateLimitExceeded) as refused:
        limiter.acquire("strava", just_before)
    limiter.acquire("strava", QUARTER_END)

    assert refused.value.retry_after == pytest.approx(1e-6)
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 3, 3),
        (900.0, QUARTER_END + timedelta(minutes=15), 1, 3),
        (86400.0, DAY_END, 4, 10),
    ]


def test_daily_window_carries_over_quarter_hours(
    ratelimit_db: Database[Document],
) -> None:
    """Calls in three quarter hours all count in the same daily window."""
    limiter = RateLimiter(ratelimit_db, SMALL)

    for minutes in (0, 13, 33):
        limiter.acquire("strava", NOW + timedelta(minutes=minutes))

    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 1, 3),
        (900.0, QUARTER_END + timedelta(minutes=15), 1, 3),
        (900.0, QUARTER_END + timedelta(minutes=30), 1, 3),
        (86400.0, DAY_END, 3, 5),
    ]


def test_ended_window_neither_refuses_nor_counts(
    ratelimit_db: Database[Document],
) -> None:
    """A full window that has ended is ignored until the refresh deletes it."""
    _insert(ratelimit_db, 900, QUARTER_START, 50, 3)

    RateLimiter(ratelimit_db, SMALL).acquire("strava", NOW)

    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_START, 50, 3),
        (900.0, QUARTER_END, 1, 3),
        (86400.0, DAY_END, 1, 5),
    ]


def test_key_without_limits_is_not_limited_and_writes_nothing(
    ratelimit_db: Database[Document],
) -> None:
    """A service with no configured windows is never refused or recorded."""
    limiter = RateLimiter(ratelimit_db, SMALL)

    for _ in range(10):
        limiter.acquire("runkeeper", NOW)
    limiter.observe("runkeeper", limit="1,1", usage="5,5", now=NOW)

    assert limiter.windows("runkeeper", NOW) == []
    assert limiter.delay("runkeeper", 4, NOW) == 0.0
    assert ratelimit_db.list_collection_names() == []


def test_lower_stored_max_is_honoured(ratelimit_db: Database[Document]) -> None:
    """A window whose stored Max is below the configured one fills at it."""
    _insert(ratelimit_db, 900, QUARTER_END, 0, 2)
    limiter = RateLimiter(ratelimit_db, SMALL)
    _spend(limiter, 2)

    with pytest.raises(RateLimitExceeded) as refused:
        limiter.acquire("strava", NOW)

    assert refused.value.limit == 2


def test_lower_configured_max_is_honoured(ratelimit_db: Database[Document]) -> None:
    """A window stored with a larger Max fills at the configured one."""
    _insert(ratelimit_db, 900, QUARTER_END, 0, 100)
    limiter = RateLimiter(ratelimit_db, SMALL)
    _spend(limiter, 3)

    with pytest.raises(RateLimitExceeded):
        limiter.acquire("strava", NOW)

    assert _windows(ratelimit_db)[0] == (900.0, QUARTER_END, 3, 100)


def _race_worker(
    uri: str,
    database: str,
    attempts: int,
    start: Any,
    results: Any,
) -> None:
    """Acquire ``attempts`` times in a process of its own; report the grants."""
    client = make_client(uri, 10)
    try:
        limiter = RateLimiter(client[database], RACE)
        start.wait(60)
        granted = 0
        for _ in range(attempts):
            try:
                limiter.acquire("strava", NOW)
            except RateLimitExceeded:
                continue
            granted += 1
        results.put(granted)
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        results.put(repr(exc))
    finally:
        client.close()


def test_concurrent_processes_spend_exactly_the_budget(
    mongo_uri: str, ratelimit_db: Database[Document]
) -> None:
    """Eight processes racing on fresh windows get exactly the daily budget."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(8), context.Queue()
    processes = [
        context.Process(
            target=_race_worker,
            args=(mongo_uri, ratelimit_db.name, 15, start, results),
        )
        for _ in range(8)
    ]
    for process in processes:
        process.start()

    granted = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)

    assert all(isinstance(count, int) for count in granted), granted
    assert sum(granted) == 60
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 60, 100),
        (86400.0, DAY_END, 60, 60),
    ]


# observe


def test_observe_raises_counts_to_higher_provider_usage(
    ratelimit_db: Database[Document],
) -> None:
    """Calls the provider counted but we did not are added to the windows."""
    limiter = RateLimiter(ratelimit_db, STRAVA)
    _spend(limiter, 2)

    limiter.observe("strava", limit="200,2000", usage="187,1502", now=NOW)

    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 187, 200),
        (86400.0, DAY_END, 1502, 2000),
    ]


def test_observe_keeps_higher_local_counts(ratelimit_db: Database[Document]) -> None:
    """A provider usage below the local count leaves the count alone."""
    limiter = RateLimiter(ratelimit_db, STRAVA)
    _spend(limiter, 5)

    limiter.observe("strava", limit="200,2000", usage="1,2", now=NOW)

    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 5, 200),
        (86400.0, DAY_END, 5, 2000),
    ]


def test_observe_lowers_max_to_a_lower_provider_limit(
    ratelimit_db: Database[Document],
) -> None:
    """A provider limit below the configured one caps the window."""
    limiter = RateLimiter(ratelimit_db, STRAVA)

    limiter.observe("strava", limit="100,1000", usage="100,100", now=NOW)

    with pytest.raises(RateLimitExceeded) as refused:
        limiter.acquire("strava", NOW)
    assert refused.value.limit == 100
    assert [(state.max, state.used) for state in limiter.windows("strava", NOW)] == [
        (100, 100),
        (1000, 100),
    ]


def test_observe_ignores_a_higher_provider_limit(
    ratelimit_db: Database[Document],
) -> None:
    """A provider limit above the configured one changes nothing."""
    limiter = RateLimiter(ratelimit_db, STRAVA)

    limiter.observe("strava", limit="600,30000", now=NOW)

    assert ratelimit_db.list_collection_names() == []
    assert [state.max for state in limiter.windows("strava", NOW)] == [200, 2000]


def test_observe_takes_a_mapping_of_window_seconds(
    ratelimit_db: Database[Document],
) -> None:
    """Other providers pass usage and limits keyed by window length."""
    limiter = RateLimiter(ratelimit_db, STRAVA)

    limiter.observe("strava", usage={900: 7}, now=NOW)
    limiter.observe("strava", limit={86400.0: 1500}, now=NOW)

    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 7, 200),
        (86400.0, DAY_END, 0, 1500),
    ]


def test_observe_skips_windows_that_are_not_configured(
    ratelimit_db: Database[Document],
) -> None:
    """Only the configured quarter hour takes Strava's two-window usage."""
    limiter = RateLimiter(ratelimit_db, {"strava": [(900, 200)]})

    limiter.observe("strava", usage="10,30", now=NOW)

    assert _windows(ratelimit_db) == [(900.0, QUARTER_END, 10, 200)]


@pytest.mark.parametrize(
    ("limit", "usage"),
    [
        ("100,1000", "abc"),
        ("100,1000", ""),
        ("100,1000", "1,2,3"),
        ("100", "1,2"),
        ("100,1000", "-1,5"),
        ("100,1000", "1.5,2"),
        ("100,1000", {900: -1}),
        ("100,1000", {900: True}),
        ("100,1000", {"900": 1}),
        ({0: 5}, "1,2"),
    ],
)
def test_malformed_rate_limit_headers_change_nothing(
    ratelimit_db: Database[Document], limit: Any, usage: Any
) -> None:
    """Unreadable headers raise a one-line error before anything is written."""
    limiter = RateLimiter(ratelimit_db, STRAVA)
    _spend(limiter, 1)
    before = _windows(ratelimit_db)

    with pytest.raises(HeaderFormatError, match="malformed") as error:
        limiter.observe("strava", limit=limit, usage=usage, now=NOW)

    assert "\n" not in str(error.value)
    assert _windows(ratelimit_db) == before


def test_header_error_names_the_header(ratelimit_db: Database[Document]) -> None:
    """The message says which header was unreadable and what was expected."""
    limiter = RateLimiter(ratelimit_db, STRAVA)

    with pytest.raises(HeaderFormatError) as error:
        limiter.observe("strava", usage="lots", now=NOW)

    assert str(error.value) == (
        "X-RateLimit-Usage 'lots' is malformed: expected 2 whole numbers as "
        "'quarter-hour,daily'"
    )


# windows and delay


def test_windows_report_length_max_used_and_reset(
    ratelimit_db: Database[Document],
) -> None:
    """The current windows of a key come shortest first with their use."""
    limiter = RateLimiter(ratelimit_db, SMALL)
    _spend(limiter, 3)

    states = limiter.windows("strava", NOW)

    assert states == [
        WindowState("strava", 900.0, 3, 3, QUARTER_END),
        WindowState("strava", 86400.0, 5, 3, DAY_END),
    ]
    assert [(state.remaining, state.full) for state in states] == [
        (0, True),
        (2, False),
    ]


def test_windows_not_yet_opened_show_nothing_used(
    ratelimit_db: Database[Document],
) -> None:
    """Windows without a document report zero calls and the configured max."""
    states = RateLimiter(ratelimit_db, SMALL).windows("strava", NOW)

    assert [(state.used, state.max) for state in states] == [(0, 3), (0, 5)]


def test_delay_is_zero_while_budget_is_plentiful(
    ratelimit_db: Database[Document],
) -> None:
    """Half way through the quarter hour with 10 of 200 calls spent, no wait."""
    _insert(ratelimit_db, 900, QUARTER_END, 10, 200)

    assert RateLimiter(ratelimit_db, STRAVA).delay("strava", 4, NOW) == 0.0


def test_delay_spreads_a_scarce_budget_over_the_workers(
    ratelimit_db: Database[Document],
) -> None:
    """With 10 calls left for 450 s, each of 4 workers waits 4 x 450 / 10 s."""
    _insert(ratelimit_db, 900, QUARTER_END, 190, 200)

    assert RateLimiter(ratelimit_db, STRAVA).delay("strava", 4, NOW) == 180.0


def test_delay_waits_for_a_full_window_to_end(
    ratelimit_db: Database[Document],
) -> None:
    """A full daily window makes workers wait until UTC midnight."""
    _insert(ratelimit_db, 86400, DAY_END, 2000, 2000)

    delay = RateLimiter(ratelimit_db, STRAVA).delay("strava", 1, NOW)

    assert delay == (DAY_END - NOW).total_seconds()


def test_delay_needs_at_least_one_worker(ratelimit_db: Database[Document]) -> None:
    """A pace for zero workers is a caller's mistake."""
    with pytest.raises(ValueError, match="at least 1"):
        RateLimiter(ratelimit_db, STRAVA).delay("strava", 0, NOW)


# construction and errors


@pytest.mark.parametrize(
    ("limits_", "message"),
    [
        ({"strava": [(900, 0)]}, "rate_limits.strava: max:"),
        ({"strava": [(90000, 3)]}, "not a whole number of days"),
        ({"strava": [(900, 3), (900.0, 5)]}, "two windows of the same length"),
        ({"strava": [900]}, "expected (seconds, max) pairs"),
    ],
)
def test_malformed_limits_are_a_config_error(
    ratelimit_db: Database[Document], limits_: Any, message: str
) -> None:
    """Limits that make no sense are refused when the limiter is built."""
    with pytest.raises(ConfigError) as error:
        RateLimiter(ratelimit_db, limits_)

    assert message in str(error.value)


def test_from_settings_uses_the_rate_limit_database(
    mongo_client: MongoClient[Document], db_names: tuple[str, str]
) -> None:
    """A limiter built from settings counts in ``ratelimit_database``."""
    settings = Settings(
        ratelimit_database=db_names[1],
        rate_limits={"strava": [{"window": "15m", "max": 2}]},
    )
    from_client = RateLimiter.from_settings(mongo_client, settings)
    from_database = RateLimiter.from_settings(mongo_client[db_names[1]], settings)

    from_client.acquire("strava", NOW)
    from_database.acquire("strava", NOW)

    with pytest.raises(RateLimitExceeded):
        from_client.acquire("strava", NOW)
    assert _windows(mongo_client[db_names[1]]) == [(900.0, QUARTER_END, 2, 2)]


def test_unreachable_database_is_reported() -> None:
    """A server that does not answer raises DatabaseUnavailable."""
    client = make_client("mongodb://127.0.0.1:9/", 0.2)
    try:
        limiter = RateLimiter(client["tapiriik_ratelimit"], SMALL)
        with pytest.raises(DatabaseUnavailable, match="rate-limit database"):
            limiter.acquire("strava", NOW)
    finally:
        client.close()


# indexes


def test_ensure_indexes_creates_the_unique_window_index(
    ratelimit_db: Database[Document],
) -> None:
    """The (Key, Duration, Expires) index is unique and creating it twice is fine."""
    assert ensure_indexes(ratelimit_db) == ["Key_Duration_Expires"]
    assert ensure_indexes(ratelimit_db) == ["Key_Duration_Expires"]

    index = ratelimit_db.limits.index_information()["Key_Duration_Expires"]

    assert index["unique"] is True
    assert index["key"] == [("Key", 1), ("Duration", 1), ("Expires", 1)]
    assert [spec.name for spec in REQUIRED_INDEXES] == ["Key_Duration_Expires"]


def test_ensure_indexes_reports_duplicate_windows(
    ratelimit_db: Database[Document],
) -> None:
    """Old duplicate windows prevent the unique index, with a clear message."""
    _insert(ratelimit_db, 900, QUARTER_END, 1, 3)
    _insert(ratelimit_db, 900, QUARTER_END, 2, 3)

    with pytest.raises(RateLimitError, match="duplicate windows prevent it"):
        ensure_indexes(ratelimit_db)


def test_acquire_counts_exactly_despite_duplicates_blocking_the_index(
    ratelimit_db: Database[Document], caplog: pytest.LogCaptureFixture
) -> None:
    """Without its unique index the limiter warns and still fills at the max."""
    _insert(ratelimit_db, 900, QUARTER_START, 1, 3, key="runkeeper")
    _insert(ratelimit_db, 900, QUARTER_START, 1, 3, key="runkeeper")
    limiter = RateLimiter(ratelimit_db, SMALL)

    _spend(limiter, 3)
    with pytest.raises(RateLimitExceeded):
        limiter.acquire("strava", NOW)

    assert "duplicate windows prevent it" in caplog.text
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 3, 3),
        (86400.0, DAY_END, 3, 5),
    ]


# refresh_windows


def test_refresh_creates_missing_windows(ratelimit_db: Database[Document]) -> None:
    """Missing windows start empty and end on the next quarter hour or midnight."""
    report = refresh_windows(ratelimit_db, STRAVA, NOW)

    assert report == RefreshReport(created=2)
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 0, 200),
        (86400.0, DAY_END, 0, 2000),
    ]


def test_refresh_removes_ended_windows(ratelimit_db: Database[Document]) -> None:
    """Windows whose Expires is at or before now are deleted."""
    _insert(ratelimit_db, 900, QUARTER_START, 200, 200)
    _insert(ratelimit_db, 86400, NOW, 5, 2000)
    _insert(ratelimit_db, 900, QUARTER_END, 7, 200)

    report = refresh_windows(ratelimit_db, STRAVA, NOW)

    assert report == RefreshReport(removed=2, created=1)
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 7, 200),
        (86400.0, DAY_END, 0, 2000),
    ]


def test_refresh_removes_windows_no_longer_configured(
    ratelimit_db: Database[Document],
) -> None:
    """A live window whose length is not configured any more is deleted."""
    _insert(ratelimit_db, 3600, datetime(2026, 12, 3, 13, tzinfo=UTC), 5, 100)
    ratelimit_db.limits.insert_one({"Key": "strava", "Count": 3})

    report = refresh_windows(ratelimit_db, {"strava": [(900, 200)]}, NOW)

    assert report == RefreshReport(removed=2, created=1)
    assert _windows(ratelimit_db) == [(900.0, QUARTER_END, 0, 200)]


def test_refresh_collapses_duplicates_keeping_the_highest_count(
    ratelimit_db: Database[Document],
) -> None:
    """Duplicate live windows of one length become one holding the top count."""
    _insert(ratelimit_db, 900, QUARTER_END, 7, 200)
    _insert(ratelimit_db, 900, QUARTER_END, 9, 200)
    _insert(ratelimit_db, 86400, DAY_END, 40, 2000)
    _insert(ratelimit_db, 86400, DAY_END - timedelta(hours=1), 41, 2000)

    report = refresh_windows(ratelimit_db, STRAVA, NOW)

    assert report == RefreshReport(collapsed=2)
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 9, 200),
        (86400.0, DAY_END, 41, 2000),
    ]


def test_refresh_keeps_a_window_opened_early_for_the_next_period(
    ratelimit_db: Database[Document],
) -> None:
    """A next-period window opened by a host whose clock runs ahead is kept."""
    next_end = QUARTER_END + timedelta(minutes=15)
    _insert(ratelimit_db, 900, QUARTER_END, 7, 200)
    _insert(ratelimit_db, 900, next_end, 2, 200)

    report = refresh_windows(ratelimit_db, {"strava": [(900, 200)]}, NOW)

    assert report == RefreshReport()
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 7, 200),
        (900.0, next_end, 2, 200),
    ]


def test_refresh_sets_max_to_the_configured_value(
    ratelimit_db: Database[Document],
) -> None:
    """Live windows take the configured Max, unless a provider set it lower."""
    _insert(ratelimit_db, 900, QUARTER_END, 7, 150)
    _insert(ratelimit_db, 86400, DAY_END, 7, 900, ProviderMax=900)

    report = refresh_windows(ratelimit_db, STRAVA, NOW)

    assert report == RefreshReport(updated=1)
    assert _windows(ratelimit_db) == [
        (900.0, QUARTER_END, 7, 200),
        (86400.0, DAY_END, 7, 900),
    ]


def test_refresh_leaves_other_keys_untouched(
    ratelimit_db: Database[Document],
) -> None:
    """Keys without configured limits keep every document as it was."""
    _insert(ratelimit_db, 900, QUARTER_START, 5, 10, key="runkeeper")
    _insert(ratelimit_db, 900, QUARTER_END, 5, 10, key="runkeeper")
    _insert(ratelimit_db, 900, QUARTER_END, 6, 10, key="runkeeper")
    before = list(ratelimit_db.limits.find().sort("Count"))

    refresh_windows(ratelimit_db, STRAVA, NOW)

    assert list(ratelimit_db.limits.find({"Key": "runkeeper"}).sort("Count")) == before


def test_refresh_creates_the_unique_index_after_collapsing(
    ratelimit_db: Database[Document], caplog: pytest.LogCaptureFixture
) -> None:
    """Once duplicates are collapsed the unique window index can be built."""
    _insert(ratelimit_db, 900, QUARTER_END, 7, 200)
    _insert(ratelimit_db, 900, QUARTER_END, 9, 200)

    refresh_windows(ratelimit_db, STRAVA, NOW)

    assert "Key_Duration_Expires" in ratelimit_db.limits.index_information()
    assert "cannot create index" not in caplog.text


def test_refresh_dry_run_writes_nothing(ratelimit_db: Database[Document]) -> None:
    """A dry run reports what a refresh would do and changes no document."""
    _insert(ratelimit_db, 900, QUARTER_START, 200, 200)
    _insert(ratelimit_db, 900, QUARTER_END, 7, 150)
    _insert(ratelimit_db, 900, QUARTER_END, 9, 150)
    _insert(ratelimit_db, 3600, QUARTER_END, 1, 1)
    before = list(ratelimit_db.limits.find().sort("_id"))

    dry = refresh_windows(ratelimit_db, STRAVA, NOW, dry_run=True)

    assert list(ratelimit_db.limits.find().sort("_id")) == before
    assert list(ratelimit_db.limits.index_information()) == ["_id_"]
    assert dry == RefreshReport(2, 1, 1, 1, dry_run=True)
    assert refresh_windows(ratelimit_db, STRAVA, NOW) == RefreshReport(2, 1, 1, 1)


def test_refresh_report_reads_as_one_line() -> None:
    """The report gives the run one summary line and a JSON-ready mapping."""
    report = RefreshReport(removed=2, collapsed=1, created=3, updated=0, dry_run=True)

    assert report.summary() == "2 removed, 1 collapsed, 3 created, 0 updated (dry run)"
    assert report.as_dict() == {
        "removed": 2,
        "collapsed": 1,
        "created": 3,
        "updated": 0,
        "dry_run": True,
    }


# Tapiriik's own workers


@pytest.fixture
def naive_db(mongo_uri: str, db_names: tuple[str, str]) -> Iterator[Database[Document]]:
    """The test's rate-limit database seen as Tapiriik sees it: naive dates."""
    client: MongoClient[Document] = MongoClient(mongo_uri)
    yield client[db_names[1]]
    client.close()


def test_old_tapiriik_windows_are_counted(
    ratelimit_db: Database[Document], naive_db: Database[Document]
) -> None:
    """Windows Tapiriik wrote with naive UTC dates are the ones we count in."""
    naive_end = QUARTER_END.replace(tzinfo=None)
    _insert(naive_db, 900, naive_end, 2, 3)
    _insert(naive_db, 86400, DAY_END.replace(tzinfo=None), 2, 5)
    limiter = RateLimiter(ratelimit_db, SMALL)

    limiter.acquire("strava", NOW.replace(tzinfo=None))
    with pytest.raises(RateLimitExceeded):
        limiter.acquire("strava", NOW)

    assert _windows(naive_db) == [
        (900.0, naive_end, 3, 3),
        (86400.0, DAY_END.replace(tzinfo=None), 3, 5),
    ]


def test_old_workers_share_the_windows_we_open(
    ratelimit_db: Database[Document], naive_db: Database[Document]
) -> None:
    """Tapiriik's read-then-increment counts in our windows and sees them full."""
    limiter = RateLimiter(ratelimit_db, SMALL)
    limiter.acquire("strava", NOW)

    assert _old_worker_limit(naive_db, "strava") is True
    assert [state.used for state in limiter.windows("strava", NOW)] == [2, 2]
    _spend(limiter, 1)
    assert _windows(naive_db)[0] == (900.0, QUARTER_END.replace(tzinfo=None), 3, 3)
    with pytest.raises(RateLimitExceeded):
        limiter.acquire("strava", NOW)


# syncstats limits


@pytest.fixture
def config_path(tmp_path: Path, mongo_uri: str, db_names: tuple[str, str]) -> Path:
    """A settings file pointing at the test's databases, with Strava's limits."""
    path = tmp_path / "syncstats.toml"
    path.write_text(
        f'mongo_uri = "{mongo_uri}"\n'
        f'database = "{db_names[0]}"\n'
        f'ratelimit_database = "{db_names[1]}"\n'
        "[rate_limits]\n"
        'strava = [{ window = "15m", max = 200 }, { window = "1d", max = 2000 }]\n'
    )
    return path


@pytest.fixture
def cli_now(monkeypatch: pytest.MonkeyPatch) -> Iterator[datetime]:
    """Fix the command's clock and restore the logging it configures."""
    monkeypatch.setattr(_cli_limits, "_now", lambda: NOW)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield NOW
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("syncstats").setLevel(logging.NOTSET)


def test_limits_command_prints_a_table(
    config_path: Path, ratelimit_db: Database[Document], cli_now: datetime
) -> None:
    """Each window shows its service, length, use, percentage and reset."""
    _spend(RateLimiter(ratelimit_db, STRAVA), 3, cli_now)

    result = CliRunner().invoke(limits, ["--config", str(config_path)])

    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines() if "strava" in line]
    assert [[cell for cell in row if cell != "│"] for row in rows] == [
        ["strava", "15m", "3", "/", "200", "1.5%", "7m", "30s"],
        ["strava", "1d", "3", "/", "2000", "0.1%", "11h", "52m"],
    ]


def test_limits_command_prints_json(
    config_path: Path, ratelimit_db: Database[Document], cli_now: datetime
) -> None:
    """``--json`` gives the time and one object per window."""
    _spend(RateLimiter(ratelimit_db, STRAVA), 3, cli_now)

    result = CliRunner().invoke(limits, ["--config", str(config_path), "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "now": "2026-12-03T12:07:30Z",
        "windows": [
            {
                "service": "strava",
                "window_seconds": 900.0,
                "used": 3,
                "max": 200,
                "remaining": 197,
                "percent": 1.5,
                "resets_at": "2026-12-03T12:15:00Z",
                "resets_in": 450.0,
            },
            {
                "service": "strava",
                "window_seconds": 86400.0,
                "used": 3,
                "max": 2000,
                "remaining": 1997,
                "percent": 0.1,
                "resets_at": "2026-12-04T00:00:00Z",
                "resets_in": 42750.0,
            },
        ],
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (900, "15m"),
        (450, "7m 30s"),
        (86400, "1d"),
        (42750, "11h 52m"),
    ],
)
def test_lengths_read_as_units(seconds: float, text: str) -> None:
    """Window lengths and times to reset print as days, hours, minutes, seconds."""
    assert format_seconds(seconds) == text
