"""Fault injection with real components: a Mongo-wire server killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pymongo import monitoring

from syncstats import _embedded
from syncstats._mongo import make_client
from syncstats.cli import main
from tests.conftest import FIXTURES, NOW

pytestmark = pytest.mark.usefixtures("reset_logging")

BUSY_QUEUE = FIXTURES / "rabbitmq" / "c1_consumer_acking_60s__with_params.json"
HOUR = timedelta(hours=1)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A Mongo-wire server of this test alone, on disk, that it may kill."""
    state: dict[str, Any] = {"server": _embedded.start(tmp_path / "data")}
    yield state
    state["server"].stop()


def _with_one_activity(
    own_server: dict[str, Any],
) -> tuple[_embedded.EmbeddedServer, int]:
    """The test's server, holding one 10 m activity, and its port."""
    server: _embedded.EmbeddedServer = own_server["server"]
    with make_client(server.uri, 5) as client:
        client.tapiriik.sync_stats.insert_one({"Distance": 10.0, "Timestamp": NOW})

    return server, int(server.uri.rstrip("/").rsplit(":", 1)[1])


def _crash(server: _embedded.EmbeddedServer) -> None:
    """Flush what the server acknowledged, then kill it without warning.

    SecantusDB writes its journal behind the acknowledgement, as MongoDB
    does without ``j: true``: a write acknowledged a moment before SIGKILL
    was lost once under load. The checkpoint makes the crash come after the
    journal caught up, so the test sees only what a crash mid-write does.
    """
    with make_client(server.uri, 5) as client:
        client.admin.command("fsync")
    assert server.process is not None, "the test's own server is a child"
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()


def test_server_killed_mid_run_fails_later_steps_then_recovers(
    tmp_path: Path, own_server: dict[str, Any], http_replay: tuple[str, Any]
) -> None:
    """Losing MongoDB mid-run fails the later steps (exit 1); the next run works."""
    server, port = _with_one_activity(own_server)
    base, replies = http_replay
    replies.body = BUSY_QUEUE.read_bytes()

    def kill_server() -> None:
        _crash(server)

    replies.on_request = kill_server
    config = tmp_path / "c.toml"
    config.write_text(
        f'mongo_uri = "{server.uri}"\nmongo_timeout = "1s"\nlease_ttl = "2s"\n'
        f'rabbitmq_stats_url = "{base}/api/queues/%2F/tapiriik-users"\n'
        '[rate_limits]\nstrava = [{ window = "15m", max = 10 }]\n'
    )
    args = ["run", "--now", NOW.isoformat(), "--json", "--config", str(config)]

    first = CliRunner().invoke(main, args, catch_exceptions=False)

    assert first.exit_code == 1
    steps = json.loads(first.stdout)["steps"]
    # The queue step stores its counter sample in MongoDB, so it fails too.
    assert [name for name, step in steps.items() if step["ok"]] == [
        "distance", "enqueue",
    ]  # fmt: skip
    errors = [step["error"] for step in steps.values() if not step["ok"]]
    assert all("MongoDB" in error for error in errors), errors
    assert "Traceback" not in first.stderr

    server = _embedded.start(tmp_path / "data", port=port)
    own_server["server"] = server
    replies.on_request = None
    time.sleep(2)  # the failed run could not release its lease: it lapses

    second = CliRunner().invoke(main, args, catch_exceptions=False)

    assert second.exit_code == 0, second.output
    client = make_client(server.uri, 5)
    stats = list(client.tapiriik.stats.find({}, {"_id": 0, "Steps": 0}))
    client.close()
    assert len(stats) == 1
    assert stats[0]["TotalDistanceSynced"] == 10.0
    assert stats[0]["Updated"] == NOW
    assert stats[0]["QueueHeadTime"] > 0


class _KillOnWrite(monitoring.CommandListener):
    """Kills the server as the first ``update`` of one collection starts."""

    def __init__(self, collection: str, kill: Callable[[], None]) -> None:
        self.collection = collection
        self.kill = kill
        self.armed = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Kill the server before an armed update of the collection is sent."""
        if self.armed and event.command.get("update") == self.collection:
            self.armed = False
            self.kill()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Nothing to do."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Nothing to do."""


def test_server_killed_while_storing_leaves_whole_documents(
    tmp_path: Path, own_server: dict[str, Any]
) -> None:
    """A crash as ``stats`` is written leaves the last whole one; the next run heals."""
    server, port = _with_one_activity(own_server)

    def kill_server() -> None:
        _crash(server)

    killer = _KillOnWrite("stats", kill_server)
    monitoring.register(killer)  # reaches the clients the runs create
    config = tmp_path / "c.toml"
    config.write_text(
        f'mongo_uri = "{server.uri}"\nmongo_timeout = "1s"\nlease_ttl = "2s"\n'
        'rabbitmq_stats_url = "http://127.0.0.1:9/api/queues/%2F/tapiriik-users"\n'
    )
    earlier = ["run", "--now", (NOW - HOUR).isoformat(), "--config", str(config)]
    args = ["run", "--now", NOW.isoformat(), "--json", "--config", str(config)]
    CliRunner().invoke(main, earlier, catch_exceptions=False)
    client = make_client(server.uri, 5)
    before = client.tapiriik.stats.find_one({})
    client.close()
    killer.armed = True
    try:
        crashed = CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        killer.armed = False

    server = _embedded.start(tmp_path / "data", port=port)
    own_server["server"] = server
    client = make_client(server.uri, 5)
    after_crash = list(client.tapiriik.stats.find({}))
    time.sleep(2)  # the crashed run could not release its lease: it lapses
    recovered = CliRunner().invoke(main, args, catch_exceptions=False)
    stats = list(client.tapiriik.stats.find({}))
    client.close()
    assert crashed.exit_code == 1
    steps = json.loads(crashed.stdout)["steps"]
    assert steps["store"]["ok"] is False
    assert "MongoDB" in steps["store"]["error"]
    assert after_crash == [before]
    assert recovered.exit_code == 1, recovered.output  # the queue has no server
    assert len(stats) == 1
    assert stats[0]["Updated"] == NOW
    assert stats[0]["TotalDistanceSynced"] == 10.0
