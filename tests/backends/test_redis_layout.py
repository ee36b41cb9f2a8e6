"""Runs stored under the earlier Redis key layout (one shared ``wf:due`` / ``wf:leased`` queue,
no state+workflow listing index, no claim epoch) are still claimed and listed after an upgrade."""

from __future__ import annotations

import uuid

import pytest

from stepstream.backends.base import Claim, CreateRun
from stepstream.backends.redis import RedisBackend
from stepstream.records import RunRecord, RunState

pytestmark = pytest.mark.anyio


async def test_runs_of_the_earlier_layout_are_claimed_and_listed(redis_server: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    backend = RedisBackend.from_url(f"{redis_server}?prefix={prefix}")
    await backend.open()
    try:
        for i in range(3):
            await backend.create_run(
                CreateRun(RunRecord(f"r{i}", "legacy", RunState.STARTED, created_at=i, due_at=0))
            )
        client = backend._conn.redis()
        # Rewrite them as the earlier version stored them.
        for i in range(3):
            await client.zrem(f"{prefix}wf:due:legacy", f"r{i}")
            await client.zadd(f"{prefix}wf:due", {f"r{i}": 0})
            await client.hdel(f"{prefix}wf:run:r{i}", "epoch")
        await client.delete(f"{prefix}wf:runs:sw:RUN_STARTED:legacy", f"{prefix}wf:layout")
    finally:
        await backend.close()

    upgraded = RedisBackend.from_url(f"{redis_server}?prefix={prefix}")
    await upgraded.open()
    try:
        page = await upgraded.list_runs(
            state="RUN_STARTED", workflow="legacy", cursor=None, count=10
        )
        assert [run.id for run in page.runs] == ["r2", "r1", "r0"]
        claimed = await upgraded.claim_runs(Claim("w1", 30_000, 10, ("legacy",)))
        assert sorted(run.id for run in claimed) == ["r0", "r1", "r2"]
        assert {run.epoch for run in claimed} == {1}
        client = upgraded._conn.redis()
        assert await client.exists(f"{prefix}wf:due") == 0
    finally:
        await upgraded.close()


def test_every_run_script_declares_its_undeclared_keys_first() -> None:
    """Run scripts compute their keys; Dragonfly runs them only if their very first line says
    so. The shared library goes after that line, never before it."""
    from stepstream.backends.redis import scripts

    for name, text in scripts.RUNS.items():
        assert text.startswith("--!df flags=allow-undeclared-keys\n"), name
        assert "local function append_event" in text and "local function fenced" in text, name
    assert not scripts.APPEND.startswith("--!")  # the append script declares its KEYS
