"""stepstream side of bench/workflow.py (one backend per process; prints one JSON line).

    python bench/wf_stepstream.py --backend sqlite:////tmp/x.db --seq-runs 50 --runs 200

Workflows (in-process ``Workflows`` + ``Realtime`` on the backend, one in-process ``Worker``):
- ``seq20``: 20 sequential ``await context.run("s<i>", stamp)`` where ``stamp`` returns
  ``time.time_ns()``. The stamps are stored as the steps' results (and carried by their
  ``stepFinish`` events), so the gap between consecutive stamps is exactly one step's overhead
  (persist step + event, return to the workflow, start the next step).
- ``seq10``: the same with 10 steps, for throughput.
``--bodies async`` makes ``stamp`` an ``async def`` (DBOS's async mode has ``async def`` steps;
a plain ``def`` body costs one thread hop each way, see ``Engine.in_thread``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import itertools

from stepstream import Realtime, Workflows


def stamp() -> int:
    return time.time_ns()


async def astamp() -> int:
    return time.time_ns()


def build(url: str, bodies: str = "sync") -> Workflows:
    """``bodies``: ``sync`` steps are a plain ``def`` (run on a thread, as stepstream runs every
    synchronous body), ``async`` ones an ``async def`` (run on the loop)."""
    realtime = Realtime(backend=url)
    workflows = Workflows(realtime=realtime)
    body = stamp if bodies == "sync" else astamp

    @workflows.workflow("seq20")
    async def seq20(context):  # type: ignore[no-untyped-def]
        for i in range(20):
            await context.run(f"s{i}", body)

    @workflows.workflow("seq10")
    async def seq10(context):  # type: ignore[no-untyped-def]
        for i in range(10):
            await context.run(f"s{i}", body)

    return workflows


async def run_to_end(workflows: Workflows, name: str) -> tuple[str, float]:
    """Trigger ``name`` and wait for its ``runFinish`` on the run's channel (what a live
    client does); returns the run id and trigger→runFinish seconds."""
    client = workflows.client()
    assert workflows.realtime is not None
    t0 = time.perf_counter()
    run_id = await client.trigger(name)
    async with asyncio.timeout(60):
        async for message in workflows.realtime.channel(run_id).subscribe(history=True):
            if message.data["type"] == "runFinish":
                break
    return run_id, time.perf_counter() - t0


async def step_stamps(workflows: Workflows, run_id: str) -> list[int]:
    log = await workflows.client().logs(run_id)
    assert log["workflowState"] == "RUN_SUCCESS", log
    return [step["out"] for step in log["steps"]]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--seq-runs", type=int, default=50)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--bodies", choices=["sync", "async"], default="sync")
    args = parser.parse_args()

    workflows = build(args.backend, args.bodies)
    await workflows.open()
    worker = workflows.worker(concurrency=args.concurrency)
    await worker.start()
    client = workflows.client()
    try:
        for _ in range(5):  # warm-up: imports, prepared statements, Lua scripts
            await run_to_end(workflows, "seq20")

        # -- per-step overhead: sequential 20-step runs, one at a time --------------------------
        deltas: list[float] = []
        whole: list[float] = []
        for _ in range(args.seq_runs):
            run_id, seconds = await run_to_end(workflows, "seq20")
            stamps = await step_stamps(workflows, run_id)
            deltas += [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
            whole.append(seconds * 1000 / 20)

        # -- throughput: N concurrent 10-step runs --------------------------------------------
        rounds = []
        for _ in range(args.rounds):
            t0_ns = time.time_ns()
            t0 = time.perf_counter()
            ids = await asyncio.gather(*(client.trigger("seq10") for _ in range(args.runs)))
            triggered = time.perf_counter() - t0
            deadline = time.perf_counter() + args.timeout
            while (await client.runs(state="RUN_STARTED", workflow="seq10", count=1))["runs"]:
                if time.perf_counter() > deadline:
                    left = await client.runs(state="RUN_STARTED", workflow="seq10", count=1000)
                    raise SystemExit(
                        f"{len(left['runs'])} of {args.runs} runs still RUN_STARTED after "
                        f"{args.timeout}s"
                    )
                await asyncio.sleep(0.005)
            wall = time.perf_counter() - t0
            logs = await asyncio.gather(*(client.logs(i) for i in ids))
            assert all(log["workflowState"] == "RUN_SUCCESS" for log in logs)
            done_ms = max(log["workflowRunCompletedAt"] for log in logs)
            stored = (done_ms - t0_ns / 1e6) / 1000
            steps = sum(len(log["steps"]) for log in logs)
            rounds.append(
                {
                    "steps": steps,
                    "stored_s": stored,
                    "wall_s": wall,
                    "trigger_s": triggered,
                    "steps_per_s": steps / stored,
                    "steps_per_s_wall": steps / wall,
                }
            )
    finally:
        await worker.stop(grace=5)
        await workflows.engine.aclose()
        await workflows.aclose()
    print(json.dumps({"deltas_ms": deltas, "whole_ms_per_step": whole, "rounds": rounds}))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
