"""Reference point (not a floor): the same broadcaster as raw_broadcaster.py written the usual
way, Starlette + sse-starlette's ``EventSourceResponse`` with a per-connection asyncio.Queue.

Same endpoints, same frame bytes (except sse-starlette's CRLF line endings), same emit point.
Only run when asked for (``--scenario 'bc-sse-starlette*'`` or ``--with-sse-starlette``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time

from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
with contextlib.suppress(ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

CHANNEL = "bench"
_queues: set[asyncio.Queue[ServerSentEvent]] = set()
_tasks: set[asyncio.Task[None]] = set()
_seq = 0


def broadcast_now() -> None:
    global _seq
    t_ns = time.time_ns()
    cursor = f"{t_ns // 1_000_000}-{_seq}"
    _seq += 1
    payload = json.dumps(
        {"id": cursor, "event": "bench.tick", "channel": CHANNEL, "data": {"t": t_ns}},
        separators=(",", ":"),
    )
    event = ServerSentEvent(data=payload, id=f"{CHANNEL}={cursor}")
    for q in _queues:
        q.put_nowait(event)


async def _emit_loop(count: int, interval: float, warmup: int) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(warmup + count):
        broadcast_now()
        await asyncio.sleep(max(0.0, start + (i + 1) * interval - loop.time()))


async def stream(request: Request) -> EventSourceResponse:
    q: asyncio.Queue[ServerSentEvent] = asyncio.Queue()

    async def gen():
        _queues.add(q)
        try:
            yield ServerSentEvent(
                data=json.dumps({"type": "connected", "channel": CHANNEL, "cursor": "0-0"})
            )
            while True:
                yield await q.get()
        finally:
            _queues.discard(q)

    return EventSourceResponse(gen(), ping=15)


async def emit(request: Request) -> JSONResponse:
    qp = request.query_params
    task = asyncio.ensure_future(
        _emit_loop(
            int(qp.get("count", "1")), float(qp.get("interval", "0.01")), int(qp.get("warmup", "0"))
        )
    )
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return JSONResponse({"started": True}, status_code=202)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/_bench/health", health),
        Route("/_bench/emit", emit, methods=["POST"]),
        Route("/", stream),
    ]
)
