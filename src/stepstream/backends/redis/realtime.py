"""The realtime half of the Redis backend: channels as streams, live delivery over one pub/sub
connection per process, and the workers' wakeups that ride on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import redis.asyncio as aioredis

from stepstream.backends.base import LiveSink
from stepstream.backends.redis.connection import (
    DRIVER_ERRORS,
    Connection,
    backend_error,
    map_redis_errors,
)
from stepstream.errors import BackendUnavailable, CursorUnavailable
from stepstream.records import CursorKey, HistoryPolicy, Message, format_cursor, parse_cursor


class RedisRealtime:
    """``RealtimeStore`` (and the wakeups of ``RunStore``) on ``_conn``, with live delivery on
    ``_live_client``: one pub/sub connection, read by ``_read_live`` and PINGed by
    ``_watch_live``; whatever breaks it ends in ``_connection_lost``."""

    def __init__(self, conn: Connection, live_check_interval: float) -> None:
        self._conn = conn
        self._live_check = live_check_interval
        self._live_client: aioredis.Redis | None = None
        self._sink: LiveSink | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._heard = 0.0  # loop time of the last reply on the pub/sub connection
        self._acks: dict[str, deque[asyncio.Future[None]]] = {}
        self._wake_key = f"{self._conn.prefix}wf:wake"
        self._wake_callbacks: list[Callable[[], None]] = []
        self._wake_listening = False
        self._subscribe_lock = asyncio.Lock()

    async def ping(self) -> None:
        client = self._conn.redis()
        with map_redis_errors(f"cannot reach Redis at {self._conn.shown}", unavailable=True):
            await client.ping()

    async def append(self, channel: str, event: str, raw: str, policy: HistoryPolicy) -> Message:
        conn = self._conn
        conn.redis()
        key = conn.stream_key(channel)
        ttl = 0 if policy.expire_after is None else max(1, int(policy.expire_after * 1000))
        with map_redis_errors(conn.where):
            id = await conn.append_script(
                keys=[key, key + ":meta"], args=[event, raw, policy.max_length or 0, ttl]
            )
        return Message(id, channel, event, raw)

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
        client = self._conn.redis()
        key = self._conn.stream_key(channel)
        low = "-" if start_ms is None else f"{start_ms}-0"
        if after is not None and (start_ms is None or after >= (start_ms, 0)):
            low = f"({format_cursor(after)}"
        high = "+" if end_ms is None else f"{end_ms}"
        if before is not None and (end_ms is None or before[0] <= end_ms):
            # No id is below 0-1 (Redis refuses 0-0), and "(0-0" is not a valid end.
            high = f"({format_cursor(before)}" if before > (0, 0) else "0-0"
        with map_redis_errors(self._conn.where):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hmget(key + ":meta", "trimmed", "last")
                pipe.exists(key)
                if limit is None:
                    pipe.xrange(key, low, high, count=page)
                else:
                    pipe.xrevrange(key, high, low, count=limit)
                (trimmed, last), exists, entries = await pipe.execute()
        if after is not None:
            gone = last if not exists else trimmed
            if gone is not None and parse_cursor(gone) > after:
                raise CursorUnavailable(channel, format_cursor(after))
        if limit is not None:
            entries.reverse()
        return [Message(id, channel, fields["e"], fields["d"]) for id, fields in entries]

    async def latest_id(self, channel: str) -> str | None:
        client = self._conn.redis()
        with map_redis_errors(self._conn.where):
            entries = await client.xrevrange(self._conn.stream_key(channel), count=1)
        return str(entries[0][0]) if entries else None

    def set_sink(self, sink: LiveSink) -> None:
        self._sink = sink

    async def listen(self, channels: Collection[str]) -> None:
        await self._subscribe([self._conn.stream_key(channel) for channel in channels])

    async def unlisten(self, channels: Collection[str]) -> None:
        if self._pubsub is None:
            return
        keys = [self._conn.stream_key(channel) for channel in channels]
        pubsub = self._pubsub
        try:
            async with self._subscribe_lock:
                await pubsub.unsubscribe(*keys)
        except DRIVER_ERRORS as exc:
            self._connection_lost(exc, pubsub)

    async def wake_workers(self) -> None:
        client = self._conn.redis()
        with map_redis_errors(self._conn.where):
            await client.publish(self._wake_key, "")

    async def listen_wakeups(self, callback: Callable[[], None]) -> None:
        if callback not in self._wake_callbacks:
            self._wake_callbacks.append(callback)
        if not self._wake_listening:
            self._wake_listening = True
            try:
                await self._subscribe([self._wake_key])
            except BaseException:
                self._wake_listening = False
                raise

    def wakeups_active(self) -> bool:
        return self._wake_listening

    # -- the pub/sub connection --------------------------------------------------------------

    async def _subscribe(self, keys: list[str]) -> None:
        self._conn.redis()
        assert self._live_client is not None
        loop = asyncio.get_running_loop()
        waiters = []
        # One subscriber at a time: redis-py's PubSub connects on its first command, and two
        # overlapping first commands would each open a connection, one of them lost.
        async with self._subscribe_lock:
            if self._pubsub is None:
                self._pubsub = self._live_client.pubsub()
            for key in keys:
                waiter: asyncio.Future[None] = loop.create_future()
                self._acks.setdefault(key, deque()).append(waiter)
                waiters.append(waiter)
            pubsub = self._pubsub
            try:
                await pubsub.subscribe(*keys)
            except DRIVER_ERRORS as exc:
                self._connection_lost(exc, pubsub)
                for waiter in waiters:  # failed by _connection_lost; nobody else awaits them
                    if waiter.done() and not waiter.cancelled():
                        waiter.exception()
                raise backend_error(exc, self._conn.where) from exc
            if self._reader is None:
                self._heard = loop.time()
                self._reader = loop.create_task(self._read_live(pubsub))
                self._watchdog = loop.create_task(self._watch_live(pubsub))
        # Live delivery is guaranteed only once Redis has confirmed each subscription.
        await asyncio.gather(*waiters)

    async def _read_live(self, pubsub: Any) -> None:
        sink = self._sink
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await pubsub.parse_response(block=True)
                self._heard = loop.time()
                if message is None:
                    continue
                kind = message[0]
                if kind == "message" and message[1] == self._wake_key:
                    for callback in self._wake_callbacks:
                        callback()
                elif kind == "message":
                    id, event, raw = message[2].split("\n", 2)
                    if sink is not None:
                        sink.deliver([Message(id, self._conn.channel_of(message[1]), event, raw)])
                elif kind == "subscribe":
                    waiters = self._acks.get(message[1])
                    if waiters:
                        waiter = waiters.popleft()
                        if not waiter.done():
                            waiter.set_result(None)
                        if not waiters:
                            del self._acks[message[1]]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._connection_lost(exc, pubsub)

    async def _watch_live(self, pubsub: Any) -> None:
        """PING the pub/sub connection every ``live_check_interval``; if nothing at all (not
        even the PONG) comes back before the next PING, the connection is dead however healthy
        its socket looks (a half-open TCP connection reads nothing forever)."""
        interval = self._live_check
        loop = asyncio.get_running_loop()
        try:
            while True:
                sent = loop.time()
                async with asyncio.timeout(interval), self._subscribe_lock:
                    await pubsub.ping()
                await asyncio.sleep(interval - (loop.time() - sent))
                if self._heard < sent:
                    raise TimeoutError(f"no reply to PING within {interval:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._connection_lost(exc, pubsub)

    def _connection_lost(self, exc: BaseException, pubsub: Any) -> None:
        if pubsub is not self._pubsub:
            return  # an old connection, already given up
        self._wake_listening = False
        self._pubsub = None
        current = asyncio.current_task()
        for task in (self._reader, self._watchdog):
            if task is not None and task is not current:
                task.cancel()
        self._reader = self._watchdog = None
        for waiters in self._acks.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(backend_error(exc, self._conn.where))
        self._acks.clear()
        if pubsub is not None:
            asyncio.get_running_loop().create_task(_quietly_close(pubsub))
        if self._sink is not None:
            self._sink.lost(f"Redis pub/sub connection lost: {exc}")

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        watchdog, self._watchdog = self._watchdog, None
        pubsub, self._pubsub = self._pubsub, None
        for task in (reader, watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        for waiters in self._acks.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(BackendUnavailable("Redis pub/sub connection closed"))
        self._acks.clear()


async def _quietly_close(pubsub: Any) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()
