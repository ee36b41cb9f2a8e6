"""Flow control slots and named entries of the Postgres backend (``FlowStore`` and
``EntryStore`` in ``backends/base.py``).

Acquiring and releasing a slot are one call each of their function in
``migrations/004_flow_control.sql``, serialised per key by an advisory lock and judged by the
database's clock, so concurrent acquires of a key from any number of workers never exceed its
budget. An entry is one row of ``entries``: each operation is a single statement, atomic as it is.
"""

from __future__ import annotations

from stepstream.backends.base import AcquireSlot, Budget, ReleaseSlot
from stepstream.backends.postgres.connection import Database
from stepstream.backends.postgres.runs import step_values
from stepstream.errors import RunConflict


class PostgresFlow:
    """``FlowStore`` and ``EntryStore`` on the pool of ``_db``."""

    _db: Database

    async def acquire_slot(self, op: AcquireSlot) -> Budget:
        lease, limits, step = op.lease, op.limits, op.step
        rows = await self._db.fetch(
            "SELECT granted, retry_at FROM ss_acquire_slot($1, $2, $3, $4, $5, $6, $7, $8, $9, "
            "$10, $11, $12, $13)",
            lease.run_id,
            lease.owner,
            lease.epoch,
            limits.key,
            limits.parallelism,
            limits.rate,
            limits.period_ms,
            *step_values(step),
        )
        granted, retry_at = rows[0]
        return Budget(True) if granted else Budget(False, retry_at)

    async def release_slot(self, op: ReleaseSlot) -> int:
        woken: int = await self._db.value(
            "SELECT ss_release_slot($1, $2, $3)", op.key, op.run_id, op.position
        )
        return woken

    async def put_entry(self, kind: str, key: str, value: str, *, create: bool = False) -> None:
        if not create:
            await self._db.fetch(
                "INSERT INTO entries (kind, key, value) VALUES ($1, $2, $3) "
                "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                kind,
                key,
                value,
            )
            return
        added = await self._db.value(
            "INSERT INTO entries (kind, key, value) VALUES ($1, $2, $3) "
            "ON CONFLICT (kind, key) DO NOTHING RETURNING true",
            kind,
            key,
            value,
        )
        if not added:
            raise RunConflict(f"{kind} {key!r} already exists")

    async def get_entry(self, kind: str, key: str) -> str | None:
        if "\x00" in kind + key:
            return None  # PostgreSQL text has no NUL: no such entry can exist
        value: str | None = await self._db.value(
            "SELECT value FROM entries WHERE kind = $1 AND key = $2", kind, key, read=True
        )
        return value

    async def list_entries(self, kind: str) -> dict[str, str]:
        if "\x00" in kind:
            return {}
        rows = await self._db.fetch(
            "SELECT key, value FROM entries WHERE kind = $1", kind, read=True
        )
        return {key: value for key, value in rows}

    async def delete_entry(self, kind: str, key: str) -> bool:
        if "\x00" in kind + key:
            return False
        removed = await self._db.value(
            "DELETE FROM entries WHERE kind = $1 AND key = $2 RETURNING true", kind, key
        )
        return bool(removed)
