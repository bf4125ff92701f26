"""Tests of the dashboard in a real browser: Debian's Chromium through Playwright."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from bson import ObjectId
from playwright.sync_api import Browser, Page, sync_playwright
from pymongo.database import Database

from syncstats._mongo import Databases, Document
from syncstats.ratelimit import RateLimiter
from syncstats.serve import listen
from syncstats.settings import Settings, load_settings
from syncstats.snapshot import Snapshot, status_document, store_snapshot
from syncstats.sync_errors import COLLECTION, STEM_LENGTH, ErrorGroup
from syncstats.web import create_app

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHARTS = ("queue-wait", "pending", "worker-time", "error-users", "locked", "distance")
CHARTS += ("destinations",)
STEPS = ("distance", "enqueue", "queue", "workers", "users")
INTERVAL = timedelta(minutes=10)
MISSING = "\N{EN DASH}"  # what a figure card shows for an unknown value
TOKEN = "dashboard-test-token-7731"
LIMITS = {
    "strava": [{"window": "15m", "max": 600}, {"window": "1d", "max": 30000}],
    "garminconnect": [{"window": "1h", "max": 200}],
}
# The share of the overall distance each destination receives; they add up
# to more than one because an activity may go to several destinations.
SHARES = {"strava": 0.64, "garminconnect": 0.38, "runkeeper": 0.11, "dropbox": 0.05}
# Common errors as a pass groups them: service, naming line, errors, mean age
# in seconds (None: no record carried a date), affected connections.
ERRORS = (
    (
        "strava",
        "tapiriik.services.api.APIException: Strava rate limit hit (429)",
        412,
        4_320.0,
        38,
    ),
    (
        "garminconnect",
        "tapiriik.services.api.APIException: Invalid login - session expired",
        268,
        216_000.0,
        21,
    ),
    (
        "runkeeper",
        "requests.exceptions.ReadTimeout: HTTPSConnectionPool(host='api.runkeeper."
        "com', port=443): Read timed out. (read timeout=60)",
        97,
        2_100.0,
        12,
    ),
    ("dropbox", "dropbox.exceptions.ApiError: ApiError('path/not_found')", 41, None, 4),
    ("strava", "KeyError: 'distance'", 17, 21_960.0, 1),
)


def day_of_snapshots(end: datetime, count: int = 144) -> list[Snapshot]:
    """``count`` snapshots ten minutes apart up to ``end``, shaped like a real day.

    Load follows the hour of the day, with seeded noise; distance accrues.
    """
    rng = random.Random(7)
    total = 48_250_000_000.0
    snapshots = []
    for index in range(count):
        now = end - (count - 1 - index) * INTERVAL
        hour = now.hour + now.minute / 60
        load = 0.5 + 0.45 * math.sin((hour - 13) / 24 * 2 * math.pi)
        load = max(0.05, load + rng.uniform(-0.06, 0.06))
        per_hour = 1_400_000 + 5_200_000 * load
        total += per_hour * INTERVAL.total_seconds() / 3600
        syncs = int(380 + 1400 * load)
        busy = 3600 * (1.5 + 6.5 * load)
        snapshots.append(
            Snapshot(
                now,
                total_distance=total,
                last_day_distance=per_hour * 24 * 0.8,
                last_hour_distance=per_hour,
                enqueue_wait=18 + 25 * load,
                queue_wait=45 + 780 * load**2,
                queue_length=4 + 60 * load,
                queue_ack_rate=0.4 + 0.3 * load,
                syncs_last_hour=syncs,
                sync_time_used=busy,
                average_sync_duration=busy / syncs,
                locked=int(3 + 14 * load + rng.randint(0, 2)),
                pending=int(8 + 90 * load**2 + rng.randint(0, 5)),
                error_users=140 + index // 30 + rng.randint(0, 2),
                total_errors=310 + index // 12 + rng.randint(0, 4),
                steps=dict.fromkeys(STEPS, True),
            )
        )

    return snapshots


def destinations_of(snapshot: Snapshot) -> Document:
    """The ByDestination field of ``snapshot``: its distances split by SHARES."""
    windows = {
        "TotalDistanceSynced": snapshot.total_distance or 0.0,
        "LastDayDistanceSynced": snapshot.last_day_distance or 0.0,
        "LastHourDistanceSynced": snapshot.last_hour_distance or 0.0,
    }

    return {
        service: {name: metres * share for name, metres in windows.items()}
        for service, share in SHARES.items()
    }


def store_history(
    db: Database[Document],
    snapshots: list[Snapshot],
    by_destination: Callable[[Snapshot], Document] | None = destinations_of,
) -> None:
    """Store the snapshots as passes would: history entries and the stats document.

    ``by_destination`` gives each entry's ByDestination; ``None`` stores
    none, as passes did before per-destination figures.
    """

    def entry(snapshot: Snapshot) -> Document:
        document = status_document(snapshot)
        document.pop("ByDestination", None)
        if by_destination is not None:
            document["ByDestination"] = by_destination(snapshot)
        return document

    db.sync_status_stats.insert_many(entry(s) for s in snapshots[:-1])
    latest = snapshots[-1]
    store_snapshot(db, latest)
    db.sync_status_stats.replace_one({"Timestamp": latest.now}, entry(latest))
    if by_destination is not None:
        fields = {"ByDestination": by_destination(latest)}
        db.stats.update_one({}, {"$set": fields})


def store_errors(
    db: Database[Document], errors: tuple[tuple[Any, ...], ...] = ERRORS
) -> list[ErrorGroup]:
    """Store ``errors`` in common_sync_errors as a pass groups them."""
    groups = [
        ErrorGroup(
            service=service,
            stem=line[:STEM_LENGTH],
            count=count,
            ts_count=0 if age is None else count,
            recency=0.0 if age is None else age * count,
            recency_avg=age,
            connections=sorted(ObjectId() for _ in range(connections)),
            exemplar=line,
        )
        for service, line, count, age, connections in errors
    ]
    db[COLLECTION].insert_many(group.document() for group in groups)

    return groups


def spend_windows(ratelimit_db: Database[Document], settings: Settings) -> None:
    """Mark the current rate-limit windows partly, nearly and fully spent."""
    limiter = RateLimiter(ratelimit_db, settings.limits())
    limiter.observe("strava", usage={900.0: 412, 86400.0: 28_900})
    limiter.observe("garminconnect", usage={3600.0: 200})


@dataclass
class Watched:
    """What went wrong while a page loaded: console errors, failed requests."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        """Record the page's console errors, page errors and failed requests."""
        page.on(
            "console",
            lambda m: self.errors.append(m.text) if m.type == "error" else None,
        )
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "requestfailed",
            lambda r: self.errors.append(f"failed: {r.url} {r.failure}"),
        )
        page.on(
            "response",
            lambda r: (
                self.errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None
            ),
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, started once for the module."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def configured(settings: Settings) -> Settings:
    """The test's settings with the rate limits the bars show."""
    return load_settings(
        overrides={
            "mongo_uri": settings.mongo_uri,
            "database": settings.database,
            "ratelimit_database": settings.ratelimit_database,
            "rate_limits": LIMITS,
        }
    )


Serve = Callable[[Settings], str]


@pytest.fixture
def serve_app(dbs: Databases) -> Iterator[Serve]:
    """Start the app under real uvicorn on a free loopback port; yield its URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(settings: Settings) -> str:
        sock = listen("127.0.0.1", 0)
        config = uvicorn.Config(
            create_app(settings, dbs), log_config=None, access_log=False
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
        thread.start()
        servers.append((server, thread))
        while not server.started:
            threading.Event().wait(0.02)

        return f"http://127.0.0.1:{sock.getsockname()[1]}/"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def open_dashboard(
    browser: Browser, url: str, *, width: int = 1280, height: int = 900
) -> tuple[Page, Watched]:
    """A page showing the dashboard once its first refresh has been drawn."""
    page = browser.new_page(viewport={"width": width, "height": height})
    watched = Watched()
    watched.attach(page)
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]")

    return page, watched


def chart_points(page: Page) -> dict[str, Any]:
    """Each chart's drawn canvas and the number of points it was given."""
    return page.eval_on_selector_all(
        "[data-chart]",
        """charts => Object.fromEntries(charts.map(c => [c.dataset.chart, {
            points: Number(c.dataset.points),
            canvas: c.querySelector("canvas") !== null
                && c.querySelector("canvas").width > 0,
        }]))""",
    )


def figure(page: Page, name: str) -> str:
    """The text a figure card shows."""
    return page.inner_text(f'[data-figure="{name}"] .value')


def recent_end() -> datetime:
    """An instant two minutes ago, so a day of history ends fresh."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)


def test_dashboard_draws_every_chart_from_the_history(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """Each chart draws one point per snapshot of the day, with no error at all."""
    snapshots = day_of_snapshots(recent_end())
    store_history(dbs.main, snapshots)
    spend_windows(dbs.ratelimit, configured)
    store_errors(dbs.main)

    page, watched = open_dashboard(browser, serve_app(configured))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)

    assert chart_points(page) == {
        chart: {"points": 144, "canvas": True} for chart in CHARTS
    }
    assert page.is_hidden("#banner")
    assert watched.errors == []


def test_dashboard_shows_the_latest_figures(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """The figure cards show the newest snapshot in km, minutes and hours."""
    latest = Snapshot(
        recent_end(),
        total_distance=48_250_123_400.0,
        last_day_distance=98_765_400.0,
        last_hour_distance=4_321_000.0,
        enqueue_wait=34.0,
        queue_wait=750.0,
        syncs_last_hour=1234,
        sync_time_used=27_000.0,
        average_sync_duration=95.0,
        locked=12,
        pending=87,
        error_users=143,
        total_errors=2345,
        steps=dict.fromkeys(STEPS, True),
    )
    store_history(dbs.main, [*day_of_snapshots(latest.now - INTERVAL, 3), latest])

    page, watched = open_dashboard(browser, serve_app(configured))

    shown = {
        name: figure(page, name)
        for name in (
            "queue-wait",
            "enqueue-wait",
            "pending",
            "locked",
            "error-users",
            "total-errors",
            "syncs",
            "worker-time",
            "sync-duration",
            "distance-hour",
            "distance-day",
            "distance-total",
        )
    }
    assert shown == {
        "queue-wait": "12.5 min",
        "enqueue-wait": "34 s",
        "pending": "87",
        "locked": "12",
        "error-users": "143",
        "total-errors": "2,345",
        "syncs": "1,234",
        "worker-time": "7.5 h",
        "sync-duration": "95 s",
        "distance-hour": "4,321 km",
        "distance-day": "98,765 km",
        "distance-total": "48.3M km",
    }
    assert watched.errors == []


def test_dashboard_shows_one_bar_per_rate_limit_window(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """Every current window gets a bar filled to the share of it spent."""
    store_history(dbs.main, day_of_snapshots(recent_end(), 2))
    spend_windows(dbs.ratelimit, configured)

    page, _ = open_dashboard(browser, serve_app(configured))

    bars = page.eval_on_selector_all(
        ".limit",
        """cards => cards.map(c => [c.dataset.service, Number(c.dataset.window),
            Number(c.dataset.used), Number(c.dataset.max),
            c.querySelector(".fill").style.width,
            c.querySelector(".fill").className])""",
    )
    assert bars == [
        ["strava", 900, 412, 600, "68.7%", "fill"],
        ["strava", 86400, 28900, 30000, "96.3%", "fill warn"],
        ["garminconnect", 3600, 200, 200, "100%", "fill full"],
    ]


def test_span_selector_redraws_the_charts(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """Choosing 6 h keeps the snapshots of the last six hours; 7 d all of them."""
    store_history(dbs.main, day_of_snapshots(recent_end()))
    page, watched = open_dashboard(browser, serve_app(configured))

    page.click("button[data-span='6']")
    page.wait_for_selector("[data-chart=pending][data-points='36']")
    six_hours = chart_points(page)
    page.click("button[data-span='168']")
    page.wait_for_selector("[data-chart=pending][data-points='144']")

    assert {chart["points"] for chart in six_hours.values()} == {36}
    assert page.get_attribute("button[data-span='168']", "aria-pressed") == "true"
    assert page.url.endswith("#span=168")
    assert watched.errors == []


def test_distance_chart_draws_rounding_as_no_distance(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """Totals that differ in their last bits draw 0 km/h, not a spike or a gap."""
    end = recent_end()
    base = 144_149_195.8
    totals = [base, base - 3e-8, base + 3e-8, base]
    snapshots = [
        Snapshot(end - (len(totals) - 1 - n) * INTERVAL, total_distance=total)
        for n, total in enumerate(totals)
    ]
    store_history(dbs.main, snapshots, by_destination=None)
    page, watched = open_dashboard(browser, serve_app(configured))

    chart = page.query_selector("[data-chart=distance]")

    assert chart is not None
    # Each step is rounding: the fall too, which is no recount to leave out.
    assert chart.get_attribute("data-peak") == "0"
    assert watched.errors == []


def test_banner_names_a_failed_step(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """When a step failed in the latest pass, a banner names it."""
    snapshots = day_of_snapshots(recent_end(), 6)
    failed = dict.fromkeys(STEPS, True) | {"queue": False}
    snapshots[-1] = snapshots[-1].replace(queue_wait=None, steps=failed)
    store_history(dbs.main, snapshots)

    page, _ = open_dashboard(browser, serve_app(configured))

    assert page.is_visible("#banner")
    assert page.inner_text("#banner") == (
        "Failed in the latest pass: queue. Figures from these steps are missing "
        "or kept from an earlier pass."
    )
    assert figure(page, "queue-wait") == MISSING


def test_banner_warns_of_stale_data(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """A latest snapshot older than twice the interval raises a stale banner."""
    store_history(dbs.main, day_of_snapshots(recent_end() - timedelta(hours=3), 12))

    page, _ = open_dashboard(browser, serve_app(configured))

    assert page.inner_text("#banner").startswith(
        "Stale data: the latest snapshot is from 3 h ago"
    )


def test_dashboard_fits_a_phone(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """On a phone-sized screen nothing overflows sideways and every chart draws."""
    store_history(dbs.main, day_of_snapshots(recent_end()))
    spend_windows(dbs.ratelimit, configured)
    store_errors(dbs.main)

    page, watched = open_dashboard(
        browser, serve_app(configured), width=390, height=844
    )
    page.click("details.error-group >> nth=0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-phone.png", full_page=True)

    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.eval_on_selector(
        ".table-card", "card => card.scrollWidth <= card.clientWidth"
    )
    widths = page.eval_on_selector_all(
        "[data-chart] canvas", "cs => cs.map(c => c.getBoundingClientRect().width)"
    )
    assert len(widths) == len(CHARTS)
    assert all(300 <= width <= 370 for width in widths)
    assert watched.errors == []


def table_rows(page: Page) -> list[list[str]]:
    """The cells of the destination table, row by row."""
    return page.eval_on_selector_all(
        "#destinations tr",
        "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))",
    )


def test_destination_table_shows_the_latest_figures(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """The table lists each destination of the newest snapshot, most in 24 h first."""
    latest = {
        "garminconnect": {
            "TotalDistanceSynced": 9_876_543_000.0,
            "LastDayDistanceSynced": 31_250_000.0,
            "LastHourDistanceSynced": 1_500_400.0,
        },
        "strava": {
            "TotalDistanceSynced": 30_123_456_000.0,
            "LastDayDistanceSynced": 61_234_500.0,
            "LastHourDistanceSynced": 2_765_000.0,
        },
        "runkeeper": {
            "TotalDistanceSynced": 456_700.0,
            "LastDayDistanceSynced": 0.0,
            "LastHourDistanceSynced": 0.0,
        },
    }
    snapshots = day_of_snapshots(recent_end(), 6)

    def by_destination(snapshot: Snapshot) -> Document:
        return latest if snapshot is snapshots[-1] else destinations_of(snapshot)

    store_history(dbs.main, snapshots, by_destination)

    page, watched = open_dashboard(browser, serve_app(configured))

    assert table_rows(page) == [
        ["strava", "2,765", "61,235", "30.1M"],
        ["garminconnect", "1,500", "31,250", "9.9M"],
        ["runkeeper", "0", "0", "456.7"],
    ]
    chart = page.locator("[data-chart=destinations]")
    assert chart.get_attribute("data-points") == "6"
    assert chart.get_attribute("data-series") == (
        "strava,garminconnect,runkeeper,dropbox"
    )
    assert watched.errors == []


def test_destination_view_notes_a_snapshot_without_them(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """History without ByDestination leaves the table and chart with a note."""
    store_history(dbs.main, day_of_snapshots(recent_end(), 6), by_destination=None)

    page, watched = open_dashboard(browser, serve_app(configured))

    assert table_rows(page) == [["No per-destination figures in the latest snapshot."]]
    assert page.inner_text("[data-chart=destinations]") == (
        "No per-destination figures in this span."
    )
    assert figure(page, "distance-day") != MISSING
    assert watched.errors == []


def error_rows(page: Page) -> list[list[str]]:
    """Each error group's service, count, mean age, connections and exemplar."""
    return page.eval_on_selector_all(
        "details.error-group",
        """groups => groups.map(g => [".error-service", ".error-count",
            ".error-age", ".error-connections", ".error-exemplar"]
            .map(part => g.querySelector(part).innerText))""",
    )


def test_errors_view_lists_the_groups_by_count(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """Each stored group shows its service, errors, mean age and exemplar, by count."""
    store_history(dbs.main, day_of_snapshots(recent_end(), 3))
    store_errors(dbs.main)

    page, watched = open_dashboard(browser, serve_app(configured))

    assert error_rows(page) == [
        ["strava", "412 errors", "mean age 1.2 h", "38 connections", ERRORS[0][1]],
        [
            "garminconnect",
            "268 errors",
            "mean age 2.5 d",
            "21 connections",
            ERRORS[1][1],
        ],
        ["runkeeper", "97 errors", "mean age 35 min", "12 connections", ERRORS[2][1]],
        ["dropbox", "41 errors", "mean age unknown", "4 connections", ERRORS[3][1]],
        ["strava", "17 errors", "mean age 6.1 h", "1 connection", ERRORS[4][1]],
    ]
    assert page.inner_text("#errors-note") == "5 groups, latest pass"
    assert page.locator("details.error-group[open]").count() == 0
    assert watched.errors == []


def test_opening_a_group_shows_its_connection_ids(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """A group opens onto its connection ids and stays open across a refresh."""
    store_history(dbs.main, day_of_snapshots(recent_end(), 3))
    groups = store_errors(dbs.main)
    page, watched = open_dashboard(browser, serve_app(configured))
    third = page.locator("details.error-group").nth(2)
    ids = third.locator(".connection-ids code")
    assert not ids.first.is_visible()

    third.locator("summary").click()
    shown = ids.all_inner_texts()
    page.click("button[data-span='6']")
    page.wait_for_function("location.hash === '#span=6'")
    page.wait_for_selector("[data-chart=pending][data-points='3']")

    assert shown == [str(connection) for connection in groups[2].connections]
    assert ids.first.is_visible()
    assert page.locator("details.error-group[open]").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("section[aria-labelledby=errors-title]").screenshot(
        path=ARTIFACTS / "dashboard-errors.png"
    )
    assert watched.errors == []


def test_errors_view_says_when_groups_are_left_out(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """With more than 100 groups stored, the view shows the largest 100 and says so."""
    store_history(dbs.main, day_of_snapshots(recent_end(), 3))
    errors = tuple(
        ("strava", f"ValueError: case {n}", n, 60.0 * n, 1) for n in range(1, 106)
    )
    store_errors(dbs.main, errors)

    page, watched = open_dashboard(browser, serve_app(configured))

    counts = page.eval_on_selector_all(
        "details.error-group", "gs => gs.map(g => Number(g.dataset.count))"
    )
    assert counts == list(range(105, 5, -1))
    assert page.inner_text("#errors-note") == "the 100 largest of 105 groups"
    assert watched.errors == []


def test_errors_view_is_empty_without_groups(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """Before any errors are grouped, the view says there are none."""
    store_history(dbs.main, day_of_snapshots(recent_end(), 3))

    page, watched = open_dashboard(browser, serve_app(configured))

    assert page.inner_text("#errors") == "No sync errors are grouped."
    assert page.inner_text("#errors-note") == "0 groups, latest pass"
    assert watched.errors == []


def test_login_opens_the_dashboard_with_a_token(
    browser: Browser, configured: Settings, dbs: Databases, serve_app: Serve
) -> None:
    """With a token set, /login?token= leads to a working dashboard."""
    store_history(dbs.main, day_of_snapshots(recent_end(), 12))
    tokened = load_settings(overrides=configured.model_dump() | {"http_token": TOKEN})
    url = serve_app(tokened)

    page, watched = open_dashboard(browser, f"{url}login?token={TOKEN}")

    assert page.url == url
    assert chart_points(page)["pending"] == {"points": 12, "canvas": True}
    assert watched.errors == []
