"""The ``indexes`` command: which indexes syncstats relies on, and which are missing."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from syncstats._cli import EXIT_FAILED_STEP, EXIT_OK, common_options, guarded, setup
from syncstats._mongo import open_databases
from syncstats.indexes import IndexStatus, apply_indexes, check_indexes

_STATES = {
    "present": "[green]present[/green]",
    "missing": "[red]missing[/red]",
    "created": "[green]created[/green]",
    "failed": "[red]failed[/red]",
}


@click.command("indexes")
@click.option("--apply", "create", is_flag=True, help="Create the missing indexes.")
@common_options
@guarded
def indexes(create: bool, config_path: str | None, verbose: bool) -> None:
    """List the indexes the run and the rate limiter rely on; mark the missing.

    With --apply, create the missing ones (MongoDB 4.2 and later build
    them without blocking). Exits 1 when the server refused one.
    """
    settings = setup(config_path, verbose)

    with open_databases(settings) as dbs:
        statuses = apply_indexes(dbs) if create else check_indexes(dbs)

    Console(highlight=False).print(indexes_table(statuses))
    failed = any(status.state == "failed" for status in statuses)
    sys.exit(EXIT_FAILED_STEP if failed else EXIT_OK)


def indexes_table(statuses: list[IndexStatus]) -> Table:
    """One row per required index: where, keys, state, and what reads it."""
    table = Table(title="Indexes syncstats relies on")
    for name in ("collection", "keys", "state", "used by"):
        table.add_column(name, overflow="fold")
    for status in statuses:
        table.add_row(
            f"{status.database}.{status.index.collection}",
            status.index.label,
            _state(status),
            status.index.used_by,
        )
    missing = sum(status.state == "missing" for status in statuses)
    if missing:
        table.caption = f"{missing} missing: `syncstats indexes --apply` creates them"

    return table


def _state(status: IndexStatus) -> str:
    text = _STATES[status.state]
    if status.error is not None:
        return f"{text}: {status.error}"
    if status.name is not None:
        return f"{text} ({status.name})"
    return text
