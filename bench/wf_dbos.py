"""DBOS Transact side of bench/workflow.py. Runs in its own venv (never stepstream's):

    python3 -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install 'dbos==3.4.*'
    /tmp/dbos-venv/bin/python bench/wf_dbos.py --mode async --seq-runs 50 --runs 200
    /tmp/dbos-venv/bin/python bench/wf_dbos.py --system-db-url postgresql://u@host:5432/db

The system database is SQLite (``system_database_url=sqlite:///<tmpdir>/dbos.sqlite``), or
the PostgreSQL database ``--system-db-url postgresql://...`` names (DBOS creates its tables
there); DBOS's defaults otherwise. Equivalent workflows to the stepstream side: every step is a
``@DBOS.step()`` returning ``time.time_ns()``, so consecutive results give the per-step
overhead.

- ``--mode async``: ``async def`` workflow/steps; runs started with
  ``await DBOS.start_workflow_async(...)`` (200 at once with ``asyncio.gather``), results with
  ``await handle.get_result()`` — DBOS's asyncio idiom (everything on one event loop).
- ``--mode queue``: plain ``def`` workflow/steps enqueued on a ``DBOS.register_queue`` queue
  (no concurrency limit, ``polling_interval_sec=0.05``) and executed by DBOS's thread pool —
  DBOS's idiom for background work; results with ``handle.get_result()``.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import shutil
import tempfile
import time

from dbos import DBOS


def configure(system_database_url: str) -> None:
    DBOS(
        config={
            "name": "wfbench",
            "system_database_url": system_database_url,
            "log_level": "WARNING",
        }
    )


@DBOS.step()
async def astamp(i: int) -> int:
    return time.time_ns()


@DBOS.workflow()
async def aseq(n: int) -> list[int]:
    return [await astamp(i) for i in range(n)]


@DBOS.step()
def stamp(i: int) -> int:
    return time.time_ns()


@DBOS.workflow()
def seq(n: int) -> list[int]:
    return [stamp(i) for i in range(n)]


async def stored_end_ms(ids: list[str]) -> int:
    statuses = await DBOS.list_workflows_async(workflow_ids=ids)
    assert len(statuses) == len(ids) and all(s.status == "SUCCESS" for s in statuses)
    return max(int(s.updated_at or 0) for s in statuses)


async def run_async(args: argparse.Namespace) -> dict:
    async def one(n: int) -> tuple[list[int], float]:
        t0 = time.perf_counter()
        handle = await DBOS.start_workflow_async(aseq, n)
        return await handle.get_result(), time.perf_counter() - t0

    for _ in range(5):
        await one(20)
    deltas, whole = [], []
    for _ in range(args.seq_runs):
        stamps, seconds = await one(20)
        deltas += [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
        whole.append(seconds * 1000 / 20)
    rounds = []
    for _ in range(args.rounds):
        t0_ns, t0 = time.time_ns(), time.perf_counter()
        handles = await asyncio.gather(
            *(DBOS.start_workflow_async(aseq, 10) for _ in range(args.runs))
        )
        triggered = time.perf_counter() - t0
        results = await asyncio.gather(*(h.get_result() for h in handles))
        wall = time.perf_counter() - t0
        rounds.append(
            finish_round(
                results,
                wall,
                triggered,
                t0_ns,
                await stored_end_ms([h.workflow_id for h in handles]),
            )
        )
    return {"deltas_ms": deltas, "whole_ms_per_step": whole, "rounds": rounds}


def finish_round(results: list, wall: float, triggered: float, t0_ns: int, end_ms: int) -> dict:
    steps = sum(len(r) for r in results)
    stored = (end_ms - t0_ns / 1e6) / 1000
    return {
        "steps": steps,
        "stored_s": stored,
        "wall_s": wall,
        "trigger_s": triggered,
        "steps_per_s": steps / stored,
        "steps_per_s_wall": steps / wall,
    }


def run_queue(args: argparse.Namespace) -> dict:
    queue = DBOS.register_queue("wfbench", polling_interval_sec=0.05)

    def one(n: int) -> tuple[list[int], float]:
        t0 = time.perf_counter()
        result = queue.enqueue(seq, n).get_result()
        return result, time.perf_counter() - t0

    for _ in range(5):
        one(20)
    deltas, whole = [], []
    for _ in range(args.seq_runs):
        stamps, seconds = one(20)
        deltas += [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
        whole.append(seconds * 1000 / 20)
    rounds = []
    for _ in range(args.rounds):
        t0_ns, t0 = time.time_ns(), time.perf_counter()
        handles = [queue.enqueue(seq, 10) for _ in range(args.runs)]
        triggered = time.perf_counter() - t0
        results = [h.get_result() for h in handles]
        wall = time.perf_counter() - t0
        end_ms = asyncio.run(stored_end_ms([h.workflow_id for h in handles]))
        rounds.append(finish_round(results, wall, triggered, t0_ns, end_ms))
    return {"deltas_ms": deltas, "whole_ms_per_step": whole, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["async", "queue"], default="async")
    parser.add_argument("--seq-runs", type=int, default=50)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--system-db-url", help="DBOS's system database (default: SQLite in a temp dir)"
    )
    args = parser.parse_args()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="wfbench-dbos-")
    configure(args.system_db_url or f"sqlite:///{tmp}/dbos.sqlite")
    DBOS.launch()
    try:
        out = asyncio.run(run_async(args)) if args.mode == "async" else run_queue(args)
    finally:
        DBOS.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    import dbos

    out["version"] = getattr(dbos, "__version__", None) or _dist_version()
    print(json.dumps(out))


def _dist_version() -> str:
    from importlib.metadata import version

    return version("dbos")


if __name__ == "__main__":
    os.environ.setdefault("DBOS__DISABLE_TELEMETRY", "1")
    main()
