"""End-to-end tests of ``syncstats run`` on a real Mongo-wire server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pymongo.database import Database

from syncstats._mongo import Document
from syncstats.cli import main
from syncstats.indexes import REQUIRED_INDEXES
from syncstats.lease import JOBS_LEASE, Lease
from tests.conftest import FIXTURES, NOW

pytestmark = pytest.mark.usefixtures("reset_logging")

HOUR = timedelta(hours=1)
REPLIES = FIXTURES / "rabbitmq"
BUSY_QUEUE = "c1_consumer_acking_60s__with_params.json"
QUEUE_PATH = "/api/queues/%2F/tapiriik-users"
Replay = tuple[str, Any]


def write_config(tmp_path: Path, names: tuple[str, str], **values: str) -> Path:
    """A TOML settings file for the test's databases, with Strava's limits."""
    lines = [f'database = "{names[0]}"', f'ratelimit_database = "{names[1]}"']
    lines += [f'{key} = "{value}"' for key, value in values.items()]
    lines += [
        "[rate_limits]",
        'strava = [{ window = "15m", max = 200 }, { window = "1d", max = 2000 }]',
    ]
    path = tmp_path / "syncstats.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def awkward_tapiriik(db: Database[Document]) -> None:
    """A Tapiriik-shaped database full of the values real ones hold."""
    db.sync_stats.insert_many(
        [
            {
                "Distance": 5000.0,
                "Timestamp": NOW - timedelta(minutes=5),
                "DestinationServices": ["strava", "runkeeper"],
            },
            {
                "Distance": 1200,
                "Timestamp": (NOW - 2 * HOUR).replace(tzinfo=None),
                "DestinationServices": ["strava"],
            },
            {"Distance": 800.5, "Timestamp": NOW - 48 * HOUR},
            {"Distance": None, "Timestamp": NOW},
            {"Distance": float("nan"), "Timestamp": NOW},
            {"Distance": "12", "Timestamp": NOW},
            {"Distance": -3.0, "Timestamp": NOW},
            {"Distance": 70.0, "Timestamp": "yesterday"},
        ]
    )
    db.users.insert_many(
        [
            {"QueuedAt": NOW - timedelta(seconds=300), "NextSynchronization": None},
            {"QueuedAt": NOW - timedelta(seconds=100), "SynchronizationWorker": None},
            {"QueuedAt": NOW - HOUR, "SynchronizationWorker": 4242},
            {"QueuedAt": NOW - HOUR, "SynchronizationHostRestriction": None},
            {"SynchronizationWorker": 1, "NextSynchronization": NOW - HOUR},
            {"NextSynchronization": NOW + HOUR, "NonblockingSyncErrorCount": 3},
            {"NonblockingSyncErrorCount": "2"},
            {"NonblockingSyncErrorCount": 1},
        ]
    )
    failure = "Traceback (most recent call last):\nAPIException: quota\n\nLOCALS:\n"
    db.connections.insert_many(
        [
            {"Service": "strava", "SyncErrors": [{"Message": failure}] * 2},
            {"Service": "runkeeper", "SyncErrors": [{"Message": "no marker"}]},
        ]
    )
    db.sync_worker_stats.insert_many(
        [
            {"Timestamp": NOW - timedelta(minutes=10), "TimeTaken": 12.0},
            {"Timestamp": NOW - timedelta(minutes=20), "TimeTaken": 18.0},
            {"Timestamp": NOW - timedelta(minutes=30), "TimeTaken": None},
            {"Timestamp": NOW - 2 * HOUR, "TimeTaken": 99.0},
        ]
    )


@pytest.fixture
def busy_config(
    tmp_path: Path,
    db: Database[Document],
    db_names: tuple[str, str],
    mongo_uri: str,
    http_replay: Replay,
) -> Path:
    """Awkward Tapiriik data, a busy queue's captured reply, and their settings."""
    base, replies = http_replay
    replies.body = (REPLIES / BUSY_QUEUE).read_bytes()
    awkward_tapiriik(db)
    return write_config(
        tmp_path, db_names, mongo_uri=mongo_uri, rabbitmq_stats_url=base + QUEUE_PATH
    )


