"""Prometheus metrics read from the stored snapshot at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncstats._mongo import Databases, Document
from syncstats.ratelimit import RateLimiter
from syncstats.snapshot import (
    Snapshot,
    latest_status,
    number_or_none,
    snapshot_from_document,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# Each single-value gauge: its name, its help text and the snapshot figure.
GAUGES = (
    ("syncstats_queue_wait_seconds", "Estimated queue wait.", "queue_wait"),
    ("syncstats_enqueue_wait_seconds", "Enqueue wait.", "enqueue_wait"),
    (
        "syncstats_worker_busy_seconds",
        "Worker time used in the last hour.",
        "sync_time_used",
    ),
    (
        "syncstats_sync_duration_average_seconds",
        "Mean sync duration over the last hour.",
        "average_sync_duration",
    ),
    ("syncstats_syncs_last_hour", "Syncs in the last hour.", "syncs_last_hour"),
    ("syncstats_users_locked", "Users locked by a worker.", "locked"),
    ("syncstats_users_pending", "Users whose automatic sync is overdue.", "pending"),
    ("syncstats_users_with_errors", "Users with sync errors.", "error_users"),
    ("syncstats_sync_errors", "Total non-blocking sync errors.", "total_errors"),
)
# The ``window`` label of each distance figure.
DISTANCES = (
    ("all", "total_distance"),
    ("24h", "last_day_distance"),
    ("1h", "last_hour_distance"),
)
# The ``window`` label of each distance a ``ByDestination`` entry holds.
DESTINATION_DISTANCES = (
    ("all", "TotalDistanceSynced"),
    ("24h", "LastDayDistanceSynced"),
    ("1h", "LastHourDistanceSynced"),
)


def destination_distances(document: Document) -> dict[str, dict[str, float]]:
    """Metres synced per destination service and ``window`` label.

    Read from the ``ByDestination`` field of a ``stats`` or
    ``sync_status_stats`` document; empty when the field is absent (older
    snapshots, or a pass whose distance step failed). Entries and figures
    that are not well formed are left out.
    """
    by_destination = document.get("ByDestination")
    if not isinstance(by_destination, dict):
        return {}
    distances = {}
    for destination, fields in sorted(by_destination.items()):
        if not destination or not isinstance(fields, dict):
            continue
        windows = {
            window: value
            for window, name in DESTINATION_DISTANCES
            if (value := number_or_none(fields.get(name))) is not None
        }
        if windows:
            distances[str(destination)] = windows

    return distances


class SnapshotCollector(Collector):
    """Gauges of the latest snapshot and the current rate-limit windows.

    Everything is read at scrape time; nothing is written or recomputed.
    Raises what the database raises, so a scrape fails instead of lying.
    """

    def __init__(
        self, databases: Databases, limiter: RateLimiter, clock: Clock
    ) -> None:
        self._databases = databases
        self._limiter = limiter
        self._clock = clock

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not touch the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Read the snapshot and the windows, and yield their gauges."""
        document = latest_status(self._databases.main)
        snapshot = None if document is None else snapshot_from_document(document)
        if document is not None and snapshot is not None:
            yield from snapshot_metrics(snapshot, destination_distances(document))
        yield from window_metrics(self._limiter, self._clock())


def snapshot_metrics(
    snapshot: Snapshot, by_destination: dict[str, dict[str, float]] | None = None
) -> Iterator[Metric]:
    """The gauges of one snapshot; a figure that is ``None`` is left out.

    ``by_destination`` holds metres per destination and ``window`` label, as
    `destination_distances` reads them. The overall distances keep the
    ``window`` label alone, which Prometheus stores as ``destination=""``.
    """
    distance = GaugeMetricFamily(
        "syncstats_distance_synced_meters",
        "Distance synced, overall and per destination service.",
        labels=["window"],
    )
    for window, attr in DISTANCES:
        _add(distance, [window], getattr(snapshot, attr))
    for destination, windows in (by_destination or {}).items():
        for window, metres in windows.items():
            labels = {"window": window, "destination": destination}
            distance.add_sample(distance.name, labels, metres)
    yield distance

    for name, help_text, attr in GAUGES:
        value = getattr(snapshot, attr)
        if value is not None:
            yield GaugeMetricFamily(name, help_text, value=value)

    yield GaugeMetricFamily(
        "syncstats_snapshot_timestamp_seconds",
        "Unix time of the snapshot.",
        value=snapshot.now.timestamp(),
    )
    steps = GaugeMetricFamily(
        "syncstats_step_success",
        "1 if the step succeeded in the last run.",
        labels=["step"],
    )
    for step, ok in sorted(snapshot.steps.items()):
        steps.add_metric([step], 1.0 if ok else 0.0)
    yield steps


def window_metrics(limiter: RateLimiter, now: datetime) -> Iterator[Metric]:
    """Used and maximum calls of every current rate-limit window."""
    labels = ["service", "window_seconds"]
    used = GaugeMetricFamily(
        "syncstats_ratelimit_used", "Calls spent in the current window.", labels=labels
    )
    most = GaugeMetricFamily(
        "syncstats_ratelimit_max", "Calls allowed in the current window.", labels=labels
    )
    for key in limiter.keys:
        for window in limiter.windows(key, now):
            values = [key, f"{window.seconds:g}"]
            used.add_metric(values, window.used)
            most.add_metric(values, window.max)
    yield used
    yield most


def create_registry(
    databases: Databases, limiter: RateLimiter, clock: Clock
) -> CollectorRegistry:
    """A registry of its own holding only the `SnapshotCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(databases, limiter, clock))

    return registry


def _add(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)
