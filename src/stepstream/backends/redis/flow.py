"""Flow control slots and named entries of the Redis backend (``FlowStore`` and
``EntryStore`` in ``backends/base.py``).

Acquiring and releasing a slot are one Lua script each (``lua/acquire_slot.lua``,
``lua/release_slot.lua``), judged by Redis's clock, so concurrent acquires of a key from any
number of workers never exceed its budget. An entry is one field of its kind's hash: each
operation is a single command, atomic as it is.
"""

from __future__ import annotations

from stepstream.backends.base import AcquireSlot, Budget, ReleaseSlot
from stepstream.backends.redis.connection import Connection, map_redis_errors
from stepstream.backends.redis.runs import STALE_WAITERS, fence_args, fenced
from stepstream.errors import RunConflict
from stepstream.records import FLOW_CONTROL


class RedisFlow:
    """``FlowStore`` and ``EntryStore`` on ``_conn``."""

    _conn: Connection

    async def acquire_slot(self, op: AcquireSlot) -> Budget:
        limits, step = op.limits, op.step
        reply = await self._conn.script(
            "acquire_slot",
            *fence_args(op.lease),
            limits.key,
            "" if limits.parallelism is None else limits.parallelism,
            "" if limits.rate is None else limits.rate,
            limits.period_ms,
            step.position,
            step.to_json(),
        )
        fenced(reply, op.lease)
        if reply[1]:
            return Budget(True)
        return Budget(False, reply[2] or None)

    async def release_slot(self, op: ReleaseSlot) -> int:
        woken: int = await self._conn.script(
            "release_slot", op.run_id, op.key, op.position, FLOW_CONTROL, STALE_WAITERS
        )
        return woken

    async def put_entry(self, kind: str, key: str, value: str, *, create: bool = False) -> None:
        client, name = self._conn.redis(), self._entries_key(kind)
        with map_redis_errors(self._conn.where):
            if not create:
                await client.hset(name, key, value)
                return
            added = await client.hsetnx(name, key, value)
        if not added:
            raise RunConflict(f"{kind} {key!r} already exists")

    async def get_entry(self, kind: str, key: str) -> str | None:
        client = self._conn.redis()
        with map_redis_errors(self._conn.where):
            value = await client.hget(self._entries_key(kind), key)
        return None if value is None else str(value)

    async def list_entries(self, kind: str) -> dict[str, str]:
        client = self._conn.redis()
        with map_redis_errors(self._conn.where):
            entries = await client.hgetall(self._entries_key(kind))
        return {str(key): str(value) for key, value in entries.items()}

    async def delete_entry(self, kind: str, key: str) -> bool:
        client = self._conn.redis()
        with map_redis_errors(self._conn.where):
            removed = await client.hdel(self._entries_key(kind), key)
        return bool(removed)

    def _entries_key(self, kind: str) -> str:
        return f"{self._conn.prefix}wf:entries:{kind}"