def test_run_writes_what_the_rules_say(
    busy_config: Path, db: Database[Document], ratelimit_db: Database[Document]
) -> None:
    """A run over awkward data stores exactly the figures the rules define."""
    reply = json.loads((REPLIES / BUSY_QUEUE).read_bytes())
    expected_wait = (
        reply["messages_ready_details"]["avg"]
        / reply["message_stats"]["ack_details"]["avg_rate"]
    )
    db.sync_status_stats.insert_one({"Timestamp": NOW - timedelta(days=91)})
    config = busy_config

    result = invoke("run", "--now", NOW.isoformat(), "--json", "--config", str(config))

    assert result.exit_code == 0, result.output
    assert result.stderr.count("WARNING syncstats.indexes: missing index") == len(
        REQUIRED_INDEXES
    )
    assert db.sync_status_stats.count_documents({}) == 1
    output = json.loads(result.stdout)
    assert all(step["ok"] for step in output["steps"].values())
    assert list(output["steps"]) == [
        "distance", "enqueue", "queue", "workers", "users", "errors", "ratelimit",
        "store",
    ]  # fmt: skip
    assert output["distance"] == {"recount": "no state", "drift": None, "counted": 4}
    assert output["errors"] == {"records": 3, "skipped": 1, "groups": 1}
    group = db.common_sync_errors.find_one({})
    assert group is not None
    assert group["_id"] == {"service": "strava", "stem": "APIException: quota"}
    assert group["value"]["count"] == 2
    stats = db.stats.find_one({}, {"_id": 0})
    assert stats is not None
    assert db.stats.count_documents({}) == 1
    assert stats["TotalDistanceSynced"] == 7070.5
    assert stats["LastDayDistanceSynced"] == 6200.0
    assert stats["LastHourDistanceSynced"] == 5000.0
    assert stats["EnqueueTime"] == 200.0
    assert stats["QueueHeadTime"] == pytest.approx(expected_wait)
    assert stats["LastHourSynchronizationCount"] == 3
    assert stats["TotalSyncTimeUsed"] == 30.0
    assert stats["AverageSyncDuration"] == 15.0
    assert stats["Updated"] == NOW
    assert stats["ByDestination"] == {
        "runkeeper": {
            "TotalDistanceSynced": 5000.0,
            "LastDayDistanceSynced": 5000.0,
            "LastHourDistanceSynced": 5000.0,
        },
        "strava": {
            "TotalDistanceSynced": 6200.0,
            "LastDayDistanceSynced": 6200.0,
            "LastHourDistanceSynced": 5000.0,
        },
    }
    status = db.sync_status_stats.find_one({}, {"_id": 0})
    assert status is not None
    assert status["Timestamp"] == NOW
    assert (status["Locked"], status["Pending"], status["ErrorUsers"]) == (2, 1, 2)
    assert status["TotalErrors"] == 4
    assert status["SyncEnqueueTime"] == 200.0
    assert status["SyncTimeUsed"] == 30.0
    assert status["Steps"] == dict.fromkeys(list(output["steps"])[:-1], True)
    assert output["stats"]["TotalDistanceSynced"] == 7070.5
    assert output["status"]["Timestamp"] == "2026-12-03T12:07:30Z"
    assert db.sync_worker_stats.count_documents({}) == 3
    windows = sorted(
        (w["Duration"], w["Max"], w["Count"], w["Expires"])
        for w in ratelimit_db.limits.find({"Key": "strava"})
    )
    assert windows == [
        (900.0, 200, 0, NOW.replace(minute=15, second=0)),
        (86400.0, 2000, 0, NOW.replace(hour=0, minute=0, second=0) + 24 * HOUR),
    ]


def test_json_holds_no_infinity(
    tmp_path: Path, db: Database[Document], db_names: tuple[str, str], mongo_uri: str
) -> None:
    """A total that overflows to infinity prints as null: the output stays JSON."""
    db.sync_stats.insert_many([{"Distance": 1.7e308, "Timestamp": NOW} for _ in "ab"])
    config = write_config(tmp_path, db_names, mongo_uri=mongo_uri)

    result = invoke(
        "run", "--now", NOW.isoformat(), "--json", "--dry-run", "--config", str(config)
    )

    output = json.loads(result.stdout, parse_constant=pytest.fail)
    assert output["stats"]["TotalDistanceSynced"] is None


