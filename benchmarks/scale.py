"""Measure syncstats against the old stats job on a Tapiriik-shaped database.

Generates a database of the given size on a Mongo-wire server (the embedded
SecantusDB server by default, or ``--uri``), then measures on the same
server and data, each in its own process:

1. the old job's query pattern, as it ran: no index, every total by a full
   scan, one query per figure (its reads; its few writes are left out so
   that every measurement sees the same data);
2. the same queries once syncstats' indexes exist;
3. ``syncstats run`` cold: the first run, with no stored state;
4. ``syncstats run`` in steady state: ten minutes later, after
   ``--new-fraction`` new activities.

For each it prints the wall time, the documents and index keys examined
(summed over the read commands sent, from the server's ``explain`` with
execution statistics), the commands sent and the peak RSS of the process,
then the ratios of the old pattern to the steady state.

Usage: ``.venv/bin/python benchmarks/scale.py [--users N] [--activities N]
[--years Y] [--new-fraction F] [--uri URI] [--storage DIR] [--json PATH]``.
It drops and refills the databases ``syncstats_bench`` and
``syncstats_bench_ratelimit`` only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import MongoClient, monitoring
from pymongo.collection import Collection

from syncstats import _embedded
from syncstats._mongo import Databases, Document, make_client
from syncstats.indexes import apply_indexes
from syncstats.totals import STATE_COLLECTION, STATE_ID, compute_distance

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
INTERVAL = timedelta(minutes=10)
DATABASE = "syncstats_bench"
RATELIMIT_DATABASE = "syncstats_bench_ratelimit"
BATCH = 10_000
SERVICES = (
    ("strava", 30),
    ("garminconnect", 28),
    ("runkeeper", 10),
    ("dropbox", 8),
    ("endomondo", 7),
    ("trainingpeaks", 6),
    ("polarflow", 5),
    ("sporttracks", 3),
    ("rwgps", 3),
)
# Commands whose cost explain can measure; writes are counted, not explained.
READS = frozenset({"find", "aggregate", "count", "distinct"})
WRITES = frozenset({"insert", "update", "delete", "findAndModify"})
DRIVER_FIELDS = frozenset(
    {"lsid", "$db", "$clusterTime", "$readPreference", "txnNumber", "signature"}
)


@dataclass
class Measure:
    """The cost of one measured workload."""

    label: str
    wall: float
    docs: int
    keys: int
    reads: int
    writes: int
    rss_mb: float
    failed_steps: list[str] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)


# --- the data set ---------------------------------------------------------


class ObjectIds:
    """Unique driver-shaped ObjectIds for a given generation time."""

    def __init__(self, rng: random.Random) -> None:
        self._process = rng.randbytes(5)
        self._counter = 0

    def __call__(self, at: datetime) -> ObjectId:
        """An ObjectId generated at ``at``."""
        self._counter = (self._counter + 1) % (1 << 24)
        seconds = int(at.timestamp()).to_bytes(4, "big")
        return ObjectId(seconds + self._process + self._counter.to_bytes(3, "big"))


def generate(
    dbs: Databases,
    now: datetime,
    users: int,
    activities: int,
    *,
    years: float,
    seed: int,
) -> dict[str, int]:
    """Fill both databases; return how many documents each collection got."""
    rng = random.Random(seed)
    ids = ObjectIds(rng)
    written = {
        "users": insert(dbs.main.users, user_docs(rng, ids, now, users)),
        "sync_stats": insert(
            dbs.main.sync_stats, history(rng, ids, now, activities, years)
        ),
        "sync_worker_stats": insert(
            dbs.main.sync_worker_stats, worker_docs(rng, ids, now, users)
        ),
        "sync_status_stats": insert(
            dbs.main.sync_status_stats, status_docs(ids, now, days=90)
        ),
    }
    dbs.main.stats.insert_one({"Updated": now - INTERVAL})

    return written


def insert(collection: Collection[Document], docs: Iterator[Document]) -> int:
    """Insert in batches without holding the collection in memory."""
    total = 0
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == BATCH:
            collection.insert_many(batch, ordered=False)
            total, batch = total + len(batch), []
    if batch:
        collection.insert_many(batch, ordered=False)
        total += len(batch)

    return total


def user_docs(
    rng: random.Random, ids: ObjectIds, now: datetime, count: int
) -> Iterator[Document]:
    """Users: most scheduled, about 1% queued, 0.3% locked, 2% failing."""
    for _ in range(count):
        doc: Document = {"_id": ids(now - timedelta(days=rng.uniform(1, 2000)))}
        roll = rng.random()
        if roll < 0.003:
            doc["SynchronizationWorker"] = rng.randrange(1000, 65536)
            doc["QueuedAt"] = now - timedelta(minutes=rng.uniform(1, 20))
        elif roll < 0.013:
            doc["QueuedAt"] = now - timedelta(minutes=rng.uniform(0, 30))
            doc["SynchronizationWorker"] = None
        elif roll < 0.014:
            doc["NextSynchronization"] = now - timedelta(minutes=rng.uniform(1, 60))
        elif roll < 0.9:
            doc["NextSynchronization"] = now + timedelta(hours=rng.uniform(0, 6))
        else:
            doc["NextSynchronization"] = None
        if rng.random() < 0.005:
            doc["SynchronizationHostRestriction"] = "sync-1"
        doc["NonblockingSyncErrorCount"] = (
            rng.randint(1, 12) if rng.random() < 0.02 else 0
        )
        yield doc


def history(
    rng: random.Random, ids: ObjectIds, now: datetime, count: int, years: float
) -> Iterator[Document]:
    """Activities over ``years``, at a rate growing linearly towards ``now``.

    The rate at ``now`` is ``2 * count / years`` a year: a tenth of the
    activities over a tenth of the years keeps the recent traffic.
    """
    span = timedelta(days=365.25 * years)
    for _ in range(count):
        # The square root of a uniform draw gives a linearly rising density.
        created = now - span + span * math.sqrt(rng.random())
        uploaded = created + timedelta(seconds=rng.uniform(1, 600))
        if rng.random() < 0.05:  # a re-upload refreshed the Timestamp
            uploaded += timedelta(days=rng.uniform(0, 30))
        yield activity(rng, ids, created, min(uploaded, now))


def activity(
    rng: random.Random, ids: ObjectIds, created: datetime, uploaded: datetime
) -> Document:
    """One sync_stats document as Tapiriik's upsert leaves it."""
    names = [name for name, _ in SERVICES]
    weights = [weight for _, weight in SERVICES]
    picked = rng.choices(names, weights, k=4)
    destinations = list(dict.fromkeys(picked[1 : 1 + rng.choice((1, 1, 2, 3))]))

    return {
        "_id": ids(created),
        "ActivityID": f"{rng.getrandbits(160):040x}",
        "Distance": distance(rng),
        "Timestamp": uploaded,
        "SourceServices": [picked[0]],
        "DestinationServices": [d for d in destinations if d != picked[0]]
        or [names[0]],
    }


