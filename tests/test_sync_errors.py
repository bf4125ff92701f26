"""Tests of the common sync errors rebuild, on a real Mongo-wire server."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from syncstats._mongo import Document
from syncstats.sync_errors import (
    BUILD_PREFIX,
    COLLECTION,
    read_common_errors,
    rebuild_common_errors,
)
from tests.conftest import NOW, CommandLog

KEY_ERROR = "KeyError: 'distance'"
# Two naming lines that differ only after their first 60 characters.
LONG = "tapiriik.services.api.APIException: Unable to upload activity"[:60]
LONG_A = LONG + ", Strava 500"
LONG_B = LONG + ", Strava 502"


def message(line: str) -> str:
    """A Message the way Tapiriik writes it, named by ``line``."""
    return (
        "Something failed\n"
        "Traceback (most recent call last):\n"
        '  File "/opt/tapiriik/tapiriik/sync/sync.py", line 936, in _downloadActivity\n'
        "    act = svc.DownloadActivity(conn, act)\n"
        f"{line}\n\nLOCALS:\nself=<Service object at 0x7f0000000001>\nresp=None"
    )


def record(line: str, age: float | None = None) -> Document:
    """An error record named by ``line``, ``age`` seconds before NOW if given."""
    doc: Document = {"Step": "download", "Message": message(line), "Block": False}
    if age is not None:
        doc["Timestamp"] = NOW - timedelta(seconds=age)
    return doc


def connection(service: str, *records: Document) -> Document:
    """A connection of ``service`` holding ``records``, with a fresh id."""
    return {"_id": ObjectId(), "Service": service, "SyncErrors": list(records)}


def build_collections(db: Database[Document]) -> list[str]:
    """The names of rebuild collections left behind."""
    return [n for n in db.list_collection_names() if n.startswith(BUILD_PREFIX)]


def test_groups_by_service_and_stem(db: Database[Document]) -> None:
    """Records group by service and 60-character stem with their counts and ages."""
    a = connection(
        "strava",
        record(KEY_ERROR, 100),
        record(KEY_ERROR, 300),
        record(KEY_ERROR),
        {"Message": 5},
    )
    b = connection("strava", record(KEY_ERROR, 200), record(LONG_B))
    c = connection("garminconnect", record(KEY_ERROR))
    d = connection("strava", record(LONG_A, 60))
    e = connection("strava")
    db.connections.insert_many([a, b, c, d, e])

    report = rebuild_common_errors(db, NOW)

    assert [
        (g.service, g.stem, g.count, g.ts_count, g.recency, g.recency_avg, g.exemplar)
        for g in report.groups
    ] == [
        ("strava", KEY_ERROR, 4, 3, 600.0, 200.0, KEY_ERROR),
        ("strava", LONG, 2, 1, 60.0, 60.0, LONG_A),
        ("garminconnect", KEY_ERROR, 1, 0, 0.0, None, KEY_ERROR),
    ]
    assert [set(g.connections) for g in report.groups] == [
        {a["_id"], b["_id"]},
        {b["_id"], d["_id"]},
        {c["_id"]},
    ]
    assert (report.records, report.skipped) == (8, 1)


def test_stored_documents_have_tapiriik_shape(db: Database[Document]) -> None:
    """Each group is stored as ``{_id: {service, stem}, value: {...}}``."""
    a = connection("strava", record(KEY_ERROR, 30), record(KEY_ERROR))
    db.connections.insert_one(a)

    rebuild_common_errors(db, NOW)

    assert read_common_errors(db) == [
        {
            "_id": {"service": "strava", "stem": KEY_ERROR},
            "value": {
                "count": 2,
                "ts_count": 1,
                "recency": 30.0,
                "recency_avg": 30.0,
                "connections": [a["_id"]],
                "exemplar": KEY_ERROR,
            },
        }
    ]


def test_recency_avg_is_null_without_timestamps(db: Database[Document]) -> None:
    """A group whose records carry no date stores a null mean age, not NaN."""
    db.connections.insert_one(connection("strava", record(KEY_ERROR)))

    rebuild_common_errors(db, NOW)

    [stored] = read_common_errors(db)
    assert stored["value"]["ts_count"] == 0
    assert stored["value"]["recency"] == 0.0
    assert stored["value"]["recency_avg"] is None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(message(KEY_ERROR), KEY_ERROR, id="tapiriik"),
        pytest.param(f"{KEY_ERROR}\n\nLOCALS:\n", KEY_ERROR, id="one-line"),
        pytest.param(f"a\r\n{KEY_ERROR}\r\r\n\nLOCALS:\nx=1", KEY_ERROR, id="crlf"),
        pytest.param(
            f"a\n\nLOCALS:\nx=1\n{KEY_ERROR}\n\nLOCALS:\ny=2", KEY_ERROR, id="last"
        ),
        pytest.param("a\n\nLOCALS:oops\n\nLOCALS:\n", "LOCALS:oops", id="adjacent"),
        pytest.param("é" * 70 + "\n\nLOCALS:\n", "é" * 70, id="non-ascii"),
    ],
)
def test_naming_line_precedes_last_locals_marker(
    db: Database[Document], text: str, line: str
) -> None:
    """The naming line is the last line before the last blank line and LOCALS:."""
    db.connections.insert_one(connection("strava", {"Message": text}))

    report = rebuild_common_errors(db, NOW)

    assert [(g.stem, g.exemplar) for g in report.groups] == [(line[:60], line)]
    assert report.skipped == 0


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(KEY_ERROR, id="no-marker"),
        pytest.param(f"{KEY_ERROR}\nLOCALS:\nx=1", id="no-blank-line"),
        pytest.param(f"{KEY_ERROR}\n\n\nLOCALS:\nx=1", id="empty-line"),
        pytest.param(f"{KEY_ERROR}\n\r\n\nLOCALS:\nx=1", id="carriage-return-only"),
        pytest.param("\n\nLOCALS:\nx=1", id="marker-first"),
        pytest.param("", id="empty"),
    ],
)
def test_message_without_naming_line_is_skipped(
    db: Database[Document], text: str
) -> None:
    """A message with no line before a blank line and LOCALS: forms no group."""
    db.connections.insert_one(connection("strava", {"Message": text}))

    report = rebuild_common_errors(db, NOW)

    assert (report.groups, report.records, report.skipped) == ([], 1, 1)


def test_unreadable_records_are_counted_as_skipped(db: Database[Document]) -> None:
    """Records without a string message, and non-array SyncErrors, are skipped."""
    db.connections.insert_many(
        [
            connection(
                "strava",
                record(KEY_ERROR),
                {"Step": "upload", "Block": False},
                {"Message": None},
                {"Message": 42},
                {"Message": [message(KEY_ERROR)]},
                {"Message": {"text": message(KEY_ERROR)}},
                "not a record",
                None,
            ),
            {"Service": "strava", "SyncErrors": message(KEY_ERROR)},
            {"Service": "strava", "SyncErrors": record(KEY_ERROR)},
            {"Service": "strava", "SyncErrors": 3},
            {"Service": "strava", "SyncErrors": None},
            {"Service": "strava", "SyncErrors": []},
            {"Service": "strava"},
        ]
    )

    report = rebuild_common_errors(db, NOW)

    assert [(g.stem, g.count) for g in report.groups] == [(KEY_ERROR, 1)]
    assert (report.records, report.skipped) == (11, 10)


def test_connection_without_service_groups_under_null(
    db: Database[Document],
) -> None:
    """Errors of a connection with no string Service group under a null service."""
    db.connections.insert_many(
        [
            {"_id": 1, "SyncErrors": [record(KEY_ERROR)]},
            {"_id": 2, "Service": 7, "SyncErrors": [record(KEY_ERROR)]},
        ]
    )

    rebuild_common_errors(db, NOW)

    [stored] = read_common_errors(db)
    assert stored["_id"] == {"service": None, "stem": KEY_ERROR}
    assert sorted(stored["value"]["connections"]) == [1, 2]


def test_timestamps_count_only_as_dates(db: Database[Document]) -> None:
    """Naive dates count as UTC; strings, numbers and nulls are not dates."""
    naive = (NOW - timedelta(seconds=90)).replace(tzinfo=None)
    records = [
        {"Message": message(KEY_ERROR), "Timestamp": naive},
        record(KEY_ERROR, 10.5),
        {"Message": message(KEY_ERROR), "Timestamp": naive.isoformat()},
        {"Message": message(KEY_ERROR), "Timestamp": naive.timestamp()},
        {"Message": message(KEY_ERROR), "Timestamp": None},
    ]
    db.connections.insert_one(connection("strava", *records))

    [group] = rebuild_common_errors(db, NOW).groups

    assert (group.count, group.ts_count) == (5, 2)
    assert group.recency == pytest.approx(100.5)
    assert group.recency_avg == pytest.approx(50.25)


def test_rebuild_replaces_old_groups(db: Database[Document]) -> None:
    """Groups of an earlier run that no longer occur are gone after a rebuild."""
    db[COLLECTION].insert_one(
        {"_id": {"service": "runkeeper", "stem": "old"}, "value": {"count": 9}}
    )
    db.connections.insert_one(connection("strava", record(KEY_ERROR)))

    rebuild_common_errors(db, NOW)

    assert [doc["_id"] for doc in read_common_errors(db)] == [
        {"service": "strava", "stem": KEY_ERROR}
    ]
    assert build_collections(db) == []


def test_no_errors_leave_an_empty_collection(db: Database[Document]) -> None:
    """With no error records left the stored groups are emptied."""
    db[COLLECTION].insert_one(
        {"_id": {"service": "runkeeper", "stem": "old"}, "value": {"count": 9}}
    )
    db.connections.insert_one(connection("strava"))

    report = rebuild_common_errors(db, NOW)

    assert (report.groups, report.records, report.skipped) == ([], 0, 0)
    assert db[COLLECTION].count_documents({}) == 0
    assert build_collections(db) == []


def test_rebuild_swaps_the_groups_in_one_rename(
    db: Database[Document],
    command_log: tuple[CommandLog, MongoClient[Document]],
) -> None:
    """The live groups change by one renameCollection with dropTarget, nothing else.

    MongoDB renames an unsharded collection atomically, so this is what lets
    Tapiriik's diagnostics read the old groups or the new ones, never a part.
    """
    db.connections.insert_many([connection("strava", record(KEY_ERROR))])
    rebuild_common_errors(db, NOW)
    log, client = command_log

    rebuild_common_errors(client[db.name], NOW)

    live = f"{db.name}.{COLLECTION}"
    touching = [
        command
        for command in log.commands
        if command.get(next(iter(command))) in (COLLECTION, live)
        or command.get("to") == live
    ]
    [rename] = touching
    assert rename["renameCollection"].startswith(f"{db.name}.{BUILD_PREFIX}")
    assert (rename["to"], rename["dropTarget"]) == (live, True)


def test_readers_during_rebuilds_see_only_whole_groups(
    db: Database[Document],
) -> None:
    """Readers never fail or see a half-written group, and end on the last run's.

    SecantusDB deviates from MongoDB here: it moves a renamed collection's
    documents one write at a time, so a reader there can catch part of a set
    (seen under load: 0, 3 or 12 of 40 groups), where MongoDB's rename shows
    the old set or the new one whole. The swap MongoDB makes atomic is
    asserted in test_rebuild_swaps_the_groups_in_one_rename.
    """
    connections = [connection("strava", record(f"Error {n}")) for n in range(40)]
    db.connections.insert_many(connections)
    rebuild_common_errors(db, NOW)
    groups = {
        service: [{"service": service, "stem": f"Error {n}"} for n in range(40)]
        for service in ["garminconnect", "strava"]
    }
    seen: list[list[Document]] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(list(db[COLLECTION].find()))
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for service in ["garminconnect", "strava"] * 5:
            db.connections.update_many({}, {"$set": {"Service": service}})
            rebuild_common_errors(db, NOW)
    finally:
        done.set()
        reader.join()

    assert failures == []
    assert len(seen) > 10
    written = [group for run in groups.values() for group in run]
    for docs in seen:
        for doc in docs:
            assert doc["_id"] in written
            assert (doc["value"]["count"], len(doc["value"]["connections"])) == (1, 1)
    final = sorted(doc["_id"]["stem"] for doc in db[COLLECTION].find())
    assert final == sorted(group["stem"] for group in groups["strava"])
    assert {doc["_id"]["service"] for doc in db[COLLECTION].find()} == {"strava"}


def test_failed_rebuild_keeps_old_groups(
    db: Database[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the swap fails the old groups stay and the new collection is dropped."""
    old = {"_id": {"service": "runkeeper", "stem": "old"}, "value": {"count": 9}}
    db[COLLECTION].insert_one(old)
    db.connections.insert_one(connection("strava", record(KEY_ERROR)))

    def refuse(self: Collection[Document], *args: Any, **kwargs: Any) -> None:
        raise OperationFailure("rename refused")

    monkeypatch.setattr(Collection, "rename", refuse)

    with pytest.raises(OperationFailure):
        rebuild_common_errors(db, NOW)

    assert read_common_errors(db) == [old]
    assert build_collections(db) == []


