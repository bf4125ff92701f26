"""The synthetic Tapiriik-shaped data set that ``syncstats demo`` writes."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from bson import ObjectId
from pymongo.collection import Collection
from pymongo.database import Database

from syncstats._mongo import Document

BATCH_SIZE = 1000
MIN_USERS = 20
MIN_ACTIVITIES = 20
HOSTS = ("sync-1", "sync-2", "sync-3", "sync-4")
STALE_WORKER_RECORDS = 5

_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_API_EXCEPTION = "tapiriik.services.api.APIException"


@dataclass(frozen=True)
class DemoSummary:
    """How many documents `populate` wrote, and how many users are in each state.

    ``worker_records`` includes the few records older than an hour.
    ``queued`` counts the users a stats run sees as queued: ``QueuedAt`` at or
    before ``now``, unlocked and without a host restriction.
    """

    users: int
    activities: int
    worker_records: int
    connections: int
    locked: int
    queued: int
    overdue: int
    failing: int


class _Service(NamedTuple):
    module: str
    host: str
    weight: float


# Shares roughly follow how many accounts each service had on Tapiriik.
_SERVICES: dict[str, _Service] = {
    "strava": _Service("Strava/strava.py", "www.strava.com", 30),
    "garminconnect": _Service(
        "GarminConnect/garminconnect.py", "connect.garmin.com", 28
    ),
    "runkeeper": _Service("RunKeeper/runkeeper.py", "api.runkeeper.com", 10),
    "endomondo": _Service("Endomondo/endomondo.py", "api.mobile.endomondo.com", 7),
    "dropbox": _Service("Dropbox/dropbox.py", "content.dropboxapi.com", 8),
    "trainingpeaks": _Service(
        "TrainingPeaks/trainingpeaks.py", "api.trainingpeaks.com", 6
    ),
    "polarflow": _Service("PolarFlow/polarflow.py", "www.polaraccesslink.com", 5),
    "sporttracks": _Service("SportTracks/sporttracks.py", "api.sporttracks.mobi", 3),
    "rwgps": _Service("RideWithGPS/rwgps.py", "ridewithgps.com", 3),
}


class _Sport(NamedTuple):
    median: float
    sigma: float
    low: float
    high: float
    weight: float


# Distances in metres.
_SPORTS: tuple[_Sport, ...] = (
    _Sport(8_000, 0.45, 3_000, 20_000, 50),  # runs
    _Sport(35_000, 0.5, 10_000, 100_000, 35),  # rides
    _Sport(1_500, 0.4, 500, 3_000, 7),  # swims
    _Sport(5_000, 0.5, 1_000, 15_000, 8),  # walks and hikes
)
_NULL_DISTANCE_SHARE = 0.03


class _Failure(NamedTuple):
    step: str
    kind: str
    text: str


_SERVICE_FAILURES: dict[str, tuple[_Failure, ...]] = {
    "strava": (
        _Failure("download", _API_EXCEPTION, "Strava rate limit reached"),
        _Failure("upload", _API_EXCEPTION, "Unable to upload activity, Strava 500"),
    ),
    "garminconnect": (
        _Failure("list", _API_EXCEPTION, "Garmin Connect list error 502"),
        _Failure("upload", _API_EXCEPTION, "Unable to upload activity, response 409"),
    ),
    "runkeeper": (_Failure("upload", _API_EXCEPTION, "RunKeeper upload error 502"),),
    "endomondo": (
        _Failure("list", _API_EXCEPTION, "Could not retrieve activity list"),
    ),
    "dropbox": (
        _Failure("upload", "dropbox.exceptions.InsufficientSpace", "Dropbox is full"),
    ),
    "trainingpeaks": (
        _Failure("upload", _API_EXCEPTION, "TrainingPeaks upload error 400"),
    ),
    "polarflow": (_Failure("download", _API_EXCEPTION, "Polar Flow API error 503"),),
    "sporttracks": (
        _Failure("download", _API_EXCEPTION, "SportTracks activity not found"),
    ),
    "rwgps": (_Failure("upload", _API_EXCEPTION, "RWGPS upload error 500"),),
}

# Errors any service's records show, whatever their API.
_COMMON_FAILURES: tuple[_Failure, ...] = (
    _Failure(
        "download",
        "requests.exceptions.ReadTimeout",
        "HTTPSConnectionPool(host='{host}', port=443): Read timed out. "
        "(read timeout=60)",
    ),
    _Failure("download", "KeyError", "'distance'"),
    _Failure("download", "ValueError", "could not convert string to float: ''"),
)


class _Frame(NamedTuple):
    line: int
    function: str
    code: str


# Per step: the frame in tapiriik/sync/sync.py, then the one in the service.
_STEP_FRAMES: dict[str, tuple[_Frame, _Frame]] = {
    "list": (
        _Frame(
            412, "_getServiceActivities", "svcActs = svc.DownloadActivityList(conn)"
        ),
        _Frame(233, "DownloadActivityList", "raise APIException(message)"),
    ),
    "download": (
        _Frame(936, "_downloadActivity", "act = svc.DownloadActivity(conn, act)"),
        _Frame(318, "DownloadActivity", "self._raise_for_status(resp)"),
    ),
    "upload": (
        _Frame(1004, "_uploadActivity", "upload_id = svc.UploadActivity(conn, act)"),
        _Frame(402, "UploadActivity", "self._raise_for_status(resp)"),
    ),
}

_SCOPES = {"list": "service", "download": "activity", "upload": "activity"}


class _State(enum.Enum):
    """Where a user stands with the scheduler and the workers."""

    SCHEDULED = "scheduled"
    OVERDUE = "overdue"
    QUEUED = "queued"
    LOCKED = "locked"
    HAND_LOCKED = "hand-locked"
    PINNED = "pinned"
    PINNED_QUEUED = "pinned-queued"
    MANUAL = "manual"


class _Errors(enum.Enum):
    """What the user's last sync left in its error fields."""

    CLEAN = "clean"
    FAILING = "failing"
    FAILING_ODD = "failing-odd"  # also holds records written by other tools
    BLOCKED = "blocked"
    LEGACY_TEXT = "legacy-text"
    LEGACY_NEGATIVE = "legacy-negative"


