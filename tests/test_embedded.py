"""Tests of the embedded server launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from syncstats import _embedded
from syncstats._mongo import make_client
from syncstats.cli import main


def test_start_reuses_a_server_already_running_on_the_directory(tmp_path: Path) -> None:
    """A second start on the same directory reuses the first server."""
    first = _embedded.start(tmp_path / "data")
    try:
        second = _embedded.start(tmp_path / "data")
        assert second.uri == first.uri
        assert second.process is None
        client = make_client(second.uri, 5)
        client.demo.things.insert_one({"n": 1})
        assert client.demo.things.count_documents({}) == 1
        client.close()
        second.stop()
        assert first.process is not None
        assert first.process.poll() is None
    finally:
        first.stop()
    assert first.process.poll() is not None
    assert not (tmp_path / "data.server.json").exists()


def test_data_survives_a_restart(tmp_path: Path) -> None:
    """Data written to the embedded server is there after a restart."""
    server = _embedded.start(tmp_path / "data")
    client = make_client(server.uri, 5)
    client.demo.things.insert_one({"n": 7})
    client.close()
    server.stop()

    server = _embedded.start(tmp_path / "data")
    client = make_client(server.uri, 5)
    try:
        assert client.demo.things.find_one({}, {"_id": 0}) == {"n": 7}
    finally:
        client.close()
        server.stop()


@pytest.mark.usefixtures("reset_logging")
def test_missing_server_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without mongo_uri and without the server, a run exits 3 naming the extra."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SYNCSTATS_MONGO_URI", raising=False)
    monkeypatch.delenv("SYNCSTATS_CONFIG", raising=False)

    result = CliRunner().invoke(main, ["run"])

    assert result.exit_code == 3
    assert result.stderr == (
        "syncstats: no mongo_uri is set and the embedded server is not installed: "
        "run pip install 'syncstats[embedded]', or set SYNCSTATS_MONGO_URI\n"
    )


def servers_on(directory: Path) -> list[int]:
    """The pids of the processes whose command line names ``directory``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if str(directory).encode() in words:
            pids.append(int(cmdline.parent.name))
    return pids


def test_a_command_stopped_while_its_server_starts_leaves_none(
    tmp_path: Path,
) -> None:
    """SIGTERM while the embedded server starts stops it too; the next run works."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    env = {key: value for key, value in env.items() if key != "SYNCSTATS_MONGO_URI"}
    storage = tmp_path / "syncstats" / "embedded"
    run = [sys.executable, "-m", "syncstats", "run", "--dry-run"]
    command = subprocess.Popen(run, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not servers_on(storage) and command.poll() is None:
        assert time.monotonic() < deadline, "the server never started"
        time.sleep(0.01)
    command.send_signal(signal.SIGTERM)
    command.communicate(timeout=60)

    deadline = time.monotonic() + 10
    while servers_on(storage) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = servers_on(storage)
    for pid in left:  # leave no stray server to the rest of the suite
        os.kill(pid, signal.SIGKILL)
    again = subprocess.run(
        run, env=env, capture_output=True, text=True, timeout=120, check=False
    )

    assert command.returncode == 128 + signal.SIGTERM
    assert left == []
    assert again.returncode in (0, 1), again.stderr  # 1: no RabbitMQ queue here
