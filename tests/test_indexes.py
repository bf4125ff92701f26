"""Tests of the required indexes and the indexes command, on a real server."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from pymongo import MongoClient
from pymongo.database import Database

from syncstats._cli_indexes import indexes as indexes_command
from syncstats._mongo import Databases, Document
from syncstats.indexes import (
    REQUIRED_INDEXES,
    apply_indexes,
    check_indexes,
    missing_indexes,
    warn_missing,
)
from syncstats.ratelimit import refresh_windows
from tests.conftest import NOW

REQUIRED = len(REQUIRED_INDEXES)


@pytest.fixture
def dbs(
    mongo_client: MongoClient[Document],
    db: Database[Document],
    ratelimit_db: Database[Document],
) -> Databases:
    """The test's two databases, holding one document per collection."""
    for index in REQUIRED_INDEXES:
        target = db if index.role == "main" else ratelimit_db
        target[index.collection].insert_one({"Timestamp": NOW})
    return Databases(mongo_client, db, ratelimit_db)


def states(dbs: Databases) -> list[str]:
    """The state of every required index, in order."""
    return [status.state for status in check_indexes(dbs)]


def test_missing_indexes_are_listed(dbs: Databases) -> None:
    """On a database without our indexes, every one of them is missing."""
    missing = missing_indexes(dbs)

    assert len(missing) == REQUIRED
    assert {status.database for status in missing} == {
        dbs.main.name,
        dbs.ratelimit.name,
    }
    assert all(status.name is None for status in missing)


def test_missing_collections_count_as_missing_indexes(
    mongo_client: MongoClient[Document],
    db: Database[Document],
    ratelimit_db: Database[Document],
) -> None:
    """A collection that does not exist yet lacks its indexes."""
    statuses = check_indexes(Databases(mongo_client, db, ratelimit_db))

    assert [status.state for status in statuses] == ["missing"] * REQUIRED


def test_apply_creates_the_missing_indexes(dbs: Databases) -> None:
    """Applying creates each missing index, after which none is missing."""
    applied = apply_indexes(dbs)

    assert [status.state for status in applied] == ["created"] * REQUIRED
    assert set(states(dbs)) == {"present"}
    limits = dbs.ratelimit.limits.index_information()
    assert limits["Key_Duration_Expires"]["unique"]


def test_apply_is_idempotent(dbs: Databases) -> None:
    """Applying twice creates nothing the second time and changes no index."""
    apply_indexes(dbs)
    before = dbs.main.users.index_information()

    again = apply_indexes(dbs)

    assert {status.state for status in again} == {"present"}
    assert dbs.main.users.index_information() == before


def test_indexes_are_matched_by_key_pattern(dbs: Databases) -> None:
    """Any name, a mirrored direction or a longer key pattern serves."""
    dbs.main.sync_stats.create_index([("Timestamp", -1)], name="recent_first")
    dbs.main.users.create_index(
        [("SynchronizationWorker", 1), ("QueuedAt", 1), ("Host", 1)], name="wide"
    )
    dbs.main.sync_worker_stats.create_index([("Worker", 1), ("Timestamp", 1)])

    found = {
        (status.index.collection, status.index.label): status
        for status in check_indexes(dbs)
    }

    assert found["sync_stats", "{Timestamp: 1}"].name == "recent_first"
    assert found["users", "{SynchronizationWorker: 1, QueuedAt: 1}"].name == "wide"
    assert found["sync_worker_stats", "{Timestamp: 1}"].state == "missing"


def test_partial_sparse_and_reordered_indexes_do_not_serve(dbs: Databases) -> None:
    """An index that skips documents or leads with another key does not count."""
    dbs.main.users.create_index(
        "NextSynchronization",
        partialFilterExpression={"NextSynchronization": {"$exists": True}},
    )
    dbs.main.users.create_index("NonblockingSyncErrorCount", sparse=True)
    dbs.main.users.create_index([("QueuedAt", 1), ("SynchronizationWorker", 1)])
    dbs.ratelimit.limits.create_index([("Key", 1), ("Duration", 1), ("Expires", 1)])

    missing = {
        (status.index.collection, status.index.label) for status in missing_indexes(dbs)
    }

    assert {
        ("users", "{NextSynchronization: 1}"),
        ("users", "{NonblockingSyncErrorCount: 1}"),
        ("users", "{SynchronizationWorker: 1, QueuedAt: 1}"),
        ("limits", "{Key: 1, Duration: 1, Expires: 1}"),
    } <= missing


def test_a_refused_index_fails_alone(dbs: Databases) -> None:
    """When the server refuses one index, it is reported and the rest are built."""
    window = {"Key": "strava", "Duration": 900.0, "Expires": NOW + timedelta(minutes=5)}
    dbs.ratelimit.limits.insert_many([dict(window), dict(window)])

    applied = {status.index.collection: status for status in apply_indexes(dbs)}

    assert applied["limits"].state == "failed"
    assert applied["limits"].error
    assert applied["sync_worker_stats"].state == "created"


def test_warn_missing_logs_one_warning_per_missing_index(
    dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    """Each missing index costs exactly one warning naming it."""
    dbs.main.sync_stats.create_index("Timestamp")

    with caplog.at_level(logging.WARNING, logger="syncstats.indexes"):
        missing = warn_missing(dbs)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(missing) == REQUIRED - 1
    assert any("{NextSynchronization: 1}" in line for line in warnings)
    assert not any("sync_stats (" in line for line in warnings)


def write_config(tmp_path: Path, uri: str, dbs: Databases) -> Path:
    """A settings file naming the test's server and databases."""
    path = tmp_path / "syncstats.toml"
    path.write_text(
        f'mongo_uri = "{uri}"\n'
        f'database = "{dbs.main.name}"\n'
        f'ratelimit_database = "{dbs.ratelimit.name}"\n'
    )
    return path


@pytest.mark.usefixtures("reset_logging")
def test_indexes_command_lists_then_applies(
    dbs: Databases, mongo_uri: str, tmp_path: Path
) -> None:
    """The command marks missing indexes, creates them with --apply, exits 0."""
    config = str(write_config(tmp_path, mongo_uri, dbs))
    runner = CliRunner()

    listed = runner.invoke(indexes_command, ["--config", config])
    applied = runner.invoke(indexes_command, ["--config", config, "--apply"])
    again = runner.invoke(indexes_command, ["--config", config])

    assert (listed.exit_code, applied.exit_code, again.exit_code) == (0, 0, 0)
    assert "missing" in listed.output
    assert "--apply" in listed.output
    assert "created" in applied.output
    assert "missing" not in again.output
    assert set(states(dbs)) == {"present"}


@pytest.mark.usefixtures("reset_logging")
def test_indexes_command_exits_1_when_an_index_is_refused(
    dbs: Databases, mongo_uri: str, tmp_path: Path
) -> None:
    """A refused index is shown with the server's reason and exits 1."""
    window = {"Key": "strava", "Duration": 900.0, "Expires": NOW}
    dbs.ratelimit.limits.insert_many([dict(window), dict(window)])
    config = str(write_config(tmp_path, mongo_uri, dbs))

    result = CliRunner().invoke(indexes_command, ["--config", config, "--apply"])

    assert result.exit_code == 1
    assert "failed" in result.output


def test_applied_index_satisfies_the_rate_limiter(
    dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    """After apply, the limiter's own index creation finds nothing to warn of."""
    apply_indexes(dbs)

    with caplog.at_level(logging.WARNING):
        refresh_windows(dbs.ratelimit, {"strava": [(900.0, 10)]}, NOW)

    assert [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ] == []