_ON_QUEUE = frozenset(
    (_State.QUEUED, _State.LOCKED, _State.HAND_LOCKED, _State.PINNED_QUEUED)
)


class _Worker(NamedTuple):
    pid: int
    host: str


class _Plan(NamedTuple):
    states: list[_State]
    errors: list[_Errors]


class _ObjectIds:
    """Seeded ObjectIds shaped like a driver's: time, process bytes, counter."""

    def __init__(self, rng: random.Random) -> None:
        self._process = rng.randbytes(5)
        self._counter = rng.randrange(1 << 24)

    def __call__(self, at: datetime) -> ObjectId:
        self._counter = (self._counter + 1) % (1 << 24)
        seconds = int(at.timestamp()).to_bytes(4, "big")
        return ObjectId(seconds + self._process + self._counter.to_bytes(3, "big"))


def has_data(db: Database[Document]) -> bool:
    """Whether the database holds any Tapiriik user or synchronized activity."""
    return any(
        db[name].find_one({}, {"_id": 1}) is not None
        for name in ("users", "sync_stats")
    )


def populate(
    db: Database[Document],
    now: datetime,
    *,
    seed: int = 1,
    users: int = 3000,
    activities: int = 8000,
) -> DemoSummary:
    """Write a seeded synthetic data set into an empty Tapiriik database.

    Fills users, connections, sync_stats and sync_worker_stats as Tapiriik's
    workers would, relative to ``now`` (an aware datetime); the same seed,
    sizes and ``now`` give the same documents. Call it on an empty database
    only (see `has_data`): it does not check. Raises `ValueError` for fewer
    than `MIN_USERS` users or `MIN_ACTIVITIES` activities, or a naive ``now``.
    """
    if users < MIN_USERS or activities < MIN_ACTIVITIES:
        raise ValueError(
            f"the demo needs at least {MIN_USERS} users and {MIN_ACTIVITIES} activities"
        )
    if now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(UTC)
    rng = random.Random(seed)
    ids = _ObjectIds(rng)

    workers = _make_workers(rng, users)
    plan = _plan_users(rng, users)
    user_docs, connection_docs = _users_and_connections(rng, ids, now, plan, workers)
    activity_docs = _activities(rng, ids, now, activities)
    worker_docs = _worker_records(rng, ids, now, workers)

    for name, docs in (
        ("users", user_docs),
        ("connections", connection_docs),
        ("sync_stats", activity_docs),
        ("sync_worker_stats", worker_docs),
    ):
        _insert(db[name], docs)

    return _summarize(plan, user_docs, connection_docs, activity_docs, worker_docs)


