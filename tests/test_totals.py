"""Tests of the incremental distance totals, on a real Mongo-wire server."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import count
from typing import Any

from bson import ObjectId
from bson.decimal128 import Decimal128
from pymongo import MongoClient, ReadPreference
from pymongo.database import Database

from syncstats import totals
from syncstats._mongo import Document
from syncstats.totals import DistanceReport, compute_distance
from tests.conftest import NOW, CommandLog

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SERVICES = ("strava", "garminconnect", "runkeeper", "dropbox")

_serial = count(1)


def oid(created: datetime) -> ObjectId:
    """A unique ObjectId whose generation time is ``created``."""
    seconds = int(created.timestamp()).to_bytes(4, "big")
    return ObjectId(seconds + next(_serial).to_bytes(8, "big"))


def activity(
    created: datetime,
    distance: Any = 1000.0,
    destinations: Any = ("strava",),
    timestamp: datetime | None = None,
) -> Document:
    """A sync_stats document as Tapiriik's upsert leaves it."""
    return {
        "_id": oid(created),
        "Distance": distance,
        "Timestamp": timestamp or created,
        "SourceServices": ["garminconnect"],
        "DestinationServices": list(destinations)
        if isinstance(destinations, tuple)
        else destinations,
    }


def history(end: datetime, n: int, *, span: timedelta = 30 * DAY) -> list[Document]:
    """``n`` activities created evenly over ``span`` before ``end``.

    Distances are whole or half metres, so every sum is exact in floats.
    """
    return [
        activity(
            end - span + span * (i + 1) / (n + 1),
            distance=float(500 + (i * 37) % 20000) + (0.5 if i % 3 else 0.0),
            destinations=tuple(SERVICES[j % 4] for j in range(i % 3 + 1 + i % 2)),
        )
        for i in range(n)
    ]


def valid_distance(value: object) -> float | None:
    """Python's reading of the validity rule: a finite number >= 0."""
    if isinstance(value, Decimal128):
        value = float(value.to_decimal())
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def recount(
    db: Database[Document], since: datetime | None = None
) -> tuple[float, int, dict[str, float]]:
    """Total, count and per-destination sums, recounted in Python."""
    total, counted, by_service = 0.0, 0, dict[str, float]()
    for doc in db.sync_stats.find():
        distance = valid_distance(doc.get("Distance"))
        stamp = doc.get("Timestamp")
        if distance is None or (
            since is not None and not (isinstance(stamp, datetime) and stamp > since)
        ):
            continue
        total += distance
        counted += 1
        for service in destinations_of(doc):
            by_service[service] = by_service.get(service, 0.0) + distance

    return total, counted, by_service


def destinations_of(doc: Document) -> list[str]:
    """The non-empty string entries of one document's destinations."""
    value = doc.get("DestinationServices")
    values = value if isinstance(value, list) else [value]
    return [item for item in values if isinstance(item, str) and item]


def assert_exact(report: DistanceReport, db: Database[Document]) -> None:
    """The report's all-time figures equal a recount, overall and per service."""
    total, counted, by_service = recount(db)
    assert (report.total, report.counted) == (total, counted)
    assert {
        name: value.total
        for name, value in report.by_destination.items()
        if value.total
    } == by_service


def stored_state(db: Database[Document]) -> Document | None:
    """The state document as stored."""
    return db[totals.STATE_COLLECTION].find_one({"_id": totals.STATE_ID})


def test_first_run_recounts_everything(db: Database[Document]) -> None:
    """Without a stored state, a run recounts every document and stores the sums."""
    db.sync_stats.insert_many(history(NOW, 200))

    report = compute_distance(db, NOW)

    assert report.recount == "no state"
    assert report.stored
    assert_exact(report, db)
    assert stored_state(db) is not None


def test_increments_equal_a_recount_after_inserts(db: Database[Document]) -> None:
    """After runs with only inserts between them, the total equals a recount."""
    db.sync_stats.insert_many(history(NOW, 300))
    compute_distance(db, NOW)

    for run in range(1, 6):
        now = NOW + run * 10 * MINUTE
        db.sync_stats.insert_many(
            # New activities; some created before the last run but written after.
            [activity(now - k * 7 * MINUTE, 100.0 * k + run) for k in range(1, 8)]
        )
        report = compute_distance(db, now)

        assert report.recount is None
        assert_exact(report, db)


