"""A run's row is read through its primary key even before PostgreSQL has statistics.

Every save, release, resolve, heartbeat and flow control call locks or reads its run's row
with a query on the run's id and its state (and owner and epoch). Such a query could be planned
on the index of runs by state (``runs_by_state``) or on that of leased runs (``runs_leased``,
whose predicate ``state = 'RUN_STARTED' AND lease_owner = ...`` implies), and a join on an array
of ids as a scan of ``runs``; each then read every started or leased run to find one: what
PostgreSQL chose on a new database, before autovacuum first analyzed ``runs`` (migration 12).
Counted here with PostgreSQL's own statistics, on a never-analyzed table.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from stepstream.backends import backend_from_url
from stepstream.backends.base import (
    AcquireSlot,
    CreateRun,
    Notify,
    ReleaseRun,
    ReleaseSlot,
    SaveSteps,
    WaitEvent,
)
from stepstream.backends.postgres import PostgresBackend
from stepstream.errors import LeaseLost
from stepstream.records import FlowLimits, Lease
from tests.backends.test_runs_contract import emits, new_run, step, waiting

pytestmark = pytest.mark.anyio

STARTED = 400  # runs in flight besides the ones the operations act on
OWNER = "w1"


async def hold(backend: PostgresBackend, run_ids: list[str]) -> list[Lease]:
    """Started runs ``OWNER`` holds (epoch 1, leased for good), written straight to the table."""
    await backend._db.fetch(
        "INSERT INTO runs (id, workflow, state, created_at, due_at, payload, headers, phase, "
        "failure_attempts, lease_owner, lease_until, epoch) SELECT id, 'wf', 'RUN_STARTED', 0, "
        "0, 'null', '{}', 'run', 0, $2, 9999999999999, 1 FROM unnest($1::text[]) AS id",
        run_ids,
        OWNER,
    )
    return [Lease(run_id, OWNER, 1) for run_id in run_ids]


@pytest.fixture
async def crowded(postgres_url: str) -> AsyncIterator[tuple[PostgresBackend, str]]:
    """A new schema (never analyzed), one pooled connection (so the counters of its backend can
    be flushed on demand), and ``STARTED`` runs leased by ``OWNER``."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    backend = backend_from_url(f"{postgres_url}?schema={schema}&pool_size=1")
    assert isinstance(backend, PostgresBackend)
    await backend.open()
    await hold(backend, [f"busy{i}" for i in range(1, STARTED + 1)])
    try:
        yield backend, schema
    finally:
        await backend.close()


async def counters(backend: PostgresBackend, schema: str, url: str) -> dict[str, int]:
    """Rows read so far from ``runs`` through each of its indexes and by sequential scans, and
    the calls of each stepstream function, counters flushed first (the pool's one connection
    flushes them before it answers; PostgreSQL 15+)."""
    await backend._db.fetch("SELECT pg_stat_force_next_flush()")
    conn = await asyncpg.connect(url)
    try:
        indexes = await conn.fetch(
            "SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes "
            "WHERE schemaname = $1 AND relname = 'runs'",
            schema,
        )
        scanned = await conn.fetchval(
            "SELECT seq_tup_read FROM pg_stat_user_tables WHERE schemaname = $1 "
            "AND relname = 'runs'",
            schema,
        )
        calls = await conn.fetch(
            "SELECT funcname, calls FROM pg_stat_user_functions WHERE schemaname = $1", schema
        )
    finally:
        await conn.close()
    found = {row["indexrelname"]: row["idx_tup_read"] for row in indexes}
    found |= {f"{row['funcname']}()": row["calls"] for row in calls}
    return found | {"seq scan": scanned}


async def claimed(backend: PostgresBackend, run_id: str) -> Lease:
    (lease,) = await hold(backend, [run_id])
    return lease


