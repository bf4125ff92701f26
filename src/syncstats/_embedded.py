"""The embedded default: SecantusDB's ``secantusd-py`` run as a child process.

SecantusDB is GPL-2.0-only, so syncstats never imports it: it starts the
server program and talks to it over a loopback socket like to any MongoDB.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from syncstats.errors import EmbeddedServerError

logger = logging.getLogger(__name__)

SERVER_PROGRAM = "secantusd-py"
INSTALL_HINT = "pip install 'syncstats[embedded]'"
_START_TIMEOUT = 30.0


@dataclass
class EmbeddedServer:
    """A running embedded server; ``stop`` ends it if this process started it."""

    uri: str
    process: subprocess.Popen[bytes] | None
    state_file: Path | None

    def stop(self) -> None:
        """Stop the server if we own it; a shared one is left running."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)
        logger.debug("embedded server stopped")


def data_dir() -> Path:
    """Where the embedded server keeps its data: the user's data directory."""
    return Path(platformdirs.user_data_dir("syncstats")) / "embedded"


def find_program() -> str:
    """The path of ``secantusd-py``, beside our interpreter or on the PATH."""
    beside = Path(sys.executable).parent / SERVER_PROGRAM
    if beside.exists():
        return str(beside)
    found = shutil.which(SERVER_PROGRAM)
    if found is None:
        raise EmbeddedServerError(
            "no mongo_uri is set and the embedded server is not installed: "
            f"run {INSTALL_HINT}, or set SYNCSTATS_MONGO_URI"
        )
    return found


def start(
    storage: Path | str | None = None,
    *,
    port: int | None = None,
    timeout: float = _START_TIMEOUT,
) -> EmbeddedServer:
    """Start (or reuse) a server on ``storage`` and wait until it answers.

    ``storage`` defaults to `data_dir`; ``":memory:"`` keeps nothing. A
    server another syncstats process already runs on the same directory is
    reused, since two servers cannot share one. ``port`` defaults to a free
    loopback port.
    """
    program = find_program()
    state_file = None
    if storage != ":memory:":
        directory = Path(storage) if storage else data_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot use {directory} for the embedded server: {exc.strerror}"
            ) from None
        state_file = directory.parent / f"{directory.name}.server.json"
        running = _running_server(state_file)
        if running is not None:
            logger.debug("reusing the embedded server at %s", running)
            return EmbeddedServer(running, None, None)
        storage = str(directory)

    port = port or _free_port()
    config = _empty_config()
    command = [
        program, "--config", str(config), "--standalone", "--host", "127.0.0.1",
        "--port", str(port), "--storage-path", str(storage), "--log-level", "WARNING",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    uri = f"mongodb://127.0.0.1:{port}/"
    try:
        _wait_until_ready(uri, process, timeout)
        if state_file is not None:
            state_file.write_text(json.dumps({"pid": process.pid, "uri": uri}))
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or failed: a server left behind in
        # its own session would hold the data directory for good.
        process.kill()
        process.wait()
        raise
    logger.debug("embedded server started at %s with data in %s", uri, storage)

    return EmbeddedServer(uri, process, state_file)


def _running_server(state_file: Path) -> str | None:
    try:
        state = json.loads(state_file.read_text())
        pid, uri = int(state["pid"]), str(state["uri"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None

    return uri if _answers(uri, 2.0) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _empty_config() -> Path:
    # An explicit empty config keeps the server from picking up a stray
    # secantusd.toml in the working or home directory.
    path = Path(platformdirs.user_cache_dir("syncstats")) / "secantusd-empty.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("")
    return path


def _wait_until_ready(
    uri: str, process: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = (
                process.stderr.read().decode(errors="replace") if process.stderr else ""
            )
            last = stderr.strip().splitlines()[-1:] or ["no output"]
            raise EmbeddedServerError(f"the embedded server exited: {last[0]}")
        if _answers(uri, 0.5):
            if process.stderr is not None:
                process.stderr.close()
            return
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise EmbeddedServerError(f"the embedded server did not answer in {timeout:g} s")


def _answers(uri: str, timeout: float) -> bool:
    client: MongoClient[dict[str, object]] = MongoClient(
        uri, serverSelectionTimeoutMS=int(timeout * 1000), connect=False
    )
    try:
        client.admin.command("ping")
    except PyMongoError:
        return False
    finally:
        client.close()
    return True
