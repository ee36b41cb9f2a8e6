"""What flow control costs (DESIGN §12), side by side in one run, per backend:

- throughput of 200 runs x 10 steps without flow control and with a key whose limit never
  binds (``parallelism=10000``: every step takes and gives back a slot, nobody waits), so
  the difference is the mechanism's own price;
- wake-up latency when a slot frees: ``parallelism=1`` on one key, 100 one-step runs queued;
  each handoff is from one step body's end (``perf_counter`` in the body) to the next body's
  start (give the slot back, wake the longest waiter, claim, replay, take the slot).

    python bench/flow.py                      # sqlite, and redis if redis-server is on PATH
    python bench/flow.py --backends postgres  # a private durable PostgreSQL (tests/postgres.py)
    python bench/flow.py --backends sqlite --write   # rewrite the BENCHMARKS.md section

One in-process worker (``concurrency=200``) per measurement, on a fresh store (PostgreSQL: a
new schema of one server started for the whole run, ``fsync=on``, ``synchronous_commit=on``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.wf_common import (
    Postgres,
    machine,
    median,
    ms,
    pct,
    postgres_server,
    redis_server,
    rewrite_section,
)

from stepstream import FlowControl, Realtime, Workflows

RUNS, STEPS, HANDOFFS = 200, 10, 100
SECTION = "flow-control"
SCHEMAS = itertools.count()  # PostgreSQL: a new schema per measurement


def noop() -> int:
    return 1


def build(url: str, flow: FlowControl | None, steps: int, marks: list[tuple[float, float]]):  # type: ignore[no-untyped-def]
    workflows = Workflows(realtime=Realtime(backend=url))

    async def body() -> int:
        begin = time.perf_counter()
        await asyncio.sleep(0.002)
        marks.append((begin, time.perf_counter()))
        return 1

    @workflows.workflow("steps", flow_control=flow)
    async def run_steps(context):  # type: ignore[no-untyped-def]
        for i in range(steps):
            await context.run(f"s{i}", noop)

    @workflows.workflow("handoff", flow_control=flow)
    async def handoff(context):  # type: ignore[no-untyped-def]
        await context.run("only", body)

    return workflows


async def finish_all(workflows: Workflows, run_ids: list[str]) -> None:
    client = workflows.client()
    for run_id in run_ids:
        while (await client.logs(run_id))["workflowState"] == "RUN_STARTED":  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # what a client that polls the API sees


async def throughput(url: str, flow: FlowControl | None) -> float:
    workflows = build(url, flow, STEPS, [])
    client = workflows.client()
    run_ids = [await client.trigger("steps") for _ in range(RUNS)]
    began = time.perf_counter()
    async with workflows.worker(concurrency=200, poll_interval=0.05):
        await finish_all(workflows, run_ids)
    seconds = time.perf_counter() - began
    await workflows.aclose()
    return RUNS * STEPS / seconds


async def handoffs(url: str) -> list[float]:
    marks: list[tuple[float, float]] = []
    workflows = build(url, FlowControl(key="one", parallelism=1), 1, marks)
    client = workflows.client()
    run_ids = [await client.trigger("handoff") for _ in range(HANDOFFS + 1)]
    async with workflows.worker(concurrency=200, poll_interval=0.05):
        await finish_all(workflows, run_ids)
    await workflows.aclose()
    marks.sort()
    return [(nxt[0] - prev[1]) * 1000 for prev, nxt in itertools.pairwise(marks)]


@contextlib.contextmanager
def store(kind: str, pg: Postgres | None) -> Iterator[str]:
    if pg is not None:
        yield pg.url(query=f"schema=flow_bench_{next(SCHEMAS)}")
        return
    if kind == "redis":
        with redis_server() as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


@contextlib.contextmanager
def server(kind: str) -> Iterator[Postgres | None]:
    """The PostgreSQL every measurement of ``kind`` shares (``None`` for the others)."""
    if kind != "postgres":
        yield None
        return
    with postgres_server() as pg:
        yield pg


async def measure(kind: str, rounds: int, pg: Postgres | None) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"plain": [], "keyed": [], "handoff": []}
    for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
        for name, flow in (("plain", None), ("keyed", FlowControl(key="k", parallelism=10000))):
            with store(kind, pg) as url:
                figures[name].append(await throughput(url, flow))
        with store(kind, pg) as url:
            figures["handoff"] += await handoffs(url)
    return figures


def report(results: dict[str, dict[str, list[float]]], command: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Flow control",
        "",
        f"Generated by `{command}` on {now}; {machine()}.",
        "",
        f"Throughput: {RUNS} runs x {STEPS} trivial steps, one in-process worker, median of the "
        "rounds (rounds interleaved). *keyed*: every run under one key with `parallelism=10000` "
        "(never binding: each step takes and gives back a slot). Wake-up: `parallelism=1`, "
        f"{HANDOFFS + 1} one-step runs queued; from one step body's end to the next one's start."
        + (
            " PostgreSQL: a private server with `fsync=on`, `synchronous_commit=on`."
            if "postgres" in results
            else ""
        ),
        "",
        "| backend | steps/s plain | steps/s keyed | keyed / plain | wake-up p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for kind, figures in results.items():
        plain, keyed = median(figures["plain"]), median(figures["keyed"])
        waits = figures["handoff"]
        lines.append(
            f"| {kind} | {plain:.0f} | {keyed:.0f} | {keyed / plain:.2f}× | "  # noqa: RUF001
            f"{ms(pct(waits, 50))} | {ms(pct(waits, 99))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends", nargs="+", default=None, choices=["sqlite", "redis", "postgres"]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="rewrite BENCHMARKS.md's section")
    args = parser.parse_args()
    kinds = args.backends or ["sqlite"] + (["redis"] if shutil.which("redis-server") else [])
    results = {}
    for kind in kinds:
        with server(kind) as pg:
            results[kind] = asyncio.run(measure(kind, args.rounds, pg))
    text = report(results, "python " + " ".join(["bench/flow.py", *sys.argv[1:]]))
    print(text)
    if args.write:
        rewrite_section(SECTION, text)


if __name__ == "__main__":
    main()