def distance(rng: random.Random) -> Any:
    """Metres; unknown now and then, and rarely a value of the wrong type."""
    roll = rng.random()
    if roll < 0.03:
        return None
    if roll < 0.031:
        return rng.choice(("12.5", float("nan"), -1.0, True))
    return round(rng.lognormvariate(math.log(9000), 0.8), 1)


def worker_docs(
    rng: random.Random, ids: ObjectIds, now: datetime, users: int
) -> Iterator[Document]:
    """The last hour's syncs (one per hundred users) and some older records."""
    for i in range(max(10, users // 100)):
        stale = i % 10 == 0
        at = now - timedelta(
            minutes=rng.uniform(61, 180) if stale else rng.uniform(0, 60)
        )
        yield {
            "_id": ids(at),
            "Timestamp": at,
            "Worker": rng.randrange(1000, 65536),
            "Host": f"sync-{i % 4 + 1}",
            "TimeTaken": round(rng.lognormvariate(math.log(20), 0.6), 3),
        }


def status_docs(ids: ObjectIds, now: datetime, days: int) -> Iterator[Document]:
    """One history entry per ten minutes over ``days``."""
    for step in range(days * 144, 0, -1):
        at = now - step * INTERVAL
        yield {"_id": ids(at), "Timestamp": at, "Locked": 0, "Pending": 0}


def add_new_activities(dbs: Databases, start: datetime, count: int, seed: int) -> int:
    """Activities created and uploaded in the interval after ``start``."""
    rng = random.Random(seed + 1)
    ids = ObjectIds(rng)
    docs = (
        activity(rng, ids, created, created + timedelta(seconds=rng.uniform(1, 30)))
        for created in (
            start + INTERVAL * rng.uniform(0.01, 0.95) for _ in range(count)
        )
    )

    return insert(dbs.main.sync_stats, docs)


# --- the measured workloads, each run in its own process ------------------


def old_job(uri: str, now: datetime, config: Path) -> list[str]:
    """The old stats job's reads: one query per figure, totals by full scans."""
    client: MongoClient[Document] = MongoClient(uri, tz_aware=True)
    db = client[DATABASE]
    day, hour = now - timedelta(hours=24), now - timedelta(hours=1)

    def total(collection: str, field: str, match: Document | None = None) -> None:
        pipeline: list[Document] = [{"$match": match}] if match else []
        pipeline.append({"$group": {"_id": None, "total": {"$sum": f"${field}"}}})
        list(db[collection].aggregate(pipeline))

    def count(match: Document) -> None:
        list(
            db.users.aggregate(
                [{"$match": match}, {"$group": {"_id": None, "n": {"$sum": 1}}}]
            )
        )

    total("sync_stats", "Distance")
    total("sync_stats", "Distance", {"Timestamp": {"$gt": day}})
    total("sync_stats", "Distance", {"Timestamp": {"$gt": hour}})
    queued = {
        "QueuedAt": {"$lte": now},
        "SynchronizationWorker": None,
        "SynchronizationHostRestriction": {"$exists": False},
    }
    list(db.users.find(queued, {"QueuedAt": 1}).sort("QueuedAt").limit(10))
    total("sync_worker_stats", "TimeTaken")
    db.command("count", "sync_worker_stats")
    count({"SynchronizationWorker": {"$ne": None}})
    count({"NextSynchronization": {"$lt": now}})
    count({"NonblockingSyncErrorCount": {"$gt": 0}})
    total("users", "NonblockingSyncErrorCount")
    client.close()

    return []


def distance_step(uri: str, now: datetime, config: Path) -> list[str]:
    """syncstats' distance figures alone, as the run computes them."""
    client = make_client(uri, 30)
    compute_distance(client[DATABASE], now)
    client.close()

    return []


def syncstats_run(uri: str, now: datetime, config: Path) -> list[str]:
    """``syncstats run`` as the command line runs it; return its failed steps."""
    from syncstats.cli import main as cli  # noqa: PLC0415 - after the listener

    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
        cli(["run", "--config", str(config), "--now", now.isoformat(), "--json"])
    try:
        steps = json.loads(output.getvalue())["steps"]
    except (ValueError, KeyError):
        return ["(no report)"]

    return [name for name, step in steps.items() if not step["ok"]]


WORKLOADS = {"old": old_job, "distance": distance_step, "run": syncstats_run}


class CommandLog(monitoring.CommandListener):
    """Every command the process sends, while recording."""

    def __init__(self) -> None:
        self.recording = True
        self.commands: list[Document] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Keep the command, with its database."""
        if self.recording:
            self.commands.append({**event.command, "$db": event.database_name})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Nothing to keep."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Nothing to keep."""


def probe(kind: str, uri: str, now: datetime, config: Path, result: Path) -> None:
    """Run one workload in this process and write its `Measure` to ``result``."""
    log = CommandLog()
    monitoring.register(log)
    started = time.perf_counter()
    failed = WORKLOADS[kind](uri, now, config)
    wall = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.recording = False

    queries = explain_all(uri, log.commands)
    measure = Measure(
        label=kind,
        wall=wall,
        docs=sum(q["docs"] for q in queries),
        keys=sum(q["keys"] for q in queries),
        reads=len(queries),
        writes=sum(next(iter(c)) in WRITES for c in log.commands),
        rss_mb=rss_mb,
        failed_steps=failed,
        queries=queries,
    )
    result.write_text(json.dumps(asdict(measure)))


def explain_all(uri: str, commands: Sequence[Document]) -> list[dict[str, Any]]:
    """The plan and examined counts of every read command, from ``explain``."""
    client: MongoClient[Document] = MongoClient(uri, tz_aware=True)
    queries = []
    for command in commands:
        name = next(iter(command))
        if name not in READS:
            continue
        body = {k: v for k, v in command.items() if k not in DRIVER_FIELDS}
        reply = client[command["$db"]].command(
            "explain", body, verbosity="executionStats"
        )
        keys, docs, plan = examined(reply)
        queries.append(
            {"op": name, "collection": command[name], "plan": plan}
            | {"keys": keys, "docs": docs}
        )
    client.close()

    return queries


def examined(reply: Document) -> tuple[int, int, str]:
    """Keys and documents examined and the access path, from an explain reply."""
    cursors = [reply] + [
        stage["$cursor"] for stage in reply.get("stages", []) if "$cursor" in stage
    ]
    for cursor in cursors:
        stats = cursor.get("executionStats")
        if stats and "totalDocsExamined" in stats:
            plan = json.dumps(
                cursor.get("queryPlanner", {}).get("winningPlan", {}), default=str
            )
            path = next(
                (p for p in ("IXSCAN", "COLLSCAN", "COUNT_SCAN") if p in plan), "?"
            )
            index = cursor.get("queryPlanner", {}).get("winningPlan", {})
            return (
                int(stats["totalKeysExamined"]),
                int(stats["totalDocsExamined"]),
                f"{path} {index_name(index)}".strip(),
            )

    return 0, 0, "?"


def index_name(plan: Document) -> str:
    """The first index name in a winning plan, or an empty string."""
    while plan:
        if "indexName" in plan:
            return str(plan["indexName"])
        plan = plan.get("inputStage", {})
    return ""


# --- orchestration --------------------------------------------------------


def measure(label: str, kind: str, uri: str, now: datetime, workdir: Path) -> Measure:
    """Run ``kind`` in a fresh process and read back what it measured."""
    config = workdir / "syncstats.toml"
    result = workdir / f"{label.replace(' ', '_')}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCSTATS_")}
    command = [
        sys.executable, __file__, "--probe", kind, "--uri", uri,
        "--now", now.isoformat(), "--config", str(config), "--result", str(result),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"{label} failed:\n{done.stderr[-2000:]}")
    values = json.loads(result.read_text())
    values["label"] = label

    return Measure(**values)