def test_late_document_within_the_margin_counts_once(db: Database[Document]) -> None:
    """A document created before a run but written after it counts exactly once."""
    db.sync_stats.insert_many(history(NOW, 50))
    before = compute_distance(db, NOW).total
    db.sync_stats.insert_one(activity(NOW - 50 * MINUTE, 777.0))

    totals_seen = [
        compute_distance(db, NOW + later).total
        for later in (10 * MINUTE, 20 * MINUTE, 2 * HOUR, 5 * HOUR)
    ]

    assert totals_seen == [before + 777.0] * 4


def test_document_older_than_the_margin_waits_for_the_recount(
    db: Database[Document],
) -> None:
    """A document written more than the margin after its _id time waits."""
    db.sync_stats.insert_many(history(NOW, 50))
    before = compute_distance(db, NOW, reconcile_every=DAY.total_seconds()).total
    db.sync_stats.insert_one(activity(NOW - 2 * HOUR, 555.0))

    missed = compute_distance(db, NOW + 10 * MINUTE)
    recounted = compute_distance(db, NOW + DAY)

    assert missed.total == before
    assert recounted.recount == "reconcile due"
    assert recounted.total == before + 555.0
    assert recounted.drift == 555.0


def test_document_without_a_recent_timestamp_waits_for_the_recount(
    db: Database[Document],
) -> None:
    """A new document whose Timestamp is no date, or far older, waits."""
    db.sync_stats.insert_many(history(NOW, 50))
    before = compute_distance(db, NOW).total
    db.sync_stats.insert_many(
        [
            activity(NOW + MINUTE, 11.0, timestamp=NOW - 3 * HOUR),
            {"_id": oid(NOW + MINUTE), "Distance": 22.0, "Timestamp": None},
        ]
    )

    missed = compute_distance(db, NOW + 10 * MINUTE)
    recounted = compute_distance(db, NOW + DAY)

    assert missed.total == before
    assert recounted.total == before + 33.0


def test_reupload_is_not_counted_twice(db: Database[Document]) -> None:
    """Refreshing an old document's Timestamp adds nothing to the total."""
    docs = history(NOW, 100)
    db.sync_stats.insert_many(docs)
    first = compute_distance(db, NOW)
    db.sync_stats.update_one(
        {"_id": docs[10]["_id"]},
        {"$set": {"Timestamp": NOW + 5 * MINUTE, "Distance": docs[10]["Distance"]}},
    )

    second = compute_distance(db, NOW + 10 * MINUTE)

    assert second.total == first.total
    assert second.last_hour == docs[10]["Distance"]
    assert_exact(second, db)


def test_in_place_change_drifts_until_the_recount(db: Database[Document]) -> None:
    """An old document changed in place is seen at the next full recount."""
    docs = history(NOW, 100)
    db.sync_stats.insert_many(docs)
    compute_distance(db, NOW, reconcile_every=3600)
    old = docs[5]
    db.sync_stats.update_one(
        {"_id": old["_id"]},
        {
            "$set": {"Distance": old["Distance"] + 250.0},
            "$addToSet": {"DestinationServices": "polarflow"},
        },
    )

    stale = compute_distance(db, NOW + 10 * MINUTE, reconcile_every=3600)
    exact = compute_distance(db, NOW + 70 * MINUTE, reconcile_every=3600)

    assert stale.total == recount(db)[0] - 250.0
    assert "polarflow" not in stale.by_destination
    assert exact.recount == "reconcile due"
    assert exact.drift == 250.0
    assert_exact(exact, db)


def test_state_survives_a_new_process(db: Database[Document], mongo_uri: str) -> None:
    """A new process with a new client continues from the stored state."""
    db.sync_stats.insert_many(history(NOW, 100))
    compute_distance(db, NOW)
    later = NOW + 10 * MINUTE
    db.sync_stats.insert_many(
        [activity(later - k * MINUTE, 10.0 * k) for k in range(5)]
    )

    reply = subprocess.run(
        [sys.executable, "-c", _CHILD, mongo_uri, db.name, later.isoformat()],
        capture_output=True,
        check=True,
        text=True,
        timeout=60,
    )
    child = json.loads(reply.stdout)

    total, counted, _ = recount(db)
    assert child == {"recount": None, "total": total, "counted": counted}


