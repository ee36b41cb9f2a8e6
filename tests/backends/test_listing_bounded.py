"""Listing runs is index-backed on every backend: a filter that matches nothing among many runs
costs as little as one that matches at once (issue 8: one request could block Redis)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stepstream import HistoryPolicy
from stepstream.backends import backend_from_url, sqlite_runs
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


def vm_steps(conn: sqlite3.Connection, state: str | None, workflow: str | None) -> int:
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    conn.set_progress_handler(tick, 1)
    try:
        sqlite_runs.list_runs(conn, state, workflow, None, 10)
    finally:
        conn.set_progress_handler(None, 1)
    return count


def test_sqlite_listing_work_does_not_grow_with_unmatched_runs(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    conn.executescript(sqlite_runs.SCHEMA)
    conn.execute("BEGIN")
    for run in runs():
        sqlite_runs.create_run(conn, lambda *args: None, run, [], HistoryPolicy())
    conn.execute("COMMIT")
    for state, workflow in FILTERS:
        # A scan of 1,500 rows takes tens of thousands of VM steps; an index probe a few dozen.
        assert vm_steps(conn, state, workflow) < 2000, (state, workflow)


async def test_redis_listing_reads_at_most_a_page(redis_server: str) -> None:
    backend = backend_from_url(f"{redis_server}?prefix=listing-bounded:")
    await backend.open()
    try:
        for run in runs():
            await backend.create_run(run, [], HistoryPolicy())
        client = await backend._redis()  # type: ignore[attr-defined]

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
