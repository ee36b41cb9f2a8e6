"""What running a plain ``def`` step body on a thread costs, beside asyncio's own way.

    python bench/thread_hop.py --calls 2000 --rounds 6

The body returns ``time.time_ns()``; each call is one hop to a thread and back, under uvloop
(what ``stepstream worker`` uses). Alternating round by round:

- *run_in_executor*: ``loop.run_in_executor`` on a ``ThreadPoolExecutor`` (what
  ``Engine.in_thread`` did first);
- *executor, outcome to the future*: the same pool, whose thread hands the outcome straight to
  the awaited future (what ``Engine.in_thread`` did next);
- *Engine.in_thread*: stepstream's now, on its ``StepThreads`` (``workflow/threads.py``).

Prints the p50 of each (µs per call, median of the rounds' p50s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from wf_common import alternate_p50s

from stepstream import Workflows
from stepstream.futures import settle


def body() -> int:
    return time.time_ns()


async def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(8)
    engine = Workflows(backend="memory://").engine

    async def executor() -> None:
        call = functools.partial(contextvars.copy_context().run, body)
        await loop.run_in_executor(pool, call)

    async def straight() -> None:
        done: asyncio.Future[int] = loop.create_future()
        context = contextvars.copy_context()

        def job() -> None:
            loop.call_soon_threadsafe(settle, done, context.run(body))

        pool.submit(job)
        await done

    async def ours() -> None:
        await engine.in_thread(body, (), {})

    ways: dict[str, Callable[[], Awaitable[None]]] = {
        "run_in_executor": executor,
        "executor, outcome to the future": straight,
        "Engine.in_thread": ours,
    }
    try:
        return await alternate_p50s(ways, calls, rounds)
    finally:
        pool.shutdown()
        await engine.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    import uvloop

    p50s = uvloop.run(measure(args.calls, args.rounds))
    print(f"python bench/thread_hop.py --calls {args.calls} --rounds {args.rounds}")
    print("| way | p50 µs per hop | rounds' p50s |")
    print("|---|--:|---|")
    for name, values in p50s.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {statistics.median(values):.0f} | {shown} |")


if __name__ == "__main__":
    main()
