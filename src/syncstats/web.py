"""The HTTP side of ``syncstats serve``: dashboard, JSON API, metrics, health."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pymongo
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncstats._mongo import Databases, Document
from syncstats.errors import ConfigError, DatabaseUnavailable
from syncstats.metrics import create_registry
from syncstats.ratelimit import RateLimiter
from syncstats.settings import Settings
from syncstats.snapshot import HISTORY_PROJECTION, latest_snapshot
from syncstats.sync_errors import read_common_errors

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

STATIC = Path(__file__).parent / "static"
MAX_HOURS = 24 * 90
DEFAULT_GROUPS = 100
MAX_GROUPS = 1000
COOKIE = "syncstats_session"
OPEN_PATHS = frozenset({"/healthz", "/login"})
HEALTH_PING_TIMEOUT = 5.0

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
}


def create_app(
    settings: Settings, databases: Databases, *, clock: Clock | None = None
) -> Starlette:
    """The Starlette application serving what the stats passes stored.

    With ``http_token`` set, every route but ``/healthz`` and ``/login``
    answers 401 unless the request carries the token (see `TokenGate`).
    ``clock`` gives the current instant (aware UTC); tests pass their own.
    Raises `ConfigError` when ``http_token`` is set but empty.
    """
    api = _Api(settings, databases, clock or _wall_clock)
    token = http_token(settings)
    routes = [
        Route("/", api.index),
        Route("/api/stats", api.stats),
        Route("/api/history", api.history),
        Route("/api/limits", api.limits),
        Route("/api/errors", api.errors),
        Route("/metrics", api.metrics),
        Route("/healthz", api.healthz),
        Route("/login", lambda request: login(request, token)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if token is not None:
        middleware.append(Middleware(TokenGate, token=token))

    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            PyMongoError: _database_error,
            DatabaseUnavailable: _database_error,
        },
    )


def http_token(settings: Settings) -> str | None:
    """The configured token, or ``None``; raises `ConfigError` when blank."""
    if settings.http_token is None:
        return None
    token = settings.http_token.get_secret_value()
    if not token.strip():
        raise ConfigError("http_token: must not be empty")

    return token


class _Api:
    """The endpoints, sharing the databases, the settings and the clock."""

    def __init__(self, settings: Settings, databases: Databases, clock: Clock) -> None:
        self._settings = settings
        self._databases = databases
        self._clock = clock
        self._limiter = RateLimiter(databases.ratelimit, settings.limits())
        self._registry = create_registry(databases, self._limiter, clock)

    def index(self, request: Request) -> Response:
        """The dashboard page."""
        return FileResponse(
            STATIC / "index.html", headers={"Cache-Control": "no-cache"}
        )

    def stats(self, request: Request) -> Response:
        """The ``stats`` document, or 404 before the first pass stored one."""
        document = self._databases.main.stats.find_one(
            {}, {"_id": 0}, sort=[("Updated", DESCENDING)]
        )
        if document is None:
            return _error(404, "no snapshot stored yet")

        return JsonResponse(document)

    def history(self, request: Request) -> Response:
        """The snapshots of the last ``hours`` hours, oldest first."""
        hours = _hours(request.query_params.get("hours", "24"))
        if hours is None:
            return _error(
                400, f"hours must be a number above 0 and at most {MAX_HOURS}"
            )
        now = self._clock()
        since = now - timedelta(hours=hours)

        cursor = self._databases.main.sync_status_stats.find(
            {"Timestamp": {"$gte": since}}, HISTORY_PROJECTION
        ).sort("Timestamp", ASCENDING)
        snapshots = list(cursor)

        return JsonResponse(
            {
                "now": now,
                "since": since,
                "hours": hours,
                "interval_seconds": self._settings.interval,
                "snapshots": snapshots,
            }
        )

    def limits(self, request: Request) -> Response:
        """The current window of every configured rate limit, per service."""
        now = self._clock()
        services = {
            key: [
                {
                    "window_seconds": window.seconds,
                    "max": window.max,
                    "used": window.used,
                    "remaining": window.remaining,
                    "resets_at": window.resets_at,
                }
                for window in self._limiter.windows(key, now)
            ]
            for key in self._limiter.keys
        }

        return JsonResponse({"now": now, "services": services})

    def errors(self, request: Request) -> Response:
        """The stored groups of common sync errors, most errors first.

        At most ``limit`` groups (default 100, at most 1000); ``total_groups``
        says how many are stored. Ages are as of the pass that grouped them.
        Every stored group is read, connection ids included, before the
        largest are kept: ``read_common_errors`` takes no limit.
        """
        limit = _limit(request.query_params.get("limit", str(DEFAULT_GROUPS)))
        if limit is None:
            return _error(400, f"limit must be a whole number from 1 to {MAX_GROUPS}")

        groups = read_common_errors(self._databases.main)

        return JsonResponse(
            {
                "total_groups": len(groups),
                "limit": limit,
                "groups": [error_group(document) for document in groups[:limit]],
            }
        )

    def metrics(self, request: Request) -> Response:
        """The Prometheus text exposition of the `SnapshotCollector`."""
        body = generate_latest(self._registry)

        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def healthz(self, request: Request) -> Response:
        """200 when MongoDB answers and the latest snapshot is fresh, else 503."""
        limit = 2 * self._settings.interval
        try:
            with pymongo.timeout(
                min(self._settings.mongo_timeout, HEALTH_PING_TIMEOUT)
            ):
                self._databases.client.admin.command("ping")
                snapshot = latest_snapshot(self._databases.main)
        except PyMongoError as exc:
            return _unhealthy(f"MongoDB does not answer: {type(exc).__name__}")
        if snapshot is None:
            return _unhealthy("no snapshot stored yet")
        age = (self._clock() - snapshot.now).total_seconds()
        if age >= limit:
            return _unhealthy(
                f"the latest snapshot is {age:.0f} s old (limit {limit:.0f} s)",
                snapshot.now,
            )

        return JsonResponse(
            {"status": "ok", "snapshot": snapshot.now, "age_seconds": round(age, 3)}
        )


def error_group(document: Document) -> dict[str, Any]:
    """One ``common_sync_errors`` document in the shape ``/api/errors`` gives.

    Connection ids (ObjectIds in Tapiriik) become strings. Tapiriik's own
    map-reduce stored counts as doubles; they come out as whole numbers.
    A field that is missing or malformed becomes null (a list: empty).
    """
    key = document.get("_id")
    key = key if isinstance(key, dict) else {}
    value = document.get("value")
    value = value if isinstance(value, dict) else {}
    connections = value.get("connections")
    if not isinstance(connections, list):
        connections = []

    return {
        "service": _text(key.get("service")),
        "stem": _text(key.get("stem")),
        "count": _whole(value.get("count")),
        "ts_count": _whole(value.get("ts_count")),
        "recency_avg": _finite(value.get("recency_avg")),
        "exemplar": _text(value.get("exemplar")),
        "connections": [str(connection) for connection in connections],
    }


def _tokens_in_query(request: Request) -> list[str]:
    """The ``token`` of the query, read as a form would and as typed.

    A form turns ``+`` into a space; a token pasted into the address bar
    keeps its ``+``, which bearer tokens may hold.
    """
    typed = [
        unquote(value)
        for name, _, value in (
            part.partition("=") for part in request.url.query.split("&")
        )
        if name == "token"
    ]

    return [request.query_params.get("token", ""), *typed]


def login(request: Request, token: str | None) -> Response:
    """Check ``?token=`` and set the session cookie, then go to the dashboard.

    The cookie holds a value derived from the token, not the token itself.
    """
    # Relative, so the redirect also works behind a proxy's path prefix.
    target = "./"
    if token is None:
        return RedirectResponse(target, status_code=303)
    if not any(_same(given, token) for given in _tokens_in_query(request)):
        return _error(401, "wrong or missing token", bearer=True)

    response = RedirectResponse(
        target, status_code=303, headers={"Cache-Control": "no-store"}
    )
    response.set_cookie(
        COOKIE,
        session_value(token),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )

    return response


def session_value(token: str) -> str:
    """The cookie value that stands for ``token``: an HMAC of it, in hex."""
    return hmac.new(
        token.encode(), b"syncstats dashboard session", hashlib.sha256
    ).hexdigest()


class TokenGate:
    """ASGI middleware: 401 unless the request carries the token.

    Accepts ``Authorization: Bearer <token>`` or the session cookie that
    ``/login`` sets. Comparisons take constant time. ``/healthz`` and
    ``/login`` stay open.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token
        self._session = session_value(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authorised request on; answer 401 to any other."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        if self._authorised(HTTPConnection(scope)):
            await self._app(scope, receive, send)
            return
        response = _error(401, "missing or wrong token", bearer=True)
        await response(scope, receive, send)

    def _authorised(self, connection: HTTPConnection) -> bool:
        scheme, _, given = connection.headers.get("authorization", "").partition(" ")
        bearer = scheme.lower() == "bearer" and _same(given.strip(), self._token)
        cookie = _same(connection.cookies.get(COOKIE, ""), self._session)

        return bearer or cookie


class SecurityHeaders:
    """ASGI middleware adding headers that keep browsers strict."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the headers to the start of every HTTP response."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self._app(scope, receive, send_with_headers)


class JsonResponse(JSONResponse):
    """JSON with dates as ISO 8601 UTC and non-finite numbers as null."""

    def render(self, content: Any) -> bytes:
        """Encode ``content`` compactly as UTF-8 JSON."""
        return json.dumps(
            _plain(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value

    return str(value)


def _iso(instant: datetime) -> str:
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    # MongoDB keeps milliseconds; whole seconds are written without a fraction.
    precision = "milliseconds" if instant.microsecond else "seconds"

    return instant.astimezone(UTC).isoformat(timespec=precision).replace("+00:00", "Z")


def _hours(text: str) -> float | None:
    try:
        hours = float(text)
    except ValueError:
        return None

    return hours if 0 < hours <= MAX_HOURS else None


def _limit(text: str) -> int | None:
    # isdigit alone takes digits int() refuses, such as superscripts.
    if not (text.isascii() and text.isdigit()):
        return None
    limit = int(text)

    return limit if 1 <= limit <= MAX_GROUPS else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None

    return float(value) if math.isfinite(value) else None


def _whole(value: object) -> int | None:
    number = _finite(value)

    return None if number is None else round(number)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _error(status: int, message: str, *, bearer: bool = False) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if bearer else None

    return JsonResponse({"error": message}, status_code=status, headers=headers)


def _unhealthy(reason: str, snapshot: datetime | None = None) -> Response:
    body: dict[str, Any] = {"status": "unhealthy", "reason": reason}
    if snapshot is not None:
        body["snapshot"] = snapshot

    return JsonResponse(body, status_code=503)


async def _database_error(request: Request, exc: Exception) -> Response:
    logger.warning("%s %s: database error: %s", request.method, request.url.path, exc)

    return _error(503, f"MongoDB is unavailable: {type(exc).__name__}")


def _wall_clock() -> datetime:
    return datetime.now(UTC)