def write_config(workdir: Path, uri: str) -> None:
    """Settings for ``syncstats run``: the bench databases, no RabbitMQ."""
    (workdir / "syncstats.toml").write_text(
        f'mongo_uri = "{uri}"\n'
        f'database = "{DATABASE}"\n'
        f'ratelimit_database = "{RATELIMIT_DATABASE}"\n'
        # A closed port: the queue step fails at once instead of waiting.
        'rabbitmq_stats_url = "http://127.0.0.1:9/api/queues/%2F/tapiriik-users"\n'
        'rabbitmq_timeout = "2s"\n'
        "[rate_limits]\n"
        'strava = [{ window = "15m", max = 600 }, { window = "1d", max = 30000 }]\n'
    )


def print_table(measures: Sequence[Measure]) -> None:
    """The side-by-side table and the ratios of the old pattern to steady state."""
    columns = ["measurement", "wall s", "docs examined", "keys examined"]
    columns += ["reads", "writes", "peak RSS MB"]
    print("| " + " | ".join(columns) + " |")
    print("|---" + "|---:" * (len(columns) - 1) + "|")
    for m in measures:
        cells = [m.label, f"{m.wall:.3f}", f"{m.docs:,}", f"{m.keys:,}"]
        cells += [str(m.reads), str(m.writes), f"{m.rss_mb:.0f}"]
        print("| " + " | ".join(cells) + " |")

    by_label = {m.label: m for m in measures}
    steady = by_label["syncstats run, steady"]
    distance = by_label["distance step, steady"]
    for label in ("old job, no indexes", "old job, with indexes"):
        old = by_label[label]
        print(
            f"{label} / run, steady: documents {ratio(old.docs, steady.docs)}, "
            f"wall time {ratio(old.wall, steady.wall)}; its distance figures / "
            f"distance step, steady: documents "
            f"{ratio(sync_stats_docs(old), sync_stats_docs(distance))}"
        )
    failed = {step for m in measures for step in m.failed_steps}
    if failed:
        print(f"steps that failed in the runs: {', '.join(sorted(failed))}")


