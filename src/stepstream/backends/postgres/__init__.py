"""The Postgres backend: ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``),
for workflows and realtime alike, with any number of servers and workers on one database.

stepstream creates and migrates its own tables and functions in schema ``stepstream`` (or
``?schema=``), needs no extension, and keeps a schema version table (``connection.py``,
``migrations/*.sql``). Each storage operation is one server-side function call: one round
trip, one transaction with the events reporting it (``runs.py``, ``realtime.py``, flow control
slots in ``flow.py``, resuming and deleting runs in ``recovery.py``); listings and named
entries are single statements (``recovery.py``, ``flow.py``). Live events and worker wake-ups
travel by LISTEN/NOTIFY on one extra connection per process (``live.py``).
Times (event ids, leases, due runs, flow control windows) are the database's clock.

Driver: asyncpg, measured against psycopg 3 on this backend's own transactions
(``bench/pg_drivers.py``, BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stepstream.backends.base import shown_url
from stepstream.backends.postgres.batch import SaveBatcher
from stepstream.backends.postgres.connection import Database, check_schema
from stepstream.backends.postgres.flow import PostgresFlow
from stepstream.backends.postgres.live import Listener
from stepstream.backends.postgres.realtime import PostgresRealtime
from stepstream.backends.postgres.recovery import PostgresRecovery
from stepstream.backends.postgres.runs import PostgresRuns
from stepstream.errors import ConfigurationError

__all__ = ["PostgresBackend"]

OPTIONS = ("schema", "pool_size", "live_check_interval")


class PostgresBackend(PostgresRealtime, PostgresRuns, PostgresRecovery, PostgresFlow):
    """``postgresql://...`` with query options ``schema=`` (default ``stepstream``),
    ``pool_size=`` (connections per process, default 10, plus one for LISTEN and, in a worker,
    one kept for its lease renewals) and
    ``live_check_interval=`` (seconds, default 5: a silently dead LISTEN connection is
    noticed within twice that). Other options (``sslmode=require``, ...) go to the driver."""

    def __init__(
        self,
        url: str,
        *,
        schema: str = "stepstream",
        pool_size: int = 10,
        live_check_interval: float = 5.0,
    ) -> None:
        if pool_size < 1:
            raise ConfigurationError(f"pool_size must be >= 1, got {pool_size}")
        if live_check_interval <= 0:
            raise ConfigurationError("live_check_interval must be positive seconds")
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(f"{shown_url(url)!r} is not a postgresql:// URL")
        self.url = url
        self._db = Database(url, check_schema(schema), pool_size, shown_url(url))
        self._listener = Listener(self._db, live_check_interval)
        self._saves = SaveBatcher(self._db, self._save_steps, max_inflight=pool_size // 2)
        self._renewing = asyncio.Semaphore(max(1, pool_size // 3))  # made again by close

    @classmethod
    def from_url(cls, url: str) -> PostgresBackend:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in OPTIONS}
        rest = [(k, v) for k, v in query if k not in OPTIONS]
        kwargs: dict[str, object] = {}
        if "schema" in ours:
            kwargs["schema"] = ours["schema"]
        try:
            if "pool_size" in ours:
                kwargs["pool_size"] = int(ours["pool_size"])
            if "live_check_interval" in ours:
                kwargs["live_check_interval"] = float(ours["live_check_interval"])
        except ValueError as exc:
            raise ConfigurationError(
                f"{shown_url(url)!r}: pool_size must be a whole number and "
                "live_check_interval seconds"
            ) from exc
        backend = cls(urlunsplit(parts._replace(query=urlencode(rest))), **kwargs)  # type: ignore[arg-type]
        backend.url = url
        return backend

    async def open(self) -> None:
        """Connect, create the schema or migrate it. Idempotent."""
        await self._db.open()

    async def close(self) -> None:
        """Stop live delivery and close every connection. Idempotent."""
        await self._listener.close()
        await self._saves.close()
        await self._db.close()
        # A semaphore belongs to the event loop it first waited on; the next open may be
        # under another.
        self._renewing = asyncio.Semaphore(max(1, self._db.pool_size // 3))
