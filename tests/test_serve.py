"""Tests of ``syncstats serve``: the schedule, the lease between instances, signals."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from syncstats import _embedded
from syncstats._mongo import Databases, Document, make_client
from syncstats.lease import JOBS_LEASE, Lease
from syncstats.serve import is_loopback, next_run, run_server
from syncstats.settings import Settings, load_settings
from syncstats.snapshot import Snapshot, store_snapshot
from tests.conftest import NOW, CommandLog

SERVE = [sys.executable, "-m", "syncstats", "serve"]
INTERVAL = 2.0
LEASE_TTL = 3.0
_LISTENING = re.compile(r"serving on http://127\.0\.0\.1:(\d+)")


@dataclass
class Instance:
    """One ``syncstats serve`` process and where it listens."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        """The process id, which the lease holder's name carries."""
        return self.process.pid

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Wait until the log names the port; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log.read_text())
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
                return
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.05)
        pytest.fail(f"serve did not start:\n{self.log.read_text()}")


Start = Callable[..., Instance]


@pytest.fixture
def start(settings: Settings, tmp_path: Path) -> Iterator[Start]:
    """Start serve processes on the test's databases; kill what is left after."""
    instances: list[Instance] = []
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SYNCSTATS_")
    } | {
        "SYNCSTATS_MONGO_URI": settings.mongo_uri or "",
        "SYNCSTATS_DATABASE": settings.database,
        "SYNCSTATS_RATELIMIT_DATABASE": settings.ratelimit_database,
        "SYNCSTATS_INTERVAL": f"{INTERVAL:g}s",
        "SYNCSTATS_RATELIMIT_INTERVAL": "1s",
        "SYNCSTATS_LEASE_TTL": f"{LEASE_TTL:g}s",
        "SYNCSTATS_RABBITMQ_TIMEOUT": "1s",
        "SYNCSTATS_RATE_LIMITS": json.dumps({"strava": [{"window": "15m", "max": 9}]}),
    }

    def launch(**overrides: str) -> Instance:
        log = tmp_path / f"serve-{len(instances)}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [*SERVE, "--port", "0"],
                env=env | overrides,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        instance = Instance(process, log)
        instances.append(instance)

        return instance

    yield launch
    for instance in instances:
        if instance.process.poll() is None:
            instance.process.kill()
        instance.process.wait()


def holder_pid(db: Database[Document]) -> int | None:
    """The PID in the name of the jobs lease's holder, if anyone holds it."""
    lease = Lease(db, JOBS_LEASE).current()
    if lease is None:
        return None

    return int(str(lease["holder"]).split(":")[1])


def timestamps(db: Database[Document]) -> list[datetime]:
    """The Timestamp of every stored snapshot, oldest first."""
    return [
        doc["Timestamp"]
        for doc in db.sync_status_stats.find({}, {"Timestamp": 1}).sort("Timestamp")
    ]


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until it holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def slots(stamps: list[datetime]) -> list[int]:
    """The number of the interval each instant falls in, counted from the epoch."""
    return [int(stamp.timestamp() // INTERVAL) for stamp in stamps]


def test_next_run_is_on_the_wall_clock_grid() -> None:
    """Runs fall on multiples of the period counted from UTC midnight."""
    assert next_run(NOW, 600) == datetime(2026, 12, 3, 12, 10, tzinfo=UTC)
    assert next_run(NOW, 60) == datetime(2026, 12, 3, 12, 8, tzinfo=UTC)
    assert next_run(NOW.replace(minute=10, second=0), 600) == NOW.replace(
        minute=20, second=0
    )
    assert next_run(NOW, 7 * 3600) == datetime(2026, 12, 3, 14, tzinfo=UTC)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("", False),
        ("stats.example.org", False),
    ],
)
def test_only_loopback_hosts_count_as_local(host: str, loopback: bool) -> None:
    """localhost and loopback addresses are local; names and other IPs are not."""
    assert is_loopback(host) is loopback


def test_two_instances_store_one_snapshot_per_interval(
    start: Start, db: Database[Document], ratelimit_db: Database[Document]
) -> None:
    """With two instances, one leads: every interval gets exactly one snapshot."""
    first, second = start(), start()
    first.wait_listening()
    second.wait_listening()

    wait_until(lambda: len(timestamps(db)) >= 4, 15, "four snapshots")
    stored = slots(timestamps(db))

    # No interval holds two snapshots. A pass that overruns its interval on a
    # loaded machine skips the next one, so gaps are not counted as errors.
    assert len(set(stored)) == len(stored)
    assert stored == sorted(stored)
    assert holder_pid(db) in {first.pid, second.pid}
    assert ratelimit_db.limits.count_documents({"Key": "strava"}) == 1
    for instance in (first, second):
        assert httpx.get(f"{instance.url}/healthz").status_code == 200


