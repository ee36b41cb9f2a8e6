"""Raw Redis floor: redis-py (asyncio, hiredis) XADD on one connection -> XREAD BLOCK on another.

Both connections live in one process and one (uv)loop, the way a server process would hold them.
Each XADD carries ``t = time.time_ns()`` taken right before the call; the reader records
``time.time_ns() - t`` as soon as XREAD returns. Prints ``DONE {json}`` with the summary and
writes the raw latencies (array('q'), ns) to ``--out`` if given.

    python bench/redis_floor.py --port 6379 --count 1000 --interval 0.01
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import sys
import time

from sse_clients import summarize_ns


async def run(port: int, count: int, interval: float, warmup: int) -> array.array:
    import redis.asyncio as aioredis

    key = f"bench:floor:{time.time_ns()}"
    writer = aioredis.Redis(host="127.0.0.1", port=port)
    reader = aioredis.Redis(host="127.0.0.1", port=port)
    await writer.ping()
    await reader.ping()
    lat = array.array("q")
    total = warmup + count
    got = 0
    done = asyncio.Event()

    async def read() -> None:
        nonlocal got
        last = "$"
        while got < total:
            resp = await reader.xread({key: last}, block=0, count=100)
            now = time.time_ns()
            for _stream, entries in resp:
                for entry_id, fields in entries:
                    last = entry_id
                    got += 1
                    if got > warmup:
                        lat.append(now - int(fields[b"t"]))
        done.set()

    reader_task = asyncio.ensure_future(read())
    await asyncio.sleep(0.2)  # let XREAD BLOCK reach the server first
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(total):
        await writer.xadd(key, {"t": time.time_ns()})
        delay = start + (i + 1) * interval - loop.time()
        await asyncio.sleep(max(0.0, delay))
    try:
        await asyncio.wait_for(done.wait(), 10)
    except TimeoutError:
        reader_task.cancel()
    await writer.delete(key)
    await writer.aclose()
    await reader.aclose()
    return lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--out")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    if not args.no_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    lat = asyncio.run(run(args.port, args.count, args.interval, args.warmup))
    if args.out:
        with open(args.out, "wb") as f:
            lat.tofile(f)
    print(
        "DONE "
        + json.dumps(
            {"received": len(lat), "expected": args.count, "summary_ms": summarize_ns(lat)}
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