def sync_stats_docs(measure: Measure) -> int:
    """Documents examined by the reads of ``sync_stats``."""
    return sum(q["docs"] for q in measure.queries if q["collection"] == "sync_stats")


def print_queries(measure: Measure) -> None:
    """Each read command of one measurement, with its access path."""
    print(f"\nreads of {measure.label}:")
    for query in measure.queries:
        print(
            f"  {query['op']:<9} {query['collection']:<18} {query['plan']:<48} "
            f"keys {query['keys']:>9,}  docs {query['docs']:>9,}"
        )


def ratio(old: float, new: float) -> str:
    """``old / new`` as ``123x``."""
    return f"{old / new:,.0f}x" if new else "inf"


def run_benchmark(args: argparse.Namespace) -> None:
    """Generate the data, measure every workload, print the results."""
    server = None if args.uri else _embedded.start(args.storage)
    uri = args.uri or (server.uri if server else "")
    try:
        client = make_client(uri, 30)
        dbs = Databases(client, client[DATABASE], client[RATELIMIT_DATABASE])
        client.drop_database(DATABASE)
        client.drop_database(RATELIMIT_DATABASE)
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            write_config(workdir, uri)
            measures = measure_all(args, dbs, uri, workdir)
        client.close()
    finally:
        if server is not None:
            server.stop()

    print_table(measures)
    for m in measures[-2:]:
        print_queries(m)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(m) for m in measures], indent=1))