_CHILD = """
import json, sys
from datetime import datetime
from syncstats._mongo import make_client
from syncstats.totals import compute_distance
client = make_client(sys.argv[1], 10)
report = compute_distance(client[sys.argv[2]], datetime.fromisoformat(sys.argv[3]))
print(json.dumps(
    {"recount": report.recount, "total": report.total, "counted": report.counted}
))
"""


def test_dry_run_writes_no_state(db: Database[Document]) -> None:
    """A dry run computes the figures and leaves the state as it was."""
    db.sync_stats.insert_many(history(NOW, 100))

    cold = compute_distance(db, NOW, dry_run=True)
    assert stored_state(db) is None
    compute_distance(db, NOW)
    state = stored_state(db)
    db.sync_stats.insert_one(activity(NOW + 5 * MINUTE, 42.0))
    warm = compute_distance(db, NOW + 10 * MINUTE, dry_run=True)

    assert (cold.stored, warm.stored) == (False, False)
    assert stored_state(db) == state
    assert warm.recount is None
    assert_exact(warm, db)


def test_per_destination_totals_equal_a_recount(db: Database[Document]) -> None:
    """Each destination entry adds the activity's valid distance to its service."""
    db.sync_stats.insert_many(history(NOW, 200, span=3 * DAY))
    db.sync_stats.insert_many(
        [
            activity(NOW - 2 * MINUTE, 10.0, ("strava", "strava", "rwgps")),
            activity(NOW - 3 * MINUTE, 20.0, "polarflow"),
            activity(NOW - 4 * MINUTE, 40.0, ("", None, 7, "runkeeper")),
            activity(NOW - 5 * MINUTE, 80.0, None),
            activity(NOW - 6 * MINUTE, 160.0, ()),
            activity(NOW - 7 * MINUTE, None, ("strava",)),
        ]
    )
    compute_distance(db, NOW - HOUR)

    report = compute_distance(db, NOW)

    assert_exact(report, db)
    for since, field in ((NOW - DAY, "last_day"), (NOW - HOUR, "last_hour")):
        _, _, expected = recount(db, since)
        got = {
            name: getattr(value, field)
            for name, value in report.by_destination.items()
            if getattr(value, field)
        }
        assert got == expected


def test_windows_sum_by_timestamp(db: Database[Document]) -> None:
    """The last day and hour hold the valid distances with a later Timestamp."""
    db.sync_stats.insert_many(history(NOW, 300, span=3 * DAY))
    db.sync_stats.insert_many(
        [
            activity(NOW - 3 * DAY, 8.0, timestamp=NOW - 30 * MINUTE),
            activity(NOW - 3 * DAY, 16.0, timestamp=NOW - HOUR),
            activity(NOW - 3 * DAY, 32.0, timestamp=NOW - DAY),
        ]
    )

    report = compute_distance(db, NOW)

    assert report.last_day == recount(db, NOW - DAY)[0]
    assert report.last_hour == recount(db, NOW - HOUR)[0]


def test_invalid_distances_are_skipped(db: Database[Document]) -> None:
    """Null, strings, booleans, NaN, infinities and negatives add nothing."""
    created = NOW - 2 * HOUR
    invalid = [None, "1000", True, math.nan, math.inf, -math.inf, -5.0, [3.0]]
    db.sync_stats.insert_many([activity(created, value) for value in invalid])
    missing = activity(created)
    del missing["Distance"]
    db.sync_stats.insert_many(
        [
            missing,
            activity(created, 12.0),
            activity(created, Decimal128(Decimal("1.5"))),
        ]
    )
    compute_distance(db, NOW - HOUR)
    db.sync_stats.insert_many([activity(NOW, value) for value in invalid])

    report = compute_distance(db, NOW)

    assert (report.total, report.counted) == (13.5, 2)
    assert report.by_destination["strava"].total == 13.5