def test_dry_run_writes_nothing(db: Database[Document]) -> None:
    """A dry run reports the groups and leaves the stored ones untouched."""
    old = {"_id": {"service": "runkeeper", "stem": "old"}, "value": {"count": 9}}
    db[COLLECTION].insert_one(old)
    db.connections.insert_one(connection("strava", record(KEY_ERROR, 5)))
    names = sorted(db.list_collection_names())

    report = rebuild_common_errors(db, NOW, dry_run=True)

    assert report.dry_run
    assert [(g.stem, g.count, g.recency) for g in report.groups] == [
        (KEY_ERROR, 1, 5.0)
    ]
    assert read_common_errors(db) == [old]
    assert sorted(db.list_collection_names()) == names


def test_rerun_stores_the_same_groups(db: Database[Document]) -> None:
    """Rebuilding twice at the same instant stores identical documents."""
    db.connections.insert_many(
        [
            connection("strava", record(LONG_A, 1), record(LONG_B, 2)),
            connection("strava", record(LONG_B), record(KEY_ERROR, 3)),
            connection("dropbox", record(KEY_ERROR)),
        ]
    )

    first = rebuild_common_errors(db, NOW)
    second = rebuild_common_errors(db, NOW)

    assert second == first
    assert read_common_errors(db) == [group.document() for group in first.groups]


