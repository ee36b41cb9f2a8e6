"""The embedded default backend: one SQLite file, safe for several processes on one machine.

All database work runs on one thread per backend instance, fed by a queue. Write jobs that are
queued together share one transaction (group commit), so concurrent emits cost one fsync, not
one each; every job still gets its own savepoint, so one failing job never takes the others
down. With ``synchronous=FULL`` (the default) a committed event survives power loss.

Live delivery across processes: after every commit, and every ``poll_interval`` seconds while
something listens, the thread checks ``PRAGMA data_version`` (which changes when another
connection commits) and hands rows past its cursor to the sink. Rows are numbered by an
``AUTOINCREMENT`` position assigned under SQLite's write lock, so "every row after position P"
is exactly "every event committed after we read P".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from stepstream.backends import sqlite_runs as runs
from stepstream.backends.base import CursorKey, HistoryPolicy, LiveSink, Message, format_cursor
from stepstream.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    CursorUnavailable,
)

if TYPE_CHECKING:
    from stepstream.workflow.records import Emit, Lease, RunPage, RunRecord, StepRecord

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS rt_channels (
    name TEXT PRIMARY KEY,
    last_ms INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    trimmed_ms INTEGER NOT NULL DEFAULT -1,
    trimmed_seq INTEGER NOT NULL DEFAULT -1,
    length INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS rt_events (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rt_events_by_channel ON rt_events (channel, ms, seq);
CREATE INDEX IF NOT EXISTS rt_channels_expiry ON rt_channels (expires_at)
    WHERE expires_at IS NOT NULL;
"""

SWEEP_INTERVAL = 30.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Job:
    __slots__ = ("fn", "future", "loop", "write")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], write: bool) -> None:
        self.fn = fn
        self.write = write
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()


Outcome = tuple[_Job, Any, BaseException | None]