def test_standby_takes_over_once_the_lease_lapses(
    start: Start, db: Database[Document]
) -> None:
    """After the holder is killed, the other instance leads once its lease lapses."""
    instances = {instance.pid: instance for instance in (start(), start())}
    for instance in instances.values():
        instance.wait_listening()
    wait_until(lambda: len(timestamps(db)) >= 2, 15, "two snapshots")
    holder = holder_pid(db)
    assert holder is not None

    instances[holder].process.kill()
    instances[holder].process.wait()
    killed_at = datetime.now(UTC)
    lease = Lease(db, JOBS_LEASE).current()
    assert lease is not None
    lapses_at = lease["expires"]
    (standby,) = (pid for pid in instances if pid != holder)
    wait_until(lambda: holder_pid(db) == standby, LEASE_TTL + 10, "the takeover")
    wait_until(lambda: timestamps(db)[-1] > lapses_at, 10, "a pass by the standby")

    after_kill = [stamp for stamp in timestamps(db) if stamp > killed_at]
    assert after_kill
    assert min(after_kill) >= lapses_at
    stored = slots(timestamps(db))
    assert len(stored) == len(set(stored))
    assert httpx.get(f"{instances[standby].url}/healthz").status_code == 200


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_serve_cleanly(
    start: Start, db: Database[Document], stop: signal.Signals
) -> None:
    """SIGTERM or SIGINT ends serve with status 0 within seconds, lease released."""
    instance = start()
    instance.wait_listening()
    wait_until(lambda: holder_pid(db) == instance.pid, 10, "the lease")
    wait_until(lambda: timestamps(db), 10, "a snapshot")

    instance.process.send_signal(stop)
    started = time.monotonic()
    status = instance.process.wait(timeout=10)

    assert status == 0, instance.log.read_text()
    assert time.monotonic() - started < 4
    assert Lease(db, JOBS_LEASE).current() is None
    assert "released the jobs lease" in instance.log.read_text()


