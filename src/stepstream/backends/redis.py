"""The scale-out backend: any Redis >= 6.2 (or Valkey), plain ``redis://`` or TLS ``rediss://``.

Key layout of a channel ``C`` under the key prefix ``P`` (default ``stepstream:``)::

    P rt:{C}        stream    the history; entry fields ``e`` (event name) and ``d`` (JSON data)
    P rt:{C}        pub/sub   live delivery; the payload is ``<id>\\n<event>\\n<json>``
    P rt:{C}:meta   hash      ``last`` (newest id ever) and ``trimmed`` (newest id trimmed away)

The braces make both keys of a channel share one hash slot. One Lua script appends, trims and
publishes, so "stored" and "delivered" cannot disagree after a crash, and publish order equals
id order even with many concurrent emitters. Each process holds one pub/sub connection for all
its live channels; if it drops, the hub is told (``LiveSink.lost``) and subscribers resume from
their cursors rather than silently missing events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stepstream.backends.base import (
    CursorKey,
    HistoryPolicy,
    LiveSink,
    Message,
    format_cursor,
    parse_cursor,
)
from stepstream.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    CursorUnavailable,
)

APPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = '*'
if redis.call('EXISTS', KEYS[1]) == 0 then
  local last = redis.call('HGET', KEYS[2], 'last')
  if last then
    -- The stream expired: everything up to `last` is gone, and ids must keep increasing.
    redis.call('HSET', KEYS[2], 'trimmed', last)
    local dash = string.find(last, '-', 1, true)
    local ms = tonumber(string.sub(last, 1, dash - 1))
    if now <= ms then
      id = string.sub(last, 1, dash - 1) .. '-' .. (tonumber(string.sub(last, dash + 1)) + 1)
    end
  end
end
id = redis.call('XADD', KEYS[1], id, 'e', ARGV[1], 'd', ARGV[2])
local maxlen = tonumber(ARGV[3])
if maxlen > 0 then
  local len = redis.call('XLEN', KEYS[1])
  if len > maxlen then
    local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - maxlen)
    redis.call('XTRIM', KEYS[1], 'MAXLEN', maxlen)
    redis.call('HSET', KEYS[2], 'trimmed', old[#old][1])
  end
end
redis.call('HSET', KEYS[2], 'last', id)
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl + 86400000)
end
redis.call('PUBLISH', KEYS[1], id .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2])
return id
"""