def test_non_object_id_documents_count_at_the_recount(
    db: Database[Document],
) -> None:
    """Documents whose _id is not an ObjectId are counted by full recounts only."""
    db.sync_stats.insert_many(history(NOW, 50))
    db.sync_stats.insert_one({"_id": "legacy-1", "Distance": 3.0, "Timestamp": NOW})
    first = compute_distance(db, NOW)
    assert_exact(first, db)
    db.sync_stats.insert_many(
        [
            {"_id": "legacy-2", "Distance": 5.0, "Timestamp": NOW},
            {"_id": NOW + DAY, "Distance": 7.0, "Timestamp": NOW},
        ]
    )

    second = compute_distance(db, NOW + 10 * MINUTE)
    third = compute_distance(db, NOW + 2 * DAY)

    assert second.total == first.total
    assert third.total == first.total + 12.0
    assert_exact(third, db)


def test_earlier_now_recounts_and_restarts_there(db: Database[Document]) -> None:
    """A run with ``now`` before the checkpoint recounts and stores its own state."""
    db.sync_stats.insert_many(history(NOW, 100))
    compute_distance(db, NOW + HOUR)

    back = compute_distance(db, NOW)
    assert_exact(back, db)
    db.sync_stats.insert_one(activity(NOW + 5 * MINUTE, 9.0))
    onward = compute_distance(db, NOW + 10 * MINUTE)

    assert back.recount == "clock went back"
    assert stored_state(db)["checkpoint"] == NOW + 10 * MINUTE  # type: ignore[index]
    assert onward.recount is None
    assert_exact(onward, db)


def test_reading_database_uses_the_read_preference(
    mongo_client: MongoClient[Document], db: Database[Document]
) -> None:
    """Heavy reads follow the setting; the state stays on the primary."""
    reader = totals.reading_database(mongo_client, db.name, "secondaryPreferred")
    db.sync_stats.insert_many(history(NOW, 50))

    report = compute_distance(db, NOW, read_db=reader)

    assert reader.read_preference == ReadPreference.SECONDARY_PREFERRED
    assert report.stored
    assert_exact(report, db)


def explain(db: Database[Document], command: Document) -> tuple[str, int, int]:
    """The winning plan, keys and documents examined of one aggregate command."""
    keep = ("aggregate", "pipeline", "cursor", "hint")
    reply = db.command(
        "explain",
        {key: command[key] for key in keep if key in command},
        verbosity="executionStats",
    )
    cursor = reply.get("stages", [{}])[0].get("$cursor", reply)
    stats = cursor.get("executionStats") or reply["executionStats"]
    plan = json.dumps(cursor["queryPlanner"]["winningPlan"], default=str)
    return plan, stats["totalKeysExamined"], stats["totalDocsExamined"]


def aggregates(commands: Iterable[Document]) -> list[Document]:
    """The aggregate commands sent to sync_stats."""
    return [c for c in commands if c.get("aggregate") == "sync_stats"]


def test_steady_state_reads_only_recent_uploads_by_index(
    db: Database[Document],
    command_log: tuple[CommandLog, MongoClient[Document]],
) -> None:
    """An incremental run reads the Timestamp index over recent uploads only."""
    db.sync_stats.create_index("Timestamp")
    past = history(NOW, 3000, span=300 * DAY)
    db.sync_stats.insert_many(past)
    compute_distance(db, NOW)
    later = NOW + 10 * MINUTE
    db.sync_stats.insert_many([activity(later - k * MINUTE, 5.0) for k in range(30)])
    for old in past[:5]:  # re-uploads: read, then dropped by the _id test
        db.sync_stats.update_one({"_id": old["_id"]}, {"$set": {"Timestamp": later}})
    log, client = command_log

    report = compute_distance(client[db.name], later)

    sent = aggregates(log.commands)
    increments = [c for c in sent if {"$match": {"_id": ANY_RANGE}} in c["pipeline"]]
    uploaded = db.sync_stats.count_documents({"Timestamp": {"$gte": NOW - 2 * HOUR}})
    last_day = db.sync_stats.count_documents({"Timestamp": {"$gt": later - DAY}})
    assert report.recount is None
    assert (len(sent), len(increments)) == (2, 1)
    assert 35 <= uploaded <= last_day < 100
    for command in sent:
        plan, keys, docs = explain(db, command)
        assert "IXSCAN" in plan
        assert '"keyPattern": {"Timestamp": 1}' in plan
        assert keys == docs == (uploaded if command in increments else last_day)


class _AnyRange:
    """Equal to any ``{"$gte": value}`` condition."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and list(other) == ["$gte"]

    def __hash__(self) -> int:
        return 0


ANY_RANGE = _AnyRange()
