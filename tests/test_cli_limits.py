"""Tests of the ``limits`` command that need no window."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from syncstats._cli_limits import limits

pytestmark = pytest.mark.usefixtures("reset_logging")


def test_limits_without_configured_limits_says_so(
    tmp_path: Path, mongo_uri: str, db_names: tuple[str, str]
) -> None:
    """With no rate_limits the command prints one line saying what to set."""
    config = tmp_path / "c.toml"
    config.write_text(f'mongo_uri = "{mongo_uri}"\ndatabase = "{db_names[0]}"\n')

    result = CliRunner().invoke(limits, ["--config", str(config)])

    assert result.exit_code == 0
    assert result.stdout == (
        "No rate limits are configured: set rate_limits to add some.\n"
    )
