"""Chaos scenario 2: stalls and clock skew (issue 8, DESIGN §10).

Stalls: steps that block for 3x the lease, the first time they run: a sync body sleeping
(``time.sleep`` in a plain function) and an async body sleeping without awaiting (it blocks the
worker's event loop, heartbeats included). Other runs execute on the same workers meanwhile, so a
frozen loop also freezes their steps mid-flight. Nothing may run a completed step again or
commit one step twice, and every run finishes; a sync body stalls only its thread, so there
nothing at all may run twice.

Skew: one of three workers reads a clock 60 s ahead, through ``Worker(clock=)``; on Redis and
PostgreSQL, where workers live on different machines, its whole process's wall clock too
(``time.time``). Lease decisions must not trust it: no double execution, every run finishes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stepstream import Client
from tests.chaos.cluster import Fleet, backend_url, observer, summary
from tests.chaos.conftest import FULL, scale
from tests.chaos.invariants import check_runs, read_ledger, wait_finished

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

LEASE = 1.5
STALL = 3 * LEASE
STALLED_RUNS = scale(2, 12)
BACKGROUND_RUNS = scale(20, 150)
SKEW = 60.0
SKEW_RUNS = scale(30, 250)
SKEW_LEASE = 5.0


async def trigger_spread(
    client: Client,
    run_ids: list[str],
    workflow: str,
    bodies: list[dict[str, object]],
    seconds: float,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, body in enumerate(bodies):
        run_ids.append(await client.trigger(workflow, body))
        await asyncio.sleep(max(0.0, start + (n + 1) * seconds / len(bodies) - loop.time()))


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
async def test_steps_stalling_past_the_lease(
    backend: str, kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(backend, tmp_path, request)
    began = time.monotonic()
    run_ids: list[str] = []
    stalled: list[str] = []
    with Fleet(tmp_path, url) as fleet:
        for n in range(2):
            fleet.worker(f"worker-{n}", lease=LEASE, concurrency=10)
        for proc in fleet.procs:
            await fleet.started(proc)
        async with observer(url) as (client, realtime):
            # The stalls start together (quick) or overlap at random (full), among runs in
            # flight on the same workers from before the first stall until after the last.
            seconds = STALL * 2 if FULL else 0.2
            background = asyncio.create_task(
                trigger_spread(
                    client, run_ids, "ten-steps", [{"ms": 100}] * BACKGROUND_RUNS, seconds + STALL
                )
            )
            await asyncio.sleep(0.5)
            try:
                bodies: list[dict[str, object]] = [{"kind": kind, "seconds": STALL}] * STALLED_RUNS
                await trigger_spread(client, stalled, "stall", bodies, seconds)
                await background
            finally:
                background.cancel()
            unfinished = await wait_finished(client, run_ids + stalled, within=STALL * 4 + 30)
            fleet.close()
            findings = await check_runs(client, realtime, run_ids + stalled, fleet.ledger)
        tracebacks = fleet.tracebacks()

    executions = read_ledger(fleet.ledger)
    again = sum(len(executions.get((run_id, "block"), [])) - 1 for run_id in stalled)
    summary(
        f"stalls[{backend}-{kind}]",
        {
            **findings.figures(),
            "stalled runs": STALLED_RUNS,
            "stall": f"{STALL:g} s (3x the {LEASE:g} s lease)",
            "stalled step executed again": again,
            "unfinished at the deadline": len(unfinished),
            "wall time": f"{time.monotonic() - began:.0f} s",
            "worker tracebacks": tracebacks or 0,
        },
    )
    # A sync body blocks only its own thread: heartbeats go on, nobody may take the run over.
    # An async body that blocks the loop is indistinguishable from a dead worker: its step and
    # the steps in flight beside it may run again, but never a completed one, never committed
    # twice.
    findings.assert_ok(
        f"{kind} steps stalling 3x the lease on {backend}", reruns_allowed=kind == "async"
    )


@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
async def test_worker_clock_60s_ahead(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(backend, tmp_path, request)
    began = time.monotonic()
    run_ids: list[str] = []
    with Fleet(tmp_path, url) as fleet:
        for n in range(2):
            fleet.worker(f"worker-{n}", lease=SKEW_LEASE, concurrency=10)
        skewed = fleet.worker(
            "worker-skewed",
            lease=SKEW_LEASE,
            concurrency=10,
            skew=SKEW,
            wall_skew=backend != "sqlite",
        )
        for proc in fleet.procs:
            await fleet.started(proc)
        async with observer(url) as (client, realtime):
            bodies: list[dict[str, object]] = [{"ms": 100}] * SKEW_RUNS
            await trigger_spread(client, run_ids, "ten-steps", bodies, SKEW_RUNS / 10)
            unfinished = await wait_finished(client, run_ids, within=SKEW_LEASE * 4 + 60)
            fleet.close()
            findings = await check_runs(client, realtime, run_ids, fleet.ledger)
        tracebacks = fleet.tracebacks()

    executions = read_ledger(fleet.ledger)
    by_skewed = sum(1 for runs in executions.values() for e in runs if e.pid == skewed.pid)
    summary(
        f"clock-skew[{backend}]",
        {
            **findings.figures(),
            "skew": f"+{SKEW:g} s"
            + (" (Worker clock and wall clock)" if backend != "sqlite" else ""),
            "lease": f"{SKEW_LEASE:g} s",
            "step executions on the skewed worker": by_skewed,
            "unfinished at the deadline": len(unfinished),
            "wall time": f"{time.monotonic() - began:.0f} s",
            "worker tracebacks": tracebacks or 0,
        },
    )
    # Every worker is alive and well: a run taken from one (its step executed twice) is the
    # skewed clock's doing.
    findings.assert_ok(f"a worker's clock {SKEW:g} s ahead on {backend}", reruns_allowed=False)