def test_dry_run_writes_and_deletes_nothing(
    busy_config: Path, db: Database[Document], ratelimit_db: Database[Document]
) -> None:
    """--dry-run prints the figures but leaves every collection as it was."""
    config = busy_config

    result = invoke(
        "run", "--now", NOW.isoformat(), "--json", "--dry-run", "--config", str(config)
    )

    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)
    assert output["dry_run"] is True
    assert output["stats"]["TotalDistanceSynced"] == 7070.5
    assert output["stats"]["LastHourSynchronizationCount"] == 3
    assert db.stats.count_documents({}) == 0
    assert db.sync_status_stats.count_documents({}) == 0
    assert db.sync_worker_stats.count_documents({}) == 4
    assert ratelimit_db.limits.count_documents({}) == 0
    assert output["errors"]["groups"] == 1
    assert "common_sync_errors" not in db.list_collection_names()
    assert "syncstats_leases" not in db.list_collection_names()


def _hang() -> None:
    time.sleep(3)


@pytest.mark.parametrize(
    ("status", "body", "on_request", "reason"),
    [
        (404, (REPLIES / "e1_queue_missing_name__with_params.json").read_bytes(),
         None, "not found"),
        (401, (REPLIES / "f0_wrong_password__with_params.json").read_bytes(),
         None, "refused the credentials"),
        (500, b"Internal Server Error", None, "answered HTTP 500"),
        (200, b"<html>maintenance</html>", None, "something not JSON"),
        (200, b'[{"name": "tapiriik-users"}]', None, "not a queue object"),
        (200, b"{}", _hang, "no answer from"),
    ],
    ids=["404", "401", "500", "not-json", "other-shape", "hang"],
)  # fmt: skip
def test_failed_queue_step_stores_the_rest_and_exits_1(
    tmp_path: Path,
    db: Database[Document],
    db_names: tuple[str, str],
    mongo_uri: str,
    http_replay: Replay,
    status: int,
    body: bytes,
    on_request: Callable[[], None] | None,
    reason: str,
) -> None:
    """A RabbitMQ fault fails the queue step only: the rest is written, exit 1."""
    base, replies = http_replay
    replies.status, replies.body, replies.on_request = status, body, on_request
    awkward_tapiriik(db)
    db.stats.insert_one({"QueueHeadTime": 55.0, "TotalDistanceSynced": 1.0})
    url = base.replace("http://", "http://monitor:Pa55-queue@") + QUEUE_PATH
    config = write_config(
        tmp_path,
        db_names,
        mongo_uri=mongo_uri,
        rabbitmq_stats_url=url,
        rabbitmq_timeout="1s",
    )

    result = invoke("run", "--now", NOW.isoformat(), "--json", "--config", str(config))

    assert result.exit_code == 1
    steps = json.loads(result.stdout)["steps"]
    assert [name for name, step in steps.items() if not step["ok"]] == ["queue"]
    assert reason in steps["queue"]["error"]
    stats = db.stats.find_one({})
    assert stats is not None
    assert stats["QueueHeadTime"] is None
    assert stats["TotalDistanceSynced"] == 7070.5
    status = db.sync_status_stats.find_one({})
    assert status is not None
    assert status["SyncQueueHeadTime"] is None
    assert status["Locked"] == 2
    assert "Pa55-queue" not in result.output
    assert "step queue failed" in result.stderr


def test_backdated_run_only_adds_its_history_entry(
    tmp_path: Path,
    db: Database[Document],
    ratelimit_db: Database[Document],
    db_names: tuple[str, str],
    mongo_uri: str,
    http_replay: Replay,
) -> None:
    """A run before the stored pass leaves every live collection as it was."""
    base, replies = http_replay
    replies.body = (REPLIES / BUSY_QUEUE).read_bytes()
    awkward_tapiriik(db)
    config = write_config(
        tmp_path, db_names, mongo_uri=mongo_uri, rabbitmq_stats_url=base + QUEUE_PATH
    )
    invoke("run", "--now", NOW.isoformat(), "--config", str(config))
    live = ("stats", "common_sync_errors", "syncstats_state", "sync_worker_stats")
    live += ("syncstats_queue_samples",)

    def dump() -> dict[str, list[Document]]:
        found = {name: list(db[name].find({}, sort=[("_id", 1)])) for name in live}
        found["limits"] = list(ratelimit_db.limits.find({}, sort=[("_id", 1)]))
        return found

    before = dump()
    earlier = NOW - timedelta(days=2)

    result = invoke("run", "--now", earlier.isoformat(), "--config", str(config))

    assert result.exit_code == 0, result.stderr
    assert dump() == before
    assert all(before.values()), "every live collection holds something"
    history = db.sync_status_stats.find({}, {"Timestamp": 1}, sort=[("Timestamp", 1)])
    assert [entry["Timestamp"] for entry in history] == [earlier, NOW]


