"""How long a newly queued user waits, from RabbitMQ's management API.

Two ways to estimate it, best first:

- **samples**: each run stores the queue's ready count and cumulative ack
  counter in syncstats' own ``syncstats_queue_samples`` collection; the wait
  is the ready count now divided by the ack rate since the previous run's
  sample. It follows a restart or a dead consumer within one run.
- **hour averages**: mean ready messages divided by the mean ack rate, both
  from the management API when its URL carries the age parameters. They are
  biased for an hour after a restart and lag a dead consumer.

When the management API sends no counts (its metrics collector is off),
the ready count and ack counter come from RabbitMQ's Prometheus plugin.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeGuard
from urllib.parse import unquote

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database

from syncstats._redact import MASK
from syncstats.errors import QueueStatsError

logger = logging.getLogger(__name__)

SAMPLES_COLLECTION = "syncstats_queue_samples"
"""syncstats' own collection of queue samples, one document per run."""
SAMPLES_KEPT = timedelta(days=1)
"""How long samples are kept (at least twice the run interval)."""

Counter = Literal["management", "prometheus-queue", "prometheus-channels"]
Method = Literal["samples", "hour-averages"]

_NO_AVERAGES = (
    "the reply has no hour averages: the URL needs the lengths_age and "
    "msg_rates_age parameters, and RabbitMQ's metrics collector must be on"
)
_COLLECTOR_OFF = (
    "the reply has no counts: the queue was declared moments ago, or "
    "RabbitMQ's metrics collector is off; for the latter set "
    "rabbitmq_prometheus_url to the Prometheus plugin (rabbitmq_prometheus, "
    "port 15692)"
)
_NEXT_RUN = "the next run will estimate from counters"
_ADD_AGES = "add lengths_age/msg_rates_age to the URL"
# Families of the plugin's /metrics/detailed: the ready count; the per-queue
# ack counter (RabbitMQ 4.0 and later); the per-channel ack counters (all
# versions). A version ignores the families it does not know.
_FAMILIES = ("queue_coarse_metrics", "queue_delivery_metrics", "channel_queue_metrics")
_READY_METRIC = "rabbitmq_detailed_queue_messages_ready"
_QUEUE_ACKED_METRIC = "rabbitmq_detailed_queue_messages_acked_total"
_CHANNEL_ACKED_METRIC = "rabbitmq_detailed_channel_messages_acked_total"
_INT64_MAX = 2**63 - 1  # the largest count MongoDB stores
_SAMPLE_FIELDS = ("at", "messages_ready", "ack_total")
_SAMPLE_INDEX = [
    ("vhost", ASCENDING),
    ("queue", ASCENDING),
    ("counter", ASCENDING),
    ("at", DESCENDING),
]
_COUNTERS: tuple[Counter, ...] = (
    "management",
    "prometheus-queue",
    "prometheus-channels",
)
_DROP_CAUSES: dict[Counter, str] = {
    "management": "RabbitMQ, its statistics or the queue restarted",
    "prometheus-queue": "RabbitMQ or the queue restarted",
    "prometheus-channels": "a restart, or a consumer's channel closed",
}
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


@dataclass(frozen=True)
class QueueSample:
    """The queue's ready count and cumulative ack counter at one instant."""

    at: datetime
    """When the counts were read: aware UTC."""
    messages_ready: int
    """Messages ready for delivery."""
    ack_total: int
    """Acknowledgements counted since the counter last started from zero."""
    counter: Counter = "management"
    """Which counter ``ack_total`` reads; samples of two counters never pair."""


@dataclass(frozen=True)
class QueueMeasurement:
    """What one run measured of the queue and how it estimated the wait."""

    wait: float | None
    """Seconds a newly queued user waits; ``None`` when the queue is stalled."""
    length: float | None
    """The queue length the estimate used: ready messages now, or their mean."""
    ack_rate: float | None
    """The acknowledgements per second the estimate used."""
    method: Method
    """``"samples"`` (this run's sample and the previous one) or
    ``"hour-averages"`` (the management API's averages)."""
    sample: QueueSample | None
    """This run's sample; ``None`` when RabbitMQ gave no counts."""


