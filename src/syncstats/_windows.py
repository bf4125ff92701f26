"""Window lengths and calendar windows anchored at UTC midnight."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

DAY = 86400

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY}
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: object) -> float:
    """Seconds in ``value``: ``"<n>s"``, ``"<n>m"``, ``"<n>h"``, ``"<n>d"``
    or a number of seconds.

    Raises ``ValueError`` for anything else, zero and negative lengths.
    """
    if isinstance(value, bool):
        # pydantic turns only ValueError into a validation error.
        raise ValueError(f"invalid duration {value!r}")  # noqa: TRY004
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _WINDOW.match(str(value))
        if match is None:
            raise ValueError(
                f"invalid duration {value!r} (use <n>s, <n>m, <n>h, <n>d "
                "or a number of seconds)"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: must be finite")
    if seconds <= 0:
        raise ValueError(f"invalid duration {value!r}: must be positive")

    return seconds


def check_window(seconds: float) -> float:
    """Accept a rate-limit window length that lines up with UTC days.

    A window longer than a day must be a whole number of days.
    """
    if seconds > DAY and seconds % DAY:
        raise ValueError(
            f"a window of {seconds:g} s is longer than a day but not a whole "
            "number of days"
        )

    return seconds


def window_bounds(now: datetime, seconds: float) -> tuple[datetime, datetime]:
    """The start and end of the calendar window of ``seconds`` holding ``now``.

    Windows of a day or less start at UTC midnight and follow each other
    through the day; the last one of a day ends at midnight even when the
    length does not divide a day. Longer windows are whole days counted
    from the Unix epoch. ``now`` must be aware; the bounds are aware UTC.
    Arithmetic is in whole microseconds, so boundaries are exact.
    """
    now = now.astimezone(UTC)
    length = timedelta(microseconds=round(seconds * 1_000_000))
    if seconds > DAY:
        anchor = datetime(1970, 1, 1, tzinfo=UTC)
        day_end = None
    else:
        anchor = now.replace(hour=0, minute=0, second=0, microsecond=0)
        day_end = anchor + timedelta(days=1)

    start = anchor + ((now - anchor) // length) * length
    end = start + length
    if day_end is not None and end > day_end:
        end = day_end

    return start, end
