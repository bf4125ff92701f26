"""Tests of the web app's JSON API, health check and token, and serve's guard."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from click.testing import CliRunner
from starlette.exceptions import StarletteDeprecationWarning

from syncstats._cli_serve import serve
from syncstats._mongo import Databases, Document, make_client
from syncstats.ratelimit import RateLimiter
from syncstats.settings import Settings, load_settings
from syncstats.snapshot import Snapshot, store_snapshot
from syncstats.sync_errors import COLLECTION, rebuild_common_errors
from syncstats.web import create_app
from tests.conftest import NOW

with warnings.catch_warnings():
    # Starlette asks for httpx2 behind its test client; httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

TOKEN = "s3cret-dashboard-token-4821"
PASSWORD = "pa55-w0rd-never-shown"
STEPS = {"distance": True, "enqueue": True, "queue": False, "users": True}
FULL = Snapshot(
    NOW - timedelta(minutes=1),
    total_distance=5_000_000.0,
    last_day_distance=250_000.5,
    last_hour_distance=12_000.0,
    enqueue_wait=30.0,
    queue_wait=None,
    syncs_last_hour=40,
    sync_time_used=900.0,
    average_sync_duration=22.5,
    locked=2,
    pending=7,
    error_users=4,
    total_errors=6,
    steps=STEPS,
)
BY_DESTINATION = {
    "strava": {
        "TotalDistanceSynced": 4_000_000.0,
        "LastDayDistanceSynced": 200_000.5,
        "LastHourDistanceSynced": 9_000.0,
    },
    "garminconnect": {
        "TotalDistanceSynced": 1_500_000.0,
        "LastDayDistanceSynced": 75_000.0,
        "LastHourDistanceSynced": 3_000.0,
    },
}
KEY_ERROR = "KeyError: 'distance'"
TIMEOUT = "requests.exceptions.ReadTimeout: read timed out"


@pytest.fixture
def down() -> Iterator[Databases]:
    """Databases of a client whose server never answers."""
    client = make_client(f"mongodb://syncstats:{PASSWORD}@127.0.0.1:1/", 0.3)
    yield Databases(client, client.tapiriik, client.tapiriik_ratelimit)
    client.close()


def configure(settings: Settings, **overrides: Any) -> Settings:
    """The test's settings with ``overrides`` applied through validation."""
    return load_settings(
        overrides={
            "mongo_uri": settings.mongo_uri,
            "database": settings.database,
            "ratelimit_database": settings.ratelimit_database,
        }
        | overrides
    )


def client_for(settings: Settings, dbs: Databases) -> TestClient:
    """A test client of the app, its clock stopped at NOW."""
    return TestClient(create_app(settings, dbs, clock=lambda: NOW))


def test_stats_returns_the_stored_document(settings: Settings, dbs: Databases) -> None:
    """/api/stats is the stats document with ISO 8601 UTC dates and no _id."""
    store_snapshot(dbs.main, FULL)

    response = client_for(settings, dbs).get("/api/stats")

    assert response.status_code == 200
    assert response.json() == {
        "TotalDistanceSynced": 5_000_000.0,
        "LastDayDistanceSynced": 250_000.5,
        "LastHourDistanceSynced": 12_000.0,
        "TotalSyncTimeUsed": 900.0,
        "AverageSyncDuration": 22.5,
        "LastHourSynchronizationCount": 40,
        "EnqueueTime": 30.0,
        "QueueHeadTime": None,
        "QueueLength": None,
        "QueueAckRate": None,
        "Updated": "2026-12-03T12:06:30Z",
        "Steps": STEPS,
    }


def test_stats_is_404_before_the_first_pass(settings: Settings, dbs: Databases) -> None:
    """Without a stored snapshot /api/stats answers 404 with a JSON error."""
    response = client_for(settings, dbs).get("/api/stats")

    assert response.status_code == 404
    assert response.json() == {"error": "no snapshot stored yet"}