def wait_from_samples(earlier: QueueSample, later: QueueSample) -> float | None:
    """Seconds a newly queued user waits: ready now / ack rate between samples.

    ``None`` when the pair cannot tell: the ack counter went down (RabbitMQ,
    its statistics or the queue restarted), time did not advance, or the
    samples read different counters. Then ``0.0`` when nothing is ready, and
    ``None`` (unknown) when messages are ready but nothing was acknowledged
    between the samples: the queue is stalled. Pure: no I/O.
    """
    rate = _ack_rate(earlier, later)
    if rate is None:
        return None
    if later.messages_ready == 0:
        return 0.0
    if rate == 0:
        return None

    return _ratio(later.messages_ready, rate)


def parse_prometheus_reply(
    text: str, vhost: str, name: str, at: datetime
) -> QueueSample:
    """Read the queue's sample at ``at`` from a Prometheus plugin reply.

    ``text`` is the plugin's ``/metrics/detailed`` reply in the Prometheus
    text format. The ack counter is the queue's own where the plugin has one
    (RabbitMQ 4.0 and later), else the sum of the counters of the channels
    that acked from the queue (3.x). A channel that closes takes its count
    with it: the sum drops when a consumer reconnects (that pair gives no
    estimate), and it misses the acks of a channel that closed since the
    earlier sample (the rate comes out low). Channels on other cluster nodes
    are not counted. Raises `QueueStatsError`, and nothing else, when
    ``text`` is not Prometheus text, lacks the queue, or holds a value that
    is not a count.
    """
    found: dict[str, list[float]] = {
        _READY_METRIC: [],
        _QUEUE_ACKED_METRIC: [],
        _CHANNEL_ACKED_METRIC: [],
    }
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("vhost") == vhost and labels.get("queue") == name:
                    found.get(sample.name, []).append(sample.value)
    except ValueError as exc:
        raise QueueStatsError("the reply is not Prometheus text") from exc

    where = f"queue {name!r} in vhost {vhost!r}"
    ready = _single(found[_READY_METRIC], _READY_METRIC, where)
    if ready is None:
        raise QueueStatsError(f"the reply has no {_READY_METRIC} for {where}")
    queue_acked = _single(found[_QUEUE_ACKED_METRIC], _QUEUE_ACKED_METRIC, where)
    if queue_acked is not None:
        return QueueSample(at, ready, queue_acked, "prometheus-queue")

    acked = [
        _whole(value, _CHANNEL_ACKED_METRIC) for value in found[_CHANNEL_ACKED_METRIC]
    ]
    ack_total = _whole(sum(acked), f"the sum of {_CHANNEL_ACKED_METRIC}")

    return QueueSample(at, ready, ack_total, "prometheus-channels")


def fetch_prometheus_sample(
    url: str, vhost: str, name: str, timeout: float, at: datetime
) -> QueueSample:
    """GET the queue's sample from RabbitMQ's Prometheus plugin at ``url``.

    ``url`` is the plugin's base URL, such as ``http://localhost:15692``
    (its query, if any, is dropped); the request goes to its
    ``/metrics/detailed`` path for the queue families of ``vhost``, within
    ``timeout`` seconds in all. The sample is dated ``at``. Raises
    `QueueStatsError` as `fetch_queue_stats` does. Blocking.
    """
    target, auth, shown = _split_url(
        url, "RabbitMQ Prometheus URL", lambda base: _detailed(base, vhost)
    )
    logger.debug("reading queue counts from %s", shown)
    response = _get(target, auth, timeout, shown, accept="text/plain")
    _check_status(response, shown, not_found="no Prometheus metrics at {url}")
    try:
        return parse_prometheus_reply(response.text, vhost, name, at)
    except QueueStatsError as exc:
        raise QueueStatsError(f"unexpected reply from {shown}: {exc}") from exc


