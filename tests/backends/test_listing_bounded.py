"""Listing runs is index-backed on every backend: a filter that matches nothing among many runs
costs as little as one that matches at once (issue 8: one request could block Redis)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from stepstream.backends import backend_from_url
from stepstream.backends.base import CreateRun
from stepstream.backends.sqlite import SQLiteBackend
from stepstream.records import RunRecord, RunState

pytestmark = pytest.mark.anyio

RUNS = 1500
FILTERS = [
    ("RUN_SUCCESS", "nope"),
    ("RUN_FAILED", "a"),
    (None, "nope"),
    ("RUN_CANCELED", None),
]


def runs() -> list[RunRecord]:
    return [
        RunRecord(id=f"r{i}", workflow="a", state=RunState.SUCCESS, created_at=i)
        for i in range(RUNS)
    ]


async def test_sqlite_listing_work_does_not_grow_with_unmatched_runs(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "runs.db", synchronous="normal")
    await backend.open()
    try:
        await asyncio.gather(*(backend.create_run(CreateRun(run)) for run in runs()))
        steps = 0

        def tick() -> int:
            nonlocal steps
            steps += 1
            return 0

        def count_steps(conn: sqlite3.Connection, on: bool) -> None:
            conn.set_progress_handler(tick if on else None, 1)

        for state, workflow in FILTERS:
            # Counted on the backend's own connection, around the listing alone.
            await backend._db.submit(lambda conn: count_steps(conn, True), write=False)
            steps = 0
            await backend.list_runs(state=state, workflow=workflow, cursor=None, count=10)
            counted = steps
            await backend._db.submit(lambda conn: count_steps(conn, False), write=False)
            # A scan of 1,500 rows takes tens of thousands of VM steps; an index probe a few
            # dozen.
            assert counted < 2000, (state, workflow)
    finally:
        await backend.close()


async def test_redis_listing_reads_at_most_a_page(redis_server: str) -> None:
    backend = backend_from_url(f"{redis_server}?prefix=listing-bounded:")
    await backend.open()
    try:
        for run in runs():
            await backend.create_run(CreateRun(run))
        client = backend._conn.redis()  # type: ignore[attr-defined]

        async def reads() -> int:
            stats = await client.info("commandstats")
            return sum(
                stats.get(f"cmdstat_{name}", {}).get("calls", 0)
                for name in ("hgetall", "hget", "hmget", "zrevrangebyscore")
            )

        for state, workflow in FILTERS:
            before = await reads()
            page = await backend.list_runs(state=state, workflow=workflow, cursor=None, count=10)
            assert page.runs == [] or state is None
            assert await reads() - before <= 12, (state, workflow)
    finally:
        await backend.close()
