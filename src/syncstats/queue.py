"""How long a newly queued user waits, from RabbitMQ's management API."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import ssl
from dataclasses import dataclass

import httpx

from syncstats._redact import MASK
from syncstats.errors import QueueStatsError

logger = logging.getLogger(__name__)

_NO_AVERAGES = (
    "the reply has no hour averages: the URL needs the lengths_age and "
    "msg_rates_age parameters, and RabbitMQ's metrics collector must be on"
)
_KINDS = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


@dataclass(frozen=True)
class QueueStats:
    """What one management API reply says about a queue.

    Every field is ``None`` when the reply lacks it: a queue that never
    delivered has no ``message_stats``, the averages come only with the age
    parameters, and a server with the metrics collector off sends neither.
    """

    ready_avg: float | None
    """Mean number of ready messages over the averaging window."""
    ack_rate_avg: float | None
    """Mean acknowledgements per second over the averaging window."""
    messages_ready: int | None
    """Messages ready for delivery now."""
    ack_total: int | None
    """Acknowledgements counted since the statistics were last reset."""
    consumers: int | None
    """Consumers attached now."""


def parse_queue_reply(body: object) -> QueueStats:
    """Read the decoded JSON of ``GET /api/queues/<vhost>/<name>``.

    Raises `QueueStatsError`, and nothing else, when ``body`` is not a queue
    object: another JSON value, an error body, or a known field of the wrong
    type (booleans are not numbers; NaN, infinities and negatives are refused).
    A JSON ``null`` counts as absent.
    """
    if not isinstance(body, dict):
        raise QueueStatsError(f"the reply is {_kind(body)}, not a queue object")
    if "error" in body:
        raise QueueStatsError(f"the reply is an error: {_error_text(body)}")
    if not isinstance(body.get("name"), str):
        raise QueueStatsError("the reply is not a queue object: it has no name")

    return QueueStats(
        ready_avg=_average(body, "messages_ready_details.avg"),
        ack_rate_avg=_average(body, "message_stats.ack_details.avg_rate"),
        messages_ready=_count(body, "messages_ready"),
        ack_total=_count(body, "message_stats.ack"),
        consumers=_count(body, "consumers"),
    )


def estimate_wait(stats: QueueStats) -> float | None:
    """Seconds a newly queued user waits: mean ready messages / mean ack rate.

    ``0.0`` when no message waited on average; ``None`` (unknown) when messages
    waited but nothing, or too little to represent, was acknowledged: the
    queue is stalled. Raises `QueueStatsError` when the reply had no averages.

    The averages span the URL's window (an hour by default), so the estimate
    lags: after the consumers stop it stays positive until their acks leave
    the window.
    """
    if stats.ready_avg is None:
        raise QueueStatsError(_NO_AVERAGES)
    if stats.ready_avg == 0:
        return 0.0
    if not stats.ack_rate_avg:
        return None

    wait = stats.ready_avg / stats.ack_rate_avg
    return wait if math.isfinite(wait) else None


def fetch_queue_stats(url: str, timeout: float) -> QueueStats:
    """GET the queue's statistics at ``url``, within ``timeout`` seconds in all.

    The URL's user-info is sent as basic auth and its password never appears
    in a message. Raises `QueueStatsError` when the server cannot be reached,
    does not answer in time, answers anything but 200, or answers something
    that is not a queue object. Blocking: do not call it from an event loop.
    """
    target, auth, shown = _split_url(url)
    logger.debug("reading queue statistics from %s", shown)
    response = _get(target, auth, timeout, shown)
    _check_status(response, shown)
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError) as exc:
        raise QueueStatsError(f"{shown} answered with something not JSON") from exc

    try:
        return parse_queue_reply(body)
    except QueueStatsError as exc:
        raise QueueStatsError(f"unexpected reply from {shown}: {exc}") from exc


def _split_url(url: str) -> tuple[httpx.URL, httpx.BasicAuth | None, str]:
    """The URL to request, its credentials, and the URL fit to print."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None:
        # Raised outside the handler: the parser's message, kept as the context,
        # may quote part of the password.
        raise QueueStatsError("the RabbitMQ statistics URL is not valid")
    if not (parsed.username or parsed.password):
        return parsed, None, str(parsed)

    auth = httpx.BasicAuth(parsed.username, parsed.password)
    # Masked from the parsed URL, so the password is hidden however it is spelt.
    shown = parsed.copy_with(username=parsed.username, password=MASK)
    return parsed.copy_with(username=None, password=None), auth, str(shown)


