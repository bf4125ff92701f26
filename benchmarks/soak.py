"""Soak ``syncstats serve`` and the rate limiter together for a bounded time.

Run by hand, not a test: ``.venv/bin/python benchmarks/soak.py [--seconds 120]
[--workers 8] [--interval 5s] [--uri URI]``. Without ``--uri`` it starts
SecantusDB on a temporary directory and stops it at the end; with one, it
drops and refills the databases ``syncstats_soak`` and
``syncstats_soak_ratelimit`` only.

While ``serve`` runs its passes every ``--interval`` and refreshes the
rate-limit windows every 2 s, worker processes spend calls on one key with
10 s and 60 s windows, so windows roll over all the time, and a local
stand-in for RabbitMQ's management API flaps between a good reply, a 500,
a body that is not JSON and no answer at all. At the end it prints one
Markdown table and exits 1 when a window granted more calls than its
maximum, a stored ``Count`` went above ``Max`` or away from the calls
granted, a window was stored twice, an interval of the soak got no snapshot
or two, a step other than the queue failed, a worker failed, or ``serve`` did
not exit with 0 on SIGTERM. docs/soak.md describes every row.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from queue import Empty
from typing import Any

import httpx
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from syncstats import _demo, _embedded
from syncstats._mongo import Databases, Document, make_client
from syncstats._windows import parse_duration, window_bounds
from syncstats.errors import RateLimitExceeded, SyncStatsError
from syncstats.indexes import apply_indexes
from syncstats.ratelimit import RateLimiter

KEY = "strava"
LIMITS: dict[str, list[tuple[float, int]]] = {KEY: [(10.0, 50), (60.0, 200)]}
DATABASE = "syncstats_soak"
RATELIMIT_DATABASE = "syncstats_soak_ratelimit"
USERS = 500
ACTIVITIES = 2000
RATELIMIT_INTERVAL = "2s"
RABBITMQ_TIMEOUT = 1.0
HANG = 3 * RABBITMQ_TIMEOUT
"""How long the management stand-in keeps a request without answering."""
MODES = ("good", "500", "not JSON", "hang")
FIXTURE = (
    Path(__file__).resolve().parent.parent
    / "tests/fixtures/rabbitmq/c1_consumer_acking_60s__with_params.json"
)
QUEUE_PATH = (
    "/api/queues/%2F/tapiriik-users"
    "?lengths_age=3600&lengths_incr=60&msg_rates_age=3600&msg_rates_incr=60"
)
WATCH_EVERY = 0.5
HEALTH_EVERY = 2.0
STOP_TIMEOUT = 30.0
KIND_WIDTH = 110
_LISTENING = re.compile(r"serving on http://127\.0\.0\.1:(\d+)")
_LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<text>.*)$")

WindowKey = tuple[float, float]
"""A window instance: its length in seconds and its end in Unix seconds."""
Sample = tuple[float, int]
"""When (Unix seconds) and how much (KiB) a process had resident."""


class ManagementStandIn:
    """A local management API that cycles through `MODES`, ``flap`` s each.

    ``good`` serves a reply captured from RabbitMQ, ``500`` an error status,
    ``not JSON`` a 200 whose body does not parse, and ``hang`` keeps the
    request `HANG` seconds, past ``rabbitmq_timeout``, and closes it unanswered.
    """

    def __init__(self, flap: float) -> None:
        self.flap = flap
        self.served: Counter[str] = Counter()
        self.reply = FIXTURE.read_bytes()
        self._started = time.monotonic()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="management", daemon=True
        )

    @property
    def url(self) -> str:
        """The queue's URL on this server, with RabbitMQ's default credentials."""
        port = self._server.server_address[1]
        return f"http://guest:guest@127.0.0.1:{port}{QUEUE_PATH}"

    def mode(self) -> str:
        """The mode that answers a request arriving now."""
        elapsed = time.monotonic() - self._started
        return MODES[int(elapsed // self.flap) % len(MODES)]

    def start(self) -> None:
        """Answer requests from a background thread."""
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop answering; hanging requests end with their daemon threads."""
        self._server.shutdown()
        self._server.server_close()


