"""The database thread: one SQLite connection per backend instance, fed by a queue.

Write jobs that are queued together share one transaction (group commit), so concurrent emits
cost one fsync, not one each; every job still gets its own savepoint, so one failing job never
takes the others down. With ``synchronous=FULL`` (the default) a committed event survives power
loss. ``map_sqlite_errors`` is the one place ``sqlite3``'s exceptions become stepstream's.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from stepstream.backends.base import LiveSink
from stepstream.backends.sqlite.channels import TrackingConnection, appended
from stepstream.backends.sqlite.live import SWEEP_INTERVAL, LiveFeed
from stepstream.backends.sqlite.schema import SCHEMA, migrate
from stepstream.errors import BackendError, BackendUnavailable
from stepstream.futures import settle
from stepstream.records import Message

T = TypeVar("T")


@contextlib.contextmanager
def map_sqlite_errors(where: str, *, unavailable: bool = False) -> Iterator[None]:
    """Raise ``sqlite3``'s exceptions inside as stepstream's, ``from`` the original: a locked or
    unreachable file (``OperationalError``, ``OSError``; any driver error when ``unavailable``,
    as while opening) is ``BackendUnavailable``, any other driver error ``BackendError``. Every
    job of the database thread, its transaction and the opening run inside it."""
    try:
        yield
    except (sqlite3.OperationalError, OSError) as exc:
        raise BackendUnavailable(f"{where}: {exc}") from exc
    except sqlite3.Error as exc:
        error = BackendUnavailable if unavailable else BackendError
        raise error(f"{where}: {exc}") from exc


class _Job:
    __slots__ = ("fn", "future", "loop", "write")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], write: bool) -> None:
        self.fn = fn
        self.write = write
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()


Outcome = tuple[_Job, Any, BaseException | None]

_IDLE: Any = object()


class Database:
    """The thread that owns the connection, its job queue and its live ``feed``."""

    def __init__(self, path: Path, synchronous: str, poll_interval: float) -> None:
        self.path = path
        self.feed = LiveFeed()
        self.sink: LiveSink | None = None
        self._where = f"SQLite database {path}"
        self._synchronous = synchronous
        self._poll_interval = poll_interval
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open_lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def open(self) -> None:
        async with self._open_lock:
            if self._thread is not None:
                return
            self._loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = self._loop.create_future()
            self._thread = threading.Thread(
                target=self._run,
                args=(ready,),
                name=f"stepstream-sqlite:{self.path.name}",
                daemon=True,
            )
            self._thread.start()
            try:
                await ready
            except BaseException:
                # Never join here: a cancelled open must not block the event loop. The thread
                # either failed to connect and is gone, or sees the stop sentinel and exits.
                self._queue.put(None)
                self._thread = None
                raise

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(thread.join)
        self._open_lock = asyncio.Lock()  # unbound: the next open may be on another event loop

    async def submit(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``fn`` on the database thread; with ``write``, inside a write transaction that
        commits before this returns (and before live delivery of what it appended)."""
        if self._thread is None:
            raise BackendUnavailable(f"SQLite backend {self.path} is not open (or was closed)")
        job = _Job(fn, write)
        self._queue.put(job)
        result: T = await job.future
        return result

    # -- on the database thread --------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, factory=TrackingConnection
        )
        # Several processes share the file: wait for the write lock instead of failing at once.
        conn.execute("PRAGMA busy_timeout = 10000")
        # Switching a new file to WAL takes an exclusive lock that busy_timeout does not cover:
        # two processes opening a fresh file together can see "database is locked" here.
        for attempt in range(100):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 99:
                    raise
                time.sleep(0.02)
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrate(conn)
        finally:
            conn.execute("COMMIT")
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            with map_sqlite_errors(f"cannot open SQLite database {self.path}", unavailable=True):
                conn = self._connect()
        except BackendError as exc:
            loop.call_soon_threadsafe(settle, ready, None, exc)
            return
        loop.call_soon_threadsafe(settle, ready, None, None)
        try:
            self._serve(conn, loop)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        feed = self.feed
        while True:
            polling = feed.polling
            timeout = self._poll_interval if polling else SWEEP_INTERVAL
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                first = _IDLE
            jobs: list[_Job] = []
            stop = False
            item: _Job | None = first
            while True:
                if item is None:
                    stop = True
                elif item is not _IDLE:
                    jobs.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            outcomes: list[Outcome] = []
            writes = [job for job in jobs if job.write]
            if writes:
                outcomes.extend(self._run_writes(conn, writes))
            for job in jobs:
                if not job.write:
                    outcomes.append((job, *self._attempt(conn, job.fn)))
            live, missed = feed.poll(conn, loop, force=bool(writes)) if polling else ([], [])
            if feed.sweep_due():
                feed.sweep(conn)
            if outcomes or live or missed:
                self._hand_over(outcomes, live, missed)
            if stop:
                return

    def _attempt(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]
    ) -> tuple[Any, BaseException | None]:
        """``fn``'s value, or the exception for the job's awaiting coroutine to raise."""
        try:
            with map_sqlite_errors(self._where):
                return fn(conn), None
        except BaseException as exc:
            return None, exc

    def _run_writes(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[Outcome]:
        results: list[Outcome] = []
        _, error = self._attempt(conn, _begin_immediate)
        if error is not None:
            return [(job, None, error) for job in jobs]
        own = appended(conn)
        own.clear()
        if len(jobs) == 1:  # alone in its transaction: no savepoint needed
            value, error = self._attempt(conn, jobs[0].fn)
            if error is not None:
                conn.execute("ROLLBACK")
                own.clear()
                return [(jobs[0], None, error)]
            results.append((jobs[0], value, None))
        else:
            for job in jobs:
                conn.execute("SAVEPOINT job")
                mark = len(own)
                value, error = self._attempt(conn, job.fn)
                if error is not None:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    del own[mark:]
                else:
                    conn.execute("RELEASE job")
                results.append((job, value, error))
        _, error = self._attempt(conn, _commit)
        if error is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            own.clear()
            return [(job, None, error) for job, _, _ in results]
        return results

    def _hand_over(self, outcomes: list[Outcome], live: list[Message], missed: list[str]) -> None:
        """Wake the event loops waiting on this batch: one callback per loop, live events
        first so an emitter's own subscribers have them when its ``emit`` returns."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        home = self._loop
        if (live or missed) and home is not None:
            by_loop.setdefault(home, [])
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                if loop is home:
                    loop.call_soon_threadsafe(self._settle_batch, batch, live, missed)
                else:
                    loop.call_soon_threadsafe(self._settle_batch, batch, [], [])

    def _settle_batch(
        self, outcomes: list[Outcome], live: list[Message], missed: list[str]
    ) -> None:
        sink = self.sink
        if sink is not None:
            if live:
                sink.deliver(live)
            if missed:
                sink.missed(missed)
        for job, value, error in outcomes:
            settle(job.future, value, error)


def _begin_immediate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")