def _get(
    target: httpx.URL, auth: httpx.BasicAuth | None, timeout: float, shown: str
) -> httpx.Response:
    """The server's response, or `QueueStatsError` naming what went wrong."""
    try:
        return asyncio.run(_request(target, auth, timeout))
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise QueueStatsError(f"no answer from {shown} within {timeout:g} s") from exc
    except httpx.ConnectError as exc:
        raise QueueStatsError(f"cannot connect to {shown}: {_cause(exc)}") from exc
    except httpx.HTTPError as exc:
        raise QueueStatsError(f"reading {shown} failed: {_cause(exc)}") from exc


async def _request(
    target: httpx.URL, auth: httpx.BasicAuth | None, timeout: float
) -> httpx.Response:
    """GET ``target`` and read the whole body before ``timeout`` runs out."""
    # httpx bounds each connect and read, not their sum: a server that
    # trickles its reply would go on forever without the outer deadline.
    async with (
        asyncio.timeout(timeout),
        httpx.AsyncClient(auth=auth, timeout=timeout) as client,
    ):
        return await client.get(target, headers={"Accept": "application/json"})


def _check_status(response: httpx.Response, shown: str) -> None:
    """Raise `QueueStatsError` for any answer but 200."""
    status = response.status_code
    if status == httpx.codes.OK:
        return
    if status == httpx.codes.UNAUTHORIZED:
        raise QueueStatsError(f"RabbitMQ refused the credentials of {shown} (401)")
    if status == httpx.codes.NOT_FOUND:
        raise QueueStatsError(f"queue not found: {shown} (404)")
    phrase = _one_line(response.reason_phrase)
    raise QueueStatsError(f"{shown} answered HTTP {status} {phrase}".rstrip())


def _cause(exc: BaseException) -> str:
    """The innermost operating-system reason behind ``exc``, in a few words."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return _os_reason(cause)
        if isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        else:
            # httpcore raises its errors "from None": the reason is the context.
            cause = cause.__cause__ or cause.__context__

    return _one_line(str(exc)) or type(exc).__name__


def _os_reason(error: OSError) -> str:
    """The system's words for ``error``: "Connection refused" and the like."""
    # asyncio words every failed connect "Connect call failed (host, port)";
    # an SSL error's number is the SSL library's, not the system's.
    if error.errno and error.errno > 0 and not isinstance(error, ssl.SSLError):
        return os.strerror(error.errno)

    return _one_line(error.strerror or str(error))


def _lookup(body: dict[str, object], path: str) -> object:
    """The value at the dotted ``path`` in ``body``; ``None`` if absent."""
    value: object = body
    for depth, key in enumerate(path.split(".")):
        if value is None:
            return None
        if not isinstance(value, dict):
            parent = ".".join(path.split(".")[:depth])
            raise QueueStatsError(f"{parent} is {_kind(value)}, not an object")
        value = value.get(key)

    return value


def _average(body: dict[str, object], path: str) -> float | None:
    """The finite, non-negative number at ``path``, or ``None`` if absent."""
    value = _lookup(body, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QueueStatsError(f"{path} is {_kind(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise QueueStatsError(f"{path} is not a finite number")
    if number < 0:
        raise QueueStatsError(f"{path} is negative")

    return number


def _count(body: dict[str, object], path: str) -> int | None:
    """The non-negative integer at ``path``, or ``None`` if absent."""
    value = _lookup(body, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise QueueStatsError(f"{path} is {_kind(value)}, not a count")
    if value < 0:
        raise QueueStatsError(f"{path} is negative")

    return value


def _error_text(body: dict[str, object]) -> str:
    """The ``error`` and ``reason`` of a RabbitMQ error body, on one line."""
    parts = [body.get("error"), body.get("reason")]
    text = " / ".join(part for part in parts if isinstance(part, str))
    return _one_line(text) or "no reason given"


def _kind(value: object) -> str:
    """The JSON kind of ``value``, with its article, for messages."""
    return _KINDS.get(type(value), "not JSON")


def _one_line(text: str, limit: int = 120) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters."""
    return " ".join(text.split())[:limit]