def test_history_lists_the_span_oldest_first(
    settings: Settings, dbs: Databases
) -> None:
    """/api/history holds the snapshots of the last hours, sorted by Timestamp."""
    for age in (timedelta(hours=2), timedelta(hours=30), timedelta(minutes=10)):
        store_snapshot(dbs.main, FULL.replace(now=NOW - age, pending=int(age.seconds)))
    store_snapshot(dbs.main, FULL.replace(now=NOW - timedelta(hours=23)))
    client = client_for(settings, dbs)

    day = client.get("/api/history", params={"hours": "24"}).json()
    hour = client.get("/api/history", params={"hours": "0.5"}).json()

    assert [entry["Timestamp"] for entry in day["snapshots"]] == [
        "2026-12-02T13:07:30Z",
        "2026-12-03T10:07:30Z",
        "2026-12-03T11:57:30Z",
    ]
    assert day["now"] == "2026-12-03T12:07:30Z"
    assert day["since"] == "2026-12-02T12:07:30Z"
    assert day["hours"] == 24
    assert day["interval_seconds"] == 600
    assert hour["snapshots"] == [
        {
            "Timestamp": "2026-12-03T11:57:30Z",
            "Locked": 2,
            "Pending": 600,
            "ErrorUsers": 4,
            "TotalErrors": 6,
            "SyncTimeUsed": 900.0,
            "SyncEnqueueTime": 30.0,
            "SyncQueueHeadTime": None,
            "TotalDistanceSynced": 5_000_000.0,
            "LastDayDistanceSynced": 250_000.5,
            "LastHourDistanceSynced": 12_000.0,
            "LastHourSynchronizationCount": 40,
            "AverageSyncDuration": 22.5,
            "QueueLength": None,
            "QueueAckRate": None,
            "Steps": STEPS,
        }
    ]


def test_history_defaults_to_a_day(settings: Settings, dbs: Databases) -> None:
    """Without ``hours`` /api/history spans the last 24 hours."""
    store_snapshot(dbs.main, FULL.replace(now=NOW - timedelta(hours=25)))
    store_snapshot(dbs.main, FULL.replace(now=NOW - timedelta(hours=23)))

    body = client_for(settings, dbs).get("/api/history").json()

    assert body["hours"] == 24
    assert len(body["snapshots"]) == 1


@pytest.mark.parametrize("hours", ["0", "-3", "abc", "", "nan", "inf", "2160.5"])
def test_history_rejects_bad_hours(
    settings: Settings, dbs: Databases, hours: str
) -> None:
    """``hours`` must be a number above 0 and at most 90 days, else 400."""
    response = client_for(settings, dbs).get("/api/history", params={"hours": hours})

    assert response.status_code == 400
    assert response.json() == {
        "error": "hours must be a number above 0 and at most 2160"
    }


def test_history_accepts_ninety_days(settings: Settings, dbs: Databases) -> None:
    """The longest span, 2160 hours, is accepted."""
    response = client_for(settings, dbs).get("/api/history", params={"hours": "2160"})

    assert response.status_code == 200
    assert response.json()["snapshots"] == []


def test_limits_list_each_services_current_windows(
    settings: Settings, dbs: Databases
) -> None:
    """/api/limits shows every configured window with its use and its reset."""
    limited = configure(
        settings,
        rate_limits={
            "strava": [{"window": "15m", "max": 600}, {"window": "1d", "max": 30000}],
            "runkeeper": [{"window": "1h", "max": 100}],
        },
    )
    limiter = RateLimiter(dbs.ratelimit, limited.limits())
    for _ in range(3):
        limiter.acquire("strava", NOW)

    body = client_for(limited, dbs).get("/api/limits").json()

    assert body == {
        "now": "2026-12-03T12:07:30Z",
        "services": {
            "strava": [
                {
                    "window_seconds": 900,
                    "max": 600,
                    "used": 3,
                    "remaining": 597,
                    "resets_at": "2026-12-03T12:15:00Z",
                },
                {
                    "window_seconds": 86400,
                    "max": 30000,
                    "used": 3,
                    "remaining": 29997,
                    "resets_at": "2026-12-04T00:00:00Z",
                },
            ],
            "runkeeper": [
                {
                    "window_seconds": 3600,
                    "max": 100,
                    "used": 0,
                    "remaining": 100,
                    "resets_at": "2026-12-03T13:00:00Z",
                }
            ],
        },
    }


def test_healthz_is_ok_with_a_fresh_snapshot(
    settings: Settings, dbs: Databases
) -> None:
    """A snapshot younger than twice the interval makes /healthz answer 200."""
    store_snapshot(dbs.main, FULL.replace(now=NOW - timedelta(minutes=19)))

    response = client_for(settings, dbs).get("/healthz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "snapshot": "2026-12-03T11:48:30Z",
        "age_seconds": 1140.0,
    }