class SQLiteBackend:
    """``sqlite:///path/to/file.db`` (relative: ``sqlite:///data.db``; absolute:
    ``sqlite:////var/lib/app.db``). Query options: ``synchronous=full|normal``,
    ``poll_interval=<seconds>`` (cross-process live delivery, default 0.005)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        poll_interval: float = 0.005,
    ) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigurationError(
                f"synchronous={synchronous!r}: use full (survives power loss) or normal"
            )
        self._synchronous = synchronous.upper()
        self._poll_interval = poll_interval
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: LiveSink | None = None
        # Owned by the database thread only:
        self._watched: set[str] = set()
        self._wake_callbacks: list[Callable[[], None]] = []
        self._cursor: int | None = None
        self._data_version = -1
        self._next_sweep = 0.0
        self._open_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str) -> SQLiteBackend:
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc:
            raise ConfigurationError(
                f"{url!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db "
                "(three slashes before a relative path)"
            )
        if not path:
            raise ConfigurationError(f"{url!r} names no file: write sqlite:///stepstream.db")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        kwargs: dict[str, Any] = {}
        if "synchronous" in options:
            kwargs["synchronous"] = options.pop("synchronous")
        if "poll_interval" in options:
            try:
                kwargs["poll_interval"] = float(options.pop("poll_interval"))
            except ValueError as exc:
                raise ConfigurationError(f"{url!r}: poll_interval must be seconds") from exc
        if options:
            raise ConfigurationError(
                f"{url!r}: unknown option(s) {', '.join(sorted(options))}; "
                "known: synchronous, poll_interval"
            )
        return cls(path, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------

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

    def set_sink(self, sink: LiveSink) -> None:
        self._sink = sink

    # -- the database thread -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, factory=_Connection
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
        conn.executescript(SCHEMA + runs.SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        try:
            runs.migrate(conn)
        finally:
            conn.execute("COMMIT")
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            error = BackendUnavailable(f"cannot open SQLite database {self.path}: {exc}")
            error.__cause__ = exc
            loop.call_soon_threadsafe(_settle, ready, None, error)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            polling = self._watched or self._wake_callbacks
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
                    outcomes.append(self._run_one(conn, job))
            live = self._poll(conn, force=bool(writes)) if polling else []
            if time.monotonic() >= self._next_sweep:
                self._sweep(conn)
            if outcomes or live:
                self._hand_over(outcomes, live)
            if stop:
                return

    def _run_one(self, conn: sqlite3.Connection, job: _Job) -> Outcome:
        try:
            return job, job.fn(conn), None
        except BaseException as exc:
            return job, None, _translate(exc, self.path)

    def _run_writes(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[Outcome]:
        results: list[Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = _translate(exc, self.path)
            return [(job, None, error) for job in jobs]
        appended = _appended(conn)
        appended.clear()
        if len(jobs) == 1:  # alone in its transaction: no savepoint needed
            try:
                results.append((jobs[0], jobs[0].fn(conn), None))
            except BaseException as exc:
                conn.execute("ROLLBACK")
                appended.clear()
                return [(jobs[0], None, _translate(exc, self.path))]
        else:
            for job in jobs:
                conn.execute("SAVEPOINT job")
                mark = len(appended)
                try:
                    value = job.fn(conn)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    del appended[mark:]
                    results.append((job, None, _translate(exc, self.path)))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, value, None))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            appended.clear()
            error = _translate(exc, self.path)
            return [(job, None, error) for job, _, _ in results]
        return results

    def _poll(self, conn: sqlite3.Connection, *, force: bool) -> list[Message]:
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        if not force and version == self._data_version:
            return []
        if version != self._data_version and self._wake_callbacks and self._loop is not None:
            # Another process committed: maybe a run became due. Claiming is cheap; let the
            # workers look now instead of at their next poll.
            for callback in self._wake_callbacks:
                self._loop.call_soon_threadsafe(callback)
        self._data_version = version
        if self._cursor is None:
            return []
        rows = conn.execute(
            "SELECT pos, channel, ms, seq, event, data FROM rt_events WHERE pos > ? ORDER BY pos",
            (self._cursor,),
        ).fetchall()
        if rows:
            self._cursor = rows[-1][0]
        watched = self._watched
        live = [
            Message(f"{ms}-{seq}", channel, event, data, (ms, seq))
            for _, channel, ms, seq, event, data in rows
            if channel in watched
        ]
        # Our own appends that max_length trimmed within the same transaction never show up
        # in the table, but were emitted all the same: deliver them too, in id order.
        appended = _appended(conn)
        if appended:
            seen = {(m.channel, m.key) for m in live}
            live.extend(
                m for m in appended if m.channel in watched and (m.channel, m.key) not in seen
            )
            live.sort(key=lambda m: m.key)
        appended.clear()
        return live

    def _sweep(self, conn: sqlite3.Connection) -> None:
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        try:
            conn.execute("BEGIN IMMEDIATE")
            expired = conn.execute(
                "SELECT name FROM rt_channels WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (_now_ms(),),
            ).fetchall()
            for (name,) in expired:
                _expire(conn, name)
            conn.execute("COMMIT")
        except sqlite3.Error:
            # Another process holds the write lock for longer than busy_timeout; sweep later.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _hand_over(self, outcomes: list[Outcome], live: list[Message]) -> None:
        """Wake the event loops waiting on this batch: one callback per loop, live events
        first so an emitter's own subscribers have them when its ``emit`` returns."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        home = self._loop
        if live and home is not None:
            by_loop.setdefault(home, [])
        for loop, batch in by_loop.items():
            delivered = live if loop is home else []
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(self._settle_batch, batch, delivered)

    def _settle_batch(self, outcomes: list[Outcome], live: list[Message]) -> None:
        if live and self._sink is not None:
            self._sink.deliver(live)
        for job, value, error in outcomes:
            _settle(job.future, value, error)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if self._thread is None:
            raise BackendUnavailable(f"SQLite backend {self.path} is not open (or was closed)")
        job = _Job(fn, write)
        self._queue.put(job)
        result: T = await job.future
        return result

    # -- the protocol ----------------------------------------------------------------------

    async def ping(self) -> None:
        await self._submit(lambda conn: conn.execute("SELECT 1").fetchone(), write=False)

    async def append(self, channel: str, event: str, raw: str, policy: HistoryPolicy) -> Message:
        return await self._submit(
            lambda conn: _append(conn, channel, event, raw, policy), write=True
        )

    async def read(
        self,
        channel: str,
        *,
        after: CursorKey | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        return await self._submit(
            lambda conn: _read(conn, channel, after, start_ms, end_ms, limit), write=False
        )

    async def latest_id(self, channel: str) -> str | None:
        def latest(conn: sqlite3.Connection) -> str | None:
            state = _channel_state(conn, channel)
            if state is None or state.length == 0 or state.expired:
                return None
            return format_cursor(state.last)

        return await self._submit(latest, write=False)

    async def listen(self, channels: Collection[str]) -> None:
        names = list(channels)

        def watch(conn: sqlite3.Connection) -> None:
            if self._cursor is None:
                (self._cursor,) = conn.execute(
                    "SELECT coalesce(max(pos), 0) FROM rt_events"
                ).fetchone()
            self._watched.update(names)

        await self._submit(watch, write=False)

    async def unlisten(self, channels: Collection[str]) -> None:
        names = list(channels)

        def unwatch(conn: sqlite3.Connection) -> None:
            self._watched.difference_update(names)
            if not self._watched:
                self._cursor = None

        await self._submit(unwatch, write=False)

    # -- workflow runs (SQL in sqlite_runs.py) -------------------------------------------------

    async def create_run(self, run: RunRecord, emits: list[Emit], policy: HistoryPolicy) -> None:
        await self._submit(
            lambda c: runs.create_run(c, _append_many, run, emits, policy), write=True
        )

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._submit(lambda c: runs.get_run(c, run_id), write=False)

    async def list_runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage:
        return await self._submit(
            lambda c: runs.list_runs(c, state, workflow, cursor, count), write=False
        )

    async def claim_runs(
        self,
        owner: str,
        lease_ms: int,
        limit: int,
        *,
        workflows: Collection[str],
        exclude: Collection[str] = (),
    ) -> list[RunRecord]:
        return await self._submit(
            lambda c: runs.claim_runs(c, owner, lease_ms, limit, workflows, exclude), write=True
        )

    async def renew_leases(self, leases: list[Lease], lease_ms: int) -> list[str]:
        return await self._submit(lambda c: runs.renew_leases(c, leases, lease_ms), write=True)

    async def save_steps(
        self, lease: Lease, steps: list[StepRecord], emits: list[Emit], policy: HistoryPolicy
    ) -> None:
        await self._submit(
            lambda c: runs.save_steps(c, _append_many, lease, steps, emits, policy), write=True
        )

    async def release_run(
        self,
        lease: Lease,
        due_at: int | None,
        patch: dict[str, Any],
        emits: list[Emit],
        policy: HistoryPolicy,
    ) -> None:
        await self._submit(
            lambda c: runs.release_run(c, _append_many, lease, due_at, patch, emits, policy),
            write=True,
        )

    async def finish_run(
        self,
        lease: Lease,
        state: str,
        result: str | None,
        error: str | None,
        now: int,
        emits: list[Emit],
        policy: HistoryPolicy,
    ) -> None:
        await self._submit(
            lambda c: runs.finish_run(
                c, _append_many, lease, state, result, error, now, emits, policy
            ),
            write=True,
        )

    async def wait_event(
        self, lease: Lease, step: StepRecord, emits: list[Emit], policy: HistoryPolicy
    ) -> str | None:
        return await self._submit(
            lambda c: runs.wait_event(c, _append_many, lease, step, emits, policy), write=True
        )

    async def notify(self, event_id: str, raw: str, run_id: str | None, now: int) -> int:
        return await self._submit(lambda c: runs.notify(c, event_id, raw, run_id, now), write=True)

    async def wake_workers(self) -> None:
        """Nothing to send: other processes see the commit through ``PRAGMA data_version``."""

    async def listen_wakeups(self, callback: Callable[[], None]) -> None:
        def register(conn: sqlite3.Connection) -> None:
            if callback not in self._wake_callbacks:
                self._wake_callbacks.append(callback)

        await self._submit(register, write=False)

    def wakeups_active(self) -> bool:
        return self._thread is not None

    async def cancel_run(
        self, run_id: str, now: int, emits: list[Emit], policy: HistoryPolicy
    ) -> None:
        await self._submit(
            lambda c: runs.cancel_run(c, _append_many, run_id, now, emits, policy), write=True
        )


_IDLE: Any = object()


class _Connection(sqlite3.Connection):
    """Remembers the events appended in the current transaction (for live delivery)."""

    appended: list[Message]


def _appended(conn: sqlite3.Connection) -> list[Message]:
    if not hasattr(conn, "appended"):
        conn.appended = []  # type: ignore[attr-defined]
    result: list[Message] = conn.appended  # type: ignore[attr-defined]
    return result


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _translate(exc: BaseException, path: Path) -> BaseException:
    if isinstance(exc, sqlite3.OperationalError):
        error: BackendError = BackendUnavailable(f"SQLite database {path}: {exc}")
    elif isinstance(exc, sqlite3.Error):
        error = BackendError(f"SQLite database {path}: {exc}")
    else:
        return exc
    error.__cause__ = exc
    return error


class _ChannelState:
    __slots__ = ("expired", "last", "length", "trimmed")

    def __init__(self, row: tuple[int, int, int, int, int, int | None]) -> None:
        last_ms, last_seq, trimmed_ms, trimmed_seq, length, expires_at = row
        self.last = (last_ms, last_seq)
        self.trimmed = (trimmed_ms, trimmed_seq)
        self.length = length
        self.expired = expires_at is not None and expires_at <= _now_ms()
        if self.expired:
            # Everything up to the last event is gone, whether or not the sweep ran yet.
            self.trimmed = self.last
            self.length = 0


def _channel_state(conn: sqlite3.Connection, channel: str) -> _ChannelState | None:
    row = conn.execute(
        "SELECT last_ms, last_seq, trimmed_ms, trimmed_seq, length, expires_at "
        "FROM rt_channels WHERE name = ?",
        (channel,),
    ).fetchone()
    return None if row is None else _ChannelState(row)


def _expire(conn: sqlite3.Connection, channel: str) -> None:
    conn.execute("DELETE FROM rt_events WHERE channel = ?", (channel,))
    conn.execute(
        "UPDATE rt_channels SET trimmed_ms = last_ms, trimmed_seq = last_seq, length = 0, "
        "expires_at = NULL WHERE name = ?",
        (channel,),
    )


def _append(
    conn: sqlite3.Connection, channel: str, event: str, raw: str, policy: HistoryPolicy
) -> Message:
    return _append_many(conn, channel, [(event, raw)], policy)[-1]


def _append_many(
    conn: sqlite3.Connection,
    channel: str,
    events: list[tuple[str, str]],
    policy: HistoryPolicy,
) -> list[Message]:
    """Append ``(event, raw)`` pairs to one channel: ids, trimming and expiry, one channel-row
    read and write however many events."""
    now = _now_ms()
    state = _channel_state(conn, channel)
    if state is not None and state.expired:
        _expire(conn, channel)
    key = (now - 1, 0) if state is None else state.last
    length = 0 if state is None else state.length
    messages = []
    rows = []
    for event, raw in events:
        key = (now, 0) if now > key[0] else (key[0], key[1] + 1)
        rows.append((channel, key[0], key[1], event, raw))
        messages.append(Message(format_cursor(key), channel, event, raw, key))
    _appended(conn).extend(messages)  # delivered live after commit, even if trimmed below
    conn.executemany(
        "INSERT INTO rt_events (channel, ms, seq, event, data) VALUES (?, ?, ?, ?, ?)", rows
    )
    length += len(events)
    expires_at = None if policy.expire_after is None else now + int(policy.expire_after * 1000)
    trimmed: CursorKey | None = None
    if policy.max_length is not None and length > policy.max_length:
        excess = length - policy.max_length
        old = conn.execute(
            "SELECT pos, ms, seq FROM rt_events WHERE channel = ? ORDER BY ms, seq LIMIT ?",
            (channel, excess),
        ).fetchall()
        conn.execute("DELETE FROM rt_events WHERE channel = ? AND pos <= ?", (channel, old[-1][0]))
        trimmed = (old[-1][1], old[-1][2])
        length = policy.max_length
    conn.execute(
        "INSERT INTO rt_channels (name, last_ms, last_seq, length, expires_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET last_ms = excluded.last_ms, "
        "last_seq = excluded.last_seq, length = excluded.length, "
        "expires_at = excluded.expires_at",
        (channel, key[0], key[1], length, expires_at),
    )
    if trimmed is not None:
        conn.execute(
            "UPDATE rt_channels SET trimmed_ms = ?, trimmed_seq = ? WHERE name = ?",
            (trimmed[0], trimmed[1], channel),
        )
    return messages


def _read(
    conn: sqlite3.Connection,
    channel: str,
    after: CursorKey | None,
    start_ms: int | None,
    end_ms: int | None,
    limit: int | None,
) -> list[Message]:
    # One read transaction so the trim check and the rows come from the same snapshot.
    conn.execute("BEGIN")
    try:
        state = _channel_state(conn, channel)
        if state is None:
            return []
        if after is not None and state.trimmed > after:
            raise CursorUnavailable(channel, format_cursor(after))
        if state.expired:
            return []
        where = ["channel = ?"]
        args: list[Any] = [channel]
        if after is not None:
            where.append("(ms, seq) > (?, ?)")
            args.extend(after)
        if start_ms is not None:
            where.append("ms >= ?")
            args.append(start_ms)
        if end_ms is not None:
            where.append("ms <= ?")
            args.append(end_ms)
        sql = f"SELECT ms, seq, event, data FROM rt_events WHERE {' AND '.join(where)}"
        if limit is not None:
            rows = conn.execute(f"{sql} ORDER BY ms DESC, seq DESC LIMIT ?", (*args, limit))
            ordered = list(rows)[::-1]
        else:
            ordered = conn.execute(f"{sql} ORDER BY ms, seq", args).fetchall()
        return [
            Message(f"{ms}-{seq}", channel, event, data, (ms, seq))
            for ms, seq, event, data in ordered
        ]
    finally:
        conn.execute("COMMIT")
