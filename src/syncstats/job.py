"""One stats pass: compute every figure, store the snapshot, refresh windows.

Each step runs on its own: a failing step is logged and reported, and the
steps after it still run and write what they can.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.errors import PyMongoError

from syncstats import queue, stats
from syncstats._mongo import Databases, describe_error
from syncstats.errors import SyncStatsError
from syncstats.ratelimit import RefreshReport, refresh_windows
from syncstats.settings import Settings
from syncstats.snapshot import Snapshot, prune_history, store_snapshot
from syncstats.sync_errors import ErrorGroupsReport, rebuild_common_errors
from syncstats.totals import DistanceReport, compute_distance, reading_database

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """How one step ended: ``error`` is a one-line reason when it failed."""

    name: str
    ok: bool
    seconds: float
    error: str | None = None


@dataclass
class RunReport:
    """What a pass computed, stored and reported."""

    snapshot: Snapshot
    dry_run: bool
    steps: list[StepResult] = field(default_factory=list)
    refresh: RefreshReport | None = None
    errors: ErrorGroupsReport | None = None
    distance: DistanceReport | None = None

    @property
    def ok(self) -> bool:
        """Whether every step succeeded."""
        return all(step.ok for step in self.steps)

    @property
    def failed(self) -> list[StepResult]:
        """The steps that failed, in order."""
        return [step for step in self.steps if not step.ok]


def run_pass(
    dbs: Databases, settings: Settings, now: datetime, *, dry_run: bool = False
) -> RunReport:
    """Run every step once with the single instant ``now`` (aware UTC).

    With ``dry_run`` nothing is written or deleted. A backdated pass, one
    whose ``now`` is before the stored ``stats``, only appends its history
    entry: the live collections, the totals' state, the queue samples and
    the rate-limit windows stay as the later pass left them.
    """
    report = RunReport(Snapshot(now), dry_run)
    figures: dict[str, Any] = {}
    db = dbs.main
    history_only = not dry_run and _later_pass_stored(dbs, now)
    if history_only:
        logger.info("a later pass is stored: this one adds its history entry only")
    # What the steps themselves write: nothing on a dry or backdated run.
    steps_write = not (dry_run or history_only)
    # The heavy reads may go to secondaries; writes stay on the primary.
    read_db = reading_database(dbs.client, db.name, settings.read_preference)

    def distance() -> None:
        totals = compute_distance(
            db,
            now,
            reconcile_every=settings.reconcile_every,
            dry_run=not steps_write,
            read_db=read_db,
        )
        report.distance = totals
        figures.update(
            total_distance=totals.total,
            last_day_distance=totals.last_day,
            last_hour_distance=totals.last_hour,
            by_destination={
                service: (dest.total, dest.last_day, dest.last_hour)
                for service, dest in totals.by_destination.items()
            },
        )

    def enqueue() -> None:
        figures["enqueue_wait"] = stats.enqueue_wait(read_db, now)

    def queue_wait() -> None:
        measured = queue.measure_queue(
            db,
            now,
            stats_url=settings.rabbitmq_stats_url,
            timeout=settings.rabbitmq_timeout,
            interval=settings.interval,
            prometheus_url=settings.rabbitmq_prometheus_url,
            dry_run=not steps_write,
        )
        figures.update(
            queue_wait=measured.wait,
            queue_length=measured.length,
            queue_ack_rate=measured.ack_rate,
        )

    def workers() -> None:
        if steps_write:
            stats.prune_worker_records(db, now)
        hour = stats.worker_time(db, now)
        figures.update(
            syncs_last_hour=hour.syncs,
            sync_time_used=hour.time_used,
            average_sync_duration=hour.average_duration,
        )

    def users() -> None:
        counts = stats.count_users(read_db, now)
        figures.update(
            locked=counts.locked,
            pending=counts.pending,
            error_users=counts.error_users,
            total_errors=counts.total_errors,
        )

    def errors() -> None:
        report.errors = rebuild_common_errors(db, now, dry_run=not steps_write)

    def ratelimit() -> None:
        limits = settings.limits()
        if limits:
            report.refresh = refresh_windows(
                dbs.ratelimit, limits, now, dry_run=not steps_write
            )

    # The refresh runs before the store so that the snapshot records how it
    # went; only the store's own outcome is missing from what it stores.
    for name, step in (
        ("distance", distance),
        ("enqueue", enqueue),
        ("queue", queue_wait),
        ("workers", workers),
        ("users", users),
        ("errors", errors),
        ("ratelimit", ratelimit),
    ):
        report.steps.append(_run_step(name, step))

    steps = {result.name: result.ok for result in report.steps}
    report.snapshot = Snapshot(now, steps=steps).replace(**figures)

    def store() -> None:
        if not dry_run:
            store_snapshot(db, report.snapshot)
        if steps_write:
            prune_history(db, now, settings.history_days)

    report.steps.append(_run_step("store", store))
    _log_summary(report)

    return report


def _later_pass_stored(dbs: Databases, now: datetime) -> bool:
    """Whether the ``stats`` document is of a pass after ``now``.

    A server that does not answer here fails the steps that follow instead.
    """
    try:
        latest = dbs.main.stats.find_one({"Updated": {"$gt": now}}, {"_id": 1})
    except PyMongoError:
        return False

    return latest is not None


def _run_step(name: str, step: Callable[[], None]) -> StepResult:
    started = time.perf_counter()
    try:
        step()
    except (PyMongoError, SyncStatsError) as exc:
        error = _one_line(exc)
        logger.error("step %s failed: %s", name, error)
        logger.debug("step %s failed", name, exc_info=exc)
        return StepResult(name, False, time.perf_counter() - started, error)
    except Exception as exc:
        # A bug in one step must not cost the others their results.
        error = f"internal error: {type(exc).__name__}: {_one_line(exc)}"
        logger.error("step %s failed: %s", name, error)
        logger.debug("step %s failed", name, exc_info=exc)
        return StepResult(name, False, time.perf_counter() - started, error)

    seconds = time.perf_counter() - started
    logger.debug("step %s done in %.3f s", name, seconds)

    return StepResult(name, True, seconds)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, PyMongoError):
        return f"MongoDB: {describe_error(exc)}"
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text[:300]


def _log_summary(report: RunReport) -> None:
    failed = ", ".join(step.name for step in report.failed) or "none"
    logger.info(
        "stats pass at %s%s: %d steps, failed: %s",
        report.snapshot.now.isoformat(),
        " (dry run)" if report.dry_run else "",
        len(report.steps),
        failed,
    )