def test_healthz_fails_with_a_stale_snapshot(
    settings: Settings, dbs: Databases
) -> None:
    """A snapshot twice the interval old makes /healthz answer 503 with why."""
    store_snapshot(dbs.main, FULL.replace(now=NOW - timedelta(minutes=20)))

    response = client_for(settings, dbs).get("/healthz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unhealthy",
        "reason": "the latest snapshot is 1200 s old (limit 1200 s)",
        "snapshot": "2026-12-03T11:47:30Z",
    }


def test_healthz_fails_without_a_snapshot(settings: Settings, dbs: Databases) -> None:
    """Before the first pass /healthz answers 503."""
    response = client_for(settings, dbs).get("/healthz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unhealthy",
        "reason": "no snapshot stored yet",
    }


def test_healthz_fails_when_mongodb_is_down(
    settings: Settings, down: Databases
) -> None:
    """An unreachable MongoDB makes /healthz answer 503 naming the error kind."""
    impatient = configure(settings, mongo_timeout=0.3)

    response = client_for(impatient, down).get("/healthz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unhealthy",
        "reason": "MongoDB does not answer: ServerSelectionTimeoutError",
    }


def test_api_answers_503_when_mongodb_is_down(
    settings: Settings, down: Databases
) -> None:
    """A database error becomes a 503 with a one-line JSON error."""
    response = client_for(settings, down).get("/api/stats")

    assert response.status_code == 503
    assert response.json() == {
        "error": "MongoDB is unavailable: ServerSelectionTimeoutError"
    }


def error_message(line: str) -> str:
    """A sync error Message the way Tapiriik writes it, named by ``line``."""
    return (
        "Something failed\n"
        "Traceback (most recent call last):\n"
        '  File "/opt/tapiriik/tapiriik/sync/sync.py", line 936, in _sync\n'
        f"{line}\n\nLOCALS:\nself=<Service object at 0x7f0000000001>"
    )


def error_record(line: str, age: float | None = None) -> Document:
    """An error record named by ``line``, ``age`` seconds before NOW if given."""
    record: Document = {"Step": "upload", "Message": error_message(line)}
    if age is not None:
        record["Timestamp"] = NOW - timedelta(seconds=age)

    return record


def stored_group(service: str, stem: str, count: int) -> Document:
    """A ``common_sync_errors`` document of ``count`` errors of one connection."""
    value = {
        "count": count,
        "ts_count": 0,
        "recency": 0.0,
        "recency_avg": None,
        "connections": [ObjectId()],
        "exemplar": stem,
    }

    return {"_id": {"service": service, "stem": stem}, "value": value}


def test_stats_carries_the_distance_per_destination(
    settings: Settings, dbs: Databases
) -> None:
    """/api/stats passes the stored ByDestination through as nested JSON."""
    store_snapshot(dbs.main, FULL)
    by_destination = BY_DESTINATION | {
        "runkeeper": {"TotalDistanceSynced": float("nan")}
    }
    dbs.main.stats.update_one({}, {"$set": {"ByDestination": by_destination}})

    body = client_for(settings, dbs).get("/api/stats").json()

    assert body["ByDestination"] == BY_DESTINATION | {
        "runkeeper": {"TotalDistanceSynced": None}
    }


def test_history_carries_the_distance_per_destination(
    settings: Settings, dbs: Databases
) -> None:
    """/api/history gives each entry's ByDestination, and none where it is absent."""
    store_snapshot(dbs.main, FULL.replace(now=NOW - timedelta(minutes=20)))
    store_snapshot(dbs.main, FULL)
    dbs.main.sync_status_stats.update_one(
        {"Timestamp": FULL.now}, {"$set": {"ByDestination": BY_DESTINATION}}
    )

    body = client_for(settings, dbs).get("/api/history").json()

    older, newer = body["snapshots"]
    assert "ByDestination" not in older
    assert newer["ByDestination"] == BY_DESTINATION


