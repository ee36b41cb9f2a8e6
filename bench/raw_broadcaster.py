"""The floor for the SSE benchmarks: a minimal raw-ASGI SSE broadcaster (no framework).

Run under uvicorn with the same settings as stepstream's bench app::

    uvicorn raw_broadcaster:app --app-dir bench --http httptools --loop uvloop

- ``GET /...`` (any path): an SSE stream. Sends one ``connected`` frame, then every broadcast
  frame. Per connection: one asyncio.Queue, the handler task (writer) and one task waiting on
  ``receive()`` for the disconnect (uvicorn's ``send`` silently drops writes to a closed
  connection, so that is the only way to notice it).
- ``POST /_bench/emit?count=N&interval=S&warmup=W`` starts a background task that broadcasts
  W+N events, one every S seconds. Each event is stamped with ``time.time_ns()`` right before
  it is serialized (once) and queued to every connection: the same frame shape and the same
  stamping point as bench/stepstream_app.py, so the client harness sees identical bytes.
- ``GET /_bench/health``: 200 once up; ``GET /_bench/stats``: connection count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time

import gcstats
from bench_http import respond, start_emit

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
with contextlib.suppress(ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

CHANNEL = "bench"
HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_queues: set[asyncio.Queue[bytes | None]] = set()
_tasks: set[asyncio.Task[None]] = set()
_seq = 0
gcstats.install()


def _frame(t_ns: int) -> bytes:
    global _seq
    ms = t_ns // 1_000_000
    cursor = f"{ms}-{_seq}"
    _seq += 1
    payload = json.dumps(
        {"id": cursor, "event": "bench.tick", "channel": CHANNEL, "data": {"t": t_ns}},
        separators=(",", ":"),
    )
    return f"id: {CHANNEL}={cursor}\ndata: {payload}\n\n".encode()


def broadcast_now() -> None:
    frame = _frame(time.time_ns())
    for q in _queues:
        q.put_nowait(frame)


async def _emit_loop(count: int, interval: float, warmup: int) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(warmup + count):
        broadcast_now()
        delay = start + (i + 1) * interval - loop.time()
        await asyncio.sleep(max(0.0, delay))


async def _sse(receive, send) -> None:
    q: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        q.put_nowait(None)

    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    _queues.add(q)
    watcher = asyncio.ensure_future(watch_disconnect())
    try:
        hello = json.dumps({"type": "connected", "channel": CHANNEL, "cursor": "0-0"})
        await send(
            {"type": "http.response.body", "body": f"data: {hello}\n\n".encode(), "more_body": True}
        )
        while True:
            frame = await q.get()
            if frame is None:
                break
            await send({"type": "http.response.body", "body": frame, "more_body": True})
    finally:
        _queues.discard(q)
        watcher.cancel()


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                for q in list(_queues):
                    q.put_nowait(None)
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path.startswith("/_bench/"):
        if path == "/_bench/health":
            await respond(send, 200, b'{"ok":true}')
        elif path == "/_bench/stats":
            await respond(
                send,
                200,
                json.dumps(
                    {
                        "connections": len(_queues),
                        "gc": gcstats.snapshot(),
                        "objects": gcstats.tracked(),
                    }
                ).encode(),
            )
        elif path == "/_bench/emit" and scope["method"] == "POST":
            await start_emit(scope, receive, send, _emit_loop, _tasks)
        else:
            await respond(send, 404, b'{"error":"not found"}')
        return
    if scope["method"] != "GET":
        await respond(send, 405, b'{"error":"method not allowed"}')
        return
    await _sse(receive, send)