def measure_queue(
    db: Database[Any],
    now: datetime,
    *,
    stats_url: str,
    timeout: float,
    interval: float,
    prometheus_url: str | None = None,
    queue_name: str | None = None,
    vhost: str | None = None,
    dry_run: bool = False,
) -> QueueMeasurement:
    """Estimate the queue wait at ``now`` (aware UTC) and store this run's sample.

    Reads the management API at ``stats_url``; when its reply has no counts,
    reads them from the Prometheus plugin at ``prometheus_url``. The wait
    comes from this run's sample and the latest earlier one of the same
    queue and counter if that one is younger than ``2 * interval`` seconds
    and its counter did not go down since; otherwise from the reply's hour
    averages. ``queue_name`` and ``vhost`` default to the ones in the URL's
    ``/api/queues/<vhost>/<name>`` path. Both requests together get
    ``timeout`` seconds. With ``dry_run`` nothing is written.

    Raises `QueueStatsError` when RabbitMQ cannot be read or understood, or
    when neither method applies: the message then says what to enable. The
    sample is stored even then, so that the next run can estimate. MongoDB's
    errors propagate.
    """
    deadline = time.monotonic() + timeout
    stats = fetch_queue_stats(stats_url, timeout)
    vhost, queue_name = _queue_identity(stats_url, vhost, queue_name)
    sample = _management_sample(stats, now)
    if sample is None and prometheus_url is not None:
        remaining = max(deadline - time.monotonic(), 0.0)
        sample = fetch_prometheus_sample(
            prometheus_url, vhost, queue_name, remaining, now
        )

    previous = None
    if sample is not None:
        previous = _previous_sample(db, vhost, queue_name, sample)
        if not dry_run:
            _store_sample(db, vhost, queue_name, sample, interval)

    return _estimate(stats, sample, previous, interval)


def _estimate(
    stats: QueueStats,
    sample: QueueSample | None,
    previous: QueueSample | None,
    interval: float,
) -> QueueMeasurement:
    """The measurement from the sample pair if it serves, else the averages."""
    unpaired = _unpaired(sample, previous, interval)
    if unpaired is None and sample is not None and previous is not None:
        return QueueMeasurement(
            wait=wait_from_samples(previous, sample),
            length=float(sample.messages_ready),
            ack_rate=_ack_rate(previous, sample),
            method="samples",
            sample=sample,
        )
    if stats.ready_avg is not None:
        logger.debug("queue wait from the hour averages: %s", unpaired)
        return QueueMeasurement(
            wait=estimate_wait(stats),
            length=stats.ready_avg,
            ack_rate=stats.ack_rate_avg,
            method="hour-averages",
            sample=sample,
        )
    if sample is None:
        raise QueueStatsError(_COLLECTOR_OFF)

    hint = _NEXT_RUN if sample.counter != "management" else f"{_ADD_AGES}; {_NEXT_RUN}"
    raise QueueStatsError(f"{unpaired} and no hour averages: {hint}")


def _unpaired(
    sample: QueueSample | None, previous: QueueSample | None, interval: float
) -> str | None:
    """Why the samples give no estimate, or ``None`` when they do."""
    if sample is None:
        return "no counts"
    if previous is None:
        return "no earlier sample yet"
    age = (sample.at - previous.at).total_seconds()
    if age >= 2 * interval:
        return f"the earlier sample is {age:.0f} s old, twice the interval or more"
    if sample.ack_total < previous.ack_total:
        cause = _DROP_CAUSES[sample.counter]
        logger.warning(
            "the queue's ack counter went down from %d to %d: %s",
            previous.ack_total,
            sample.ack_total,
            cause,
        )
        return f"the ack counter went down since the earlier sample ({cause})"
    if _ack_rate(previous, sample) is None:
        return "the samples give no ack rate"

    return None


