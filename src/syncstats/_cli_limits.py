"""The ``limits`` command: how much of each rate-limit window is spent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from syncstats._cli import common_options, guarded, setup
from syncstats._mongo import open_databases
from syncstats.ratelimit import RateLimiter, WindowState


@click.command("limits")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@common_options
@guarded
def limits(config_path: str | None, verbose: bool, as_json: bool) -> None:
    """Show every configured rate-limit window: calls used, max, next reset."""
    settings = setup(config_path, verbose)
    now = _now()

    with open_databases(settings) as databases:
        limiter = RateLimiter.from_settings(databases.ratelimit, settings)
        states = [state for key in limiter.keys for state in limiter.windows(key, now)]

    if as_json:
        click.echo(json.dumps(limits_json(states, now)))
    elif not states:
        click.echo("No rate limits are configured: set rate_limits to add some.")
    else:
        Console().print(limits_table(states, now))


def limits_json(states: list[WindowState], now: datetime) -> dict[str, Any]:
    """The windows as JSON-ready values: seconds, counts, ISO 8601 UTC dates."""
    return {
        "now": _iso(now),
        "windows": [
            {
                "service": state.key,
                "window_seconds": state.seconds,
                "used": state.used,
                "max": state.max,
                "remaining": state.remaining,
                "percent": _percent(state),
                "resets_at": _iso(state.resets_at),
                "resets_in": (state.resets_at - now).total_seconds(),
            }
            for state in states
        ],
    }


def limits_table(states: list[WindowState], now: datetime) -> Table:
    """One row per window: service, length, used / max, percentage, resets in."""
    table = Table(title="Rate-limit windows")
    for name in ("service", "window", "used / max", "used", "resets in"):
        table.add_column(name, justify="left" if name == "service" else "right")
    for state in states:
        table.add_row(
            state.key,
            format_seconds(state.seconds),
            f"{state.used} / {state.max}",
            f"{_percent(state):.1f}%",
            format_seconds((state.resets_at - now).total_seconds()),
        )

    return table


def format_seconds(seconds: float) -> str:
    """A length for people: ``45s``, ``15m``, ``7m 30s``, ``1d``, ``11h 52m``."""
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")

    return " ".join(parts[:2]) or "0s"


def _percent(state: WindowState) -> float:
    if state.max <= 0:
        return 100.0

    return round(100 * state.used / state.max, 1)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _now() -> datetime:
    # One clock reading per command; tests replace this function.
    return datetime.now(UTC)
