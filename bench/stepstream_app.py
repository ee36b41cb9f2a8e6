"""stepstream's SSE endpoint as the benchmark server, plus an in-process emitter.

Configured by environment (set by bench/realtime.py):
``BENCH_BACKEND`` the backend URL (``sqlite:///...`` or ``redis://...``).

- every path except ``/_bench/*`` goes to ``stepstream.handle(realtime)`` (the SSE endpoint;
  the harness connects with ``?channel=bench&dialect=native``);
- ``POST /_bench/emit?count=N&interval=S&warmup=W`` starts a background task *in the server
  process* that calls ``await realtime.channel("bench").emit("bench.tick", {"t": time.time_ns()})``
  W+N times, one every S seconds. One HTTP request starts a whole run, so the trigger's own cost
  (one request) is off the measured path; the timestamp is taken right before ``emit()``.
  This is the "emitter in the same process as the server" case;
- ``GET /_bench/health``: 200 once the app (and the ``Realtime``) is up.

The wrapper is plain ASGI so it adds one path check per request and nothing per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import time

import gcstats
from bench_http import respond, start_emit
from stepstream_schema import CHANNEL, make_realtime

import stepstream
from stepstream.server.app import tune_gc

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
with contextlib.suppress(ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

realtime = make_realtime(os.environ.get("BENCH_BACKEND", "sqlite:///bench.db"))
sse_app = stepstream.handle(realtime)
_tasks: set[asyncio.Task[None]] = set()
_errors: list[str] = []
gcstats.install()


async def _emit_loop(count: int, interval: float, warmup: int) -> None:
    channel = realtime.channel(CHANNEL)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i in range(warmup + count):
            await channel.emit("bench.tick", {"t": time.time_ns()})
            delay = start + (i + 1) * interval - loop.time()
            await asyncio.sleep(max(0.0, delay))
    except Exception as exc:  # reported through /_bench/health
        _errors.append(repr(exc))
        raise


async def _lifespan(receive, send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            try:
                await realtime.__aenter__()
                tune_gc()  # what `stepstream server` does at start-up (create_app's lifespan)
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            for task in list(_tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(realtime.__aexit__(None, None, None), 3)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope.get("path", "")
    if scope["type"] == "http" and path.startswith("/_bench/"):
        if path == "/_bench/health":
            await respond(send, 200, json.dumps({"ok": True, "errors": _errors}).encode())
        elif path == "/_bench/stats":
            stats = {"gc": gcstats.snapshot(), "objects": gcstats.tracked()}
            await respond(send, 200, json.dumps(stats).encode())
        elif path == "/_bench/emit" and scope["method"] == "POST":
            await start_emit(scope, receive, send, _emit_loop, _tasks)
        else:
            await respond(send, 404, b'{"error":"not found"}')
        return
    await sse_app(scope, receive, send)
