"""Raw PostgreSQL floor: asyncpg ``INSERT`` + ``NOTIFY`` on one connection -> ``LISTEN`` on
another, the driver and the mechanism stepstream's Postgres backend uses for live delivery.

Both connections live in one process and one (uv)loop, the way a server process would hold them.
Each event is one statement, so one round trip and one transaction (autocommit)::

    WITH e AS (INSERT INTO floor_events (data) VALUES ($1) RETURNING data)
    SELECT pg_notify($2, data) FROM e

whose ``data`` is ``{"t": time.time_ns()}`` taken right before the call; PostgreSQL delivers the
notification at commit (after the WAL flush on a durable server). The listener (asyncpg
``add_listener``) records ``time.time_ns() - t`` as soon as its callback runs. Same method and
output as ``bench/redis_floor.py``: prints ``DONE {json}`` with the summary and writes the raw
latencies (array('q'), ns) to ``--out`` if given.

    python bench/pg_floor.py --url postgresql://postgres@127.0.0.1:5433/postgres --count 1000
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import sys
import time

from sse_clients import summarize_ns

TABLE = "floor_events"
TOPIC = "bench.floor"


async def run(url: str, count: int, interval: float, warmup: int) -> array.array:
    import asyncpg

    writer = await asyncpg.connect(url)
    reader = await asyncpg.connect(url)
    await writer.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, data text NOT NULL)"
    )
    insert = await writer.prepare(
        f"WITH e AS (INSERT INTO {TABLE} (data) VALUES ($1) RETURNING data) "
        "SELECT pg_notify($2, data) FROM e"
    )
    lat = array.array("q")
    total = warmup + count
    got = 0
    done = asyncio.Event()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        nonlocal got
        now = time.time_ns()
        got += 1
        if got > warmup:
            lat.append(now - json.loads(payload)["t"])
        if got >= total:
            done.set()

    await reader.add_listener(TOPIC, on_notify)  # LISTEN has reached the server on return
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(total):
        await insert.fetch(json.dumps({"t": time.time_ns()}), TOPIC)
        delay = start + (i + 1) * interval - loop.time()
        await asyncio.sleep(max(0.0, delay))
    with contextlib.suppress(TimeoutError):  # reported as received < expected
        await asyncio.wait_for(done.wait(), 10)
    await reader.remove_listener(TOPIC, on_notify)
    await writer.execute(f"DROP TABLE {TABLE}")
    await writer.close()
    await reader.close()
    return lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="postgresql://... of the server to measure")
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
    lat = asyncio.run(run(args.url, args.count, args.interval, args.warmup))
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
