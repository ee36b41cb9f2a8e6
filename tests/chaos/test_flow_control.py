"""Chaos scenario: workers SIGKILLed while their steps hold flow control slots (issue 11).

Runs of a three-step workflow under two flow control keys (``parallelism=3`` each) are
triggered while three ``stepstream worker`` processes execute them; every second or two a
random worker is SIGKILLed (its slots stay taken until its leases end) and a replacement
started. At the end every run finished, nothing is stuck waiting for a slot nobody gives back,
the usual invariants hold (no completed step ran again, no step committed twice, histories
match logs), and the ledger shows, per key, never more than 3 step bodies at once — counting
a killed worker's bodies as running until the moment it died.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.chaos.chaos_app import FLOW_PARALLELISM
from tests.chaos.cluster import Fleet, Proc, backend_url, observer, summary
from tests.chaos.conftest import FULL, scale
from tests.chaos.invariants import Execution, check_runs, read_ledger, wait_finished

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

RUNS = scale(72, 360)  # enough work to outlast the kills: 3 steps of 150 ms, 6 slots
KILLS = scale(3, 12)
KILL_EVERY = 2.0 if FULL else 1.5
LEASE = 5.0 if FULL else 2.0
WORKERS = 3
KEYS = ("tenant-a", "tenant-b")


def most_at_once(executions: list[Execution], killed: dict[int, int], closed_ns: int) -> int:
    """The most bodies in flight at once; one that never ended ran until its process died."""
    edges = []
    for execution in executions:
        end = execution.end_ns or killed.get(execution.pid, closed_ns)
        edges += [(execution.start_ns, 1), (end, -1)]
    edges.sort(key=lambda edge: (edge[0], edge[1]))
    most = current = 0
    for _, change in edges:
        current += change
        most = max(most, current)
    return most


async def kill_workers(fleet: Fleet, rng: random.Random) -> list[Proc]:
    killed = []
    for n in range(KILLS):
        await asyncio.sleep(KILL_EVERY * rng.uniform(0.6, 1.4))
        victim = rng.choice(fleet.alive("worker"))
        victim.kill()
        killed.append(victim)
        fleet.worker(f"worker-{WORKERS + n}", lease=LEASE, concurrency=20)
    return killed


# Quick: one backend (tests/workflow/test_flow_processes.py kills a slot holder on each).
@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"] if FULL else ["postgres"])
async def test_killed_workers_return_their_slots(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(backend, tmp_path, request)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    keys: dict[str, str] = {}
    began = time.monotonic()
    with Fleet(tmp_path, url) as fleet:
        for n in range(WORKERS):
            fleet.worker(f"worker-{n}", lease=LEASE, concurrency=20)
        for proc in fleet.procs:
            await fleet.started(proc)
        async with observer(url) as (client, realtime):
            for n in range(RUNS):
                key = KEYS[n % len(KEYS)]
                keys[await client.trigger("keyed", {"key": key, "ms": 150})] = key
            killed = await kill_workers(fleet, rng)
            unfinished = await wait_finished(client, keys, within=LEASE * 4 + 90)
            fleet.close()
            findings = await check_runs(client, realtime, keys, fleet.ledger)
        closed_ns = fleet.closed_ns
    executions = read_ledger(fleet.ledger)
    died = {proc.pid: proc.killed_ns for proc in killed if proc.killed_ns is not None}
    peaks = {
        key: most_at_once(
            [
                e
                for (run_id, _), runs in executions.items()
                if keys.get(run_id) == key
                for e in runs
            ],
            died,
            closed_ns,
        )
        for key in KEYS
    }
    holding = {e.pid for runs in executions.values() for e in runs if e.end_ns is None}
    summary(
        f"flow-control[{backend}]",
        {
            **findings.figures(),
            "kills": len(killed),
            "killed while holding a slot": len(holding & set(died)),
            "most bodies at once per key": peaks,
            "unfinished at the deadline": len(unfinished),
            "wall time": f"{time.monotonic() - began:.0f} s",
            "seed": seed,
        },
    )
    assert not unfinished, f"stuck (seed {seed}): {sorted(unfinished)[:5]}"
    assert all(peak <= FLOW_PARALLELISM for peak in peaks.values()), (peaks, seed)
    assert max(peaks.values()) == FLOW_PARALLELISM  # the budget was used, not serialised
    findings.assert_ok(f"flow control with workers killed on {backend} (seed {seed})")
