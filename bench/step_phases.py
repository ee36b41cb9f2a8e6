"""Where a sequential workflow step's time goes on PostgreSQL: before its save is sent, the
save's round trip, and after it (issue 10).

    python bench/step_phases.py                  # 60 runs of each kind of body
    python bench/step_phases.py --runs 100

One private durable PostgreSQL (``tests/postgres.py``, ``durable=True``) and the workflows of
``bench/wf_stepstream.py`` (20 steps returning ``time.time_ns()``, each run watched from the
worker's process as there): the gap between two consecutive stamps is one step, as
``bench/workflow.py`` measures it. Here the backend's ``Database._call`` is wrapped to stamp
each ``ss_save_step`` call's start and end with the same clock, so every gap splits into

- *before the save*: the body's outcome back to the workflow, the step's result and events
  built, the save handed to the driver (for a plain ``def`` body, its thread's hand-over to the
  event loop is here);
- *the save*: the call's round trip, the driver's encoding and decoding included;
- *after the save*: back to the workflow and into the next body (for a ``def`` body, the
  hand-over to a thread).

``async def`` and ``def`` runs take turns (each kind in its own schema, with its own
worker). Prints p50 µs of each part; BENCHMARKS.md quotes it by hand.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent), str(BENCH.parent / "src")]

import wf_stepstream  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402

from stepstream.backends.postgres import connection  # noqa: E402

SAVES: list[tuple[int, int]] = []  # (sent, answered) of each ss_save_step, time.time_ns()


def stamp_saves() -> None:
    plain = connection.Database._call

    async def call(self: connection.Database, sql: str, args: tuple[Any, ...]) -> Any:
        if not sql.startswith("SELECT ss_save_step("):
            return await plain(self, sql, args)
        sent = time.time_ns()
        rows = await plain(self, sql, args)
        SAVES.append((sent, time.time_ns()))
        return rows

    connection.Database._call = call  # type: ignore[method-assign]


async def measure(url: str, runs: int) -> dict[str, dict[str, list[float]]]:
    # One schema each: both workers would otherwise claim either kind's runs.
    kinds = {
        "async def": wf_stepstream.build(f"{url}?schema=bodies_async", "async"),
        "def": wf_stepstream.build(f"{url}?schema=bodies_sync", "sync"),
    }
    parts: dict[str, dict[str, list[float]]] = {
        kind: {"step": [], "before": [], "save": [], "after": []} for kind in kinds
    }
    workers = []
    for workflows in kinds.values():
        await workflows.open()
        worker = workflows.worker(concurrency=10)
        await worker.start()
        workers.append(worker)
    try:
        for turn in range(runs + 5):  # 5 warm-up runs of each
            for kind, workflows in kinds.items():
                SAVES.clear()
                run_id, _ = await wf_stepstream.run_to_end(workflows, "seq20")
                stamps = await wf_stepstream.step_stamps(workflows, run_id)
                if turn < 5:
                    continue
                for start, end in itertools.pairwise(stamps):
                    inside = [save for save in SAVES if start <= save[0] <= end]
                    if len(inside) != 1:
                        continue  # a step whose start was saved apart (none should be)
                    sent, answered = inside[0]
                    for name, value in (
                        ("step", end - start),
                        ("before", sent - start),
                        ("save", answered - sent),
                        ("after", end - answered),
                    ):
                        parts[kind][name].append(value / 1e3)
    finally:
        for worker in workers:
            await worker.stop(grace=5)
        for workflows in kinds.values():
            await workflows.engine.aclose()
            await workflows.aclose()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="20-step runs of each kind")
    args = parser.parse_args()
    import uvloop

    stamp_saves()
    with postgres_server(free_port(), durable=True) as server:
        parts = uvloop.run(measure(server.url, args.runs))
    print(f"python bench/step_phases.py --runs {args.runs}")
    print("| step bodies | steps | step p50 (µs) | before the save | the save | after the save |")
    print("|---|--:|--:|--:|--:|--:|")
    for kind, values in parts.items():
        p50 = {name: statistics.median(v) if v else float("nan") for name, v in values.items()}
        print(
            f"| `{kind}` | {len(values['step'])} | {p50['step']:.0f} | {p50['before']:.0f} "
            f"| {p50['save']:.0f} | {p50['after']:.0f} |"
        )


if __name__ == "__main__":
    main()