def test_read_orders_by_count_then_service_and_stem(db: Database[Document]) -> None:
    """Stored groups are read most errors first, ties by service then stem."""
    counts = [
        ("strava", "b", 2),
        ("dropbox", "z", 2),
        ("strava", "a", 2),
        ("x", "y", 7),
    ]
    db[COLLECTION].insert_many(
        {"_id": {"service": s, "stem": t}, "value": {"count": n}} for s, t, n in counts
    )

    order = [(d["_id"]["service"], d["_id"]["stem"]) for d in read_common_errors(db)]

    assert order == [("x", "y"), ("dropbox", "z"), ("strava", "a"), ("strava", "b")]


def test_report_as_dict_is_json_ready(db: Database[Document]) -> None:
    """The report's dict holds connection ids as strings and serialises to JSON."""
    a = connection("strava", record(KEY_ERROR), {"Message": None})
    db.connections.insert_one(a)

    report = rebuild_common_errors(db, NOW, dry_run=True)

    assert json.loads(json.dumps(report.as_dict())) == {
        "records": 2,
        "skipped": 1,
        "dry_run": True,
        "groups": [
            {
                "service": "strava",
                "stem": KEY_ERROR,
                "count": 1,
                "ts_count": 0,
                "recency": 0.0,
                "recency_avg": None,
                "connections": [str(a["_id"])],
                "exemplar": KEY_ERROR,
            }
        ],
    }
    assert report.summary() == "2 records in 1 groups, 1 skipped (dry run)"
