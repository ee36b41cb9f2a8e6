"""Chaos scenario 1: workers SIGKILLed under load (issue 8, DESIGN §10).

Runs of a 10-step workflow are triggered at a steady pace while three ``stepstream worker``
processes execute them; every few seconds a random worker is SIGKILLed and a replacement
started. At the end no run is lost, no completed step ran again, no step committed twice, and
every run's history equals its log. Printed: in-flight steps re-run, and how long the runs a
dead worker held took to resume (about the lease: nobody can know sooner that a silent worker
is dead).

Lease: 5 s at full scale, 2 s quick. Heartbeats go every lease/3; 5 s leaves a loaded 2-core
machine more than a second of slack per heartbeat before a live worker's runs could be taken
over, and still resumes a dead worker's runs within seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from stepstream import Client
from tests.chaos.cluster import Fleet, Proc, backend_url, observer, summary
from tests.chaos.conftest import FULL, scale
from tests.chaos.invariants import (
    check_runs,
    percentiles,
    read_ledger,
    resume_delays,
    wait_finished,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

RUNS = scale(60, 1000)
KILLS = scale(4, 22)
KILL_EVERY = 2.5 if FULL else 1.2  # seconds on average, ±40%
LEASE = 5.0 if FULL else 2.0
WORKERS = 3
CONCURRENCY = 20
STEP_MS = 50


async def trigger_steadily(client: Client, run_ids: list[str], count: int, seconds: float) -> None:
    """Trigger ``count`` runs spread evenly over ``seconds``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(count):
        run_ids.append(await client.trigger("ten-steps", {"ms": STEP_MS}))
        await asyncio.sleep(max(0.0, start + (n + 1) * seconds / count - loop.time()))


async def kill_workers(fleet: Fleet, rng: random.Random) -> list[Proc]:
    """SIGKILL a random running worker every ``KILL_EVERY`` seconds, ``KILLS`` times, starting
    a replacement each time."""
    killed = []
    for n in range(KILLS):
        await asyncio.sleep(KILL_EVERY * rng.uniform(0.6, 1.4))
        victim = rng.choice(fleet.alive("worker"))
        await fleet.started(victim)  # a replacement may still be starting: kill it at work
        victim.kill()
        killed.append(victim)
        fleet.worker(f"worker-{WORKERS + n}", lease=LEASE, concurrency=CONCURRENCY)
    return killed


@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
async def test_workers_killed_under_load(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(backend, tmp_path, request)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    run_ids: list[str] = []
    began = time.monotonic()
    with Fleet(tmp_path, url) as fleet:
        for n in range(WORKERS):
            fleet.worker(f"worker-{n}", lease=LEASE, concurrency=CONCURRENCY)
        for proc in fleet.procs:
            await fleet.started(proc)
        async with observer(url) as (client, realtime):
            triggering = asyncio.create_task(
                trigger_steadily(client, run_ids, RUNS, KILLS * KILL_EVERY)
            )
            try:
                killed = await kill_workers(fleet, rng)
                await triggering
            finally:
                triggering.cancel()
            drain_started = time.monotonic()
            unfinished = await wait_finished(client, run_ids, within=LEASE * 4 + 60)
            drained = time.monotonic() - drain_started
            fleet.close()  # nothing may move while we look
            findings = await check_runs(client, realtime, run_ids, fleet.ledger)
        tracebacks = fleet.tracebacks()

    executions = read_ledger(fleet.ledger)
    delays = [
        delay
        for proc in killed
        if proc.killed_ns is not None
        for delay in resume_delays(executions, proc.pid, proc.killed_ns)
    ]
    summary(
        f"workers-killed[{backend}]",
        {
            **findings.figures(),
            "kills": len(killed),
            "lease": f"{LEASE:g} s",
            "dead worker's runs resumed": percentiles(delays),
            "drain after the last kill": f"{drained:.1f} s",
            "unfinished at the deadline": len(unfinished),
            "wall time": f"{time.monotonic() - began:.0f} s",
            "worker tracebacks": tracebacks or 0,
            "seed": seed,
        },
    )
    assert len(killed) >= KILLS
    findings.assert_ok(f"workers killed under load on {backend} (seed {seed})")
