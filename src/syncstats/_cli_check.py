"""``syncstats check``: a Nagios/Icinga plugin over the latest snapshot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
from pymongo.errors import PyMongoError

from syncstats._cli import (
    INSTANT,
    common_options,
    configure_logging,
    exit_on_sigterm,
    redactor,
    register_secrets,
)
from syncstats._mongo import Document, open_databases
from syncstats._windows import parse_duration
from syncstats.errors import ConfigError, SyncStatsError
from syncstats.settings import load_settings
from syncstats.snapshot import latest_status, number_or_none

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


@dataclass(frozen=True)
class Thresholds:
    """A warning and a critical level; reaching a level raises the state."""

    warning: float
    critical: float

    @classmethod
    def parse(cls, text: str, *, duration: bool) -> Thresholds:
        """Read ``W:C``; with ``duration`` each side may carry a unit (``15m``)."""
        parts = text.split(":")
        if len(parts) != 2:
            raise ValueError(f"{text!r} is not WARNING:CRITICAL")
        read = parse_duration if duration else _number
        try:
            warning, critical = (read(part) for part in parts)
        except ValueError:
            raise ValueError(f"{text!r} is not WARNING:CRITICAL") from None
        if warning > critical:
            raise ValueError(f"{text!r}: the warning level is above the critical")
        return cls(warning, critical)

    def state(self, value: float) -> int:
        """The state ``value`` puts us in."""
        if value >= self.critical:
            return CRITICAL
        return WARNING if value >= self.warning else OK


@dataclass(frozen=True)
class Verdict:
    """A plugin result: state, the reasons, and the performance data."""

    state: int
    reasons: list[str]
    perfdata: list[str]

    def line(self) -> str:
        """The plugin's one output line."""
        text = f"SYNCSTATS {STATE_NAMES[self.state]} - " + "; ".join(self.reasons)
        return text + (" | " + " ".join(self.perfdata) if self.perfdata else "")


def evaluate(
    status: Document | None,
    now: datetime,
    max_age: float,
    limits: dict[str, Thresholds],
) -> Verdict:
    """Judge the latest ``sync_status_stats`` document as of ``now``.

    No snapshot, or one older than ``max_age`` seconds, is critical; a
    stalled queue (wait unknown while its step succeeded) is critical; a
    failed step is a warning; each figure is judged by its thresholds.
    """
    if status is None or not isinstance(status.get("Timestamp"), datetime):
        return Verdict(CRITICAL, ["no snapshot stored yet"], [])
    age = (now - status["Timestamp"]).total_seconds()
    checks = [_check_age(age, max_age), *_check_steps(status)]
    checks.append(_check_queue(status, limits["queue_wait"]))
    for label, field in (("locked", "Locked"), ("error_users", "ErrorUsers")):
        checks.append(_check_count(label, status.get(field), limits[label]))

    problems = [(state, text) for state, text, _ in checks if state != OK and text]
    state = max((state for state, _ in problems), default=OK)
    reasons = [text for level, text in problems if level == state] or [_summary(status)]
    perfdata = [
        f"snapshot_age={max(age, 0):.0f}s;;{max_age:g};0",
        *(perf for _, _, perf in checks if perf),
    ]

    return Verdict(state, reasons, perfdata)


Check = tuple[int, str, str]


def _check_age(age: float, max_age: float) -> Check:
    if age > max_age:
        return CRITICAL, f"snapshot is {age / 60:.0f} min old", ""
    return OK, "", ""


def _check_steps(status: Document) -> list[Check]:
    steps = status.get("Steps") or {}
    failed = sorted(name for name, ok in steps.items() if not ok)
    if failed:
        return [(WARNING, "failed steps: " + ", ".join(failed), "")]
    return []


def _check_queue(status: Document, limits: Thresholds) -> Check:
    wait = number_or_none(status.get("SyncQueueHeadTime"))
    warn, crit = f"{limits.warning:g}", f"{limits.critical:g}"
    if wait is None:
        if (status.get("Steps") or {}).get("queue", True):
            return CRITICAL, "queue stalled: messages wait and none are acked", ""
        return WARNING, "queue wait unknown", ""
    state = limits.state(wait)
    perf = f"queue_wait={wait:.0f}s;{warn};{crit};0"
    return state, f"queue wait {_minutes(wait)}" if state else "", perf


def _check_count(label: str, raw: Any, limits: Thresholds) -> Check:
    value = number_or_none(raw)
    if value is None:
        return OK, "", ""
    state = limits.state(value)
    perf = f"{label}={value:g};{limits.warning:g};{limits.critical:g};0"
    text = f"{value:g} {label.replace('_', ' ')}" if state else ""
    return state, text, perf


def _summary(status: Document) -> str:
    wait = number_or_none(status.get("SyncQueueHeadTime"))
    return (
        f"queue wait {'unknown' if wait is None else _minutes(wait)}, "
        f"{status.get('Locked')} locked, {status.get('ErrorUsers')} with errors"
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a count")
    return value


class _PluginCommand(click.Command):
    """A command whose usage errors are plugin results: UNKNOWN, exit 3."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse as usual; report a usage error on stdout as UNKNOWN."""
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.Exit:
            raise
        except click.ClickException as exc:
            click.echo(f"SYNCSTATS UNKNOWN - {exc.format_message()}")
            ctx.exit(UNKNOWN)


@click.command(cls=_PluginCommand)
@click.option("--now", type=INSTANT, help="Judge as of this instant.")
@click.option("--max-age", default="30m", show_default=True, help="Stale after.")
@click.option(
    "--queue-wait",
    default="30m:2h",
    show_default=True,
    help="WARNING:CRITICAL queue wait (durations).",
)
@click.option(
    "--locked", default="50:200", show_default=True, help="WARNING:CRITICAL users."
)
@click.option(
    "--error-users",
    default="500:2000",
    show_default=True,
    help="WARNING:CRITICAL users with errors.",
)
@common_options
def check(
    now: datetime | None,
    max_age: str,
    queue_wait: str,
    locked: str,
    error_users: str,
    config_path: str | None,
    verbose: bool,
) -> None:
    """Judge the latest snapshot for Nagios or Icinga (exit 0, 1, 2 or 3)."""
    configure_logging(verbose)
    exit_on_sigterm()
    try:
        age_limit = parse_duration(max_age)
        limits = {
            "queue_wait": Thresholds.parse(queue_wait, duration=True),
            "locked": Thresholds.parse(locked, duration=False),
            "error_users": Thresholds.parse(error_users, duration=False),
        }
        settings = load_settings(config_path)
        register_secrets(settings)
    except (ValueError, ConfigError) as exc:
        _exit(Verdict(UNKNOWN, [str(exc)], []))
    # A past --now judges the history as it stood then.
    as_of = now
    now = now or datetime.now(UTC)

    try:
        with open_databases(settings) as dbs:
            status = latest_status(dbs.main, as_of)
    except ConfigError as exc:
        _exit(Verdict(UNKNOWN, [str(exc)], []))
    except (SyncStatsError, PyMongoError) as exc:
        _exit(Verdict(CRITICAL, [str(exc).splitlines()[0]], []))
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C, or SIGTERM unwinding: the monitor still gets its one line.
        _exit(Verdict(UNKNOWN, ["interrupted before MongoDB answered"], []))

    _exit(evaluate(status, now, age_limit, limits))


def _exit(verdict: Verdict) -> None:
    click.echo(redactor(verdict.line()))
    raise SystemExit(verdict.state)