def test_errors_list_the_groups_most_errors_first(
    settings: Settings, dbs: Databases
) -> None:
    """/api/errors gives each group rebuilt from the connections, by count."""
    a = {"_id": ObjectId(), "Service": "strava"}
    b = {"_id": ObjectId(), "Service": "strava"}
    c = {"_id": ObjectId(), "Service": "garminconnect"}
    a["SyncErrors"] = [error_record(KEY_ERROR, 600), error_record(KEY_ERROR)]
    b["SyncErrors"] = [error_record(KEY_ERROR, 1800), error_record(TIMEOUT, 90)]
    c["SyncErrors"] = [error_record(TIMEOUT), error_record(TIMEOUT)]
    dbs.main.connections.insert_many([a, b, c])
    rebuild_common_errors(dbs.main, NOW)

    response = client_for(settings, dbs).get("/api/errors")

    assert response.status_code == 200
    assert response.json() == {
        "total_groups": 3,
        "limit": 100,
        "groups": [
            {
                "service": "strava",
                "stem": KEY_ERROR,
                "count": 3,
                "ts_count": 2,
                "recency_avg": 1200.0,
                "exemplar": KEY_ERROR,
                "connections": sorted([str(a["_id"]), str(b["_id"])]),
            },
            {
                "service": "garminconnect",
                "stem": TIMEOUT,
                "count": 2,
                "ts_count": 0,
                "recency_avg": None,
                "exemplar": TIMEOUT,
                "connections": [str(c["_id"])],
            },
            {
                "service": "strava",
                "stem": TIMEOUT,
                "count": 1,
                "ts_count": 1,
                "recency_avg": 90.0,
                "exemplar": TIMEOUT,
                "connections": [str(b["_id"])],
            },
        ],
    }


def test_errors_read_groups_tapiriik_stored(settings: Settings, dbs: Databases) -> None:
    """Groups from Tapiriik's map-reduce, with double counts, read as whole numbers."""
    connection = ObjectId()
    dbs.main[COLLECTION].insert_one(
        {
            "_id": {"service": "runkeeper", "stem": TIMEOUT},
            "value": {
                "count": 7.0,
                "ts_count": 7.0,
                "recency": 7000.0,
                "recency_avg": 1000.0,
                "connections": [connection],
                "exemplar": TIMEOUT,
            },
        }
    )
    dbs.main[COLLECTION].insert_one({"_id": {"service": None, "stem": "odd"}})

    groups = client_for(settings, dbs).get("/api/errors").json()["groups"]

    assert groups == [
        {
            "service": "runkeeper",
            "stem": TIMEOUT,
            "count": 7,
            "ts_count": 7,
            "recency_avg": 1000.0,
            "exemplar": TIMEOUT,
            "connections": [str(connection)],
        },
        {
            "service": None,
            "stem": "odd",
            "count": None,
            "ts_count": None,
            "recency_avg": None,
            "exemplar": None,
            "connections": [],
        },
    ]


def test_errors_limit_keeps_the_largest_groups(
    settings: Settings, dbs: Databases
) -> None:
    """``limit`` keeps that many groups, most errors first, and says how many exist."""
    counts = [3, 40, 12, 7, 25]
    dbs.main[COLLECTION].insert_many(
        stored_group("strava", f"Error {count}", count) for count in counts
    )

    body = client_for(settings, dbs).get("/api/errors", params={"limit": "2"}).json()

    assert body["total_groups"] == 5
    assert body["limit"] == 2
    assert [group["count"] for group in body["groups"]] == [40, 25]


def test_errors_are_empty_before_the_first_rebuild(
    settings: Settings, dbs: Databases
) -> None:
    """Without stored groups /api/errors answers 200 with no groups."""
    response = client_for(settings, dbs).get("/api/errors")

    assert response.status_code == 200
    assert response.json() == {"total_groups": 0, "limit": 100, "groups": []}


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "1.5", "abc", "", "²", "1e2"])
def test_errors_reject_a_bad_limit(
    settings: Settings, dbs: Databases, limit: str
) -> None:
    """``limit`` must be a whole number from 1 to 1000, else 400."""
    response = client_for(settings, dbs).get("/api/errors", params={"limit": limit})

    assert response.status_code == 400
    assert response.json() == {"error": "limit must be a whole number from 1 to 1000"}


def test_errors_accept_the_largest_limit(settings: Settings, dbs: Databases) -> None:
    """The largest ``limit``, 1000, is accepted."""
    response = client_for(settings, dbs).get("/api/errors", params={"limit": "1000"})

    assert response.status_code == 200
    assert response.json()["limit"] == 1000


ROUTES = ("/", "/api/stats", "/api/history", "/api/limits", "/api/errors")
ROUTES += ("/metrics",)
ROUTES += ("/static/app.js",)


