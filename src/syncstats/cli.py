"""The ``syncstats`` command line."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from syncstats import __version__, _demo
from syncstats._cli import (
    EXIT_CONFIG,
    EXIT_FAILED_STEP,
    EXIT_OK,
    INSTANT,
    common_options,
    fail,
    guarded,
    redactor,
    setup,
)
from syncstats._cli_check import check
from syncstats._cli_indexes import indexes
from syncstats._cli_limits import limits
from syncstats._cli_serve import serve
from syncstats._mongo import open_databases
from syncstats.indexes import apply_indexes, warn_missing
from syncstats.job import RunReport, run_pass
from syncstats.lease import JOBS_LEASE, Lease
from syncstats.snapshot import Snapshot, stats_document, status_document


class _Group(click.Group):
    """The command group, printing a usage error as one line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run the command line; exit with the command's code."""
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            fail(exc.exit_code, exc.format_message())
        except click.Abort:
            fail(130, "aborted")
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Show the help, not an error, when no command is given (exit 2)."""
        if not args:
            click.echo(ctx.get_help())
            ctx.exit(EXIT_CONFIG)
        return super().parse_args(ctx, args)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="syncstats")
def main() -> None:
    """Statistics, monitoring and shared rate limits for Tapiriik-style sync."""


@main.command()
@click.option("--now", type=INSTANT, help="Run as of this instant (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--dry-run", is_flag=True, help="Compute and print; write nothing.")
@common_options
@guarded
def run(
    now: datetime | None,
    as_json: bool,
    dry_run: bool,
    config_path: str | None,
    verbose: bool,
) -> None:
    """Compute the statistics once, store the snapshot, refresh the windows."""
    settings = setup(config_path, verbose)
    now = now or datetime.now(UTC)

    with open_databases(settings) as dbs:
        if dry_run:
            warn_missing(dbs)
            report = run_pass(dbs, settings, now, dry_run=True)
        else:
            with Lease(dbs.main, JOBS_LEASE, ttl=settings.lease_ttl).hold():
                warn_missing(dbs)
                report = run_pass(dbs, settings, now)

    print_report(report, as_json)
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED_STEP)


@main.command()
@click.option("--seed", default=1, show_default=True, help="Seed of the data set.")
@common_options
@guarded
def demo(seed: int, config_path: str | None, verbose: bool) -> None:
    """Fill the embedded database with sample data and run the stats on it."""
    settings = setup(config_path, verbose)
    if settings.mongo_uri is not None:
        raise click.UsageError(
            "demo fills the embedded database only; unset mongo_uri to use it"
        )
    now = datetime.now(UTC)

    with (
        open_databases(settings) as dbs,
        Lease(dbs.main, JOBS_LEASE, ttl=settings.lease_ttl).hold(),
    ):
        if _demo.has_data(dbs.main):
            click.echo("The embedded database already holds data; using it.", err=True)
        else:
            summary = _demo.populate(dbs.main, now, seed=seed)
            click.echo(
                f"Wrote a sample data set: {summary.users:,} users, "
                f"{summary.activities:,} activities.",
                err=True,
            )
        apply_indexes(dbs)
        report = run_pass(dbs, settings, now)

    print_report(report, as_json=False)
    if [step.name for step in report.failed] == ["queue"]:
        # A first look needs no RabbitMQ: say why the queue figure is missing.
        click.echo(
            f"No queue wait: {redactor(report.failed[0].error or 'no reply')}. "
            "It comes from the management API of the RabbitMQ that holds "
            "Tapiriik's queue: set rabbitmq_stats_url to it.",
            err=True,
        )
        sys.exit(EXIT_OK)
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED_STEP)


main.add_command(indexes)
main.add_command(limits)
main.add_command(check)
main.add_command(serve)


def print_report(report: RunReport, as_json: bool) -> None:
    """Print a run's outcome as JSON or as a short human summary."""
    if as_json:
        document = _finite(report_json(report))
        click.echo(redactor(json.dumps(document, default=_json_default)))
        return
    Console(highlight=False).print(_summary_table(report))


def report_json(report: RunReport) -> dict[str, Any]:
    """The ``--json`` object: snapshot documents and each step's outcome."""
    status = status_document(report.snapshot)
    stats = stats_document(report.snapshot)
    return {
        "now": report.snapshot.now,
        "dry_run": report.dry_run,
        "ok": report.ok,
        "status": {k: v for k, v in status.items() if k != "Steps"},
        "stats": {k: v for k, v in stats.items() if k != "Steps"},
        "steps": {
            step.name: {
                "ok": step.ok,
                "error": step.error,
                "seconds": round(step.seconds, 4),
            }
            for step in report.steps
        },
        "ratelimit": report.refresh.as_dict() if report.refresh else None,
        "errors": _errors_json(report),
        "distance": _distance_json(report),
    }


def _distance_json(report: RunReport) -> dict[str, Any] | None:
    """How the all-time distance was found: a recount (and why) or increments."""
    if report.distance is None:
        return None
    return {
        "recount": report.distance.recount,
        "drift": report.distance.drift,
        "counted": report.distance.counted,
    }


def _errors_json(report: RunReport) -> dict[str, Any] | None:
    if report.errors is None:
        return None
    return {
        "records": report.errors.records,
        "skipped": report.errors.skipped,
        "groups": len(report.errors.groups),
    }


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by null, as JSON allows."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _summary_table(report: RunReport) -> Table:
    snap = report.snapshot
    title = f"syncstats at {snap.now:%Y-%m-%d %H:%M:%S} UTC"
    table = Table(title=title + (" (dry run)" if report.dry_run else ""))
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("distance synced, all time", _km(snap.total_distance)),
        ("distance synced, last 24 h", _km(snap.last_day_distance)),
        ("distance synced, last hour", _km(snap.last_hour_distance)),
        *_destination_rows(snap),
        ("queue wait", _duration(snap.queue_wait, stalled=snap.steps.get("queue"))),
        ("enqueue wait", _duration(snap.enqueue_wait)),
        ("syncs, last hour", _count(snap.syncs_last_hour)),
        ("worker time, last hour", _duration(snap.sync_time_used)),
        ("mean sync duration", _duration(snap.average_sync_duration)),
        ("users locked", _count(snap.locked)),
        ("users pending", _count(snap.pending)),
        ("users with errors", _count(snap.error_users)),
        ("non-blocking errors", _count(snap.total_errors)),
    ]
    for label, value in rows:
        table.add_row(label, value)
    if report.errors is not None:
        table.add_row("sync error groups", report.errors.summary())
    refresh = report.refresh
    table.add_row(
        "rate-limit windows",
        refresh.summary() if refresh else "none configured",
    )
    for step in report.failed:
        table.add_row(f"[red]step {step.name}[/red]", "[red]failed (see log)[/red]")

    return table


def _destination_rows(snap: Snapshot) -> list[tuple[str, str]]:
    if not snap.by_destination:
        return []
    rows = [("  by destination: all · 24 h · 1 h", "")]
    for service, figures in sorted(snap.by_destination.items()):
        total, last_day, last_hour = (_km(value) for value in figures)
        rows.append((f"  to {service}", f"{total} · {last_day} · {last_hour}"))
    return rows


def _km(metres: float | None) -> str:
    return "failed" if metres is None else f"{metres / 1000:,.1f} km"


def _count(value: float | None) -> str:
    return "failed" if value is None else f"{value:,.0f}"


def _duration(seconds: float | None, stalled: bool | None = None) -> str:
    if seconds is None:
        return "unknown (stalled)" if stalled else "failed"
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
