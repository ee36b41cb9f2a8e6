"""Live delivery and worker wake-ups over LISTEN/NOTIFY, on one connection per process.

Every append NOTIFYs the topic ``stepstream.<schema>`` in its transaction, so PostgreSQL
delivers it at commit, in commit order, to every listening connection; appends to one channel
lock its row, so commit order is id order per channel. A payload carries the whole event
(``channel\\nid\\nevent\\ndata``) unless that passes NOTIFY's 8000-byte limit: then only
``channel\\nid``, and the event is read from the table before delivery (in order: later
notifications wait for it). One that was trimmed before it could be read is reported to the sink
as ``missed``; consumers check their cursors against storage.

The connection LISTENs to the events topic only while some channel is watched, and to
``stepstream.<schema>.wake`` once a worker asks for wake-ups. Appends NOTIFY only channels that
some process watches (``migrations/006_watched_channels.sql``): watching a channel records, in
its row, a time until which it is watched (``WATCH_TTL_MS`` ahead), renewed every
``RENEW_INTERVAL``; a process that could not renew in time (its loop was frozen, the database
was unreachable) treats its connection as lost, since events may have gone unannounced. It is
checked with ``SELECT 1`` every ``check_interval`` seconds; when it closes or stops answering,
the sink is told (``LiveSink.lost``: subscribers resubscribe and catch up from storage) and
workers fall back to polling until they listen again on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import asyncpg

from stepstream.backends.base import LiveSink
from stepstream.backends.postgres.connection import Database, map_postgres_errors
from stepstream.errors import BackendUnavailable
from stepstream.records import Message, parse_cursor

SWEEP_INTERVAL = 30.0
WATCH_TTL_MS = 120_000  # a watch lasts this long unless renewed
RENEW_INTERVAL = 30.0  # seconds between renewals of this process's watches
RENEW_LIMIT = WATCH_TTL_MS / 1000 - 30.0  # unrenewed this long: treat the connection as lost
WATCH_BATCH = 1000  # channels registered per statement
DRAIN_BATCH = 200  # queued notifications delivered at once (bodies read in one statement)
WATCH_ATTEMPTS = 3  # connections a watch tries when each is lost while it registers


class Listener:
    """The LISTEN connection of one backend instance, and what it watches."""

    def __init__(self, db: Database, check_interval: float) -> None:
        self._db = db
        self._check_interval = check_interval
        self.topic = f"stepstream.{db.schema}"
        self.wake_topic = f"{self.topic}.wake"
        self.sink: LiveSink | None = None
        self.channels: set[str] = set()
        self.wake_callbacks: list[Callable[[], None]] = []
        self.waking = False  # LISTENing to the wake topic on a live connection
        self._events = False  # LISTENing to the events topic
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self._pending: deque[tuple[str, str, Message | None]] = deque()
        self._drain: asyncio.Task[None] | None = None
        self._renewed = 0.0  # loop time of the last renewal of every watch

    async def watch(self, channels: Collection[str]) -> None:
        """Returns once every event appended to ``channels`` from now on will be delivered.
        A registration can wait (for a pool turn, for a channel row another transaction
        holds); when the connection is lost meanwhile, it listens on a new one and registers
        again before it returns."""
        async with self._lock:
            for _ in range(WATCH_ATTEMPTS):
                conn = await self._connect()
                if not self._events:
                    await self._command(conn.add_listener(self.topic, self._on_event))
                    self._events = True
                new = [channel for channel in channels if channel not in self.channels]
                if new:
                    if not self.channels:
                        self._renewed = asyncio.get_running_loop().time()
                    await self._register(new)  # after LISTEN: see the module's docstring
                if self._conn is conn:
                    self.channels.update(channels)
                    return
        raise BackendUnavailable(
            f"the LISTEN connection to {self._db.where} was lost {WATCH_ATTEMPTS} times while "
            "channels were being watched"
        )

    async def _command(self, command: Awaitable[None]) -> None:
        """LISTEN or UNLISTEN on the connection: a connection that does not answer in
        ``check_interval`` (a half-open socket) is lost, as the watchdog would find it."""
        with map_postgres_errors(self._db.where):
            async with asyncio.timeout(self._check_interval):
                await command

    async def unwatch(self, channels: Collection[str]) -> None:
        async with self._lock:
            self.channels.difference_update(channels)
            conn = self._conn
            if not self.channels and self._events and conn is not None:
                self._events = False
                with contextlib.suppress(Exception):  # a dead connection: the watchdog's
                    async with asyncio.timeout(self._check_interval):
                        await conn.remove_listener(self.topic, self._on_event)

    async def wake_on(self, callback: Callable[[], None]) -> None:
        if callback not in self.wake_callbacks:
            self.wake_callbacks.append(callback)
        async with self._lock:
            if self.waking:
                return
            conn = await self._connect()
            await self._command(conn.add_listener(self.wake_topic, self._on_wake))
            self.waking = True

    async def _register(self, channels: list[str]) -> None:
        for start in range(0, len(channels), WATCH_BATCH):
            await self._db.value(
                "SELECT ss_watch($1, $2)", channels[start : start + WATCH_BATCH], WATCH_TTL_MS
            )

    async def close(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watchdog
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drain
        conn, self._conn = self._conn, None
        self._events = self.waking = False
        self.channels.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
        self._lock = asyncio.Lock()  # unbound: the next use may be on another event loop

    # -- the connection ------------------------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        with map_postgres_errors(f"cannot connect to {self._db.where}"):
            conn = await asyncpg.connect(
                self._db.dsn, server_settings=self._db.settings, timeout=10
            )
        conn.add_termination_listener(self._on_close)
        self._conn = conn
        self._events = self.waking = False
        loop = asyncio.get_running_loop()
        self._watchdog = loop.create_task(self._watch(conn))
        return conn

    def _on_close(self, conn: object) -> None:
        self._lost(conn, "the LISTEN connection closed")

    def _lost(self, conn: object, reason: str) -> None:
        if conn is not self._conn:
            return  # an old connection, already given up
        self._conn = None
        self._events = self.waking = False
        self.channels.clear()
        self._pending.clear()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
        asyncio.get_running_loop().create_task(_quietly_close(conn))
        if self.sink is not None:
            self.sink.lost(f"PostgreSQL LISTEN connection lost: {reason}")

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """``SELECT 1`` every ``check_interval``: a connection that stops answering (a half-open
        socket, a paused server) counts as lost, and so do watches left unrenewed too long.
        Also renews the watches and deletes expired channel histories."""
        interval = self._check_interval
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_INTERVAL
        try:
            while True:
                await asyncio.sleep(interval)
                # Under the lock: one connection runs one command at a time (LISTEN too).
                # Only the answer is timed: a watch may hold the lock while its registration
                # waits for a channel row, which says nothing of this connection.
                async with self._lock:
                    if conn is not self._conn:
                        return  # lost meanwhile: a new connection has its own watchdog
                    async with asyncio.timeout(interval):
                        await conn.fetchval("SELECT 1")
                await self._renew(loop.time())
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_INTERVAL
                    with contextlib.suppress(Exception):
                        await self._db.value("SELECT ss_sweep()")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(conn, str(exc) or type(exc).__name__)

    async def _renew(self, now: float) -> None:
        """Renew every watch once ``RENEW_INTERVAL`` has passed; raise when they may have
        lapsed (``RENEW_LIMIT``), which ``_watch`` reports as a lost connection."""
        if not self.channels:
            return
        if now - self._renewed > RENEW_LIMIT:
            raise TimeoutError(f"watched channels went {now - self._renewed:.0f} s unrenewed")
        if now - self._renewed < RENEW_INTERVAL:
            return
        with contextlib.suppress(Exception):  # tried again at the next check
            await self._register(sorted(self.channels))
            self._renewed = now

    # -- notifications (called on the loop by asyncpg, in the order they arrive) ---------------

    def _on_wake(self, *_: Any) -> None:
        for callback in self.wake_callbacks:
            callback()

    def _on_event(self, conn: object, pid: int, topic: str, payload: object) -> None:
        parts = str(payload).split("\n", 3)
        channel, id = parts[0], parts[1]
        if channel not in self.channels:
            return
        message = Message(id, channel, parts[2], parts[3]) if len(parts) == 4 else None
        if message is not None and self._drain is None:
            if self.sink is not None:
                self.sink.deliver([message])
            return
        self._pending.append((channel, id, message))
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._deliver_pending())

    async def _deliver_pending(self) -> None:
        """Deliver queued notifications in order, reading the bodies too large for a payload."""
        try:
            while self._pending:
                # A bounded batch: a backlog of large events read in one statement could take
                # longer than a command may (and hold back every event queued behind it).
                take = min(len(self._pending), DRAIN_BATCH)
                batch = [self._pending.popleft() for _ in range(take)]
                wanted = [(channel, id) for channel, id, message in batch if message is None]
                bodies = await self._read_bodies(wanted)
                live: list[Message] = []
                missed: list[str] = []
                for channel, id, message in batch:
                    found = message or bodies.get((channel, id))
                    if found is not None:
                        live.append(found)
                    elif channel not in missed:
                        missed.append(channel)
                if self.sink is not None:
                    if live:
                        self.sink.deliver(live)
                    if missed:
                        self.sink.missed(missed)
        finally:
            self._drain = None

    async def _read_bodies(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], Message]:
        if not wanted:
            return {}
        keys = [parse_cursor(id) for _, id in wanted]
        with contextlib.suppress(Exception):  # unreadable now: reported missed, read later
            rows = await self._db.fetch(
                "SELECT e.channel, e.ms, e.seq, e.event, e.data FROM events e "
                "JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS w(channel, ms, seq) "
                "USING (channel, ms, seq)",
                [channel for channel, _ in wanted],
                [ms for ms, _ in keys],
                [seq for _, seq in keys],
                read=True,
            )
            return {
                (channel, f"{ms}-{seq}"): Message(f"{ms}-{seq}", channel, event, data, (ms, seq))
                for channel, ms, seq, event, data in rows
            }
        return {}


async def _quietly_close(conn: object) -> None:
    assert isinstance(conn, asyncpg.Connection)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 5)
