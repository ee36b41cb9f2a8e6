"""What a watching page costs a workflow step on PostgreSQL: the same sequential 20-step run
watched from the worker's own process, watched from another process, and not watched at all.

    python bench/pg_watch.py                      # 30 runs of each, plain def steps
    python bench/pg_watch.py --runs 40 --bodies async

An append NOTIFYs only while some process watches its channel (migration 6), so a run nobody
watches commits its steps without NOTIFY. One private durable PostgreSQL (``tests/postgres.py``,
``durable=True``), one worker process (this one, uvloop, the workflows of
``bench/wf_stepstream.py``) and the three ways of waiting for a run, taken in turn run by run
(the order rotating) so that the machine's slow and fast phases fall on all three alike:

- ``same process``: subscribed to the run's channel in the worker's process (what
  ``bench/workflow.py`` does, and ``stepstream dev``: one process serves pages and works);
- ``other process``: subscribed from a second process (a server apart from its workers, as a
  deployment runs them), which says when it is listening before the run is triggered;
- ``nobody``: no subscription; the run's end found by reading its log every 20 ms.

Prints, per way: the per-step p50/p90 (the gap between consecutive steps' stamps, as in
``bench/workflow.py``) and the worker process's CPU per step (trigger and wait included).
BENCHMARKS.md quotes it by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH.parent / "src"), str(BENCH)]

from tests.conftest import free_port  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402
from wf_stepstream import build, run_to_end, step_stamps  # noqa: E402

from stepstream import Realtime, Workflows  # noqa: E402

WAYS = ("same process", "other process", "nobody")


async def watcher(url: str) -> None:
    """The other process: for each run id read from stdin, subscribe, say ``ready``, and say
    ``done`` at the run's end."""
    realtime = Realtime(backend=url)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while run_id := (await reader.readline()).decode().strip():
            messages = realtime.channel(run_id).subscribe(history=True).__aiter__()
            first = asyncio.ensure_future(anext(messages))
            await asyncio.sleep(0.05)  # its watch registered (ss_watch), well before the run
            print("ready", flush=True)
            message = await first
            while message.data["type"] != "runFinish":
                message = await anext(messages)
            await messages.aclose()
            print("done", flush=True)
    finally:
        await realtime.aclose()


async def watched_elsewhere(workflows: Workflows, other: asyncio.subprocess.Process) -> str:
    assert other.stdin is not None and other.stdout is not None
    run_id = f"wfr_{uuid.uuid4().hex}"
    other.stdin.write(f"{run_id}\n".encode())
    await other.stdin.drain()
    if (await other.stdout.readline()).strip() != b"ready":
        raise SystemExit("the watching process failed (its error is above)")
    await workflows.client().trigger("seq20", workflow_run_id=run_id)
    if (await other.stdout.readline()).strip() != b"done":
        raise SystemExit("the watching process failed (its error is above)")
    return run_id


async def unwatched(workflows: Workflows) -> str:
    client = workflows.client()
    run_id = await client.trigger("seq20")
    while True:  # polled, as a client without a subscription would
        await asyncio.sleep(0.02)
        if (await client.logs(run_id))["workflowState"] != "RUN_STARTED":
            return run_id


async def measure(url: str, args: argparse.Namespace) -> dict[str, dict]:
    other = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--watcher", url, stdin=-1, stdout=-1
    )
    workflows = build(url, args.bodies)
    await workflows.open()
    worker = workflows.worker(concurrency=10)
    await worker.start()
    found: dict[str, dict] = {way: {"gaps": [], "python": 0.0} for way in WAYS}
    try:
        for _ in range(5):  # warm-up
            await run_to_end(workflows, "seq20")
        for turn in range(args.runs * len(WAYS)):
            way = WAYS[(turn + turn // len(WAYS)) % len(WAYS)]
            python = time.process_time()
            if way == "same process":
                run_id, _ = await run_to_end(workflows, "seq20")
            elif way == "other process":
                run_id = await watched_elsewhere(workflows, other)
            else:
                run_id = await unwatched(workflows)
            found[way]["python"] += time.process_time() - python
            stamps = await step_stamps(workflows, run_id)
            found[way]["gaps"] += [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
    finally:
        assert other.stdin is not None
        other.stdin.close()
        await other.wait()
        await worker.stop(grace=5)
        await workflows.engine.aclose()
        await workflows.aclose()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="sequential 20-step runs per way")
    parser.add_argument("--bodies", choices=["sync", "async"], default="sync")
    parser.add_argument("--watcher", help=argparse.SUPPRESS)  # the other process's role
    args = parser.parse_args()
    import uvloop

    if args.watcher:
        uvloop.run(watcher(args.watcher))
        return
    with postgres_server(free_port(), durable=True) as server:
        found = uvloop.run(measure(server.url, args))
    steps = args.runs * 20
    print(f"python bench/pg_watch.py --runs {args.runs} --bodies {args.bodies}")
    print("| the run watched from | per-step p50 (ms) | p90 | worker CPU ms/step |")
    print("|---|--:|--:|--:|")
    for way, result in found.items():
        gaps = sorted(result["gaps"])
        p90 = gaps[int(len(gaps) * 0.9)]
        print(
            f"| {way} | {statistics.median(gaps):.3f} | {p90:.3f} | "
            f"{result['python'] * 1000 / steps:.3f} |"
        )


if __name__ == "__main__":
    main()
