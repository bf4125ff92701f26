"""The ``syncstats serve`` command."""

from __future__ import annotations

import socket

import click

from syncstats._cli import common_options, guarded, setup
from syncstats._mongo import open_databases
from syncstats.errors import ConfigError
from syncstats.indexes import warn_missing
from syncstats.serve import check_exposure, run_server


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but loopback needs http_token.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=9810,
    show_default=True,
    help="TCP port to listen on; 0 picks a free one.",
)
@common_options
@guarded
def serve(host: str, port: int, config_path: str | None, verbose: bool) -> None:
    """Run the stats pass on a schedule and serve the dashboard, API and metrics.

    Stops cleanly on SIGTERM or SIGINT.
    """
    settings = setup(config_path, verbose)
    if not host.strip():
        raise ConfigError("host: must not be empty")
    check_exposure(host, settings)
    _check_resolves(host)

    with open_databases(settings) as dbs:
        warn_missing(dbs)
        run_server(settings, dbs, host=host, port=port)


def _check_resolves(host: str) -> None:
    """Raise `ConfigError` unless ``host`` names an address of some machine."""
    try:
        socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else None
        raise ConfigError(f"host: cannot resolve {host!r}: {reason or exc}") from None