def _handler(stand_in: ManagementStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            mode = stand_in.mode()
            stand_in.served[mode] += 1
            if mode == "hang":
                time.sleep(HANG)
                self.close_connection = True
            elif mode == "500":
                self._answer(500, b'{"error":"Internal Server Error"}')
            elif mode == "not JSON":
                self._answer(200, b"<html>502 Bad Gateway</html>")
            else:
                self._answer(200, stand_in.reply)

        def handle(self) -> None:
            # serve has given up on a hanging request by the time it ends.
            with suppress(BrokenPipeError, ConnectionResetError):
                super().handle()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@dataclass
class WorkerTally:
    """What one worker process saw; plain values, so it crosses processes."""

    granted: int = 0
    refused: Counter[float] = field(default_factory=Counter)
    """Refusals by the length of the window that refused."""
    errors: Counter[str] = field(default_factory=Counter)
    """Errors other than refusals, by type and first line."""
    warnings: Counter[str] = field(default_factory=Counter)
    """Warnings the limiter logged, by kind."""
    grants: Counter[WindowKey] = field(default_factory=Counter)
    """Granted calls per window instance."""


class _CountingHandler(logging.Handler):
    """Counts log records into a tally instead of printing them."""

    def __init__(self, counts: Counter[str]) -> None:
        super().__init__(logging.WARNING)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        text = kind(record.getMessage())
        self.counts[f"{record.levelname} {record.name}: {text}"] += 1


def acquire_loop(
    uri: str, stop: Any, ready: Any, results: Any, pause: float, deadline: float
) -> None:
    """Spend calls on `KEY` until ``stop`` is set; put a `WorkerTally` on ``results``.

    ``deadline`` (Unix seconds) ends the loop should the parent die.
    """
    tally = WorkerTally()
    logging.getLogger().addHandler(_CountingHandler(tally.warnings))
    client = make_client(uri, 10.0)
    limiter = RateLimiter(client[RATELIMIT_DATABASE], LIMITS)
    client.admin.command("ping")
    ready.wait(120)

    while not stop.is_set() and time.time() < deadline:
        _acquire_once(limiter, tally)
        if pause:
            time.sleep(pause)

    results.put(tally)
    client.close()


def _acquire_once(limiter: RateLimiter, tally: WorkerTally) -> None:
    # The instant is read here rather than inside acquire, so that the parent
    # knows which window instances each granted call was counted in.
    now = datetime.now(UTC)
    try:
        limiter.acquire(KEY, now)
    except RateLimitExceeded as exc:
        tally.refused[exc.window_seconds] += 1
        return
    except (SyncStatsError, PyMongoError) as exc:
        tally.errors[f"{type(exc).__name__}: {kind(str(exc))}"] += 1
        return

    tally.granted += 1
    for seconds, _ in LIMITS[KEY]:
        tally.grants[(seconds, window_bounds(now, seconds)[1].timestamp())] += 1


@dataclass
class Watch:
    """What the parent saw of the windows, serve and the database meanwhile."""

    reads: int = 0
    worst_excess: int | None = None
    """The largest ``Count - Max`` of any stored window."""
    duplicates: int = 0
    """Reads that found two documents for one window instance."""
    health: Counter[str] = field(default_factory=Counter)
    rss_serve: list[Sample] = field(default_factory=list)
    rss_database: list[Sample] = field(default_factory=list)


def read_windows(limits: Collection[Document], watch: Watch) -> list[Document]:
    """Read every window of `KEY`; note the worst excess and any duplicate."""
    docs = list(limits.find({"Key": KEY}))
    watch.reads += 1
    for doc in docs:
        excess = int(doc["Count"]) - int(doc["Max"])
        if watch.worst_excess is None or excess > watch.worst_excess:
            watch.worst_excess = excess
    instances = Counter(_window_key(doc) for doc in docs)
    if any(count > 1 for count in instances.values()):
        watch.duplicates += 1

    return docs


def check_health(base: str, watch: Watch) -> None:
    """GET serve's ``/healthz`` and count the answer by status."""
    try:
        status = str(httpx.get(f"{base}/healthz", timeout=5.0).status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    watch.health[status] += 1


def rss_kib(pid: int) -> int | None:
    """The resident set size of process ``pid`` in KiB; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)

    return int(match.group(1)) if match else None


@dataclass
class Serve:
    """The ``syncstats serve`` process under soak."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def wait_listening(self, timeout: float = 60.0) -> None:
        """Wait for the log to name the port; raise if serve ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log.read_text())
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited:\n{self.log.read_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"serve did not listen within {timeout:g} s")

    def terminate(self) -> int:
        """SIGTERM it and return its exit status; kill it after `STOP_TIMEOUT`."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -signal.SIGKILL


def start_serve(uri: str, interval: float, management: str, log: Path) -> Serve:
    """Start ``syncstats serve --port 0`` on the soak databases."""
    limits = {
        key: [{"window": f"{seconds:g}s", "max": most} for seconds, most in pairs]
        for key, pairs in LIMITS.items()
    }
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SYNCSTATS_")
    }
    env = inherited | {
        "SYNCSTATS_MONGO_URI": uri,
        "SYNCSTATS_DATABASE": DATABASE,
        "SYNCSTATS_RATELIMIT_DATABASE": RATELIMIT_DATABASE,
        "SYNCSTATS_INTERVAL": f"{interval:g}s",
        "SYNCSTATS_RATELIMIT_INTERVAL": RATELIMIT_INTERVAL,
        "SYNCSTATS_RABBITMQ_STATS_URL": management,
        "SYNCSTATS_RABBITMQ_TIMEOUT": f"{RABBITMQ_TIMEOUT:g}s",
        "SYNCSTATS_RATE_LIMITS": json.dumps(limits),
    }
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "syncstats", "serve", "--port", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    return Serve(process, log)


def prepare(uri: str, now: datetime) -> Databases:
    """Empty the soak databases, fill a small Tapiriik data set, add the indexes.

    The indexes are created as ``syncstats indexes --apply`` creates them.
    """
    client = make_client(uri, 10.0)
    client.drop_database(DATABASE)
    client.drop_database(RATELIMIT_DATABASE)
    dbs = Databases(client, client[DATABASE], client[RATELIMIT_DATABASE])
    _demo.populate(dbs.main, now, users=USERS, activities=ACTIVITIES)
    apply_indexes(dbs)

    return dbs


@dataclass
class Target:
    """The database the soak runs on; ``pid`` when this script started it."""

    uri: str
    pid: int | None = None


@contextmanager
def database(uri: str | None, work: Path) -> Iterator[Target]:
    """``uri``, or a new SecantusDB with its data under ``work``, removed after."""
    if uri:
        yield Target(uri)
        return
    storage = work / "db"
    server = _embedded.start(storage)
    try:
        yield Target(server.uri, server.process.pid if server.process else None)
    finally:
        server.stop()
        shutil.rmtree(storage, ignore_errors=True)


@dataclass
class Soak:
    """The measured run: what the workers, serve and the parent saw."""

    options: argparse.Namespace
    tallies: list[WorkerTally]
    watch: Watch
    served: Counter[str]
    final_windows: list[Document]
    snapshots: list[Document]
    log: Path
    exit_code: int
    serve_started: float
    """Unix seconds when serve listened."""
    began: float
    """Unix seconds when the workers were released."""
    ended: float
    """Unix seconds when the workers were told to stop."""
    lost_workers: int = 0

    @property
    def seconds(self) -> float:
        """How long the workers ran."""
        return self.ended - self.began


def soak(options: argparse.Namespace, target: Target, work: Path) -> Soak:
    """Set up, run the workers against a running serve, stop it, gather."""
    dbs = prepare(target.uri, datetime.now(UTC))
    stand_in = ManagementStandIn(options.flap)
    stand_in.start()
    serve = start_serve(target.uri, options.interval, stand_in.url, work / "serve.log")
    try:
        since = datetime.now(UTC)
        serve.wait_listening()
        serve_started = time.time()
        run = _run_workers(options, target, serve, dbs.ratelimit.limits)
        final_windows = read_windows(dbs.ratelimit.limits, run.watch)
        exit_code = serve.terminate()
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()
        stand_in.stop()
    snapshots = read_snapshots(dbs.main, since)
    dbs.client.close()

    return Soak(
        options,
        run.tallies,
        run.watch,
        stand_in.served,
        final_windows,
        snapshots,
        serve.log,
        exit_code,
        serve_started,
        run.began,
        run.ended,
        options.workers - len(run.tallies),
    )


@dataclass
class _WorkerRun:
    tallies: list[WorkerTally]
    watch: Watch
    began: float
    ended: float


def _run_workers(
    options: argparse.Namespace,
    target: Target,
    serve: Serve,
    limits: Collection[Document],
) -> _WorkerRun:
    """Run the workers for ``--seconds`` while watching; gather their tallies."""
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    ready = context.Barrier(options.workers + 1)
    deadline = time.time() + options.seconds + 300
    children = [
        context.Process(
            target=acquire_loop,
            args=(target.uri, stop, ready, results, options.pause, deadline),
            # Ended with the soak, should it stop on an error before they do.
            daemon=True,
        )
        for _ in range(options.workers)
    ]
    for child in children:
        child.start()
    ready.wait(120)

    began = time.time()
    watch = _watch(began + options.seconds, options.warmup, serve, target, limits)
    stop.set()
    ended = time.time()
    tallies = _collect(results, len(children))
    for child in children:
        child.join(30)

    return _WorkerRun(tallies, watch, began, ended)


def _watch(
    until: float,
    warmup: float,
    serve: Serve,
    target: Target,
    limits: Collection[Document],
) -> Watch:
    watch = Watch()
    warm_at = time.time() + warmup
    next_health = 0.0
    while (now := time.time()) < until and serve.process.poll() is None:
        read_windows(limits, watch)
        if now >= next_health:
            check_health(serve.url, watch)
            next_health = now + HEALTH_EVERY
        if now >= warm_at:
            _sample_rss(watch, serve.process.pid, target.pid)
        time.sleep(WATCH_EVERY)
    _sample_rss(watch, serve.process.pid, target.pid)

    return watch


def _sample_rss(watch: Watch, serve_pid: int, database_pid: int | None) -> None:
    now = time.time()
    if (serve := rss_kib(serve_pid)) is not None:
        watch.rss_serve.append((now, serve))
    if database_pid is not None and (database := rss_kib(database_pid)) is not None:
        watch.rss_database.append((now, database))


def _collect(results: Any, expected: int) -> list[WorkerTally]:
    tallies: list[WorkerTally] = []
    for _ in range(expected):
        try:
            tallies.append(results.get(timeout=60))
        except Empty:
            # A worker that died hands in nothing: it shows as a missing tally.
            break

    return tallies


def read_snapshots(main: Database[Document], since: datetime) -> list[Document]:
    """The snapshots stored since ``since``, oldest first."""
    return list(
        main.sync_status_stats.find(
            {"Timestamp": {"$gte": since}}, {"Timestamp": 1, "Steps": 1}
        ).sort("Timestamp")
    )


@dataclass
class Verdict:
    """The rows of the table and the checks that failed."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, measure: str, value: str, expected: str = "") -> None:
        """Append a row: what was measured, its value, what it should be."""
        self.rows.append((measure, value, expected))

    def check(self, ok: bool, measure: str, value: str, expected: str) -> None:
        """Append a row that fails the soak unless ``ok``."""
        self.add(measure, value if ok else f"**{value}**", expected)
        if not ok:
            self.failures.append(measure)


def judge(run: Soak) -> Verdict:
    """Turn the run into table rows and failures."""
    verdict = Verdict()
    verdict.add("duration", f"{run.seconds:.1f} s, {run.options.workers} workers")
    _judge_limiter(run, verdict)
    _judge_snapshots(run, verdict)
    _judge_serve(run, verdict)

    return verdict


def _judge_limiter(run: Soak, verdict: Verdict) -> None:
    granted = sum(tally.granted for tally in run.tallies)
    refused = _total(tally.refused for tally in run.tallies)
    grants = _total(tally.grants for tally in run.tallies)
    errors = _total(tally.errors for tally in run.tallies)
    warnings = _total(tally.warnings for tally in run.tallies)
    maxima = dict(LIMITS[KEY])
    over = {key: n - maxima[key[0]] for key, n in grants.items() if n > maxima[key[0]]}
    by_window = ", ".join(f"{s:g} s window: {n}" for s, n in sorted(refused.items()))

    rate = f"{granted / run.seconds:.1f}/s"
    verdict.add("calls granted", f"{granted} ({rate})", _budget(run))
    verdict.add(
        "calls refused",
        f"{refused.total()} ({refused.total() / run.seconds:.0f}/s; {by_window})",
    )
    verdict.check(
        not errors and not run.lost_workers,
        "worker errors",
        _listed(errors) or f"none, {run.lost_workers} workers lost",
        "none",
    )
    verdict.add("worker log warnings", _listed(warnings) or "none")
    verdict.check(
        not over,
        "overshoot: calls granted beyond a window's max",
        f"{sum(over.values())} in {len(grants)} window instances"
        + "".join(f"; {_instance(key)}: +{n}" for key, n in sorted(over.items())),
        "0",
    )
    excess = run.watch.worst_excess
    verdict.check(
        excess is None or excess <= 0,
        "max Count - Max seen",
        f"{excess} in {run.watch.reads} reads",
        "<= 0",
    )
    drift = _drift(run.final_windows, grants)
    verdict.check(
        not drift,
        "stored Count - calls granted, windows left at the end",
        "; ".join(drift) or "0",
        "0",
    )
    verdict.check(
        run.watch.duplicates == 0,
        "reads that saw a window twice",
        str(run.watch.duplicates),
        "0",
    )


def _budget(run: Soak) -> str:
    """The most the limits allow from the soak's start to its end."""
    allowed = min(
        most * _instances(run.began, run.ended, length) for length, most in LIMITS[KEY]
    )
    return f"<= {allowed} (the budgets of the windows the soak spans)"


def _instances(began: float, ended: float, length: float) -> int:
    """How many windows of ``length`` seconds the span touches."""
    return int(ended // length) - int(began // length) + 1


def _drift(final: list[Document], grants: Counter[WindowKey]) -> list[str]:
    # Slots given back after a refusal are not grants; a window only the
    # refresh opened holds 0. Either way Count must equal the grants.
    drift = []
    for doc in final:
        key = _window_key(doc)
        if int(doc["Count"]) != grants.get(key, 0):
            drift.append(
                f"{_instance(key)}: {doc['Count']} stored, {grants.get(key, 0)} granted"
            )

    return drift


def _judge_snapshots(run: Soak, verdict: Verdict) -> None:
    interval = run.options.interval
    slots = Counter(
        _slot(doc["Timestamp"].timestamp(), interval) for doc in run.snapshots
    )
    # The intervals that started while the workers ran; the pass of the last
    # one may not have begun when they stopped.
    soak_slots = range(
        math.ceil(run.began / interval), _slot(run.ended - 1, interval) + 1
    )
    startup_slots = range(_slot(run.serve_started, interval), soak_slots.start)
    lost = [slot for slot in soak_slots if slot not in slots]
    lost_early = [slot for slot in startup_slots if slot not in slots]
    doubled = [slot for slot, count in slots.items() if count > 1]
    late = [doc["Timestamp"].timestamp() % interval for doc in run.snapshots[1:]]
    written = sum(1 for slot in soak_slots if slot in slots)

    verdict.add(
        "snapshots written / intervals of the soak",
        f"{written} / {len(soak_slots)}",
        f"{len(soak_slots)} / {len(soak_slots)}",
    )
    verdict.check(
        not lost,
        "lost snapshots: soak intervals without one",
        _slots(lost, interval),
        "0",
    )
    verdict.add(
        "start-up intervals without one (before the workers)",
        _slots(lost_early, interval),
    )
    verdict.check(not doubled, "intervals with two snapshots", str(len(doubled)), "0")
    latest = max(late, default=0.0)
    verdict.add("latest start of a pass after its slot", f"{latest:.2f} s")
    _judge_steps(run, verdict)


def _judge_steps(run: Soak, verdict: Verdict) -> None:
    failed = Counter(
        name
        for doc in run.snapshots
        for name, ok in (doc.get("Steps") or {}).items()
        if not ok
    )
    bad_replies = sum(run.served[mode] for mode in MODES if mode != "good")
    served = ", ".join(f"{mode}: {run.served[mode]}" for mode in MODES)

    verdict.check(
        set(failed) <= {"queue"},
        "steps failed, by name",
        _listed(failed) or "none",
        "queue only, once per bad reply",
    )
    verdict.add("management API requests, by mode", served)
    verdict.add(
        "queue failures beyond the bad replies",
        str(failed["queue"] - bad_replies),
        "0",
    )


def _judge_serve(run: Soak, verdict: Verdict) -> None:
    verdict.add("/healthz answers", _listed(run.watch.health))
    kinds = log_kinds(run.log)
    verdict.add("warning and error lines in serve's log", str(kinds.total()))
    for line, count in kinds.most_common():
        verdict.add(f"- {line}", str(count))
    verdict.check(run.exit_code == 0, "serve exit code", str(run.exit_code), "0")
    verdict.add("serve RSS start / end", _growth(run.watch.rss_serve))
    if run.watch.rss_database:
        verdict.add("database RSS start / end", _growth(run.watch.rss_database))


def log_kinds(log: Path) -> Counter[str]:
    """Warning and error lines of serve's log by kind (see `kind`).

    Lines not in the log format, such as tracebacks, count as one kind.
    """
    kinds: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            kinds["(a line not in the log format)"] += 1
        elif match["level"] in ("WARNING", "ERROR", "CRITICAL"):
            kinds[f"{match['level']} {match['logger']}: {kind(match['text'])}"] += 1

    return kinds


def kind(text: str) -> str:
    """``text`` with URLs, quoted values and numbers blanked, cut short."""
    text = re.sub(r"https?://\S+", "URL", text)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)

    return text if len(text) <= KIND_WIDTH else f"{text[: KIND_WIDTH - 1]}…"


def _total(counters: Iterable[Counter[Any]]) -> Counter[Any]:
    total: Counter[Any] = Counter()
    for counter in counters:
        total.update(counter)

    return total


def _growth(samples: list[Sample]) -> str:
    """Start, end, growth and peak of the samples, and the growth rate over
    their second half, where warm-up no longer counts."""
    if not samples:
        return "not sampled"
    start, end = samples[0][1] / 1024, samples[-1][1] / 1024
    peak = max(kib for _, kib in samples) / 1024
    middle = samples[len(samples) // 2]
    minutes = (samples[-1][0] - middle[0]) / 60
    rate = (end - middle[1] / 1024) / minutes if minutes > 0 else 0.0

    return (
        f"{start:.1f} / {end:.1f} MiB ({end - start:+.1f} MiB, "
        f"{100 * (end - start) / start:+.1f} %; peak {peak:.1f}; "
        f"second half {rate:+.2f} MiB/min)"
    )


def _listed(counts: Counter[Any]) -> str:
    return ", ".join(f"{item}: {n}" for item, n in counts.most_common())


def _slot(timestamp: float, interval: float) -> int:
    return int(timestamp // interval)


def _slots(slots: list[int], interval: float) -> str:
    starts = ", ".join(_clock(slot * interval) for slot in slots)
    return f"{len(slots)} ({starts})" if slots else "0"


def _instance(key: WindowKey) -> str:
    return f"{key[0]:g} s window to {_clock(key[1])}"


def _window_key(doc: Document) -> WindowKey:
    expires = doc["Expires"]
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return float(doc["Duration"]), expires.timestamp()


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%H:%M:%S")


def print_table(verdict: Verdict) -> None:
    """A Markdown table, ready for docs/soak.md, then the verdict."""
    print("| measure | value | expected |")
    print("|---|---|---|")
    for measure, value, expected in verdict.rows:
        print(f"| {measure} | {value} | {expected} |")
    print()
    print(f"FAIL: {'; '.join(verdict.failures)}" if verdict.failures else "PASS")


def parse_options() -> argparse.Namespace:
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=120.0,
        help="how long the workers run (default 120)",
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="worker processes (default 8)"
    )
    parser.add_argument(
        "--interval",
        type=parse_duration,
        default=5.0,
        help="serve's pass interval, a duration (default 5s)",
    )
    parser.add_argument("--uri", help="MongoDB URI; default: an embedded server")
    parser.add_argument(
        "--flap",
        type=float,
        default=3.0,
        help="seconds each management API mode lasts (default 3)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.05,
        help="seconds a worker sleeps after each call, standing in for the "
        "provider call or the rescheduling (default 0.05; 0 runs flat out)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds of load before the first RSS sample (default 10)",
    )

    return parser.parse_args()


def main() -> int:
    """Soak, print the table and serve's log path; 1 when a check failed."""
    options = parse_options()
    work = Path(tempfile.mkdtemp(prefix="syncstats-soak-"))

    with database(options.uri, work) as target:
        run = soak(options, target, work)
    verdict = judge(run)
    print_table(verdict)
    print(f"serve's log: {run.log}")

    return 1 if verdict.failures else 0


if __name__ == "__main__":
    sys.exit(main())
