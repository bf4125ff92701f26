"""A lease in MongoDB, so that one process at a time runs the jobs.

The lease is one document per job name in syncstats' own ``syncstats_leases``
collection: ``{_id: name, holder, expires, acquired}``. A holder renews it
while working; when a holder dies its lease lapses after ``ttl`` seconds
and another process may take it. Expiry uses each host's clock, so hosts
must agree on the time to well within ``ttl``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import (
    DuplicateKeyError,
    InvalidOperation,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from syncstats._mongo import Document, describe_error
from syncstats.errors import LeaseHeld

logger = logging.getLogger(__name__)

COLLECTION = "syncstats_leases"
JOBS_LEASE = "jobs"  # held by whoever runs the stats pass and the refresh
DEFAULT_TTL = 60.0


def default_holder() -> str:
    """A name for this process: host, PID and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    """A named, expiring lease held by at most one holder at a time.

    ``held`` says whether this holder may hold the lease: set by an `acquire`
    that took it or whose answer was lost (the write may have landed),
    cleared by a `release` or an `acquire` that found another holder. An
    error that sent nothing (no server to send it to) leaves it as it was.
    """

    def __init__(
        self,
        db: Database[Document],
        name: str,
        *,
        holder: str | None = None,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        self.name = name
        self.holder = holder or default_holder()
        self.ttl = ttl
        self.held = False
        self._collection = db[COLLECTION]

    def acquire(self, now: datetime | None = None) -> bool:
        """Take or renew the lease; ``False`` when another holder has it.

        One atomic operation: it matches only a lapsed lease or our own.
        """
        now = now or datetime.now(UTC)
        query = {
            "_id": self.name,
            "$or": [{"holder": self.holder}, {"expires": {"$lte": now}}],
        }
        update = {
            "$set": {
                "holder": self.holder,
                "expires": now + timedelta(seconds=self.ttl),
            },
            "$setOnInsert": {"acquired": now},
        }
        try:
            self._collection.find_one_and_update(
                query, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            self.held = False
            return False
        except (ServerSelectionTimeoutError, InvalidOperation):
            raise  # never sent: whether we hold the lease did not change
        except PyMongoError:
            self.held = True  # sent: it may have landed before the error
            raise
        self.held = True

        return True

    def release(self) -> None:
        """Give the lease up at once if we hold it."""
        self._collection.delete_one({"_id": self.name, "holder": self.holder})
        self.held = False

    def current(self) -> Document | None:
        """The lease document, or ``None`` when nobody ever held it."""
        return self._collection.find_one({"_id": self.name})

    def held_by_other(self, now: datetime | None = None) -> LeaseHeld:
        """The error to raise when `acquire` failed, naming the holder."""
        now = now or datetime.now(UTC)
        document = self.current() or {}
        expires = document.get("expires")
        remaining = (expires - now).total_seconds() if expires else 0.0
        return LeaseHeld(
            f"another run holds the {self.name!r} lease: {document.get('holder')} "
            f"(expires in {max(remaining, 0):.0f} s)"
        )

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lease for the ``with`` block, renewing it in the background.

        Raises `LeaseHeld` naming the holder when another process has it.
        """
        try:
            acquired = self.acquire()
        except PyMongoError:
            # The write may have landed though the server reported an error
            # (a write concern it cannot meet): do not leave it to lapse.
            with suppress(PyMongoError):
                self.release()
            raise
        if not acquired:
            raise self.held_by_other()
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew_until, args=(stop,), name=f"lease-{self.name}",
            daemon=True,
        )  # fmt: skip
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            try:
                self.release()
            except PyMongoError as exc:
                logger.warning(
                    "could not release the %s lease: %s", self.name, describe_error(exc)
                )

    def _renew_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.ttl / 3):
            try:
                if not self.acquire():
                    logger.warning("lost the %s lease to another holder", self.name)
                    return
            except PyMongoError as exc:
                logger.warning(
                    "could not renew the %s lease: %s", self.name, describe_error(exc)
                )
