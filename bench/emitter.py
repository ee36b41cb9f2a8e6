"""Emitter in its own process (the "emitter in another process" scenarios).

Opens its own ``Realtime`` on the same backend URL as the server (the same SQLite file, or the
same Redis), prints ``READY``, waits for a line ``go`` on stdin, then emits W+N ``bench.tick``
events one every S seconds, each stamped with ``time.time_ns()`` right before ``emit()``, and
prints ``DONE {json}`` (with the emit() call durations).

    python bench/emitter.py --backend sqlite:///bench.db --count 1000 --interval 0.01
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import sys
import time

from sse_clients import summarize_ns
from stepstream_schema import CHANNEL, make_realtime


async def run(backend: str, count: int, interval: float, warmup: int) -> dict:
    realtime = make_realtime(backend)
    async with realtime:
        channel = realtime.channel(CHANNEL)
        print("READY", flush=True)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return {"aborted": True}
        durations = array.array("q")
        start = loop.time()
        for i in range(warmup + count):
            t = time.time_ns()
            await channel.emit("bench.tick", {"t": t})
            durations.append(time.time_ns() - t)
            delay = start + (i + 1) * interval - loop.time()
            await asyncio.sleep(max(0.0, delay))
    return {"emitted": warmup + count, "emit_call_ms": summarize_ns(durations)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    if not args.no_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    info = asyncio.run(run(args.backend, args.count, args.interval, args.warmup))
    print("DONE " + json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
