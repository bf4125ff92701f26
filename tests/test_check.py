"""Tests of ``syncstats check``, the Nagios/Icinga plugin."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from pymongo.database import Database

from syncstats._cli_check import (
    CRITICAL,
    OK,
    WARNING,
    Thresholds,
    check,
    evaluate,
)
from syncstats._mongo import Document
from tests.conftest import NOW

pytestmark = pytest.mark.usefixtures("reset_logging")

LIMITS = {
    "queue_wait": Thresholds(1800, 7200),
    "locked": Thresholds(50, 200),
    "error_users": Thresholds(500, 2000),
}
PERFDATA = re.compile(r"^'?[a-z_]+'?=[0-9.]+(s|)?;[0-9.]*;[0-9.]*;[0-9.]*$")


def status(**fields: object) -> Document:
    """A healthy history entry taken five minutes before NOW."""
    document: Document = {
        "Timestamp": NOW - timedelta(minutes=5),
        "SyncQueueHeadTime": 120.0,
        "Locked": 3,
        "ErrorUsers": 4,
        "Steps": {"queue": True, "users": True},
    }
    document.update(fields)
    return document


def test_healthy_snapshot_is_ok_with_perfdata() -> None:
    """A fresh snapshot within every threshold is OK with all perfdata."""
    verdict = evaluate(status(), NOW, 1800, LIMITS)

    assert verdict.state == OK
    assert verdict.line() == (
        "SYNCSTATS OK - queue wait 2.0 min, 3 locked, 4 with errors | "
        "snapshot_age=300s;;1800;0 queue_wait=120s;1800;7200;0 "
        "locked=3;50;200;0 error_users=4;500;2000;0"
    )
    for item in verdict.line().split(" | ")[1].split():
        assert PERFDATA.match(item), item


@pytest.mark.parametrize(
    ("fields", "state", "reason"),
    [
        ({"SyncQueueHeadTime": 1800.0}, WARNING, "queue wait 30.0 min"),
        ({"SyncQueueHeadTime": 7200.0}, CRITICAL, "queue wait 120.0 min"),
        ({"Locked": 50}, WARNING, "50 locked"),
        ({"Locked": 250}, CRITICAL, "250 locked"),
        ({"ErrorUsers": 2000}, CRITICAL, "2000 error users"),
        ({"Timestamp": NOW - timedelta(minutes=31)}, CRITICAL, "snapshot is 31 min"),
        ({"SyncQueueHeadTime": None}, CRITICAL, "queue stalled"),
        (
            {"SyncQueueHeadTime": None, "Steps": {"queue": False}},
            WARNING,
            "failed steps: queue",
        ),
    ],
)
def test_thresholds_raise_the_state(
    fields: dict[str, object], state: int, reason: str
) -> None:
    """Reaching a warning or critical level, staleness or a stall set the state."""
    verdict = evaluate(status(**fields), NOW, 1800, LIMITS)

    assert verdict.state == state
    assert reason in verdict.line()


def test_worst_state_wins_and_names_its_reasons() -> None:
    """With a warning and a critical, the line is CRITICAL and says why."""
    verdict = evaluate(status(Locked=60, ErrorUsers=5000), NOW, 1800, LIMITS)

    assert verdict.line().startswith("SYNCSTATS CRITICAL - 5000 error users |")


def test_no_snapshot_is_critical() -> None:
    """Without any snapshot the check is CRITICAL."""
    verdict = evaluate(None, NOW, 1800, LIMITS)

    assert verdict.state == CRITICAL
    assert verdict.line() == "SYNCSTATS CRITICAL - no snapshot stored yet"


def test_threshold_parsing() -> None:
    """W:C takes durations or counts; bad or inverted levels are refused."""
    assert Thresholds.parse("15m:1h", duration=True) == Thresholds(900, 3600)
    assert Thresholds.parse("5:10", duration=False) == Thresholds(5, 10)
    for text in ("10", "10:5", "a:b", "1:2:3", "-1:4"):
        with pytest.raises(ValueError, match=re.escape(repr(text))):
            Thresholds.parse(text, duration=False)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(check, list(args), catch_exceptions=False)


def test_check_reads_the_newest_snapshot(
    tmp_path: Path, db: Database[Document], db_names: tuple[str, str], mongo_uri: str
) -> None:
    """The command judges the newest history entry by Timestamp."""
    db.sync_status_stats.insert_many(
        [
            status(Timestamp=NOW - timedelta(minutes=1), Locked=500),
            status(Timestamp=NOW - timedelta(hours=2), Locked=1),
        ]
    )
    config = tmp_path / "c.toml"
    config.write_text(f'mongo_uri = "{mongo_uri}"\ndatabase = "{db_names[0]}"\n')

    result = invoke("--now", NOW.isoformat(), "--config", str(config))

    assert result.exit_code == 2
    assert result.stdout.startswith("SYNCSTATS CRITICAL - 500 locked |")
    assert len(result.stdout.splitlines()) == 1


def test_past_now_judges_the_snapshot_of_then(
    tmp_path: Path, db: Database[Document], db_names: tuple[str, str], mongo_uri: str
) -> None:
    """With a past --now, later snapshots are not yet taken: they are not judged."""
    db.sync_status_stats.insert_many(
        [
            status(Timestamp=NOW + timedelta(hours=3), Locked=500),
            status(Timestamp=NOW - timedelta(minutes=10), Locked=7),
        ]
    )
    db.stats.insert_one({"Updated": NOW + timedelta(hours=3)})
    config = tmp_path / "c.toml"
    config.write_text(f'mongo_uri = "{mongo_uri}"\ndatabase = "{db_names[0]}"\n')

    result = invoke("--now", NOW.isoformat(), "--config", str(config))

    assert result.exit_code == 0, result.stdout
    assert "snapshot_age=600s;" in result.stdout
    assert "locked=7;" in result.stdout


def test_check_with_custom_thresholds(
    tmp_path: Path, db: Database[Document], db_names: tuple[str, str], mongo_uri: str
) -> None:
    """Thresholds from the flags replace the defaults."""
    db.sync_status_stats.insert_one(status())
    config = tmp_path / "c.toml"
    config.write_text(f'mongo_uri = "{mongo_uri}"\ndatabase = "{db_names[0]}"\n')

    result = invoke(
        "--now", NOW.isoformat(), "--config", str(config), "--queue-wait", "1m:5m"
    )

    assert result.exit_code == 1
    assert "queue_wait=120s;60;300;0" in result.stdout


def test_unreachable_mongodb_is_critical(tmp_path: Path) -> None:
    """An unreachable MongoDB is CRITICAL, without its password."""
    config = tmp_path / "c.toml"
    config.write_text(
        'mongo_uri = "mongodb://u:n0tshown@127.0.0.1:9/?directConnection=true"\n'
        'mongo_timeout = "1s"\n'
    )

    result = invoke("--config", str(config))

    assert result.exit_code == 2
    assert result.stdout.startswith("SYNCSTATS CRITICAL - MongoDB at ")
    assert "n0tshown" not in result.output


def test_bad_threshold_is_unknown() -> None:
    """A malformed threshold is UNKNOWN, exit 3."""
    result = invoke("--locked", "lots")

    assert result.exit_code == 3
    assert result.stdout.startswith(
        "SYNCSTATS UNKNOWN - 'lots' is not WARNING:CRITICAL"
    )


def test_usage_error_is_unknown() -> None:
    """An unknown option is a plugin result: UNKNOWN on stdout, exit 3."""
    result = invoke("--bogus")

    assert result.exit_code == 3
    assert result.stdout.startswith("SYNCSTATS UNKNOWN - No such option '--bogus'")


def test_invalid_mongo_uri_is_unknown(tmp_path: Path) -> None:
    """A malformed mongo_uri is a configuration problem: UNKNOWN, exit 3."""
    config = tmp_path / "c.toml"
    config.write_text('mongo_uri = "mongodb://u:p@ss@127.0.0.1:9/"\n')

    result = invoke("--config", str(config))

    assert result.exit_code == 3
    assert result.stdout.startswith("SYNCSTATS UNKNOWN - mongo_uri: ")
    assert "p@ss" not in result.stdout


def test_interrupted_check_is_unknown_in_one_line(tmp_path: Path) -> None:
    """SIGTERM while MongoDB keeps silent still gives the monitor its line."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(
            f'mongo_uri = "mongodb://127.0.0.1:{port}/?directConnection=true"\n'
            'mongo_timeout = "60s"\n'
        )
        command = [sys.executable, "-m", "syncstats", "check", "--config", str(config)]
        plugin = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        silent.settimeout(60)
        connection, _ = silent.accept()  # the driver is waiting for its answer
        plugin.send_signal(signal.SIGTERM)
        stdout, _ = plugin.communicate(timeout=60)
        connection.close()

    assert plugin.returncode == 3
    assert stdout == "SYNCSTATS UNKNOWN - interrupted before MongoDB answered\n"
