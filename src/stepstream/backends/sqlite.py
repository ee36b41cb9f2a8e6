"""The embedded default backend: one SQLite file, safe for several processes on one machine.

All database work runs on one thread per backend instance, fed by a queue. Write jobs that are
queued together share one transaction (group commit), so concurrent emits cost one fsync, not
one each; every job still gets its own savepoint, so one failing job never takes the others
down. With ``synchronous=FULL`` (the default) a committed event survives power loss.

Live delivery across processes: after every commit, and every ``poll_interval`` seconds while
something listens, the thread checks ``PRAGMA data_version`` (which changes when another
connection commits) and hands rows past its cursor to the sink. Rows are numbered by an
``AUTOINCREMENT`` position assigned under SQLite's write lock, so "every row after position P"
is exactly "every event committed after we read P" — except rows another process trimmed
(``max_length``) or expired before this one looked: see ``_missed`` for how those are reported
instead of silently skipped.
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
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, urlsplit

from stepstream.backends import sqlite_runs as runs
from stepstream.backends.base import LiveSink
from stepstream.clock import system_ms
from stepstream.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    CursorUnavailable,
)
from stepstream.records import CursorKey, HistoryPolicy, Message, format_cursor

if TYPE_CHECKING:
    from stepstream.records import Emit, Lease, RunPage, RunRecord, StepRecord

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
# How often, at most, every watched channel is checked for events removed before this process
# saw them, when a removal could not be pinned on a channel (see ``_missed``).
AUDIT_INTERVAL = 1.0


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
        # Watched channel -> the newest id delivered live (or existing when listening began).
        self._marks: dict[str, CursorKey] = {}
        self._wake_callbacks: list[Callable[[], None]] = []
        self._cursor: int | None = None
        self._audit_owed = False
        self._next_audit = 0.0
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
            polling = self._marks or self._wake_callbacks
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
            live, missed = self._poll(conn, force=bool(writes)) if polling else ([], [])
            if time.monotonic() >= self._next_sweep:
                self._sweep(conn)
            if outcomes or live or missed:
                self._hand_over(outcomes, live, missed)
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

    def _poll(self, conn: sqlite3.Connection, *, force: bool) -> tuple[list[Message], list[str]]:
        """Live events committed since the last look (ours and other processes'), and the
        watched channels that lost events to trimming before we could see them."""
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        foreign = version != self._data_version
        if not (force or foreign or self._audit_owed):
            return [], []
        if foreign and self._wake_callbacks and self._loop is not None:
            # Another process committed: maybe a run became due. Claiming is cheap; let the
            # workers look now instead of at their next poll.
            for callback in self._wake_callbacks:
                self._loop.call_soon_threadsafe(callback)
        self._data_version = version
        appended = _appended(conn)
        own = appended[:]
        appended.clear()
        if self._cursor is None:
            return [], []
        select = (
            "SELECT pos, channel, ms, seq, event, data FROM rt_events WHERE pos > ? ORDER BY pos"
        )
        if not foreign and not self._audit_owed:
            # Only our own commits since the last look: nothing was removed unseen.
            rows = conn.execute(select, (self._cursor,)).fetchall()
            if rows:
                self._cursor = rows[-1][0]
            return self._live(rows, own), []
        conn.execute("BEGIN")  # rows, positions and watermarks from one snapshot
        try:
            rows = conn.execute(select, (self._cursor,)).fetchall()
            top = _top_position(conn)
            missed = self._missed(conn, rows, own, top)
        finally:
            conn.execute("COMMIT")
        self._cursor = max(self._cursor, top)
        return self._live(rows, own), missed

    def _live(self, rows: list[Any], own: list[_Own]) -> list[Message]:
        marks = self._marks
        live = []
        for _, channel, ms, seq, event, data in rows:
            if channel in marks:
                key = (ms, seq)
                live.append(Message(f"{ms}-{seq}", channel, event, data, key))
                if key > marks[channel]:
                    marks[channel] = key
        if own:
            # Our own appends that max_length trimmed within the same transaction never show up
            # in the table, but were emitted all the same: deliver them too, in id order.
            seen = {(m.channel, m.key) for m in live}
            extra = [m for m, _ in own if m.channel in marks and (m.channel, m.key) not in seen]
            if extra:
                for m in extra:
                    if m.key > marks[m.channel]:
                        marks[m.channel] = m.key
                live.extend(extra)
                live.sort(key=lambda m: m.key)
        return live

    def _missed(
        self, conn: sqlite3.Connection, rows: list[Any], own: list[_Own], top: int
    ) -> list[str]:
        """Watched channels that lost events before this process saw them.

        Another process may append to a channel and trim (``max_length``) or expire those very
        events before our next poll: their rows are gone, so "rows after our cursor" skips them
        without a trace. Positions are never reused, so such a removal leaves a *hole*: fewer
        rows after the cursor than positions handed out (``top - cursor``), beyond our own
        appends that we trimmed ourselves (we deliver those from memory). Only then is anything
        checked: for each watched channel touched here, its ``trimmed`` watermark is compared
        with what we delivered — the mark, extended through our own appends that directly
        follow it. A watermark past that means events nobody here received: the channel is
        reported to the sink, whose consumers check their cursors against storage and get a
        gap (or catch up) instead of a silent hole. A channel whose every new row vanished
        (expired unseen) is not touched by any row, so a hole also owes an audit of all watched
        channels, run at most every ``AUDIT_INTERVAL`` seconds to keep bursts cheap; until it
        has run, every touched channel is checked on each poll.
        """
        assert self._cursor is not None
        present = {(row[1], (row[2], row[3])) for row in rows} if own else set()
        mine_gone = sum(1 for m, _ in own if (m.channel, m.key) not in present)
        holes = top - self._cursor - len(rows) - mine_gone
        now = time.monotonic()
        if holes > 0:
            self._audit_owed = True
        audit = self._audit_owed and now >= self._next_audit
        marks = self._marks
        if audit:
            self._audit_owed = False
            self._next_audit = now + AUDIT_INTERVAL
            channels = list(marks)
        elif self._audit_owed:
            # Until the audit runs, check every channel that moves on: its mark must not pass
            # an unreported hole.
            touched = {row[1] for row in rows} | {m.channel for m, _ in own}
            channels = [c for c in touched if c in marks]
        else:
            return []
        chains: dict[str, list[_Own]] = {}
        for entry in own:
            chains.setdefault(entry[0].channel, []).append(entry)
        missed = []
        for name, trimmed in _trimmed_marks(conn, channels):
            covered = marks[name]
            for message, prev in sorted(chains.get(name, ()), key=lambda e: e[0].key):
                if prev <= covered < message.key:
                    covered = message.key
            if trimmed > covered:
                missed.append(name)
                marks[name] = max(marks[name], trimmed)
        return missed

    def _sweep(self, conn: sqlite3.Connection) -> None:
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        try:
            conn.execute("BEGIN IMMEDIATE")
            expired = conn.execute(
                "SELECT name FROM rt_channels WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (system_ms(),),
            ).fetchall()
            for (name,) in expired:
                _expire(conn, name)
            conn.execute("COMMIT")
        except sqlite3.Error:
            # Another process holds the write lock for longer than busy_timeout; sweep later.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

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
        sink = self._sink
        if sink is not None:
            if live:
                sink.deliver(live)
            if missed:
                sink.missed(missed)
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
        before: CursorKey | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        page: int | None = None,
    ) -> list[Message]:
        span = _Span(after, before, start_ms, end_ms)
        return await self._submit(lambda conn: _read(conn, channel, span, limit, page), write=False)

    async def latest_id(self, channel: str) -> str | None:
        def latest(conn: sqlite3.Connection) -> str | None:
            state = _channel_state(conn, channel)
            if state is None or state.length == 0 or state.expired:
                return None
            return format_cursor(state.last)

        return await self._submit(latest, write=False)

    async def listen(self, channels: Collection[str]) -> None:
        requested = list(channels)

        def watch(conn: sqlite3.Connection) -> None:
            names = [name for name in requested if name not in self._marks]
            # Events up to each channel's newest id exist already; every later one is ours to
            # deliver (or to report missed). One snapshot for the cursor and those ids.
            conn.execute("BEGIN")
            try:
                if self._cursor is None:
                    self._cursor = _top_position(conn)
                last = dict(_last_ids(conn, names))
            finally:
                conn.execute("COMMIT")
            for name in names:
                self._marks.setdefault(name, last.get(name, (0, 0)))

        await self._submit(watch, write=False)

    async def unlisten(self, channels: Collection[str]) -> None:
        names = list(channels)

        def unwatch(conn: sqlite3.Connection) -> None:
            for name in names:
                self._marks.pop(name, None)
            if not self._marks:
                self._cursor = None
                self._audit_owed = False

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
        *,
        hold: bool = False,
    ) -> None:
        await self._submit(
            lambda c: runs.release_run(
                c, _append_many, lease, due_at, patch, emits, policy, hold=hold
            ),
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


_Own = tuple[Message, CursorKey]
"""An event we appended, with the id that preceded it in its channel."""


class _Connection(sqlite3.Connection):
    """Remembers the events appended in the current transaction (for live delivery)."""

    appended: list[_Own]


def _appended(conn: sqlite3.Connection) -> list[_Own]:
    if not hasattr(conn, "appended"):
        conn.appended = []  # type: ignore[attr-defined]
    result: list[_Own] = conn.appended  # type: ignore[attr-defined]
    return result


def _top_position(conn: sqlite3.Connection) -> int:
    """The last position ever handed out (AUTOINCREMENT never reuses one)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'rt_events'").fetchone()
    return 0 if row is None else int(row[0])


def _in_chunks(conn: sqlite3.Connection, sql: str, names: list[str]) -> list[tuple[str, int, int]]:
    rows: list[tuple[str, int, int]] = []
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows.extend(conn.execute(sql.format(marks), chunk).fetchall())
    return rows


def _last_ids(conn: sqlite3.Connection, names: list[str]) -> list[tuple[str, CursorKey]]:
    sql = "SELECT name, last_ms, last_seq FROM rt_channels WHERE name IN ({})"
    return [(name, (ms, seq)) for name, ms, seq in _in_chunks(conn, sql, names)]


def _trimmed_marks(conn: sqlite3.Connection, names: list[str]) -> list[tuple[str, CursorKey]]:
    """Each channel's newest removed id, whether trimmed or expired (``_expire`` sets it too)."""
    sql = "SELECT name, trimmed_ms, trimmed_seq FROM rt_channels WHERE name IN ({})"
    return [(name, (ms, seq)) for name, ms, seq in _in_chunks(conn, sql, names)]


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
        self.expired = expires_at is not None and expires_at <= system_ms()
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
    now = system_ms()
    state = _channel_state(conn, channel)
    if state is not None and state.expired:
        _expire(conn, channel)
    key = (now - 1, 0) if state is None else state.last
    length = 0 if state is None else state.length
    prev = (0, 0) if state is None else state.last
    messages = []
    rows = []
    own = _appended(conn)  # delivered live after commit, even if trimmed below
    for event, raw in events:
        key = (now, 0) if now > key[0] else (key[0], key[1] + 1)
        rows.append((channel, key[0], key[1], event, raw))
        message = Message(format_cursor(key), channel, event, raw, key)
        messages.append(message)
        own.append((message, prev))
        prev = key
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


class _Span(NamedTuple):
    after: CursorKey | None
    before: CursorKey | None
    start_ms: int | None
    end_ms: int | None


def _read(
    conn: sqlite3.Connection, channel: str, span: _Span, limit: int | None, page: int | None
) -> list[Message]:
    # One read transaction so the trim check and the rows come from the same snapshot.
    conn.execute("BEGIN")
    try:
        state = _channel_state(conn, channel)
        if state is None:
            return []
        if span.after is not None and state.trimmed > span.after:
            raise CursorUnavailable(channel, format_cursor(span.after))
        if state.expired:
            return []
        where = ["channel = ?"]
        args: list[Any] = [channel]
        if span.after is not None:
            where.append("(ms, seq) > (?, ?)")
            args.extend(span.after)
        if span.before is not None:
            where.append("(ms, seq) < (?, ?)")
            args.extend(span.before)
        if span.start_ms is not None:
            where.append("ms >= ?")
            args.append(span.start_ms)
        if span.end_ms is not None:
            where.append("ms <= ?")
            args.append(span.end_ms)
        sql = f"SELECT ms, seq, event, data FROM rt_events WHERE {' AND '.join(where)}"
        if limit is not None:
            rows = conn.execute(f"{sql} ORDER BY ms DESC, seq DESC LIMIT ?", (*args, limit))
            ordered = list(rows)[::-1]
        elif page is not None:
            ordered = conn.execute(f"{sql} ORDER BY ms, seq LIMIT ?", (*args, page)).fetchall()
        else:
            ordered = conn.execute(f"{sql} ORDER BY ms, seq", args).fetchall()
        return [
            Message(f"{ms}-{seq}", channel, event, data, (ms, seq))
            for ms, seq, event, data in ordered
        ]
    finally:
        conn.execute("COMMIT")