class RedisBackend:
    """``redis://[:password@]host:6379/0`` or ``rediss://...`` (TLS). Query option
    ``prefix=<key prefix>`` (default ``stepstream:``)."""

    def __init__(self, url: str, *, prefix: str = "stepstream:") -> None:
        self.url = url
        self.prefix = prefix
        self._client: aioredis.Redis | None = None
        self._live_client: aioredis.Redis | None = None
        self._append: Any = None
        self._sink: LiveSink | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._acks: dict[str, deque[asyncio.Future[None]]] = {}
        self._open_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        parts = urlsplit(url)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        prefix = options.pop("prefix", "stepstream:")
        # Every other option (ssl_cert_reqs, socket_timeout, ...) is redis-py's to interpret.
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return cls(urlunsplit(parts._replace(query=query)), prefix=prefix)

    def _key(self, channel: str) -> str:
        return f"{self.prefix}rt:{{{channel}}}"

    def _channel(self, key: str) -> str:
        return key[len(self.prefix) + 4 : -1]

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._open_lock:
            if self._client is not None:
                return
            try:
                client = aioredis.Redis.from_url(self.url, decode_responses=True)
            except ValueError as exc:
                raise ConfigurationError(f"invalid Redis URL {self.url!r}: {exc}") from exc
            try:
                await client.ping()
            except redis.exceptions.RedisError as exc:
                await client.aclose()
                raise BackendUnavailable(f"cannot reach Redis at {self.url}: {exc}") from exc
            self._append = client.register_script(APPEND)
            # No silent reconnects on the pub/sub connection: events published while it was
            # down would be lost without anyone knowing. Errors surface and subscribers resume.
            self._live_client = aioredis.Redis.from_url(
                self.url, decode_responses=True, retry=Retry(NoBackoff(), 0)
            )
            self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        live, self._live_client = self._live_client, None
        await self._stop_reader()
        for each in (client, live):
            if each is not None:
                await each.aclose()

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        pubsub, self._pubsub = self._pubsub, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        for waiters in self._acks.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(BackendUnavailable("Redis pub/sub connection closed"))
        self._acks.clear()

    def set_sink(self, sink: LiveSink) -> None:
        self._sink = sink

    async def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise BackendUnavailable(f"Redis backend {self.url} is not open (or was closed)")
        return self._client

    # -- the protocol ----------------------------------------------------------------------

    async def ping(self) -> None:
        client = await self._redis()
        try:
            await client.ping()
        except redis.exceptions.RedisError as exc:
            raise BackendUnavailable(f"cannot reach Redis at {self.url}: {exc}") from exc

    async def append(self, channel: str, event: str, raw: str, policy: HistoryPolicy) -> Message:
        await self._redis()
        key = self._key(channel)
        ttl = 0 if policy.expire_after is None else max(1, int(policy.expire_after * 1000))
        try:
            id = await self._append(
                keys=[key, key + ":meta"], args=[event, raw, policy.max_length or 0, ttl]
            )
        except redis.exceptions.RedisError as exc:
            raise _translate(exc, self.url) from exc
        return Message(id, channel, event, raw)

    async def read(
        self,
        channel: str,
        *,
        after: CursorKey | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        client = await self._redis()
        key = self._key(channel)
        low = "-" if start_ms is None else f"{start_ms}-0"
        if after is not None and (start_ms is None or after >= (start_ms, 0)):
            low = f"({format_cursor(after)}"
        high = "+" if end_ms is None else f"{end_ms}"
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hmget(key + ":meta", "trimmed", "last")
                pipe.exists(key)
                if limit is None:
                    pipe.xrange(key, low, high)
                else:
                    pipe.xrevrange(key, high, low, count=limit)
                (trimmed, last), exists, entries = await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _translate(exc, self.url) from exc
        if after is not None:
            gone = last if not exists else trimmed
            if gone is not None and parse_cursor(gone) > after:
                raise CursorUnavailable(channel, format_cursor(after))
        if limit is not None:
            entries.reverse()
        return [Message(id, channel, fields["e"], fields["d"]) for id, fields in entries]

    async def latest_id(self, channel: str) -> str | None:
        client = await self._redis()
        try:
            entries = await client.xrevrange(self._key(channel), count=1)
        except redis.exceptions.RedisError as exc:
            raise _translate(exc, self.url) from exc
        return str(entries[0][0]) if entries else None

    async def listen(self, channels: Collection[str]) -> None:
        await self._redis()
        assert self._live_client is not None
        if self._pubsub is None:
            self._pubsub = self._live_client.pubsub()
        loop = asyncio.get_running_loop()
        waiters = []
        keys = []
        for channel in channels:
            key = self._key(channel)
            keys.append(key)
            waiter: asyncio.Future[None] = loop.create_future()
            self._acks.setdefault(key, deque()).append(waiter)
            waiters.append(waiter)
        try:
            await self._pubsub.subscribe(*keys)
        except redis.exceptions.RedisError as exc:
            self._connection_lost(exc)
            raise _translate(exc, self.url) from exc
        if self._reader is None:
            self._reader = loop.create_task(self._read_live(self._pubsub))
        # Live delivery is guaranteed only once Redis has confirmed each subscription.
        await asyncio.gather(*waiters)

    async def unlisten(self, channels: Collection[str]) -> None:
        if self._pubsub is None:
            return
        keys = [self._key(channel) for channel in channels]
        try:
            await self._pubsub.unsubscribe(*keys)
        except redis.exceptions.RedisError as exc:
            self._connection_lost(exc)

    async def _read_live(self, pubsub: Any) -> None:
        sink = self._sink
        try:
            while True:
                message = await pubsub.parse_response(block=True)
                if message is None:
                    continue
                kind = message[0]
                if kind == "message":
                    id, event, raw = message[2].split("\n", 2)
                    if sink is not None:
                        sink.deliver([Message(id, self._channel(message[1]), event, raw)])
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
            self._connection_lost(exc)

    def _connection_lost(self, exc: BaseException) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._reader = None
        for waiters in self._acks.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(_translate(exc, self.url))
        self._acks.clear()
        if pubsub is not None:
            asyncio.get_running_loop().create_task(_quietly_close(pubsub))
        if self._sink is not None:
            self._sink.lost(f"Redis pub/sub connection lost: {exc}")


async def _quietly_close(pubsub: Any) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()


def _translate(exc: BaseException, url: str) -> BackendError:
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError):
        error: BackendError = BackendUnavailable(f"Redis at {url}: {exc}")
    else:
        error = BackendError(f"Redis at {url}: {exc}")
    error.__cause__ = exc
    return error
