"""What a sequential step costs on PostgreSQL without the engine: the floor under each way a
step body could run, for the question of a synchronous execution path (issue 10).

    python bench/step_floor.py                 # needs psycopg in this Python:
                                               # pip install 'psycopg[binary]'
    python bench/step_floor.py --blocks 60

One private durable PostgreSQL (``tests/postgres.py``, ``durable=True``), the stepstream schema
(the backend's own migrations), and 20-step "runs" whose every step is the body
``time.time_ns()`` followed by the save a workflow makes, ``ss_save_step`` with its two events
(no engine, no journal, no subscriber: only the body's hand-over and the save). Three ways,
taken in turn block by block:

- ``async def on the loop``: the body awaited on the event loop (uvloop), the save over asyncpg
  (what an ``async def`` step costs the engine at least);
- ``def via a thread``: the body handed to a thread and its result back to the loop
  (``call_soon_threadsafe``, as ``Engine.in_thread`` does), the save over asyncpg (what a
  ``def`` step costs today at least: two thread wake-ups more);
- ``def inline, sync driver``: the whole run on one thread, each body called inline and its
  save sent over a synchronous psycopg connection (prepared), what a synchronous execution
  path (``def`` workflows whose ``def`` steps run on the workflow's thread) would cost at least.

Prints the per-step p50/p90 of each (the gap between consecutive stamps, as
``bench/workflow.py`` measures a step). BENCHMARKS.md quotes it by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH.parent / "src")]

import asyncpg  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402

from stepstream.backends import backend_from_url  # noqa: E402

EVENT = '{"type":"stepFinish","stepName":"s1","stepId":3,"out":1764866000000000000,"ms":12}'
SAVE = "SELECT ss_save_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
STEPS = 20


def save_args(run_id: str, position: int, out: int) -> tuple[Any, ...]:
    return (run_id, "me", 1, position, "STEP_SUCCESS", True, str(out), 0, "{}",
            ["stepStart", "stepFinish"], [EVENT, EVENT], None, None)  # fmt: skip


async def measure(url: str, blocks: int) -> dict[str, list[float]]:
    import psycopg  # only here: not a stepstream dependency

    conn = await asyncpg.connect(url, server_settings={"search_path": "stepstream"})
    sync = psycopg.connect(url, autocommit=True, prepare_threshold=0)
    sync.execute("SET search_path = stepstream")
    threads = ThreadPoolExecutor(2)
    loop = asyncio.get_running_loop()
    sync_save = "SELECT ss_save_step(" + ", ".join(["%s"] * 13) + ")"

    async def new_run() -> str:
        run_id = f"floor_{uuid.uuid4().hex}"
        await conn.execute(
            "INSERT INTO runs (id, workflow, state, created_at, payload, headers, phase, "
            "failure_attempts, lease_owner, lease_until, epoch) VALUES ($1, 'floor', "
            "'RUN_STARTED', 0, 'null', '{}', 'run', 0, 'me', 9999999999999, 1)",
            run_id,
        )
        await conn.execute(
            "INSERT INTO channels (name, last_ms, last_seq) VALUES ($1, 0, 0)", run_id
        )
        return run_id

    async def on_loop(run_id: str) -> list[int]:
        async def body() -> int:
            return time.time_ns()

        stamps = []
        for position in range(STEPS):
            out = await body()
            stamps.append(out)
            await conn.fetch(SAVE, *save_args(run_id, position, out))
        return stamps

    async def via_thread(run_id: str) -> list[int]:
        stamps = []
        for position in range(STEPS):
            done: asyncio.Future[int] = loop.create_future()

            def body(done: asyncio.Future[int] = done) -> None:
                loop.call_soon_threadsafe(done.set_result, time.time_ns())

            threads.submit(body)
            out = await done
            stamps.append(out)
            await conn.fetch(SAVE, *save_args(run_id, position, out))
        return stamps

    def inline_run(run_id: str) -> list[int]:
        stamps = []
        with sync.cursor() as cursor:
            for position in range(STEPS):
                out = time.time_ns()
                stamps.append(out)
                cursor.execute(sync_save, save_args(run_id, position, out))
        return stamps

    async def inline(run_id: str) -> list[int]:
        return await loop.run_in_executor(threads, inline_run, run_id)

    ways: dict[str, Callable[[str], Awaitable[list[int]]]] = {
        "async def on the loop": on_loop,
        "def via a thread": via_thread,
        "def inline, sync driver": inline,
    }
    gaps: dict[str, list[float]] = {name: [] for name in ways}
    for block in range(blocks + 2):  # two blocks of warm-up
        for name, way in ways.items():
            stamps = await way(await new_run())
            if block >= 2:
                gaps[name] += [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
    await conn.close()
    sync.close()
    threads.shutdown()
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=40, help="runs of each way")
    args = parser.parse_args()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise SystemExit("needs psycopg in this Python: pip install 'psycopg[binary]'") from None
    import uvloop

    with postgres_server(free_port(), durable=True) as server:

        async def run() -> dict[str, list[float]]:
            backend = backend_from_url(server.url)  # creates the schema
            await backend.open()
            await backend.close()
            return await measure(server.url, args.blocks)

        gaps = uvloop.run(run())
    print(f"python bench/step_floor.py --blocks {args.blocks}")
    print("| a step's body run … | per-step p50 (ms) | p90 (ms) |")
    print("|---|--:|--:|")
    for name, values in gaps.items():
        values.sort()
        p90 = values[int(len(values) * 0.9)]
        print(f"| {name} | {statistics.median(values):.3f} | {p90:.3f} |")


if __name__ == "__main__":
    main()
