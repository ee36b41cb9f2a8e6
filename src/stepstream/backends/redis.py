"""The scale-out backend: any Redis >= 6.2 (or Valkey), plain ``redis://`` or TLS ``rediss://``.

Key layout of a channel ``C`` under the key prefix ``P`` (default ``stepstream:``)::

    P rt:{C}        stream    the history; entry fields ``e`` (event name) and ``d`` (JSON data)
    P rt:{C}        pub/sub   live delivery; the payload is ``<id>\\n<event>\\n<json>``
    P rt:{C}:meta   hash      ``last`` (newest id ever) and ``trimmed`` (newest id trimmed away)

The braces make both keys of a channel share one hash slot. One Lua script appends, trims and
publishes, so "stored" and "delivered" cannot disagree after a crash, and publish order equals
id order even with many concurrent emitters. Each process holds one pub/sub connection for all
its live channels; if it drops, the hub is told (``LiveSink.lost``) and subscribers resume from
their cursors rather than silently missing events. A connection can also die silently (a
half-open socket behind a NAT or a paused server): it is PINGed every ``live_check_interval``
seconds, and one that returns nothing at all within that time counts as lost.

Workflow runs (scripts and codecs in ``redis_runs.py``)::

    P wf:seq                 counter   creation order of runs
    P wf:run:<id>            hash      id, workflow, state, created_at, completed_at, due_at,
                                       lease_owner, lease_until, parent, seq, and each meta
                                       field as JSON under ``m.<name>`` (``m.payload``, ...)
    P wf:steps:<id>          hash      position -> StepRecord JSON
    P wf:due:<workflow>      zset      unleased RUN_STARTED runs of a workflow with a due_at,
                                       by due_at (a worker claims only workflows it has)
    P wf:leased:<workflow>   zset      leased RUN_STARTED runs of a workflow, by lease_until
    P wf:waits:<event>       set       ``<run id>|<position>`` of steps waiting for the event
    P wf:waitsof:<id>        set       ``<position>|<event>``: the run's waits, to drop them
    P wf:lookback:<id>       hash      event -> data notified to the run before it waited
    P wf:runs                zset      every run by seq (listing, newest first)
    P wf:runs:state:<S>      zset      runs in state S by seq
    P wf:runs:workflow:<W>   zset      runs of workflow W by seq
    P wf:runs:sw:<S>:<W>     zset      runs of workflow W in state S by seq
    P wf:layout              string    "2" once an earlier layout's keys were migrated

Each state change is one Lua script that also appends the events reporting it (the append
script's code, shared), so a run's log and its channel history cannot disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stepstream.backends import redis_runs as runs
from stepstream.backends.base import LiveSink
from stepstream.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    CursorUnavailable,
    LeaseLost,
    RunConflict,
    RunNotFound,
)
from stepstream.records import (
    CursorKey,
    Emit,
    HistoryPolicy,
    Lease,
    Message,
    RunPage,
    RunRecord,
    RunState,
    StepRecord,
    dumps,
    format_cursor,
    parse_cursor,
)

APPEND_EVENT = """
local function append_event(key, meta, event, raw, maxlen, ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local id = '*'
  if redis.call('EXISTS', key) == 0 then
    local last = redis.call('HGET', meta, 'last')
    if last then
      -- The stream expired: everything up to `last` is gone, and ids must keep increasing.
      redis.call('HSET', meta, 'trimmed', last)
      local dash = string.find(last, '-', 1, true)
      local ms = tonumber(string.sub(last, 1, dash - 1))
      if now <= ms then
        id = string.sub(last, 1, dash - 1) .. '-' .. (tonumber(string.sub(last, dash + 1)) + 1)
      end
    end
  end
  id = redis.call('XADD', key, id, 'e', event, 'd', raw)
  if maxlen > 0 then
    local len = redis.call('XLEN', key)
    if len > maxlen then
      local old = redis.call('XRANGE', key, '-', '+', 'COUNT', len - maxlen)
      redis.call('XTRIM', key, 'MAXLEN', maxlen)
      redis.call('HSET', meta, 'trimmed', old[#old][1])
    end
  end
  redis.call('HSET', meta, 'last', id)
  if ttl > 0 then
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', meta, ttl + 86400000)
  end
  redis.call('PUBLISH', key, id .. '\\n' .. event .. '\\n' .. raw)
  return id
end
"""

APPEND = (
    APPEND_EVENT
    + "return append_event(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), "
    + "tonumber(ARGV[4]))\n"
)


class RedisBackend:
    """``redis://[:password@]host:6379/0`` or ``rediss://...`` (TLS). Query options
    ``prefix=<key prefix>`` (default ``stepstream:``) and ``live_check_interval=<seconds>``
    (default 5: a silently dead pub/sub connection is noticed within twice that)."""

    def __init__(
        self, url: str, *, prefix: str = "stepstream:", live_check_interval: float = 5.0
    ) -> None:
        if live_check_interval <= 0:
            raise ConfigurationError("live_check_interval must be positive seconds")
        self.url = url
        # For messages: errors reach logs and 503 bodies, the password must not.
        parts = urlsplit(url)
        hidden = parts.netloc.rpartition("@")
        self.shown = urlunsplit(parts._replace(netloc=f"***@{hidden[2]}")) if hidden[1] else url
        self.prefix = prefix
        self._live_check = live_check_interval
        self._client: aioredis.Redis | None = None
        self._live_client: aioredis.Redis | None = None
        self._append: Any = None
        self._scripts: dict[str, Any] = {}
        self._sink: LiveSink | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._heard = 0.0  # loop time of the last reply on the pub/sub connection
        self._acks: dict[str, deque[asyncio.Future[None]]] = {}
        self._wake_key = f"{prefix}wf:wake"
        self._wake_callbacks: list[Callable[[], None]] = []
        self._wake_listening = False
        self._subscribe_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        parts = urlsplit(url)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        prefix = options.pop("prefix", "stepstream:")
        live: dict[str, float] = {}
        if "live_check_interval" in options:
            try:
                live["live_check_interval"] = float(options.pop("live_check_interval"))
            except ValueError as exc:
                raise ConfigurationError(f"{url!r}: live_check_interval must be seconds") from exc
        # Every other option (ssl_cert_reqs, socket_timeout, ...) is redis-py's to interpret.
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return cls(urlunsplit(parts._replace(query=query)), prefix=prefix, **live)

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
                # A burst of SSE connects (a server restart) issues many reads at once: wait
                # for a pooled connection instead of failing with "Too many connections".
                pool = aioredis.BlockingConnectionPool.from_url(
                    self.url, decode_responses=True, max_connections=64, timeout=30
                )
                client = aioredis.Redis(connection_pool=pool)
            except ValueError as exc:
                raise ConfigurationError(f"invalid Redis URL {self.shown!r}: {exc}") from exc
            try:
                await client.ping()
            except redis.exceptions.RedisError as exc:
                await client.aclose(close_connection_pool=True)
                raise BackendUnavailable(f"cannot reach Redis at {self.shown}: {exc}") from exc
            self._append = client.register_script(APPEND)
            self._scripts = {
                name: client.register_script(runs.FLAGS + APPEND_EVENT + runs.LIB + body)
                for name, body in runs.SCRIPTS.items()
            }
            # No silent reconnects on the pub/sub connection: events published while it was
            # down would be lost without anyone knowing. Errors surface and subscribers resume.
            self._live_client = aioredis.Redis.from_url(
                self.url, decode_responses=True, retry=Retry(NoBackoff(), 0)
            )
            self._client = client
            try:
                while await self._script("migrate", 500):
                    pass
            except BackendError:
                await self._quietly_release(client)
                raise

    async def _quietly_release(self, client: aioredis.Redis) -> None:
        self._client = None
        with contextlib.suppress(redis.exceptions.RedisError):
            await client.aclose(close_connection_pool=True)

    async def close(self) -> None:
        client, self._client = self._client, None
        live, self._live_client = self._live_client, None
        await self._stop_reader()
        for each in (client, live):
            if each is not None:
                await each.aclose(close_connection_pool=True)

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

    def set_sink(self, sink: LiveSink) -> None:
        self._sink = sink

    async def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise BackendUnavailable(f"Redis backend {self.shown} is not open (or was closed)")
        return self._client

    # -- the protocol ----------------------------------------------------------------------

    async def ping(self) -> None:
        client = await self._redis()
        try:
            await client.ping()
        except redis.exceptions.RedisError as exc:
            raise BackendUnavailable(f"cannot reach Redis at {self.shown}: {exc}") from exc

    async def append(self, channel: str, event: str, raw: str, policy: HistoryPolicy) -> Message:
        await self._redis()
        key = self._key(channel)
        ttl = 0 if policy.expire_after is None else max(1, int(policy.expire_after * 1000))
        try:
            id = await self._append(
                keys=[key, key + ":meta"], args=[event, raw, policy.max_length or 0, ttl]
            )
        except redis.exceptions.RedisError as exc:
            raise _translate(exc, self.shown) from exc
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
        client = await self._redis()
        key = self._key(channel)
        low = "-" if start_ms is None else f"{start_ms}-0"
        if after is not None and (start_ms is None or after >= (start_ms, 0)):
            low = f"({format_cursor(after)}"
        high = "+" if end_ms is None else f"{end_ms}"
        if before is not None and (end_ms is None or before[0] <= end_ms):
            # No id is below 0-1 (Redis refuses 0-0), and "(0-0" is not a valid end.
            high = f"({format_cursor(before)}" if before > (0, 0) else "0-0"
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hmget(key + ":meta", "trimmed", "last")
                pipe.exists(key)
                if limit is None:
                    pipe.xrange(key, low, high, count=page)
                else:
                    pipe.xrevrange(key, high, low, count=limit)
                (trimmed, last), exists, entries = await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _translate(exc, self.shown) from exc
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
            raise _translate(exc, self.shown) from exc
        return str(entries[0][0]) if entries else None

    async def listen(self, channels: Collection[str]) -> None:
        await self._subscribe([self._key(channel) for channel in channels])

    async def _subscribe(self, keys: list[str]) -> None:
        await self._redis()
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
            except redis.exceptions.RedisError as exc:
                self._connection_lost(exc, pubsub)
                for waiter in waiters:  # failed by _connection_lost; nobody else awaits them
                    if waiter.done() and not waiter.cancelled():
                        waiter.exception()
                raise _translate(exc, self.shown) from exc
            if self._reader is None:
                self._heard = loop.time()
                self._reader = loop.create_task(self._read_live(pubsub))
                self._watchdog = loop.create_task(self._watch_live(pubsub))
        # Live delivery is guaranteed only once Redis has confirmed each subscription.
        await asyncio.gather(*waiters)

    async def unlisten(self, channels: Collection[str]) -> None:
        if self._pubsub is None:
            return
        keys = [self._key(channel) for channel in channels]
        pubsub = self._pubsub
        try:
            async with self._subscribe_lock:
                await pubsub.unsubscribe(*keys)
        except redis.exceptions.RedisError as exc:
            self._connection_lost(exc, pubsub)

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

    async def wake_workers(self) -> None:
        client = await self._redis()
        try:
            await client.publish(self._wake_key, "")
        except redis.exceptions.RedisError as exc:
            raise _translate(exc, self.shown) from exc

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
                    waiter.set_exception(_translate(exc, self.shown))
        self._acks.clear()
        if pubsub is not None:
            asyncio.get_running_loop().create_task(_quietly_close(pubsub))
        if self._sink is not None:
            self._sink.lost(f"Redis pub/sub connection lost: {exc}")

    # -- workflow runs (Lua in redis_runs.py) -----------------------------------------------

    async def _script(self, name: str, *args: str | int) -> Any:
        await self._redis()
        try:
            return await self._scripts[name](keys=[], args=[self.prefix, *args])
        except redis.exceptions.RedisError as exc:
            raise _translate(exc, self.shown) from exc

    def _emits(self, emits: list[Emit], policy: HistoryPolicy) -> list[str | int]:
        return runs.emit_args([(self._key(e.channel), e.event, e.raw) for e in emits], policy)

    async def create_run(self, run: RunRecord, emits: list[Emit], policy: HistoryPolicy) -> None:
        due = "" if run.due_at is None else run.due_at
        fields = runs.counted(runs.run_fields(run))
        steps = runs.steps_args(run.steps)
        status, *_ = await self._script(
            "create_run",
            run.id,
            run.state.value,
            run.workflow,
            due,
            *fields,
            *steps,
            *self._emits(emits, policy),
        )
        if status == "EXISTS":
            raise RunConflict(
                f"a workflow run with id {run.id!r} already exists: ids are single-use"
            )

    async def get_run(self, run_id: str) -> RunRecord | None:
        client = await self._redis()
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(f"{self.prefix}wf:run:{run_id}")
                pipe.hgetall(f"{self.prefix}wf:steps:{run_id}")
                fields, steps = await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _translate(exc, self.shown) from exc
        return runs.run_record(fields, steps) if fields else None

    async def list_runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage:
        found = await self._script("list_runs", state or "", workflow or "", cursor or "", count)
        page = found[:count]
        cursor = runs.seq_of(page[-1]) if len(found) > count and page else None
        return RunPage([runs.run_record(fields) for fields in page], cursor)

    async def claim_runs(
        self,
        owner: str,
        lease_ms: int,
        limit: int,
        *,
        workflows: Collection[str],
        exclude: Collection[str] = (),
    ) -> list[RunRecord]:
        names = list(workflows)
        claimed = await self._script(
            "claim_runs", owner, lease_ms, limit, len(names), *names, *exclude
        )
        return [runs.run_record(fields, steps) for fields, steps in claimed]

    async def renew_leases(self, leases: list[Lease], lease_ms: int) -> list[str]:
        flat: list[str | int] = []
        for lease in leases:
            flat += [lease.run_id, lease.owner, lease.epoch]
        held: list[str] = await self._script("renew_leases", lease_ms, *flat)
        return held

    async def save_steps(
        self, lease: Lease, steps: list[StepRecord], emits: list[Emit], policy: HistoryPolicy
    ) -> None:
        reply = await self._script(
            "save_steps", *_fence_args(lease), *runs.steps_args(steps), *self._emits(emits, policy)
        )
        _fenced(reply, lease)

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
        due = "" if due_at is None else due_at
        patched = runs.counted(runs.meta_fields(patch))
        reply = await self._script(
            "release_run",
            *_fence_args(lease),
            due,
            int(hold),
            *patched,
            *self._emits(emits, policy),
        )
        _fenced(reply, lease)

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
        reply = await self._script(
            "finish_run",
            *_fence_args(lease),
            state,
            dumps(result),
            dumps(error),
            now,
            runs.child_outcome(state, result, error),
            *self._emits(emits, policy),
        )
        _fenced(reply, lease)

    async def wait_event(
        self, lease: Lease, step: StepRecord, emits: list[Emit], policy: HistoryPolicy
    ) -> str | None:
        assert step.event_id is not None
        reply = await self._script(
            "wait_event",
            *_fence_args(lease),
            step.position,
            step.event_id,
            step.to_json(),
            *self._emits(emits, policy),
        )
        _fenced(reply, lease)
        return reply[1] if len(reply) > 1 else None

    async def notify(self, event_id: str, raw: str, run_id: str | None, now: int) -> int:
        reply = await self._script("notify", event_id, raw, run_id or "")
        if reply[0] == "MISSING":
            raise RunNotFound(run_id or "")
        if reply[0] == "FINISHED":
            raise RunConflict(
                f"run {run_id} already finished ({reply[1]}); nothing can wait anymore"
            )
        woken: int = reply[1]
        return woken

    async def cancel_run(
        self, run_id: str, now: int, emits: list[Emit], policy: HistoryPolicy
    ) -> None:
        error = "canceled"
        outcome = runs.child_outcome(RunState.CANCELED.value, None, error)
        reply = await self._script(
            "cancel_run", run_id, now, dumps(error), outcome, *self._emits(emits, policy)
        )
        if reply[0] == "MISSING":
            raise RunNotFound(run_id)
        if reply[0] == "FINISHED":
            raise RunConflict(
                f"run {run_id} already finished ({reply[1]}); only running runs can be canceled"
            )


def _fence_args(lease: Lease) -> tuple[str, str, int]:
    return lease.run_id, lease.owner, lease.epoch


def _fenced(reply: list[Any], lease: Lease) -> None:
    if reply[0] == "LEASE":
        raise LeaseLost(f"run {lease.run_id} is no longer held by this execution")


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