def test_failed_refresh_is_recorded_in_the_snapshot(
    tmp_path: Path,
    db: Database[Document],
    ratelimit_db: Database[Document],
    db_names: tuple[str, str],
    mongo_uri: str,
) -> None:
    """A rate-limit refresh that fails shows as a failed step in the snapshot."""
    # A validator no window passes makes every insert of the refresh fail.
    ratelimit_db.create_collection("limits", validator={"Key": {"$type": "int"}})
    config = write_config(
        tmp_path,
        db_names,
        mongo_uri=mongo_uri,
        rabbitmq_stats_url="http://127.0.0.1:9/api/queues/%2F/q",
    )

    result = invoke("run", "--now", NOW.isoformat(), "--json", "--config", str(config))

    assert result.exit_code == 1
    steps = json.loads(result.stdout)["steps"]
    assert [name for name, step in steps.items() if not step["ok"]] == [
        "queue",
        "ratelimit",
    ]
    status = db.sync_status_stats.find_one({})
    assert status is not None
    assert status["Steps"]["ratelimit"] is False
    assert status["Steps"]["users"] is True


def test_run_applies_history_days(
    tmp_path: Path, db: Database[Document], db_names: tuple[str, str], mongo_uri: str
) -> None:
    """A run deletes snapshots older than history_days; 0 keeps them all."""
    old = [{"Timestamp": NOW - timedelta(days=days)} for days in (2, 5, 100)]
    db.sync_status_stats.insert_many(old)
    config = write_config(tmp_path, db_names, mongo_uri=mongo_uri, history_days="3")

    invoke("run", "--now", NOW.isoformat(), "--json", "--config", str(config))
    kept = sorted(d["Timestamp"] for d in db.sync_status_stats.find({}))
    keep_all = write_config(tmp_path, db_names, mongo_uri=mongo_uri, history_days="0")
    db.sync_status_stats.insert_many(old[1:])
    invoke("run", "--now", NOW.isoformat(), "--json", "--config", str(keep_all))

    assert kept == [NOW - timedelta(days=2), NOW]
    assert db.sync_status_stats.count_documents({}) == 5


def test_summary_without_json_names_each_figure(
    tmp_path: Path, db: Database[Document], db_names: tuple[str, str], mongo_uri: str
) -> None:
    """Without --json the run prints a human summary with units."""
    awkward_tapiriik(db)
    config = write_config(
        tmp_path,
        db_names,
        mongo_uri=mongo_uri,
        rabbitmq_stats_url="http://127.0.0.1:9/api/queues/%2F/q",
    )

    result = invoke("run", "--now", NOW.isoformat(), "--config", str(config))

    assert result.exit_code == 1
    assert "7.1 km" in result.stdout
    assert "to strava" in result.stdout
    assert "6.2 km" in result.stdout
    assert "3.3 min" in result.stdout
    assert "step queue" in result.stdout
    assert "step queue failed: cannot connect to" in result.stderr


def test_held_lease_exits_4_writing_nothing(
    tmp_path: Path, db: Database[Document], db_names: tuple[str, str], mongo_uri: str
) -> None:
    """A run while another holds the lease exits 4 naming the holder."""
    Lease(db, JOBS_LEASE, holder="sync-9:777:abc", ttl=600).acquire()
    config = write_config(tmp_path, db_names, mongo_uri=mongo_uri)

    result = invoke("run", "--config", str(config))

    assert result.exit_code == 4
    assert "sync-9:777:abc" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert db.sync_status_stats.count_documents({}) == 0


