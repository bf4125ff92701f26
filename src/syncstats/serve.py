"""``syncstats serve``: the jobs on the wall clock under a lease, and the web app.

Every instance serves HTTP; the one holding the ``jobs`` lease also runs the
stats pass every ``interval`` and refreshes the rate-limit windows every
``ratelimit_interval``, both aligned to the clock from UTC midnight. The
others stand by and take the lease over when its holder's lapses.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType

import pymongo
import uvicorn
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from syncstats._mongo import Databases, Document, describe_error
from syncstats._windows import window_bounds
from syncstats.errors import ConfigError, SyncStatsError
from syncstats.job import run_pass
from syncstats.lease import JOBS_LEASE, Lease
from syncstats.ratelimit import refresh_windows
from syncstats.settings import Settings
from syncstats.web import create_app, http_token

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

SHUTDOWN_GRACE = 5.0
"""Seconds from SIGTERM until the scheduler has stopped, MongoDB answering or not."""

STOP_TIMEOUT = 1.0
"""Seconds of `SHUTDOWN_GRACE` kept for releasing the lease and disconnecting.

A running job gets the rest of the grace to finish.
"""

_SETTLE = 0.25
"""Seconds a lease renewal in flight at the stop may take before the release."""

STANDBY_RETRY = 5.0
"""Longest pause, in seconds, between two attempts of a standby to lead."""


def next_run(now: datetime, period: float) -> datetime:
    """The first instant after ``now`` on the grid of ``period`` seconds.

    The grid starts at UTC midnight, so a 600 s period runs at :00, :10, ...
    """
    return window_bounds(now, period)[1]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine: ``localhost`` or a loopback IP."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, settings: Settings) -> None:
    """Raise `ConfigError` when ``host`` is not loopback and no token is set.

    A blank token counts as an error wherever the server listens.
    """
    if is_loopback(host) or http_token(settings) is not None:
        return
    raise ConfigError(
        f"http_token: required to listen on the non-loopback address {host} "
        "(set SYNCSTATS_HTTP_TOKEN, or keep the default --host 127.0.0.1)"
    )


class Scheduler:
    """Runs the jobs while it holds the ``jobs`` lease, until ``stop`` is set.

    On taking the lease it runs a stats pass at once, unless one was already
    stored in the current interval (by the previous holder or a cron run),
    so there is one pass per interval. The lease lives ``lease_ttl`` seconds
    and is renewed every third of that, during jobs too; a standby tries to
    take it as often. ``clock`` gives the current instant (aware UTC).

    Once ``stop`` is set no job starts; `wait_for_job` waits for the one
    running, and `release` gives the lease up if this instance may hold it.
    """

    def __init__(
        self,
        databases: Databases,
        settings: Settings,
        stop: threading.Event,
        *,
        clock: Clock | None = None,
        on_crash: Callable[[], None] | None = None,
    ) -> None:
        self.lease = Lease(databases.main, JOBS_LEASE, ttl=settings.lease_ttl)
        self._databases = databases
        self._settings = settings
        self._stop = stop
        self._clock = clock or _wall_clock
        self._on_crash = on_crash
        self._renew_every = settings.lease_ttl / 3
        self._leading = False
        self._state = threading.Condition()
        self._in_job = False
        self._threads: list[threading.Thread] = []
        self.crashed: Exception | None = None

    def run(self) -> None:
        """Lead or stand by until ``stop`` is set; the caller releases the lease."""
        self._threads.append(threading.current_thread())
        logger.info("scheduler started as %s", self.lease.holder)
        try:
            while not self._stop.is_set():
                if self._renew():
                    self._lead()
                else:
                    self._stop.wait(min(STANDBY_RETRY, self._renew_every))
        except Exception as exc:
            # run_server reports it once the web server has stopped.
            self.crashed = exc
            logger.debug("the scheduler stopped", exc_info=exc)
            if self._on_crash is not None:
                self._on_crash()

    def wait_for_job(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the running job to end; ``False`` if it runs on.

        Call it once ``stop`` is set: no job starts after it returns ``True``.
        """
        with self._state:
            return self._state.wait_for(lambda: not self._in_job, max(timeout, 0.0))

    def threads(self) -> list[threading.Thread]:
        """The threads the scheduler has run on: its own and its lease renewers."""
        return list(self._threads)

    def release(self) -> None:
        """Give the lease up if this instance may hold it; a standby does nothing."""
        self._leading = False
        if not self.lease.held:
            return
        try:
            self.lease.release()
        except PyMongoError as exc:
            logger.warning(
                "could not release the %s lease: %s", JOBS_LEASE, describe_error(exc)
            )
            return
        logger.info("released the %s lease", JOBS_LEASE)

    def _lead(self) -> None:
        interval = self._settings.interval
        refresh_every = self._settings.ratelimit_interval
        now = self._clock()
        next_pass = next_run(now, interval) if self._pass_stored(now) else now
        next_refresh = next_run(now, refresh_every)
        while not self._stop.is_set():
            now = self._clock()
            due = min(next_pass, next_refresh)
            if now < due:
                pause = min((due - now).total_seconds(), self._renew_every)
                if self._stop.wait(pause) or not self._renew():
                    return
                continue
            if not self._renew():
                return

            if now >= next_pass:
                self._job("stats pass", self._pass, now)
                next_pass = next_run(self._clock(), interval)
            else:
                self._job("window refresh", self._refresh, now)
            next_refresh = next_run(self._clock(), refresh_every)

    def _renew(self) -> bool:
        """Take or keep the lease; ``False`` when another instance has it."""
        try:
            held = self.lease.acquire(self._clock())
        except PyMongoError as exc:
            if self._stop.is_set():
                # Stopping closes the client under a renewal still waiting
                # for MongoDB; the release that follows speaks for the lease.
                return False
            logger.warning(
                "could not renew the %s lease: %s", JOBS_LEASE, describe_error(exc)
            )
            held = False
        if held != self._leading:
            logger.info("%s the %s lease", "took" if held else "lost", JOBS_LEASE)
        self._leading = held

        return held

    def _pass_stored(self, now: datetime) -> bool:
        start = window_bounds(now, self._settings.interval)[0]
        try:
            found = self._databases.main.sync_status_stats.find_one(
                {"Timestamp": {"$gte": start}}, {"_id": 1}
            )
        except PyMongoError:
            return False

        return found is not None

    def _pass(self, now: datetime) -> None:
        # run_pass logs each failed step and a summary line itself.
        run_pass(self._databases, self._settings, now)

    def _refresh(self, now: datetime) -> None:
        refresh_windows(self._databases.ratelimit, self._settings.limits(), now)

    def _job(self, name: str, job: Callable[[datetime], None], now: datetime) -> None:
        with self._state:
            if self._stop.is_set():
                return
            self._in_job = True
        try:
            with self._renewing():
                try:
                    job(now)
                except (PyMongoError, SyncStatsError) as exc:
                    logger.error("%s failed: %s", name, exc)
                except Exception as exc:
                    # A bug in one job must not stop the jobs that follow.
                    logger.error("%s failed: %s: %s", name, type(exc).__name__, exc)
                    logger.debug("%s failed", name, exc_info=exc)
        finally:
            with self._state:
                self._in_job = False
                self._state.notify_all()

    @contextmanager
    def _renewing(self) -> Iterator[None]:
        """Renew the lease in the background while a job runs."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self._renew_every) and not self._stop.is_set():
                self._renew()

        renewer = threading.Thread(target=renew, name="syncstats-lease", daemon=True)
        self._threads = [*(t for t in self._threads if t.is_alive()), renewer]
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``; raises `ConfigError` if it cannot."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(
            f"port: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


def run_server(
    settings: Settings,
    databases: Databases,
    *,
    host: str = "127.0.0.1",
    port: int = 9810,
    clock: Clock | None = None,
) -> None:
    """Serve HTTP and run the `Scheduler` until SIGTERM or SIGINT.

    Must run in the main thread. The scheduler has stopped `SHUTDOWN_GRACE`
    seconds after the signal, whether MongoDB answers or not: a job still
    running gets all but `STOP_TIMEOUT` of it to end, then is left behind;
    then the lease is released if this instance may hold it and the client
    closed (the caller's own close then has nothing left to do), both within
    `STOP_TIMEOUT`. Raises `ConfigError` when the port is taken, and
    `SyncStatsError` when the scheduler stopped on an unexpected error.
    """
    sock = listen(host, port)
    app = create_app(settings, databases, clock=clock)
    stop = _StopEvent()
    server = _Server(
        uvicorn.Config(
            app, log_config=None, access_log=False, timeout_graceful_shutdown=2
        ),
        stop,
    )

    def exit_server() -> None:
        server.should_exit = True

    scheduler = Scheduler(databases, settings, stop, clock=clock, on_crash=exit_server)
    # A daemon, so a job stuck in a driver call cannot keep the process alive.
    thread = threading.Thread(
        target=scheduler.run, name="syncstats-scheduler", daemon=True
    )

    with _stopping_on_signals(stop, exit_server):
        thread.start()
        address = sock.getsockname()
        logger.info("serving on http://%s:%d", _url_host(address[0]), address[1])
        try:
            server.run(sockets=[sock])
        finally:
            stop.set()
            _shut_down(thread, scheduler, databases.client, stop.since)
            sock.close()
    if scheduler.crashed is not None:
        exc = scheduler.crashed
        raise SyncStatsError(f"the scheduler stopped: {type(exc).__name__}: {exc}")


class _StopEvent(threading.Event):
    """The request to stop, which remembers when it was first made."""

    def __init__(self) -> None:
        super().__init__()
        self.since = float("inf")
        """`time.monotonic` when first set."""

    def set(self) -> None:
        """Request the stop; the first call sets `since`."""
        self.since = min(self.since, time.monotonic())
        super().set()


class _Server(uvicorn.Server):
    """uvicorn's server, which also stops the scheduler as soon as a signal comes.

    The scheduler's grace then runs while the web server shuts down.
    """

    def __init__(self, config: uvicorn.Config, stop: threading.Event) -> None:
        super().__init__(config)
        self._stop = stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop the scheduler, then let uvicorn shut down as usual."""
        self._stop.set()
        super().handle_exit(sig, frame)


def _shut_down(
    thread: threading.Thread,
    scheduler: Scheduler,
    client: MongoClient[Document],
    since: float,
) -> None:
    """Stop the scheduler within `SHUTDOWN_GRACE` s of ``since``, then log "stopped".

    Threads still running are left behind and muted: what they would log
    after that (a job failing once the client is closed) is noise.
    """
    deadline = since + SHUTDOWN_GRACE
    if not scheduler.wait_for_job(deadline - STOP_TIMEOUT - time.monotonic()):
        logger.warning("a job is still running; leaving it to stop now")
    else:
        # The release must not overtake a renewal already sent; one that
        # waits for a MongoDB that is gone is not worth waiting for.
        thread.join(_SETTLE)
    left = [alive for alive in scheduler.threads() if alive.is_alive()]
    if left:
        _mute(left)
    # One bound for both: once MongoDB did not answer the release, closing
    # gives up at once on ending the client's sessions. Closing also makes a
    # call still waiting to select a server give up.
    with pymongo.timeout(STOP_TIMEOUT):
        scheduler.release()
        client.close()
    logger.info("stopped")


class _Muted(logging.Filter):
    """Drops the records of some threads: those left running by a stopped serve."""

    def __init__(self, threads: list[threading.Thread]) -> None:
        super().__init__()
        self._threads = frozenset(threads)

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record unless it comes from one of the threads."""
        return threading.current_thread() not in self._threads


def _mute(threads: list[threading.Thread]) -> None:
    """Log nothing more from ``threads``: a job left behind may still fail."""
    muted = _Muted(threads)
    for handler in logging.getLogger().handlers:
        handler.addFilter(muted)


@contextmanager
def _stopping_on_signals(
    stop: threading.Event, exit_server: Callable[[], None]
) -> Iterator[None]:
    """Make SIGTERM and SIGINT stop the scheduler and the server, not the process.

    uvicorn swaps in its own handlers while it runs and re-raises the signal
    it caught once it is done; these handlers then take it, so the process
    ends with exit status 0.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()
        exit_server()

    previous = {
        sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _wall_clock() -> datetime:
    return datetime.now(UTC)