@pytest.mark.parametrize("path", ROUTES)
def test_token_is_required_on_every_route(
    settings: Settings, dbs: Databases, path: str
) -> None:
    """With http_token set, a request without it or with a wrong one gets 401."""
    store_snapshot(dbs.main, FULL)
    client = client_for(configure(settings, http_token=TOKEN), dbs)

    anonymous = client.get(path)
    wrong = client.get(path, headers={"Authorization": f"Bearer {TOKEN}x"})
    right = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})

    assert (anonymous.status_code, wrong.status_code) == (401, 401)
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json() == {"error": "missing or wrong token"}
    assert right.status_code == 200


def test_healthz_needs_no_token(settings: Settings, dbs: Databases) -> None:
    """/healthz stays open to probes when a token is set."""
    store_snapshot(dbs.main, FULL)
    client = client_for(configure(settings, http_token=TOKEN), dbs)

    assert client.get("/healthz").status_code == 200


def test_login_sets_a_cookie_that_opens_the_dashboard(
    settings: Settings, dbs: Databases
) -> None:
    """/login with the right token sets an HttpOnly cookie and redirects to /."""
    client = client_for(configure(settings, http_token=TOKEN), dbs)

    response = client.get("/login", params={"token": TOKEN}, follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "./"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert TOKEN not in cookie
    assert client.get("/").status_code == 200
    assert client.get("/api/history").status_code == 200


@pytest.mark.parametrize("query", ["ab+cd/e==", "ab%2Bcd%2Fe%3D%3D"])
def test_login_takes_a_token_with_plus_as_typed_or_encoded(
    settings: Settings, dbs: Databases, query: str
) -> None:
    """A '+' pasted into the address bar is the token's own, not a space."""
    client = client_for(configure(settings, http_token="ab+cd/e=="), dbs)

    response = client.get(f"/login?token={query}", follow_redirects=False)

    assert response.status_code == 303
    assert client.get("/").status_code == 200


def test_login_with_a_wrong_token_sets_nothing(
    settings: Settings, dbs: Databases
) -> None:
    """/login with a wrong token answers 401 and leaves the dashboard closed."""
    client = client_for(configure(settings, http_token=TOKEN), dbs)

    response = client.get("/login", params={"token": "guess"}, follow_redirects=False)

    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert client.get("/").status_code == 401


def test_no_response_holds_a_credential(
    settings: Settings, dbs: Databases, down: Databases
) -> None:
    """No body or header shows the MongoDB password or the HTTP token."""
    secret = configure(
        settings,
        mongo_uri=f"mongodb://syncstats:{PASSWORD}@127.0.0.1:1/",
        rabbitmq_stats_url=f"http://guest:{PASSWORD}@127.0.0.1:1/api/queues/%2F/x",
        http_token=TOKEN,
        mongo_timeout=0.3,
    )
    store_snapshot(dbs.main, FULL)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    paths = (*ROUTES, "/healthz", "/static/index.html", "/static/style.css")
    paths += ("/api/history?hours=oops", "/api/errors?limit=0", "/nowhere")
    paths += (f"/login?token={TOKEN}",)

    for databases in (dbs, down):
        client = client_for(secret, databases)
        for path in paths:
            response = client.get(path, headers=auth, follow_redirects=False)
            text = response.text + repr(response.headers)
            assert PASSWORD not in text, path
            assert TOKEN not in text, path


def test_responses_carry_strict_browser_headers(
    settings: Settings, dbs: Databases
) -> None:
    """Every response forbids framing and sniffing and limits scripts to self."""
    response = client_for(settings, dbs).get("/")

    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self';" in response.headers["content-security-policy"]


@pytest.mark.usefixtures("reset_logging")
@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "example.org"])
def test_serve_refuses_a_public_host_without_token(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """serve exits 2 with one line when told to listen beyond loopback untokened."""
    monkeypatch.delenv("SYNCSTATS_HTTP_TOKEN", raising=False)

    result = CliRunner().invoke(serve, ["--host", host])

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"syncstats: http_token: required to listen on the non-loopback address "
        f"{host} (set SYNCSTATS_HTTP_TOKEN, or keep the default --host 127.0.0.1)"
    ]


@pytest.mark.usefixtures("reset_logging")
def test_serve_refuses_a_blank_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token of blanks is refused, as it would let anyone in."""
    monkeypatch.setenv("SYNCSTATS_HTTP_TOKEN", "  ")

    result = CliRunner().invoke(serve, ["--host", "0.0.0.0"])

    assert result.exit_code == 2
    assert result.stderr == "syncstats: http_token: must not be empty\n"
