"""Tests of the MongoDB lease, on a real Mongo-wire server."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ServerSelectionTimeoutError, WriteConcernError

from syncstats._mongo import Document
from syncstats.errors import LeaseHeld
from syncstats.lease import Lease

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_one_holder_at_a_time(db: Database[Document]) -> None:
    """While a lease is live, only its holder can take or renew it."""
    first = Lease(db, "jobs", holder="a", ttl=60)
    second = Lease(db, "jobs", holder="b", ttl=60)

    assert first.acquire(T0)
    assert not second.acquire(T0 + timedelta(seconds=59))
    assert first.acquire(T0 + timedelta(seconds=59))
    assert not second.acquire(T0 + timedelta(seconds=118))


def test_lapsed_lease_passes_to_another(db: Database[Document]) -> None:
    """Once the lease's expiry is reached, another holder takes it."""
    Lease(db, "jobs", holder="a", ttl=60).acquire(T0)
    second = Lease(db, "jobs", holder="b", ttl=60)

    assert second.acquire(T0 + timedelta(seconds=60))
    assert second.current() is not None
    assert second.current()["holder"] == "b"  # type: ignore[index]


def test_release_frees_the_lease_at_once(db: Database[Document]) -> None:
    """A released lease can be taken by another holder immediately."""
    first = Lease(db, "jobs", holder="a")
    first.acquire(T0)
    first.release()

    assert Lease(db, "jobs", holder="b").acquire(T0)


def test_release_leaves_another_holders_lease(db: Database[Document]) -> None:
    """Releasing a lease we do not hold changes nothing."""
    Lease(db, "jobs", holder="a").acquire(T0)
    Lease(db, "jobs", holder="b").release()

    assert not Lease(db, "jobs", holder="b").acquire(T0)


def test_hold_raises_naming_the_holder(db: Database[Document]) -> None:
    """hold() raises LeaseHeld with the current holder's name in one line."""
    Lease(db, "jobs", holder="host-1:4242:abc", ttl=600).acquire()

    lease = Lease(db, "jobs", holder="b")

    with pytest.raises(LeaseHeld, match=r"host-1:4242:abc \(expires in \d+ s\)"):
        lease.hold().__enter__()


def test_hold_renews_and_releases(db: Database[Document]) -> None:
    """A held lease is renewed while the block runs and released after it."""
    lease = Lease(db, "jobs", holder="a", ttl=0.6)
    with lease.hold():
        first = lease.current()
        threading.Event().wait(0.5)
        renewed = lease.current()
        assert first is not None
        assert renewed is not None
        assert renewed["expires"] > first["expires"]

    assert lease.current() is None


def test_concurrent_acquires_have_one_winner(db: Database[Document]) -> None:
    """Of many holders racing for a free lease, exactly one wins."""
    results: list[bool] = []
    lock = threading.Lock()

    def race(holder: str) -> None:
        won = Lease(db, "jobs", holder=holder).acquire(T0)
        with lock:
            results.append(won)

    threads = [threading.Thread(target=race, args=(f"h{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 7 + [True]


def test_hold_gives_back_a_lease_the_server_refused_to_confirm(
    mongo_uri: str, db: Database[Document]
) -> None:
    """A write concern the server cannot meet fails hold() and leaves no lease."""
    client: MongoClient[Document] = MongoClient(mongo_uri, w="no-such-mode")
    lease = Lease(client[db.name], "jobs", holder="a")

    try:
        with pytest.raises(WriteConcernError), lease.hold():
            pytest.fail("the lease was held")
    finally:
        client.close()

    assert Lease(db, "jobs", holder="b").acquire()


def test_held_follows_acquire_and_release(db: Database[Document]) -> None:
    """held is set by taking the lease, cleared by releasing it or by a refusal."""
    first = Lease(db, "jobs", holder="a", ttl=60)
    second = Lease(db, "jobs", holder="b", ttl=60)
    assert not first.held

    assert first.acquire(T0)
    assert first.held
    assert not second.acquire(T0)
    assert not second.held
    first.release()
    assert not first.held
    assert second.acquire(T0)
    assert second.held
    assert not first.acquire(T0)
    assert not first.held


def test_held_is_unchanged_when_no_server_answers() -> None:
    """An acquire that found no server to send to changes nothing about held."""
    # A bound socket that does not listen refuses connections to its port.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    client: MongoClient[Document] = MongoClient(
        f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=200
    )
    lease = Lease(client.tapiriik, "jobs", holder="a")
    try:
        with pytest.raises(ServerSelectionTimeoutError):
            lease.acquire(T0)
        assert not lease.held

        lease.held = True  # as if it took the lease before MongoDB went away
        with pytest.raises(ServerSelectionTimeoutError):
            lease.acquire(T0)
        assert lease.held
    finally:
        client.close()
        closed.close()


def test_held_after_an_acquire_whose_answer_failed(
    mongo_uri: str, db: Database[Document]
) -> None:
    """An acquire that reached the server but failed may have taken the lease."""
    client: MongoClient[Document] = MongoClient(mongo_uri, w="no-such-mode")
    lease = Lease(client[db.name], "jobs", holder="a")
    try:
        with pytest.raises(WriteConcernError):
            lease.acquire(T0)
    finally:
        client.close()

    assert lease.held
    assert Lease(db, "jobs").current() is not None  # it did land