def measure_all(
    args: argparse.Namespace, dbs: Databases, uri: str, workdir: Path
) -> list[Measure]:
    """Generate, then measure each workload in order on the same data.

    The distance step alone and the whole run each start from the same
    stored state: the one the cold distance step left.
    """
    started = time.perf_counter()
    written = generate(
        dbs, NOW, args.users, args.activities, years=args.years, seed=args.seed
    )
    print(f"generated {written} in {time.perf_counter() - started:.0f} s")

    measures = [measure("old job, no indexes", "old", uri, NOW, workdir)]
    started = time.perf_counter()
    apply_indexes(dbs)
    print(f"created the indexes in {time.perf_counter() - started:.1f} s")
    measures.append(measure("old job, with indexes", "old", uri, NOW, workdir))

    state = dbs.main[STATE_COLLECTION]
    measures.append(measure("distance step, cold", "distance", uri, NOW, workdir))
    cold = state.find_one({"_id": STATE_ID}) or {}
    state.delete_many({})
    measures.append(measure("syncstats run, cold", "run", uri, NOW, workdir))

    new = add_new_activities(
        dbs, NOW, round(args.activities * args.new_fraction), args.seed
    )
    print(f"added {new} new activities")
    later = NOW + INTERVAL
    state.replace_one({"_id": STATE_ID}, cold, upsert=True)
    measures.append(measure("distance step, steady", "distance", uri, later, workdir))
    state.replace_one({"_id": STATE_ID}, cold, upsert=True)
    measures.append(measure("syncstats run, steady", "run", uri, later, workdir))

    return measures


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--activities", type=int, default=1_000_000)
    parser.add_argument("--years", type=float, default=4.0, help="history span")
    parser.add_argument("--new-fraction", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--uri", help="a Mongo-wire server (default: embedded)")
    parser.add_argument("--storage", default=":memory:", help="embedded data dir")
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--probe", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--now", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, or one measured workload with ``--probe``."""
    args = parse(argv)
    if args.probe:
        now = datetime.fromisoformat(args.now)
        probe(args.probe, args.uri, now, Path(args.config), Path(args.result))
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
