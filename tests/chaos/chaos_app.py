"""The workflows the chaos suite's worker processes execute, and a worker script.

Every step body writes one ledger line when it starts and one when it returns, with ``os.write``
on an ``O_APPEND`` file of its process (no user-space buffer: a line written survives SIGKILL):

    start|end  <execution id>  <run id>  <step>  <pid>  <wall-clock ns>

and returns ``{"exec": <execution id>, "pid": <pid>}``, so the run's log and its ``stepFinish``
event name the very execution whose result was committed. ``tests/chaos/invariants.py`` reads it
all back. The ledger's time is read with ``clock_gettime(CLOCK_REALTIME)``, which a skewed
worker (``--wall-skew``) does not shift.

As a worker (the scenarios that need what ``stepstream worker`` cannot do: a skewed clock)::

    python -m tests.chaos.chaos_app --lease 2 --concurrency 20 --skew 60 [--wall-skew]

The backend comes from ``$STEPSTREAM_BACKEND``, the ledger directory from
``$STEPSTREAM_CHAOS_LEDGER``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from stepstream import FlowControl, Realtime, Worker, WorkflowContext, Workflows
from stepstream.clock import system_ms

LEDGER_ENV = "STEPSTREAM_CHAOS_LEDGER"
STEPS = [f"step-{i}" for i in range(10)]
STALL_STEPS = ["before", "block", "after-1", "after-2", "after-3"]
FLOW_STEPS = ["a", "b", "c"]
FLOW_PARALLELISM = 3  # per key of the "keyed" workflow

_ledger_fd: int | None = None


def wall_ns() -> int:
    """The machine's real time, whatever ``time.time`` has been made to say."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME)


def record(kind: str, execution: str, run_id: str, step: str) -> None:
    global _ledger_fd
    if _ledger_fd is None:
        path = Path(os.environ[LEDGER_ENV]) / f"{os.getpid()}.log"
        _ledger_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = f"{kind} {execution} {run_id} {step} {os.getpid()} {wall_ns()}\n"
    os.write(_ledger_fd, line.encode())


def first_time(run_id: str, step: str) -> bool:
    """True for the first execution of ``step`` in ``run_id`` across all processes."""
    marker = Path(os.environ[LEDGER_ENV]) / f"once-{run_id}-{step}"
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


async def work(run_id: str, step: str, ms: int) -> dict[str, Any]:
    execution = secrets.token_hex(6)
    record("start", execution, run_id, step)
    await asyncio.sleep(ms / 1000)
    record("end", execution, run_id, step)
    return {"exec": execution, "pid": os.getpid()}


def sync_block(run_id: str, step: str, seconds: float) -> dict[str, Any]:
    """A sync body that blocks its thread for ``seconds`` the first time it runs."""
    execution = secrets.token_hex(6)
    record("start", execution, run_id, step)
    if first_time(run_id, step):
        time.sleep(seconds)
    record("end", execution, run_id, step)
    return {"exec": execution, "pid": os.getpid()}


async def async_block(run_id: str, step: str, seconds: float) -> dict[str, Any]:
    """An async body that blocks the event loop for ``seconds`` the first time it runs (a
    user's mistake the engine must survive: heartbeats of this process stop meanwhile)."""
    execution = secrets.token_hex(6)
    record("start", execution, run_id, step)
    if first_time(run_id, step):
        time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is the point
    record("end", execution, run_id, step)
    return {"exec": execution, "pid": os.getpid()}


def build(backend: str | None = None) -> Workflows:
    """The chaos workflows on ``backend`` (``None``: ``$STEPSTREAM_BACKEND``)."""
    workflows = Workflows(realtime=Realtime(backend=backend))

    @workflows.workflow("ten-steps", retry_delay=0.1)
    async def ten_steps(context: WorkflowContext) -> list[str]:
        ms = int(context.request_payload.get("ms", 50))
        run_id = context.workflow_run_id
        done = []
        for name in STEPS:
            done.append((await context.run(name, work, run_id, name, ms))["exec"])
        return done

    @workflows.workflow("stall", retry_delay=0.1)
    async def stall(context: WorkflowContext) -> list[str]:
        """One step blocks ``seconds`` (its thread for ``kind`` sync, the loop for async)."""
        kind, seconds = context.request_payload["kind"], context.request_payload["seconds"]
        run_id = context.workflow_run_id
        block = sync_block if kind == "sync" else async_block
        done = [(await context.run("before", work, run_id, "before", 20))["exec"]]
        done.append((await context.run("block", block, run_id, "block", seconds))["exec"])
        for name in STALL_STEPS[2:]:
            done.append((await context.run(name, work, run_id, name, 20))["exec"])
        return done

    keyed_flow = FlowControl(key=lambda payload: payload["key"], parallelism=FLOW_PARALLELISM)

    @workflows.workflow("keyed", retry_delay=0.1, flow_control=keyed_flow)
    async def keyed(context: WorkflowContext) -> list[str]:
        """Three steps under the payload's flow control key."""
        ms, run_id = int(context.request_payload.get("ms", 50)), context.workflow_run_id
        return [(await context.run(n, work, run_id, n, ms))["exec"] for n in FLOW_STEPS]

    return workflows


workflows = build()


def skew_wall_clock(seconds: float) -> None:
    """Make this whole process's wall clock run ``seconds`` ahead (a worker on a machine whose
    clock is off), as every ``time.time()`` / ``time.time_ns()`` caller sees it."""
    real_time, real_time_ns = time.time, time.time_ns
    offset_ns = int(seconds * 1e9)
    time.time = lambda: real_time() + seconds
    time.time_ns = lambda: real_time_ns() + offset_ns


async def serve(worker: Worker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.start()
    print(f"chaos worker {worker.owner} started", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await worker.stop(grace=1)
        await worker.engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--skew", type=float, default=0.0, help="seconds the clock runs ahead")
    parser.add_argument("--wall-skew", action="store_true", help="skew time.time() too")
    args = parser.parse_args()
    if args.wall_skew:
        skew_wall_clock(args.skew)
    skew_ms = int(args.skew * 1000)

    def clock() -> int:
        # system_ms reads time.time_ns: with --wall-skew it is already ahead.
        return system_ms() + (0 if args.wall_skew else skew_ms)

    worker = Worker(workflows, concurrency=args.concurrency, lease=args.lease, clock=clock)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(worker))


if __name__ == "__main__":
    main()