def _ack_rate(earlier: QueueSample, later: QueueSample) -> float | None:
    """Acknowledgements per second between the samples; ``None`` if unknown."""
    seconds = (later.at - earlier.at).total_seconds()
    if seconds <= 0 or earlier.counter != later.counter:
        return None
    if later.ack_total < earlier.ack_total:
        return None

    return _ratio(later.ack_total - earlier.ack_total, seconds)


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` when it is a finite float, else ``None``."""
    try:
        value = numerator / denominator
    except (OverflowError, ZeroDivisionError):
        return None

    return value if math.isfinite(value) else None


def _management_sample(stats: QueueStats, now: datetime) -> QueueSample | None:
    """The sample a management reply gives; ``None`` when it has no counts."""
    if stats.messages_ready is None:
        return None
    # The reply leaves message_stats out until the first ack since the
    # statistics (re)started: no acks counted yet.
    ack_total = stats.ack_total or 0
    if max(stats.messages_ready, ack_total) > _INT64_MAX:
        raise QueueStatsError("the reply's counts are too large to store")

    return QueueSample(now, stats.messages_ready, ack_total)


def _queue_identity(
    stats_url: str, vhost: str | None, name: str | None
) -> tuple[str, str]:
    """The queue's vhost and name: as given, else from the URL's path."""
    try:
        path = httpx.URL(stats_url).raw_path.partition(b"?")[0].decode("ascii")
    except (httpx.InvalidURL, UnicodeDecodeError):
        path = ""
    _, marker, rest = path.partition("/api/queues/")
    segments = [unquote(segment) for segment in rest.rstrip("/").split("/")]
    if marker and len(segments) == 2 and all(segments):
        vhost = segments[0] if vhost is None else vhost
        name = segments[1] if name is None else name
    if vhost is None or name is None:
        raise QueueStatsError(
            "the RabbitMQ statistics URL does not end in /api/queues/<vhost>/<name>"
        )

    return vhost, name


def _previous_sample(
    db: Database[Any], vhost: str, name: str, sample: QueueSample
) -> QueueSample | None:
    """The latest stored sample of the queue and counter before ``sample``."""
    document = db[SAMPLES_COLLECTION].find_one(
        {
            "vhost": vhost,
            "queue": name,
            "counter": sample.counter,
            "at": {"$lt": sample.at},
        },
        sort=[("at", DESCENDING)],
    )
    if document is None:
        return None

    return _stored_sample(document)


def _stored_sample(document: dict[str, Any]) -> QueueSample | None:
    """The sample a stored document holds; ``None`` if it is malformed."""
    at, ready, acks = (document.get(key) for key in _SAMPLE_FIELDS)
    counter = next(
        (name for name in _COUNTERS if name == document.get("counter")), None
    )
    if (
        not isinstance(at, datetime)
        or not _is_count(ready)
        or not _is_count(acks)
        or counter is None
    ):
        logger.warning("ignoring a malformed queue sample %s", document.get("_id"))
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)

    return QueueSample(at.astimezone(UTC), ready, acks, counter)


def _store_sample(
    db: Database[Any], vhost: str, name: str, sample: QueueSample, interval: float
) -> None:
    """Insert ``sample`` and drop the samples too old to pair with any run."""
    collection = db[SAMPLES_COLLECTION]
    collection.create_index(_SAMPLE_INDEX)
    collection.insert_one(
        {
            "vhost": vhost,
            "queue": name,
            "counter": sample.counter,
            "at": sample.at,
            "messages_ready": sample.messages_ready,
            "ack_total": sample.ack_total,
        }
    )
    kept = max(SAMPLES_KEPT, timedelta(seconds=2 * interval))
    collection.delete_many({"at": {"$lt": sample.at - kept}})


def _is_count(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a stored count: a non-negative integer."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _single(values: list[float], metric: str, where: str) -> int | None:
    """The one count in ``values``; ``None`` if there is none."""
    if len(values) > 1:
        raise QueueStatsError(f"the reply has {metric} twice for {where}")
    if not values:
        return None

    return _whole(values[0], metric)


def _whole(value: float, metric: str) -> int:
    """``value`` as a count MongoDB can store, or `QueueStatsError`."""
    if not math.isfinite(value):
        raise QueueStatsError(f"{metric} is not a finite number")
    if value < 0:
        raise QueueStatsError(f"{metric} is negative")
    if value != int(value):
        raise QueueStatsError(f"{metric} is not a whole number")
    if value > _INT64_MAX:
        raise QueueStatsError(f"{metric} is too large")

    return int(value)


def _detailed(base: httpx.URL, vhost: str) -> httpx.URL:
    """The URL of the queue families of ``vhost`` under the plugin's base URL."""
    # The plugin's base URL, or its /metrics or /metrics/detailed page.
    path = base.path.rstrip("/")
    if path.endswith("/metrics"):
        path += "/detailed"
    elif not path.endswith("/metrics/detailed"):
        path += "/metrics/detailed"
    params = [("family", family) for family in _FAMILIES] + [("vhost", vhost)]

    return base.copy_with(path=path, params=params)


def _split_url(
    url: str,
    what: str = "RabbitMQ statistics URL",
    to_target: Callable[[httpx.URL], httpx.URL] | None = None,
) -> tuple[httpx.URL, httpx.BasicAuth | None, str]:
    """The URL to request, its credentials, and the URL fit to print.

    ``to_target`` turns the parsed URL into the one to request.
    """
    try:
        parsed = httpx.URL(url)
        if to_target is not None:
            parsed = to_target(parsed)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None:
        # Raised outside the handler: the parser's message, kept as the context,
        # may quote part of the password.
        raise QueueStatsError(f"the {what} is not valid")
    if not (parsed.username or parsed.password):
        return parsed, None, str(parsed)

    auth = httpx.BasicAuth(parsed.username, parsed.password)
    # Masked from the parsed URL, so the password is hidden however it is spelt.
    shown = parsed.copy_with(username=parsed.username, password=MASK)
    return parsed.copy_with(username=None, password=None), auth, str(shown)


def _get(
    target: httpx.URL,
    auth: httpx.BasicAuth | None,
    timeout: float,
    shown: str,
    accept: str = "application/json",
) -> httpx.Response:
    """The server's response, or `QueueStatsError` naming what went wrong."""
    try:
        return asyncio.run(_request(target, auth, timeout, accept))
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise QueueStatsError(f"no answer from {shown} within {timeout:g} s") from exc
    except httpx.ConnectError as exc:
        raise QueueStatsError(f"cannot connect to {shown}: {_cause(exc)}") from exc
    except httpx.HTTPError as exc:
        raise QueueStatsError(f"reading {shown} failed: {_cause(exc)}") from exc


async def _request(
    target: httpx.URL, auth: httpx.BasicAuth | None, timeout: float, accept: str
) -> httpx.Response:
    """GET ``target`` and read the whole body before ``timeout`` runs out."""
    # httpx bounds each connect and read, not their sum: a server that
    # trickles its reply would go on forever without the outer deadline.
    async with (
        asyncio.timeout(timeout),
        httpx.AsyncClient(auth=auth, timeout=timeout, verify=_tls_context()) as client,
    ):
        return await client.get(target, headers={"Accept": accept})


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every request: building one per client costs
    a tenth of a second and memory that the allocator keeps."""
    return httpx.create_ssl_context()


def _check_status(
    response: httpx.Response, shown: str, not_found: str = "queue not found: {url}"
) -> None:
    """Raise `QueueStatsError` for any answer but 200.

    ``not_found`` says what a 404 means, with ``{url}`` for the URL.
    """
    status = response.status_code
    if status == httpx.codes.OK:
        return
    if status == httpx.codes.UNAUTHORIZED:
        raise QueueStatsError(f"RabbitMQ refused the credentials of {shown} (401)")
    if status == httpx.codes.NOT_FOUND:
        raise QueueStatsError(f"{not_found.format(url=shown)} (404)")
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
