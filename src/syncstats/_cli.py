"""What every command shares: options, settings, logging and exit codes."""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from pymongo.errors import PyMongoError

from syncstats._mongo import describe_error
from syncstats._redact import RedactingFilter, Redactor, url_secrets
from syncstats.errors import (
    ConfigError,
    DatabaseUnavailable,
    EmbeddedServerError,
    LeaseHeld,
    SyncStatsError,
)
from syncstats.settings import Settings, load_settings

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK = 0
EXIT_FAILED_STEP = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3
EXIT_LEASE = 4

_EXIT_CODES: tuple[tuple[type[SyncStatsError], int], ...] = (
    (ConfigError, EXIT_CONFIG),
    (DatabaseUnavailable, EXIT_DATABASE),
    (EmbeddedServerError, EXIT_DATABASE),
    (LeaseHeld, EXIT_LEASE),
)

redactor = Redactor()
FUTURE_SLACK = timedelta(minutes=5)  # clocks of two hosts may disagree a little
# ObjectIds count seconds from 1970, and a run reads back a day from ``now``.
EARLIEST_NOW = datetime(1970, 1, 2, tzinfo=UTC)


class _Instant(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 instant; one without a zone is taken as UTC.

    An instant in the future is refused: a run dated then would prune the
    history and worker records up to it and pass for the latest snapshot.
    So is one before 1970-01-02, which no ObjectId's time can bound.
    """

    name = "ISO8601"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            instant = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date and time", param, ctx)
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        try:
            instant = instant.astimezone(UTC)
        except OverflowError:
            self.fail(f"{value!r} is out of range", param, ctx)
        if instant > datetime.now(UTC) + FUTURE_SLACK:
            self.fail(f"{value!r} is in the future", param, ctx)
        if instant < EARLIEST_NOW:
            self.fail(f"{value!r} is before 1970-01-02", param, ctx)
        return instant


INSTANT = _Instant()


def common_options(func: Callable[P, R]) -> Callable[P, R]:
    """Add ``--config`` and ``--verbose`` to a command."""
    func = click.option(
        "-v", "--verbose", is_flag=True, help="Log debug lines and tracebacks."
    )(func)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar="SYNCSTATS_CONFIG",
        help="TOML settings file (env SYNCSTATS_CONFIG).",
    )(func)


def guarded(func: Callable[P, R]) -> Callable[P, R]:
    """Turn syncstats' errors into one stderr line and the matching exit code.

    Unexpected errors print one line too; ``--verbose`` adds the traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        verbose = bool(kwargs.get("verbose"))
        try:
            return func(*args, **kwargs)
        except SyncStatsError as exc:
            code = next(
                (code for kind, code in _EXIT_CODES if isinstance(exc, kind)),
                EXIT_FAILED_STEP,
            )
            fail(code, str(exc), exc if verbose else None)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except PyMongoError as exc:
            # Outside the steps, which report their own: nothing was written.
            fail(
                EXIT_DATABASE,
                f"MongoDB: {describe_error(exc)}",
                exc if verbose else None,
            )
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            fail(
                EXIT_FAILED_STEP,
                f"internal error: {type(exc).__name__}: {exc}",
                exc if verbose else None,
            )

    return wrapper


def fail(code: int, message: str, exc: BaseException | None = None) -> NoReturn:
    """Print ``syncstats: message`` (masked) to stderr and exit with ``code``."""
    if exc is not None:
        logging.getLogger("syncstats").error("traceback", exc_info=exc)
    click.echo(f"syncstats: {redactor(message)}", err=True)
    sys.exit(code)


def setup(
    config_path: str | None, verbose: bool, overrides: dict[str, Any] | None = None
) -> Settings:
    """Configure logging, load the settings and register their secrets.

    From here SIGTERM unwinds like Ctrl-C, so that an embedded server the
    command starts is stopped with it.
    """
    configure_logging(verbose)
    exit_on_sigterm()
    settings = load_settings(config_path, overrides)
    register_secrets(settings)

    return settings


def register_secrets(settings: Settings) -> None:
    """Have every message mask the passwords and tokens ``settings`` hold."""
    redactor.add(
        *url_secrets(settings.mongo_uri or ""),
        *url_secrets(settings.rabbitmq_stats_url),
        *url_secrets(settings.rabbitmq_prometheus_url or ""),
        settings.http_token.get_secret_value() if settings.http_token else None,
    )


def exit_on_sigterm() -> None:
    """Let SIGTERM unwind like Ctrl-C, so the lease and the server are released."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def configure_logging(verbose: bool) -> None:
    """Send log lines to stderr, masked; debug level with ``--verbose``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RedactingFilter(redactor, tracebacks=verbose))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("syncstats").setLevel(logging.DEBUG if verbose else logging.INFO)