async def test_a_run_is_read_through_its_primary_key_whatever_else_runs(
    crowded: tuple[PostgresBackend, str], postgres_url: str
) -> None:
    backend, schema = crowded
    await backend._db.fetch("SET track_functions = 'pl'")  # a setting of this session
    leases = [await claimed(backend, f"r{i}") for i in range(15)]
    waiter, holder, queued, late = leases[11], leases[12], leases[13], leases[14]
    assert await backend.wait_event(WaitEvent(waiter, waiting(0, "go"))) is None
    await backend.release_run(ReleaseRun(waiter, None))
    one = FlowLimits("k", parallelism=1)
    assert (await backend.acquire_slot(AcquireSlot(holder, one, step(0)))).granted
    flow_wait = step(0, waiting_for="flowControl")
    assert not (await backend.acquire_slot(AcquireSlot(queued, one, flow_wait))).granted
    before = await counters(backend, schema, postgres_url)

    # ss_save_step: one step on the run's own channel; ss_save_steps: two steps.
    await backend.save_steps(SaveSteps(leases[0], (step(0),), emits=emits("r0", "a")))
    await backend.save_steps(SaveSteps(leases[0], (step(1), step(2)), emits=emits("r0", "b")))
    # ss_save_many: saves queued behind one in flight leave together.
    await asyncio.gather(
        *(
            backend.save_steps(SaveSteps(lease, (step(0),), emits=emits(lease.run_id, "c")))
            for lease in leases[1:10]
        )
    )
    # ss_acquire_slot against a full key (it drops the slots whose claim ended first).
    assert not (await backend.acquire_slot(AcquireSlot(late, one, flow_wait))).granted
    # ss_fence (a release), list_waiters, ss_resolve (a notify waking the waiting run),
    # ss_free_slot (a slot given back waking the queued run), ss_renew (a heartbeat).
    await backend.release_run(ReleaseRun(leases[10], due_at=0))
    assert [w.run_id for w in await backend.list_waiters("go")] == [waiter.run_id]
    assert await backend.notify(Notify("go", '"data"', None, at=0)) == 1
    assert await backend.release_slot(ReleaseSlot(holder.run_id, "k", 0)) == 1
    renewed = await backend.renew_leases([leases[0], Lease("busy1", "w2", 1)], 60_000)
    assert renewed == ["r0"]

    after = await counters(backend, schema, postgres_url)
    changed = {name: after[name] - before.get(name, 0) for name in after}
    for function in (
        "ss_save_step",
        "ss_save_steps",
        "ss_save_many",
        "ss_fence",
        "ss_resolve",
        "ss_acquire_slot",
    ):
        assert changed.get(f"{function}()", 0) >= 1, (function, changed)
    assert changed.get("ss_free_slot()", 0) >= 1 and changed.get("ss_heartbeat()") == 1, changed
    # Each operation reads its own runs through the primary key: nothing else of runs is read
    # (a plan on runs_leased or runs_by_state reads every leased or started run: STARTED each).
    others = {
        name: n
        for name, n in changed.items()
        if n and not name.endswith("()") and name != "runs_pkey"
    }
    assert others == {}, changed
    assert changed["runs_pkey"] >= 15, changed
    stored = await backend.get_run("r0")
    assert stored is not None and [s.position for s in stored.steps] == [0, 1, 2]
    for run_id in (waiter.run_id, queued.run_id):
        woken = await backend.get_run(run_id)
        assert woken is not None and woken.steps[0].resolved, run_id


async def test_a_crowd_of_runs_never_confuses_the_fence(
    crowded: tuple[PostgresBackend, str],
) -> None:
    """The lookup by id still refuses what the old one did: another owner, an older epoch."""
    backend, _ = crowded
    mine = await claimed(backend, "mine")
    for stale in (Lease("mine", "w2", 1), Lease("mine", OWNER, 0), Lease("busy1", "w2", 1)):
        with pytest.raises(LeaseLost):
            await backend.save_steps(SaveSteps(stale, (step(0),)))
    await backend.save_steps(SaveSteps(mine, (step(0),)))
    stored = await backend.get_run("mine")
    assert stored is not None and len(stored.steps) == 1
    await backend.create_run(CreateRun(new_run("fresh")))
    assert await backend.get_run("fresh") is not None
