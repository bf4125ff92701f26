"""Calls per second and overshoot of the rate limiter against Tapiriik's pattern.

Run by hand: ``.venv/bin/python benchmarks/ratelimit.py [--uri URI]``. Without
``--uri`` it starts its own in-memory SecantusDB. Each run gives every process
the same number of attempts on one key whose quarter-hour budget is half of all
attempts, then counts the grants, the documents and the commands sent.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient, monitoring
from pymongo.collection import Collection
from pymongo.database import Database

from syncstats import _embedded
from syncstats._mongo import Document, make_client
from syncstats.ratelimit import RateLimiter, RateLimitExceeded, refresh_windows

KEY = "strava"
NOW = datetime(2026, 12, 3, 12, 7, 30, tzinfo=UTC)
PROCESSES = (1, 4, 16)
LIMITERS = ("syncstats", "tapiriik")


@dataclass(frozen=True)
class Result:
    """One run: who limited, how many processes, what came out."""

    limiter: str
    processes: int
    attempts: int
    granted: int
    budget: int
    worst_excess: int
    seconds: float
    commands: int

    def row(self) -> list[str]:
        """The cells of this run in the printed table."""
        return [
            self.limiter,
            str(self.processes),
            str(self.attempts),
            f"{self.granted} / {self.budget}",
            str(max(0, self.granted - self.budget)),
            str(self.worst_excess),
            f"{self.attempts / self.seconds:,.0f}",
            f"{self.commands / self.attempts:.2f}",
        ]


class _CommandCounter(monitoring.CommandListener):
    """Counts the commands a process sends: its round trips."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def tapiriik_acquire(collection: Collection[Document], key: str) -> bool:
    """Tapiriik's worker: read every window, refuse when one is over its max,
    then add one to every window of the key in a second call."""
    for window in collection.find({"Key": key}, {"Max": 1, "Count": 1}):
        if window["Max"] < window["Count"]:
            return False
    collection.update_many({"Key": key}, {"$inc": {"Count": 1}})
    return True


def worker(
    uri: str,
    name: str,
    limiter: str,
    limits: dict[str, list[tuple[float, int]]],
    attempts: int,
    start: Any,
    results: Any,
) -> None:
    """Make ``attempts`` calls once every process is ready; report grants."""
    counter = _CommandCounter()
    client: MongoClient[Document] = MongoClient(
        uri, tz_aware=True, tzinfo=UTC, event_listeners=[counter]
    )
    acquire = _acquirer(limiter, client[name], limits)
    client.admin.command("ping")
    start.wait(120)
    counter.count = 0
    granted = sum(acquire() for _ in range(attempts))
    results.put((granted, counter.count))
    client.close()


def _acquirer(
    limiter: str, database: Database[Document], limits: dict[str, Any]
) -> Callable[[], bool]:
    if limiter == "tapiriik":
        return lambda: tapiriik_acquire(database.limits, KEY)
    ours = RateLimiter(database, limits)

    def acquire() -> bool:
        try:
            ours.acquire(KEY, NOW)
        except RateLimitExceeded:
            return False
        return True

    return acquire


def run(uri: str, limiter: str, processes: int, attempts: int) -> Result:
    """One measured run on a fresh database."""
    name = f"bench_{limiter}_{processes}_{time.monotonic_ns()}"
    total = processes * attempts
    budget = total // 2
    limits = {KEY: [(900.0, budget), (86400.0, 10 * budget)]}
    setup = make_client(uri, 10)
    database = setup[name]
    # Tapiriik limits nothing until its refresh has created the windows.
    refresh_windows(database, limits, NOW)

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes + 1), context.Queue()
    children = [
        context.Process(
            target=worker,
            args=(uri, name, limiter, limits, attempts, start, results),
        )
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    start.wait(120)
    began = time.perf_counter()
    outcomes = [results.get(timeout=600) for _ in children]
    seconds = time.perf_counter() - began
    for child in children:
        child.join(60)

    excess = max(doc["Count"] - doc["Max"] for doc in database.limits.find())
    setup.drop_database(name)
    setup.close()

    return Result(
        limiter,
        processes,
        total,
        sum(granted for granted, _ in outcomes),
        budget,
        excess,
        seconds,
        sum(commands for _, commands in outcomes),
    )


def print_table(results: list[Result]) -> None:
    """A Markdown table, ready for docs/ratelimit.md."""
    header = [
        "limiter",
        "processes",
        "calls",
        "granted / budget",
        "overshoot",
        "max Count - Max",
        "calls/s",
        "commands/call",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for result in results:
        print("| " + " | ".join(result.row()) + " |")


def main() -> None:
    """Run every limiter at every concurrency and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", help="MongoDB URI; default: an embedded server")
    parser.add_argument(
        "--attempts", type=int, default=200, help="calls per process (default 200)"
    )
    options = parser.parse_args()
    server = None if options.uri else _embedded.start(":memory:")
    uri = options.uri or server.uri  # type: ignore[union-attr]
    try:
        results = [
            run(uri, limiter, processes, options.attempts)
            for processes in PROCESSES
            for limiter in LIMITERS
        ]
    finally:
        if server is not None:
            server.stop()

    print_table(results)


if __name__ == "__main__":
    main()
