"""Tests of the demo data set, written to a real Mongo-wire server."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from syncstats import _demo
from syncstats._mongo import Document
from tests.conftest import NOW

SMALL = {"users": 200, "activities": 500}
COLLECTIONS = ("users", "connections", "sync_stats", "sync_worker_stats")


def _everything(db: Database[Document]) -> dict[str, list[Document]]:
    return {name: list(db[name].find().sort("_id", 1)) for name in COLLECTIONS}


def _error_records(db: Database[Document]) -> list[dict[str, Any]]:
    return [record for c in db.connections.find() for record in c["SyncErrors"]]


def test_populate_writes_the_counts_it_reports(db: Database[Document]) -> None:
    """The summary's document counts are what the collections hold."""
    summary = _demo.populate(db, NOW, **SMALL)

    assert summary.users == db.users.count_documents({}) == 200
    assert summary.activities == db.sync_stats.count_documents({}) == 500
    assert summary.connections == db.connections.count_documents({})
    assert 200 <= summary.connections <= 400
    assert summary.worker_records == db.sync_worker_stats.count_documents({})
    assert summary.worker_records > 100


def test_same_seed_gives_identical_data(
    db: Database[Document], mongo_client: MongoClient[Document]
) -> None:
    """Two databases filled with one seed hold the same documents."""
    twin = mongo_client[f"{db.name}_twin"]
    other = mongo_client[f"{db.name}_other"]
    _demo.populate(db, NOW, seed=7, **SMALL)
    _demo.populate(twin, NOW, seed=7, **SMALL)
    _demo.populate(other, NOW, seed=8, **SMALL)

    data = _everything(db)
    assert data == _everything(twin)
    assert data["sync_stats"] != _everything(other)["sync_stats"]


def test_has_data_sees_users_or_activities(db: Database[Document]) -> None:
    """has_data is false on an empty database and true once either is written."""
    assert not _demo.has_data(db)

    db.sync_stats.insert_one({"ActivityID": "a", "Distance": 1.0, "Timestamp": NOW})
    assert _demo.has_data(db)

    db.sync_stats.delete_many({})
    _demo.populate(db, NOW, **SMALL)
    assert _demo.has_data(db)


def test_users_fall_in_every_state(db: Database[Document]) -> None:
    """Locked, queued, overdue and failing users match the summary's counts."""
    summary = _demo.populate(db, NOW, **SMALL)
    users = db.users
    queued = {
        "QueuedAt": {"$lte": NOW},
        "SynchronizationWorker": None,
        "SynchronizationHostRestriction": {"$exists": False},
    }
    failing = {"NonblockingSyncErrorCount": {"$gt": 0, "$lt": float("inf")}}

    assert users.count_documents({"SynchronizationWorker": {"$ne": None}}) == 2
    assert summary.locked == 2
    assert users.count_documents({"SynchronizationWorker": 1}) == 1
    assert users.count_documents(queued) == summary.queued == 3
    assert users.count_documents({"NextSynchronization": {"$lt": NOW}}) == 2
    assert summary.overdue == 2
    assert users.count_documents(failing) == summary.failing == 8
    assert users.count_documents({"NextSynchronization": {"$gt": NOW}}) > 150
    restricted = {"SynchronizationHostRestriction": {"$exists": True}}
    assert users.count_documents(restricted) == 2
    assert users.count_documents({"NonblockingSyncErrorCount": "2"}) == 1
    assert users.count_documents({"NonblockingSyncErrorCount": -1}) == 1


def test_queued_users_wait_without_a_next_synchronization(
    db: Database[Document],
) -> None:
    """Every queued or locked user was queued minutes ago and is not scheduled."""
    _demo.populate(db, NOW, **SMALL)

    queued = list(db.users.find({"QueuedAt": {"$ne": None}}))
    assert len(queued) == 3 + 2 + 1
    for user in queued:
        assert NOW - timedelta(minutes=11) < user["QueuedAt"] <= NOW
        assert user["NextSynchronization"] is None


def test_failing_counts_match_their_error_records(db: Database[Document]) -> None:
    """A failing user's count is the non-blocking records of its connections."""
    _demo.populate(db, NOW, **SMALL)
    connections = {c["_id"]: c for c in db.connections.find()}

    failing = db.users.find({"NonblockingSyncErrorCount": {"$gt": 0}})
    for user in failing:
        records = [
            record
            for link in user["ConnectedServices"]
            for record in connections[link["ID"]]["SyncErrors"]
        ]
        expected = sum(not record["Block"] for record in records)
        assert user["NonblockingSyncErrorCount"] == expected


def test_error_messages_end_their_traceback_before_locals(
    db: Database[Document],
) -> None:
    """Messages carry a traceback whose last line, before LOCALS, names the error."""
    _demo.populate(db, NOW, **SMALL)
    records = _error_records(db)
    with_locals = [r for r in records if "\n\nLOCALS:\n" in r.get("Message", "")]

    assert len(with_locals) >= 8
    for record in with_locals:
        message, _, _ = record["Message"].partition("\n\nLOCALS:\n")
        lines = message.split("\n")
        assert lines[1] == "Traceback (most recent call last):"
        assert lines[2].startswith('  File "/opt/tapiriik/tapiriik/sync/sync.py"')
        kind, _, text = lines[-1].partition(": ")
        assert (kind.split(".")[-1][:1].isupper(), text) == (True, lines[0])
        assert record["Step"] in {"list", "download", "upload"}
        assert record["Scope"] in {"account", "service", "activity"}


