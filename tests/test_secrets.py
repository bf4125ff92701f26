"""No password or token appears in anything syncstats prints or logs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from syncstats import _embedded

MONGO_PASSWORD = "m0ngo-Pw-7731"
RABBIT_PASSWORD = "r4bbit-Pw-2219"
PROMETHEUS_PASSWORD = "pr0m-Pw-5150"
TOKEN = "tok-9f8e7d6c5b4a"
SECRETS = (MONGO_PASSWORD, RABBIT_PASSWORD, PROMETHEUS_PASSWORD, TOKEN)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Mongo-wire server that requires a user, as production ones do.

    Yields its URI holding the user's password.
    """
    data = tmp_path_factory.mktemp("auth") / "data"
    server = _embedded.start(data)
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    client.admin.command("createUser", "stats", pwd=MONGO_PASSWORD, roles=["root"])
    client.close()
    server.stop()

    config = tmp_path_factory.mktemp("conf") / "empty.toml"
    config.write_text("")
    port = _embedded._free_port()
    process = subprocess.Popen(
        [
            _embedded.find_program(), "--config", str(config), "--standalone",
            "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(data), "--log-level", "WARNING", "--auth",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    uri = f"mongodb://stats:{MONGO_PASSWORD}@127.0.0.1:{port}/"
    deadline = time.monotonic() + 20
    while not _embedded._answers(uri, 0.5):
        assert time.monotonic() < deadline, "the auth server did not start"
        time.sleep(0.2)
    yield uri
    process.terminate()
    process.wait(timeout=10)


def syncstats(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the syncstats command in a subprocess; return stdout and stderr."""
    completed = subprocess.run(
        [sys.executable, "-m", "syncstats", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    return completed.stdout + completed.stderr


def write_config(tmp_path: Path, mongo_uri: str, rabbit_port: int) -> Path:
    path = tmp_path / "secret.toml"
    path.write_text(
        f'mongo_uri = "{mongo_uri}"\n'
        'mongo_timeout = "2s"\n'
        f'rabbitmq_stats_url = "http://ops:{RABBIT_PASSWORD}@127.0.0.1:'
        f'{rabbit_port}/api/queues/%2F/tapiriik-users"\n'
        f'rabbitmq_prometheus_url = "http://ops:{PROMETHEUS_PASSWORD}'
        '@127.0.0.1:9"\n'
        f'http_token = "{TOKEN}"\n'
        '[rate_limits]\nstrava = [{ window = "15m", max = 200 }]\n'
    )
    return path


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_commands_never_print_a_secret(
    tmp_path: Path, auth_server: str, http_replay: tuple[str, Any]
) -> None:
    """run, check and limits, verbose and in JSON, print no secret."""
    base, replies = http_replay
    replies.status = 401
    replies.body = b'{"error":"not_authorized","reason":"Login failed"}'
    config = str(write_config(tmp_path, auth_server, int(base.rsplit(":", 1)[1])))

    outputs = [
        syncstats("run", "--json", "-v", "--config", config),
        syncstats("run", "-v", "--config", config),
        syncstats("run", "--dry-run", "--json", "--config", config),
        syncstats("check", "-v", "--config", config),
        syncstats("limits", "--json", "-v", "--config", config),
        syncstats("limits", "--config", config),
    ]

    assert "refused the credentials" in outputs[0]
    assert '"ok": true' in outputs[2] or '"ok": false' in outputs[2]
    for output in outputs:
        assert_no_secret(output)


def test_failures_never_print_a_secret(tmp_path: Path) -> None:
    """An unreachable server and a refused login print no password."""
    closed = f"mongodb://stats:{MONGO_PASSWORD}@127.0.0.1:9/?directConnection=true"
    config = write_config(tmp_path, closed, 9)

    outputs = [
        syncstats("run", "-v", "--config", str(config)),
        syncstats("check", "--config", str(config)),
        syncstats("limits", "-v", "--config", str(config)),
    ]

    assert "MongoDB at mongodb://stats:***@127.0.0.1:9" in outputs[0]
    for output in outputs:
        assert_no_secret(output)


def test_wrong_password_is_reported_without_it(
    tmp_path: Path, auth_server: str
) -> None:
    """A refused MongoDB login says so, without the password tried."""
    wrong = auth_server.replace(MONGO_PASSWORD, TOKEN)
    config = write_config(tmp_path, wrong, 9)

    output = syncstats("run", "-v", "--config", str(config))

    assert "authentication failed" in output
    assert_no_secret(output)
