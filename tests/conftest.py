"""Shared fixtures: a real Mongo-wire server and the real RabbitMQ broker."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pymongo import MongoClient, monitoring
from pymongo.database import Database

from syncstats import _embedded
from syncstats._mongo import Databases, Document, make_client
from syncstats.settings import Settings, load_settings

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 12, 3, 12, 7, 30, tzinfo=UTC)

_database_names = itertools.count()


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[_embedded.EmbeddedServer]:
    """One SecantusDB server for the whole session, in memory."""
    server = _embedded.start(":memory:")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri(mongo_server: _embedded.EmbeddedServer) -> str:
    """The URI of the session's Mongo-wire server."""
    return mongo_server.uri


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[MongoClient[Document]]:
    """A client of the session's server, reading dates as aware UTC."""
    client = make_client(mongo_uri, 10)
    yield client
    client.close()


@pytest.fixture
def db_names() -> tuple[str, str]:
    """Fresh names for the main and the rate-limit database of one test."""
    n = next(_database_names)
    return f"t{n}_tapiriik", f"t{n}_ratelimit"


@pytest.fixture
def db(
    mongo_client: MongoClient[Document], db_names: tuple[str, str]
) -> Database[Document]:
    """A fresh, empty main database for one test."""
    return mongo_client[db_names[0]]


@pytest.fixture
def ratelimit_db(
    mongo_client: MongoClient[Document], db_names: tuple[str, str]
) -> Database[Document]:
    """A fresh, empty rate-limit database for one test."""
    return mongo_client[db_names[1]]


@pytest.fixture
def dbs(
    mongo_client: MongoClient[Document],
    db: Database[Document],
    ratelimit_db: Database[Document],
) -> Databases:
    """The test's databases, as the app and the jobs receive them."""
    return Databases(mongo_client, db, ratelimit_db)


@pytest.fixture
def settings(mongo_uri: str, db_names: tuple[str, str]) -> Settings:
    """Settings pointing at the test's fresh databases, RabbitMQ unchanged."""
    return load_settings(
        overrides={
            "mongo_uri": mongo_uri,
            "database": db_names[0],
            "ratelimit_database": db_names[1],
        }
    )


class CommandLog(monitoring.CommandListener):
    """Every command a client sends, in order."""

    def __init__(self) -> None:
        self.commands: list[Document] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Keep a copy of the command."""
        self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Nothing to record."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Nothing to record."""


@pytest.fixture
def command_log(mongo_uri: str) -> Iterator[tuple[CommandLog, MongoClient[Document]]]:
    """A client whose commands are logged."""
    log = CommandLog()
    client: MongoClient[Document] = MongoClient(
        mongo_uri, tz_aware=True, event_listeners=[log]
    )
    yield log, client
    client.close()


class _Replies:
    """What the local HTTP server answers: a status and a body per request."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.headers: list[dict[str, str]] = []
        self.on_request: Callable[[], None] | None = None


@pytest.fixture
def http_replay() -> Iterator[tuple[str, _Replies]]:
    """A real HTTP server on loopback answering with a chosen status and body.

    Used to replay replies captured from a real RabbitMQ; yields its base
    URL and the object to set the next answer on.
    """
    replies = _Replies()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            replies.headers.append(dict(self.headers))
            if replies.on_request is not None:
                replies.on_request()
            self.send_response(replies.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(replies.body)))
            self.end_headers()
            self.wfile.write(replies.body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", replies
    server.shutdown()
    server.server_close()


@pytest.fixture
def reset_logging() -> Iterator[None]:
    """Restore the root logger's handlers after a command configured them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