def test_some_error_records_are_odd(db: Database[Document]) -> None:
    """A few records lack LOCALS, a message, or a timestamp, as old ones do."""
    _demo.populate(db, NOW, **SMALL)
    records = _error_records(db)

    no_message = [r for r in records if "Message" not in r]
    no_locals = [r for r in records if "LOCALS:" not in r.get("Message", "LOCALS:")]
    assert len(no_message) == 2
    assert len(no_locals) == 2
    assert any("Timestamp" not in r for r in records)
    assert all(r["Timestamp"] <= NOW for r in records if "Timestamp" in r)
    assert any(r["Block"] and r["UserException"]["Type"] == "auth" for r in records)


def test_activities_are_densest_near_now(db: Database[Document]) -> None:
    """Activities reach back 60 days, with some in the last hour and day."""
    _demo.populate(db, NOW, **SMALL)
    stats = db.sync_stats

    def since(delta: timedelta) -> int:
        return stats.count_documents({"Timestamp": {"$gt": NOW - delta}})

    assert since(timedelta(hours=1)) == 10
    assert since(timedelta(days=1)) == 50
    assert since(timedelta(days=61)) == 500
    last_week = since(timedelta(days=7)) - since(timedelta(days=1))
    ninth_week = since(timedelta(days=60)) - since(timedelta(days=54))
    assert last_week > 3 * ninth_week
    assert stats.count_documents({"Timestamp": {"$gt": NOW}}) == 0


def test_activities_have_plausible_values(db: Database[Document]) -> None:
    """Distances lie between 0.5 and 100 km or are null; ids and services are set."""
    _demo.populate(db, NOW, **SMALL)
    activities = list(db.sync_stats.find())

    distances = [a["Distance"] for a in activities if a["Distance"] is not None]
    assert 0 < len(activities) - len(distances) < 50
    assert all(500 <= d <= 100_000 for d in distances)
    assert len({a["ActivityID"] for a in activities}) == 500
    for activity in activities:
        assert activity["SourceServices"]
        assert activity["DestinationServices"]
        assert not set(activity["SourceServices"]) & set(
            activity["DestinationServices"]
        )


def test_worker_records_span_the_last_hour(db: Database[Document]) -> None:
    """Workers on sync-1..4 logged the last hour; five older records await pruning."""
    _demo.populate(db, NOW, **SMALL)
    workers = db.sync_worker_stats
    hour_ago = NOW - timedelta(hours=1)

    recent = list(workers.find({"Timestamp": {"$gt": hour_ago}}))
    assert len(recent) > 100
    assert all(r["Timestamp"] <= NOW for r in recent)
    assert workers.count_documents({"Timestamp": {"$lte": hour_ago}}) == 5
    assert {r["Host"] for r in recent} == {"sync-1", "sync-2", "sync-3", "sync-4"}
    taken = sorted(r["TimeTaken"] for r in recent)
    assert 12 < taken[len(taken) // 2] < 30
    assert all(isinstance(r["Worker"], int) for r in recent)


def test_populate_rejects_tiny_sizes_and_naive_now(db: Database[Document]) -> None:
    """Sizes below the minimum and a naive now raise ValueError, writing nothing."""
    with pytest.raises(ValueError, match="at least"):
        _demo.populate(db, NOW, users=5)
    with pytest.raises(ValueError, match="aware"):
        _demo.populate(db, datetime(2026, 12, 3, 12), **SMALL)  # noqa: DTZ001
    assert not _demo.has_data(db)


def test_populate_at_default_size_writes_every_document(
    db: Database[Document],
) -> None:
    """The default data set holds 3000 users and 8000 activities."""
    summary = _demo.populate(db, NOW)

    assert (summary.users, summary.activities) == (3000, 8000)
    assert db.sync_stats.count_documents({}) == 8000
    assert summary.locked == 16
    assert summary.failing == 120


def test_demo_command_fills_the_embedded_database_once(tmp_path: Path) -> None:
    """demo writes the data set, runs the pass, and reuses the data next time."""
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path),
        "SYNCSTATS_RABBITMQ_STATS_URL": "http://guest:Qu3ue-pw@127.0.0.1:9/api/queues/%2F/q",
        "COLUMNS": "100",
    }
    env.pop("SYNCSTATS_MONGO_URI", None)
    env.pop("SYNCSTATS_CONFIG", None)

    def demo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "syncstats", "demo"],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip

    first, second = demo(), demo()

    assert first.returncode == 0, first.stderr
    assert "Wrote a sample data set: 3,000 users, 8,000 activities." in first.stderr
    assert "No queue wait: cannot connect to" in first.stderr
    assert "users locked" in first.stdout
    assert "Qu3ue-pw" not in first.stdout + first.stderr
    assert second.returncode == 0, second.stderr
    assert "already holds data; using it" in second.stderr
    assert (tmp_path / "syncstats" / "embedded").is_dir()
