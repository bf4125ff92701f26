"""Connections to MongoDB, or to the embedded server when none is configured."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
)

from syncstats import _embedded
from syncstats._redact import mask_url
from syncstats.errors import ConfigError, DatabaseUnavailable
from syncstats.settings import Settings

logger = logging.getLogger(__name__)

Document = dict[str, Any]


@dataclass(frozen=True)
class Databases:
    """The two databases syncstats works on, from one client."""

    client: MongoClient[Document]
    main: Database[Document]
    ratelimit: Database[Document]


def make_client(uri: str, timeout: float) -> MongoClient[Document]:
    """A client that reads dates as aware UTC and gives up after ``timeout`` s."""
    try:
        with warnings.catch_warnings():
            # The driver warns about a URI option it cannot read and then
            # drops it: refuse the URI instead of running without it.
            warnings.simplefilter("error", UserWarning)
            return MongoClient(
                uri,
                tz_aware=True,
                tzinfo=UTC,
                serverSelectionTimeoutMS=int(timeout * 1000),
                connectTimeoutMS=int(timeout * 1000),
                appname="syncstats",
            )
    except ConfigurationError as exc:
        if _from_dns(exc):
            # A mongodb+srv:// name that does not resolve now may resolve on
            # the next run, as a host that does not answer may answer.
            raise DatabaseUnavailable(
                f"MongoDB at {mask_url(uri)}: cannot look up its hosts: "
                f"{_first_line(exc)}"
            ) from None
        raise _refused_uri(exc) from None
    except (ValueError, UserWarning) as exc:
        raise _refused_uri(exc) from None
    except OSError as exc:
        # A TLS option naming a file that cannot be read.
        reason = exc.strerror or _first_line(exc)
        raise ConfigError(f"mongo_uri: {mask_url(reason)}") from None


def _refused_uri(exc: Exception) -> ConfigError:
    """The configuration error for a URI the driver refused."""
    reason = _first_line(exc).removesuffix(" Refer to docstring.")
    return ConfigError(f"mongo_uri: {mask_url(reason)}")


def _from_dns(exc: ConfigurationError) -> bool:
    """Whether the driver's error is a failed DNS lookup (of an SRV record)."""
    cause = exc.__cause__
    return cause is not None and type(cause).__module__.startswith("dns.")


@contextmanager
def open_databases(settings: Settings) -> Iterator[Databases]:
    """Connect, check the server answers, yield the databases, disconnect.

    With no ``mongo_uri`` the embedded server is started first and stopped
    after. Raises `DatabaseUnavailable` when the server does not answer
    within ``mongo_timeout``.
    """
    server = None
    uri = settings.mongo_uri
    if uri is None:
        server = _embedded.start()
        uri = server.uri
    try:
        client = make_client(uri, settings.mongo_timeout)
        try:
            ping(client, uri)
            logger.debug(
                "connected to %s, databases %s and %s",
                mask_url(uri),
                settings.database,
                settings.ratelimit_database,
            )
            yield Databases(
                client, client[settings.database], client[settings.ratelimit_database]
            )
        finally:
            client.close()
    finally:
        if server is not None:
            server.stop()


def ping(client: MongoClient[Document], uri: str) -> None:
    """Raise `DatabaseUnavailable` unless the server answers a ping."""
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        raise DatabaseUnavailable(
            f"MongoDB at {mask_url(uri)}: {describe_error(exc)}"
        ) from exc


def describe_error(exc: PyMongoError) -> str:
    """One short line for a driver error, without the topology dump."""
    if isinstance(exc, OperationFailure):
        details = exc.details or {}
        message = details.get("errmsg") or _first_line(exc)
        return f"the server refused: {message} (code {exc.code})"
    text = _first_line(exc)
    # The driver appends its timeouts and the whole topology description.
    for tail in (" (configured timeouts", ", Timeout:"):
        text = text.split(tail, 1)[0]
    if isinstance(exc, ConnectionFailure):
        return f"no answer ({text})"
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
