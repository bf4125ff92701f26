"""Tests of how ``syncstats serve`` reads its command line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from syncstats.cli import main

pytestmark = pytest.mark.usefixtures("reset_logging")


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("", "syncstats: host: must not be empty\n"),
        ("  ", "syncstats: host: must not be empty\n"),
        (
            "stats.example.invalid",
            "syncstats: host: cannot resolve 'stats.example.invalid': ",
        ),
    ],
)
def test_a_host_that_names_no_address_is_a_usage_error(host: str, message: str) -> None:
    """The host is blamed in one line, not the token or the port."""
    result = CliRunner().invoke(
        main, ["serve", "--host", host], env={"SYNCSTATS_HTTP_TOKEN": "tok-4412"}
    )

    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1


def test_a_bracketed_ipv6_host_passes_the_host_check() -> None:
    """[::1], the form serve prints, is loopback: MongoDB is what fails next."""
    env = {
        "SYNCSTATS_MONGO_URI": "mongodb://127.0.0.1:9/",
        "SYNCSTATS_MONGO_TIMEOUT": "1s",
    }
    result = CliRunner().invoke(main, ["serve", "--host", "[::1]"], env=env)

    assert result.exit_code == 3, result.stderr
    assert result.stderr.startswith("syncstats: MongoDB at mongodb://127.0.0.1:9/")