def _summarize(
    plan: _Plan,
    user_docs: Sequence[Document],
    connection_docs: Sequence[Document],
    activity_docs: Sequence[Document],
    worker_docs: Sequence[Document],
) -> DemoSummary:
    """Count what was written and how many users are in each state."""
    failing = (_Errors.FAILING, _Errors.FAILING_ODD)
    return DemoSummary(
        users=len(user_docs),
        activities=len(activity_docs),
        worker_records=len(worker_docs),
        connections=len(connection_docs),
        locked=sum(s in (_State.LOCKED, _State.HAND_LOCKED) for s in plan.states),
        queued=plan.states.count(_State.QUEUED),
        overdue=plan.states.count(_State.OVERDUE),
        failing=sum(e in failing for e in plan.errors),
    )


def _insert(collection: Collection[Document], docs: Sequence[Document]) -> None:
    """Insert in batches, so no single command grows past the server's limits."""
    for start in range(0, len(docs), BATCH_SIZE):
        collection.insert_many(docs[start : start + BATCH_SIZE])


def _make_workers(rng: random.Random, users: int) -> list[_Worker]:
    """About one worker process per 250 users, spread over the hosts."""
    count = max(4, users // 250)
    pids = rng.sample(range(1000, 65536), count)
    return [_Worker(pid, HOSTS[i % len(HOSTS)]) for i, pid in enumerate(pids)]


def _plan_users(rng: random.Random, users: int) -> _Plan:
    """Give each user a scheduling state and an error state, by fixed counts.

    Counts grow with ``users`` but never fall below a few, so small data sets
    still show every state.
    """
    sizes = {
        _State.HAND_LOCKED: 1,
        _State.LOCKED: max(1, users // 200),
        _State.QUEUED: max(3, users // 60),
        _State.OVERDUE: max(2, users // 300),
        _State.PINNED: 1,
        _State.PINNED_QUEUED: 1,
        _State.MANUAL: max(1, users // 40),
    }
    states = _assign(rng, users, sizes, _State.SCHEDULED)

    return _Plan(states, _plan_errors(rng, states))


def _plan_errors(rng: random.Random, states: Sequence[_State]) -> list[_Errors]:
    """Pick the failing and blocked users, and two scheduled ones with odd counts."""
    users = len(states)
    scheduled = [i for i, state in enumerate(states) if state is _State.SCHEDULED]
    legacy = rng.sample(scheduled, 2)
    errors = [_Errors.CLEAN] * users
    errors[legacy[0]] = _Errors.LEGACY_TEXT
    errors[legacy[1]] = _Errors.LEGACY_NEGATIVE
    failing, blocked = max(3, users // 25), max(2, users // 300)
    kinds = [_Errors.FAILING_ODD] * 2 + [_Errors.FAILING] * (failing - 2)
    kinds += [_Errors.BLOCKED] * blocked
    others = [i for i in range(users) if i not in legacy]
    for i, kind in zip(rng.sample(others, len(kinds)), kinds, strict=True):
        errors[i] = kind

    return errors


def _assign(
    rng: random.Random, count: int, sizes: dict[_State, int], rest: _State
) -> list[_State]:
    """Spread exact numbers of each state over shuffled positions."""
    order = list(range(count))
    rng.shuffle(order)
    states = [rest] * count
    position = 0
    for state, size in sizes.items():
        for i in order[position : position + size]:
            states[i] = state
        position += size

    return states


def _users_and_connections(
    rng: random.Random,
    ids: _ObjectIds,
    now: datetime,
    plan: _Plan,
    workers: Sequence[_Worker],
) -> tuple[list[Document], list[Document]]:
    """Build the user documents and the connection documents they link to."""
    user_docs: list[Document] = []
    connection_docs: list[Document] = []
    for state, errors in zip(plan.states, plan.errors, strict=True):
        created = now - timedelta(days=rng.uniform(1, 5 * 365))
        connections = _connections(rng, ids, now, created, errors)
        user = {
            "_id": ids(created),
            "Created": created,
            "ConnectedServices": [
                {"Service": c["Service"], "ID": c["_id"]} for c in connections
            ],
            "NonblockingSyncErrorCount": _error_count(errors, connections),
        }
        user.update(_sync_fields(rng, now, state, workers))
        user_docs.append(user)
        connection_docs.extend(connections)

    return user_docs, connection_docs


def _sync_fields(
    rng: random.Random, now: datetime, state: _State, workers: Sequence[_Worker]
) -> Document:
    """The scheduling and locking fields of a user in ``state``."""
    if state in _ON_QUEUE:
        return _queue_fields(rng, now, state, workers)
    return _schedule_fields(rng, now, state)


def _queue_fields(
    rng: random.Random, now: datetime, state: _State, workers: Sequence[_Worker]
) -> Document:
    """A user on the queue or in a worker's hands, queued minutes ago."""
    # Queuing clears NextSynchronization; the worker sets it again when done.
    queued = {
        "QueuedAt": now - timedelta(seconds=rng.uniform(5, 600)),
        "NextSynchronization": None,
    }
    match state:
        case _State.HAND_LOCKED:
            return queued | {"SynchronizationWorker": 1}
        case _State.LOCKED:
            return queued | {"SynchronizationWorker": _lock_pid(rng, workers)}
        case _State.PINNED_QUEUED:
            return queued | {"SynchronizationHostRestriction": rng.choice(HOSTS)}
        case _:
            return queued | _absent(rng, "SynchronizationWorker")


def _schedule_fields(rng: random.Random, now: datetime, state: _State) -> Document:
    """A user off the queue: due later, due already, or never synced on its own."""
    due = now + timedelta(seconds=rng.uniform(60, 3 * 3600))
    match state:
        case _State.OVERDUE:
            late = timedelta(seconds=rng.uniform(60, 6 * 3600))
            return {"NextSynchronization": now - late} | _absent(rng, "QueuedAt")
        case _State.MANUAL:
            return _absent(rng, "NextSynchronization", "QueuedAt")
        case _State.PINNED:
            host = rng.choice(HOSTS)
            return {"NextSynchronization": due, "SynchronizationHostRestriction": host}
        case _:
            if rng.random() < 0.15:  # users on a longer interval
                due = now + rng.uniform(3, 24) * _HOUR
            fields = {"NextSynchronization": due}
            return fields | _absent(rng, "QueuedAt", "SynchronizationWorker")


def _lock_pid(rng: random.Random, workers: Sequence[_Worker]) -> int:
    """Mostly a live worker's PID; now and then one of a worker that died."""
    if rng.random() < 0.8:
        return rng.choice(workers).pid
    return rng.randrange(1000, 65536)


def _absent(rng: random.Random, *names: str) -> Document:
    """Each field null or missing at random: Tapiriik leaves both behind."""
    return {name: None for name in names if rng.random() < 0.5}


def _error_count(errors: _Errors, connections: Sequence[Document]) -> int | str:
    """``NonblockingSyncErrorCount``: the non-blocking records, or a legacy value."""
    if errors is _Errors.LEGACY_TEXT:
        return "2"
    if errors is _Errors.LEGACY_NEGATIVE:
        return -1
    return sum(not record["Block"] for c in connections for record in c["SyncErrors"])


def _connections(
    rng: random.Random,
    ids: _ObjectIds,
    now: datetime,
    created: datetime,
    errors: _Errors,
) -> list[Document]:
    """One or two linked service accounts; one of them carries the errors."""
    services = _pick_services(rng, 1 if rng.random() < 0.7 else 2)
    docs: list[Document] = [
        {
            "_id": ids(created + timedelta(minutes=rng.uniform(0, 30))),
            "Service": service,
            "SyncErrors": [],
        }
        for service in services
    ]
    failing = rng.choice(docs)
    failing["SyncErrors"] = _error_records(rng, now, failing["Service"], errors)

    return docs


def _pick_services(
    rng: random.Random, count: int, exclude: Sequence[str] = ()
) -> list[str]:
    """Distinct service ids drawn by popularity (weighted, without replacement)."""
    keys = {
        service: rng.random() ** (1 / info.weight)
        for service, info in _SERVICES.items()
        if service not in exclude
    }

    return sorted(keys, key=keys.__getitem__, reverse=True)[:count]


def _error_records(
    rng: random.Random, now: datetime, service: str, errors: _Errors
) -> list[Document]:
    """The ``SyncErrors`` of a connection whose user is in the ``errors`` state."""
    if errors is _Errors.BLOCKED:
        return [_blocking_record(rng, now, service)]
    if errors not in (_Errors.FAILING, _Errors.FAILING_ODD):
        return []
    count = rng.choices((1, 2, 3), weights=(6, 3, 1))[0]
    records = [_error_record(rng, now, service) for _ in range(count)]
    if errors is _Errors.FAILING_ODD:
        records.extend(_foreign_records(rng, now, service))

    return records


def _error_record(rng: random.Random, now: datetime, service: str) -> Document:
    """A non-blocking error the way Tapiriik's sync formats it."""
    failures = _SERVICE_FAILURES[service]
    if rng.random() < 0.3:
        failures = _COMMON_FAILURES
    failure = rng.choice(failures)
    text = failure.text.format(host=_SERVICES[service].host)
    record = {
        "Step": failure.step,
        "Message": _traceback(service, failure, text) + "\n\n" + _locals(rng),
        "Block": False,
        "Scope": _SCOPES[failure.step],
    }

    return record | _timestamp(rng, now)


def _blocking_record(rng: random.Random, now: datetime, service: str) -> Document:
    """An expired authorization: it blocks the sync and needs the user."""
    failure = _Failure("list", _API_EXCEPTION, "Invalid login")
    record = {
        "Step": "list",
        "Message": _traceback(service, failure, failure.text) + "\n\n" + _locals(rng),
        "Block": True,
        "Scope": "account",
        "UserException": {
            "Type": "auth",
            "Extra": None,
            "InterventionRequired": True,
            "ClearGroup": None,
        },
    }

    return record | _timestamp(rng, now)


def _foreign_records(rng: random.Random, now: datetime, service: str) -> list[Document]:
    """Records other tools wrote: one without ``LOCALS:``, one without a message."""
    failure = rng.choice(_SERVICE_FAILURES[service])
    return [
        {
            "Step": failure.step,
            "Message": _traceback(service, failure, failure.text),
            "Block": False,
            "Scope": _SCOPES[failure.step],
        }
        | _timestamp(rng, now),
        {"Step": "upload", "Block": False, "Scope": "activity"} | _timestamp(rng, now),
    ]


def _timestamp(rng: random.Random, now: datetime) -> Document:
    """When the error happened, recently; old records carry no date at all."""
    if rng.random() < 0.1:
        return {}
    return {"Timestamp": now - timedelta(seconds=rng.expovariate(1 / (8 * 3600)))}


def _traceback(service: str, failure: _Failure, text: str) -> str:
    """The exception's text, its traceback and the line that names it."""
    sync_frame, service_frame = _STEP_FRAMES[failure.step]
    module = f"/opt/tapiriik/tapiriik/services/{_SERVICES[service].module}"
    lines = [
        text,
        "Traceback (most recent call last):",
        *_frame_lines("/opt/tapiriik/tapiriik/sync/sync.py", sync_frame),
        *_frame_lines(module, service_frame),
        f"{failure.kind}: {text}",
    ]

    return "\n".join(lines)


def _frame_lines(path: str, frame: _Frame) -> Iterator[str]:
    """The two lines Python prints for one frame."""
    yield f'  File "{path}", line {frame.line}, in {frame.function}'
    yield f"    {frame.code}"


def _locals(rng: random.Random) -> str:
    """The ``LOCALS:`` section: the innermost frame's variables."""
    names = ("self", "serviceRecord", "activity", "resp")
    kinds = ("Service", "ServiceRecord", "UploadedActivity", "Response")
    lines = [
        f"{name}=<{kind} object at 0x7f{rng.getrandbits(40):010x}>"
        for name, kind in zip(names, kinds, strict=True)
    ]

    return "LOCALS:\n" + "\n".join(lines)


def _activities(
    rng: random.Random, ids: _ObjectIds, now: datetime, count: int
) -> list[Document]:
    """Synchronized activities over about 60 days, denser towards ``now``."""
    seen: set[str] = set()
    return [
        _activity(rng, ids, now, age, _unique_hex(rng, seen))
        for age in _activity_ages(rng, count)
    ]


def _activity_ages(rng: random.Random, count: int) -> Iterator[timedelta]:
    """Ages: 2% within the hour, 8% more within the day, the rest fading out."""
    last_hour = max(1, count // 50)
    last_day = max(1, count * 2 // 25)
    for i in range(count):
        if i < last_hour:
            yield timedelta(seconds=rng.uniform(1, 3599))
        elif i < last_hour + last_day:
            yield timedelta(seconds=rng.uniform(3601, 86399))
        else:
            yield timedelta(days=rng.triangular(1, 60, 1))


def _activity(
    rng: random.Random, ids: _ObjectIds, now: datetime, age: timedelta, uid: str
) -> Document:
    """One ``sync_stats`` document, last uploaded ``age`` before ``now``."""
    timestamp = now - age
    first_upload = timestamp
    if rng.random() < 0.1:  # a later destination refreshed the timestamp
        first_upload -= timedelta(minutes=rng.uniform(1, 180))
    sources = _pick_services(rng, 2 if rng.random() < 0.1 else 1)
    destinations = _pick_services(rng, rng.choice((1, 1, 2, 3)), exclude=sources)

    return {
        "_id": ids(first_upload),
        "ActivityID": uid,
        "Distance": _distance(rng),
        "Timestamp": timestamp,
        "SourceServices": sources,
        "DestinationServices": destinations,
    }


def _unique_hex(rng: random.Random, seen: set[str]) -> str:
    """A new 40-digit hex id, like the hashes Tapiriik uses for activities."""
    while True:
        uid = f"{rng.getrandbits(160):040x}"
        if uid not in seen:
            seen.add(uid)
            return uid


def _distance(rng: random.Random) -> float | None:
    """Metres, lognormal for a sport drawn by share; unknown now and then."""
    if rng.random() < _NULL_DISTANCE_SHARE:
        return None
    sport = rng.choices(_SPORTS, weights=[s.weight for s in _SPORTS])[0]
    return round(_lognormal_between(rng, sport), 1)


def _lognormal_between(rng: random.Random, sport: _Sport) -> float:
    """A lognormal draw inside the sport's range, the median after 20 misses."""
    for _ in range(20):
        value = rng.lognormvariate(math.log(sport.median), sport.sigma)
        if sport.low <= value <= sport.high:
            return value
    return sport.median


def _worker_records(
    rng: random.Random, ids: _ObjectIds, now: datetime, workers: Sequence[_Worker]
) -> list[Document]:
    """An hour of each worker's syncs, plus a few records the run will prune."""
    docs = [doc for worker in workers for doc in _worker_hour(rng, ids, now, worker)]
    for _ in range(STALE_WORKER_RECORDS):
        at = now - _HOUR - timedelta(minutes=rng.uniform(1, 180))
        docs.append(_worker_record(ids, at, rng.choice(workers), _time_taken(rng)))

    return docs


def _worker_hour(
    rng: random.Random, ids: _ObjectIds, now: datetime, worker: _Worker
) -> Iterator[Document]:
    """One worker's syncs, back to back with idle gaps, over the last hour."""
    at = now - _HOUR + timedelta(seconds=rng.uniform(1, 60))
    while True:
        taken = _time_taken(rng)
        at += timedelta(seconds=taken)
        if at >= now:
            return
        yield _worker_record(ids, at, worker, taken)
        at += timedelta(seconds=rng.expovariate(1 / 15))


def _time_taken(rng: random.Random) -> float:
    """Seconds one user's sync takes: about 20, now and then minutes."""
    return round(max(0.5, rng.lognormvariate(math.log(20), 0.6)), 3)


def _worker_record(
    ids: _ObjectIds, at: datetime, worker: _Worker, taken: float
) -> Document:
    """A ``sync_worker_stats`` document, inserted when the sync ended at ``at``."""
    return {
        "_id": ids(at),
        "Timestamp": at,
        "Worker": worker.pid,
        "Host": worker.host,
        "TimeTaken": taken,
    }