def test_bad_configuration_exits_2_naming_the_key(tmp_path: Path) -> None:
    """An invalid window exits 2 with one line naming the key."""
    path = tmp_path / "bad.toml"
    path.write_text('[rate_limits]\nstrava = [{ window = "15 minutes", max = 9 }]\n')

    result = invoke("run", "--config", str(path))

    assert result.exit_code == 2
    assert result.stderr.startswith("syncstats: rate_limits.strava.0.window: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_now_is_a_usage_error() -> None:
    """A --now that is not ISO 8601 exits 2."""
    result = invoke("run", "--now", "next tuesday")

    assert result.exit_code == 2
    assert "ISO 8601" in result.stderr


def test_no_command_shows_the_help_and_exits_2() -> None:
    """A bare ``syncstats`` lists the commands, plainly, as a usage error."""
    result = CliRunner().invoke(main, [], prog_name="syncstats")

    assert result.exit_code == 2
    assert result.stdout.startswith("Usage: syncstats [OPTIONS] COMMAND")
    assert "  run  " in result.stdout
    assert result.stderr == ""


def test_unreachable_mongodb_exits_3_in_one_line(tmp_path: Path) -> None:
    """An unreachable server exits 3, one line, no traceback, no password."""
    config = tmp_path / "c.toml"
    config.write_text(
        'mongo_uri = "mongodb://stats:Secr3t-pw@127.0.0.1:9/?directConnection=true"\n'
        'mongo_timeout = "1s"\n'
    )

    completed = subprocess.run(
        [sys.executable, "-m", "syncstats", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 3
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("syncstats: MongoDB at mongodb://stats:***@127.0.0.1:9")
    assert "Secr3t-pw" not in completed.stderr + completed.stdout
    assert "Traceback" not in completed.stderr


def test_unreadable_mongo_uri_option_exits_2(tmp_path: Path) -> None:
    """A URI option the driver cannot read is refused, not silently dropped."""
    config = tmp_path / "c.toml"
    config.write_text('mongo_uri = "mongodb://u:Secr3t-pw@127.0.0.1:9/?badopt=1"\n')

    result = invoke("run", "--config", str(config))

    assert result.exit_code == 2
    assert result.stderr.startswith("syncstats: mongo_uri: Unknown option")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Secr3t-pw" not in result.output


def test_unreadable_tls_file_exits_2_without_its_password(tmp_path: Path) -> None:
    """A TLS file that cannot be read is a configuration error; no secret shows."""
    config = tmp_path / "c.toml"
    config.write_text(
        'mongo_uri = "mongodb://u:Secr3t-pw@127.0.0.1:9/?tls=true'
        f"&tlsCertificateKeyFile={tmp_path / 'missing.pem'}"
        '&tlsCertificateKeyFilePassword=Key-pw-77"\n'
    )

    result = invoke("run", "--config", str(config))

    assert result.exit_code == 2
    assert result.stderr == (
        "syncstats: mongo_uri: The tlscertificatekeyfile file is not readable\n"
    )
    assert "Secr3t-pw" not in result.output
    assert "Key-pw-77" not in result.output


def test_unresolvable_srv_name_is_unreachable_not_misconfigured(
    tmp_path: Path,
) -> None:
    """A DNS lookup that fails may work on the next run: exit 3, as for a host."""
    config = tmp_path / "c.toml"
    config.write_text(
        'mongo_uri = "mongodb+srv://u:Secr3t-pw@cluster0.example.invalid/"\n'
        'mongo_timeout = "2s"\n'
    )

    result = invoke("run", "--config", str(config))

    assert result.exit_code == 3, result.stderr
    assert result.stderr.startswith(
        "syncstats: MongoDB at mongodb+srv://u:***@cluster0.example.invalid/: "
        "cannot look up its hosts: "
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Secr3t-pw" not in result.output


def test_refused_lease_write_exits_3_and_frees_the_next_run(
    tmp_path: Path, db: Database[Document], db_names: tuple[str, str], mongo_uri: str
) -> None:
    """A server refusing the lease's write concern: exit 3, one line, no lease left."""
    refused = write_config(tmp_path, db_names, mongo_uri=mongo_uri + "?w=no-such-mode")

    result = invoke("run", "--now", NOW.isoformat(), "--config", str(refused))
    again = invoke(
        "run", "--now", NOW.isoformat(), "--json", "--config",
        str(write_config(tmp_path, db_names, mongo_uri=mongo_uri)),
    )  # fmt: skip

    assert result.exit_code == 3
    assert result.stderr.startswith("syncstats: MongoDB: the server refused: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert again.exit_code != 4, again.stderr
    assert db.sync_status_stats.count_documents({}) == 1


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        ("2999-01-01T00:00:00Z", "is in the future"),
        ("0001-01-01T00:00:00+01:00", "is out of range"),
        ("0001-01-01", "is before 1970-01-02"),
        ("1970-01-01T23:59:59Z", "is before 1970-01-02"),
    ],
)
def test_now_out_of_bounds_is_a_usage_error(now: str, reason: str) -> None:
    """A --now in the future or outside the calendar exits 2 in one line."""
    result = invoke("run", "--now", now)

    assert result.exit_code == 2
    assert reason in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    """A usage error prints one line and exits 2, without the usage text."""
    result = invoke("run", "--config", str(tmp_path))

    assert result.exit_code == 2
    assert result.stderr.startswith("syncstats: Invalid value for '--config'")
    assert len(result.stderr.strip().splitlines()) == 1