def test_no_pass_at_start_when_the_interval_has_one(
    start: Start, db: Database[Document]
) -> None:
    """A leader does not repeat a pass already stored in the current interval."""
    now = datetime.now(UTC)
    store_snapshot(db, Snapshot(now))

    instance = start(SYNCSTATS_INTERVAL="1d")
    instance.wait_listening()
    wait_until(lambda: holder_pid(db) == instance.pid, 10, "the lease")
    time.sleep(1.0)

    assert timestamps(db) == [now.replace(microsecond=now.microsecond // 1000 * 1000)]


STOP_BOUND = 8.0
"""Seconds a stop may take in these tests: the grace is 5 s, the old stop 15 s."""


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[_embedded.EmbeddedServer]:
    """A Mongo-wire server of this test alone, on disk, that it may kill."""
    server = _embedded.start(tmp_path / "data")
    yield server
    server.stop()


def stop_timed(instance: Instance) -> tuple[int, float]:
    """Send SIGTERM; the exit status and how many seconds the stop took."""
    instance.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    status = instance.process.wait(timeout=30)

    return status, time.monotonic() - started


def test_serve_stops_within_the_grace_when_mongodb_is_gone(
    start: Start, own_server: _embedded.EmbeddedServer, settings: Settings
) -> None:
    """With MongoDB killed, leader and standby each stop on SIGTERM within seconds.

    Both are waiting on a renewal that would time out only after mongo_timeout
    (10 s); the leader gives its lease up in one bounded try, the standby,
    which never held it, does not try.
    """
    quiet = {"SYNCSTATS_INTERVAL": "1d", "SYNCSTATS_RATELIMIT_INTERVAL": "1d"}
    env = quiet | {
        "SYNCSTATS_MONGO_URI": own_server.uri,
        "SYNCSTATS_MONGO_TIMEOUT": "10s",
    }
    client = make_client(own_server.uri, 5)
    db = client[settings.database]
    leader = start(**env)
    leader.wait_listening()
    wait_until(lambda: holder_pid(db) == leader.pid, 10, "the lease")
    wait_until(lambda: timestamps(db), 15, "the first pass")
    standby = start(**env)
    standby.wait_listening()
    time.sleep(LEASE_TTL / 3 + 0.5)  # the standby tried to take the lease
    client.close()

    assert own_server.process is not None
    os.kill(own_server.process.pid, signal.SIGKILL)
    own_server.process.wait()
    time.sleep(LEASE_TTL / 3 + 1)  # both wait on a renewal now

    for instance in (leader, standby):
        status, took = stop_timed(instance)
        log = instance.log.read_text()
        assert status == 0, log
        assert took < STOP_BOUND, log
        assert log.splitlines()[-1].endswith("syncstats.serve: stopped"), log
        assert "Traceback" not in log
    standby_log = standby.log.read_text()
    assert "release" not in standby_log
    assert "a job is still running" not in standby_log
    assert leader.log.read_text().count("could not release the jobs lease") <= 1


def signal_when(condition: Callable[[], object], timeout: float = 20) -> list[float]:
    """SIGTERM this process once ``condition`` holds, or after ``timeout`` s.

    For `run_server` running in the test's own (main) thread. The list
    returned receives the `time.monotonic` of the signal.
    """
    sent: list[float] = []

    def wait_then_stop() -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_then_stop, name="test-stopper", daemon=True).start()

    return sent


def serve_settings(settings: Settings, **overrides: Any) -> Settings:
    """The test's settings, with nothing due soon but what ``overrides`` say."""
    return load_settings(
        overrides={
            "mongo_uri": settings.mongo_uri,
            "database": settings.database,
            "ratelimit_database": settings.ratelimit_database,
            "interval": "1d",
            "ratelimit_interval": "1d",
            "lease_ttl": f"{LEASE_TTL:g}s",
        }
        | overrides
    )


def lease_commands(log: CommandLog, command: str) -> list[Document]:
    """The commands of one kind sent to the leases collection."""
    return [c for c in log.commands if c.get(command) == "syncstats_leases"]


def test_a_standby_never_releases_the_lease(
    settings: Settings, db: Database[Document], caplog: pytest.LogCaptureFixture
) -> None:
    """A standby stopped by a signal sends no release and logs none."""
    caplog.set_level(logging.INFO)
    Lease(db, JOBS_LEASE, holder="leader", ttl=600).acquire()
    log = CommandLog()
    client: MongoClient[Document] = MongoClient(
        settings.mongo_uri, tz_aware=True, event_listeners=[log]
    )
    databases = Databases(
        client, client[settings.database], client[settings.ratelimit_database]
    )
    signal_when(lambda: len(lease_commands(log, "findAndModify")) >= 2)

    run_server(serve_settings(settings), databases, port=0)

    assert len(lease_commands(log, "findAndModify")) >= 2  # it tried to lead
    assert lease_commands(log, "delete") == []
    lease = Lease(db, JOBS_LEASE).current()
    assert lease is not None
    assert lease["holder"] == "leader"
    assert "release" not in caplog.text
    assert caplog.records[-1].getMessage() == "stopped"


def test_a_job_left_running_at_the_stop_logs_nothing_after_it(
    settings: Settings,
    dbs: Databases,
    http_replay: tuple[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pass stuck at the stop is left within the grace and muted after "stopped".

    The lease is released all the same, and when the pass resumes, its steps
    failing on the closed client log nothing.
    """
    caplog.set_level(logging.INFO)
    base, replies = http_replay
    asked, resume = threading.Event(), threading.Event()

    def hang() -> None:
        asked.set()
        resume.wait(30)

    replies.on_request = hang
    settings = serve_settings(
        settings,
        rabbitmq_stats_url=f"{base}/api/queues/%2F/tapiriik-users",
        rabbitmq_timeout="30s",
    )
    client = make_client(str(settings.mongo_uri), 10)
    databases = Databases(
        client, client[settings.database], client[settings.ratelimit_database]
    )
    sent = signal_when(asked.is_set)

    try:
        run_server(settings, databases, port=0)
        stopped = time.monotonic()
    finally:
        resume.set()
    schedulers = [t for t in threading.enumerate() if t.name == "syncstats-scheduler"]
    for thread in schedulers:
        thread.join(30)

    assert asked.is_set()
    assert stopped - sent[0] < STOP_BOUND
    messages = [record.getMessage() for record in caplog.records]
    assert "a job is still running; leaving it to stop now" in messages
    assert "released the jobs lease" in messages
    assert messages[-1] == "stopped", messages
    assert Lease(dbs.main, JOBS_LEASE).current() is None
    assert not any(thread.is_alive() for thread in schedulers)
