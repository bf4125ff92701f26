"""Tests of window lengths and calendar windows anchored at UTC midnight."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncstats._windows import DAY, check_window, parse_duration, window_bounds

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# hypothesis takes naive bounds and attaches the zone itself.
instants = st.datetimes(
    min_value=datetime(1971, 1, 1),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
day_or_less = st.integers(min_value=1, max_value=DAY)
whole_days = st.integers(min_value=2, max_value=30).map(lambda days: days * DAY)
fractional = st.integers(min_value=1, max_value=DAY * 1000).map(lambda ms: ms / 1000)


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def test_quarter_hour_window_spans_the_quarter() -> None:
    """A 900 s window runs from the last quarter hour to the next."""
    now = datetime(2026, 12, 3, 12, 7, 30, tzinfo=UTC)

    assert window_bounds(now, 900) == (
        datetime(2026, 12, 3, 12, 0, tzinfo=UTC),
        datetime(2026, 12, 3, 12, 15, tzinfo=UTC),
    )


def test_window_starts_exactly_at_its_boundary() -> None:
    """An instant on a boundary opens the next window, not the ended one."""
    now = datetime(2026, 12, 3, 12, 15, tzinfo=UTC)

    assert window_bounds(now, 900)[0] == now
    assert window_bounds(now - timedelta(microseconds=1), 900)[1] == now


def test_day_window_ends_at_the_next_utc_midnight() -> None:
    """A 1-day window spans the UTC day."""
    now = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

    assert window_bounds(now, DAY) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_last_window_of_a_day_ends_at_midnight() -> None:
    """A length that does not divide a day is cut short at UTC midnight."""
    now = datetime(2026, 12, 3, 23, 0, tzinfo=UTC)

    assert window_bounds(now, 7 * 3600) == (
        datetime(2026, 12, 3, 21, 0, tzinfo=UTC),
        datetime(2026, 12, 4, tzinfo=UTC),
    )


def test_multi_day_window_counts_days_from_the_epoch() -> None:
    """A 7-day window runs Thursday to Thursday, as 1970-01-01 was one."""
    start, end = window_bounds(datetime(2026, 12, 6, 12, tzinfo=UTC), 7 * DAY)

    assert (start, end) == (
        datetime(2026, 12, 3, tzinfo=UTC),
        datetime(2026, 12, 10, tzinfo=UTC),
    )


def test_other_time_zones_give_utc_windows() -> None:
    """An aware instant in another zone falls in the UTC-anchored window."""
    now = datetime(2026, 12, 4, 1, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))

    start, end = window_bounds(now, DAY)

    assert (start, end) == (
        datetime(2026, 12, 3, tzinfo=UTC),
        datetime(2026, 12, 4, tzinfo=UTC),
    )
    assert start.tzinfo == UTC


def test_fractional_lengths_have_exact_bounds() -> None:
    """Sub-second lengths are exact to the microsecond."""
    now = datetime(2026, 12, 3, 0, 0, 1, 700000, tzinfo=UTC)

    assert window_bounds(now, 0.25) == (
        datetime(2026, 12, 3, 0, 0, 1, 500000, tzinfo=UTC),
        datetime(2026, 12, 3, 0, 0, 1, 750000, tzinfo=UTC),
    )


@given(now=instants, seconds=day_or_less | fractional)
def test_day_or_shorter_window_holds_the_instant(now: datetime, seconds: float) -> None:
    """A window of a day or less holds the instant and starts on a multiple
    of its length since UTC midnight."""
    start, end = window_bounds(now, seconds)
    length = timedelta(microseconds=round(seconds * 1_000_000))
    midnight = _midnight(now)

    assert start <= now < end
    assert (start - midnight) % length == timedelta(0)
    assert end == min(start + length, midnight + timedelta(days=1))


@given(now=instants, seconds=whole_days)
def test_multi_day_window_holds_the_instant(now: datetime, seconds: int) -> None:
    """A window of whole days holds the instant and starts on a multiple of
    its length since the epoch."""
    start, end = window_bounds(now, seconds)

    assert start <= now < end
    assert (start - EPOCH) % timedelta(seconds=seconds) == timedelta(0)
    assert end - start == timedelta(seconds=seconds)


@given(now=instants, seconds=day_or_less)
def test_next_window_starts_where_the_current_ends(now: datetime, seconds: int) -> None:
    """Windows follow each other without gaps or overlaps."""
    end = window_bounds(now, seconds)[1]

    assert window_bounds(end, seconds)[0] == end


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15m", 900.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        ("90s", 90.0),
        ("90", 90.0),
        (" 2 m ", 120.0),
        (900, 900.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration_reads_units_and_numbers(text: object, seconds: float) -> None:
    """Durations are numbers of seconds or numbers with an s/m/h/d unit."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "abc", "15 minutes", "-5", "0s", "0", 0, -1.0, True, math.inf, "1w"]
)
def test_parse_duration_rejects_the_rest(text: object) -> None:
    """Unknown units, zero, negative, infinite and boolean lengths are refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [1.0, 900.0, 7 * 3600.0, DAY, 2 * DAY, 30 * DAY])
def test_check_window_accepts_day_aligned_lengths(seconds: float) -> None:
    """Lengths up to a day, and whole numbers of days, line up with UTC days."""
    assert check_window(seconds) == seconds


@pytest.mark.parametrize("seconds", [DAY + 1.0, 25 * 3600.0, 1.5 * DAY])
def test_check_window_rejects_partial_days_beyond_a_day(seconds: float) -> None:
    """A window longer than a day must be a whole number of days."""
    with pytest.raises(ValueError, match="whole number of days"):
        check_window(seconds)
