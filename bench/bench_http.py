"""The plain-ASGI control routes both benchmark servers share (so the floor and stepstream's
server carry exactly the same harness code): JSON replies and ``POST /_bench/emit``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs

import gcstats

EmitLoop = Callable[[int, float, int], Coroutine[Any, Any, None]]


async def read_body(receive: Any) -> None:
    """Consume (and drop) a request body."""
    while True:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body"):
            return


async def respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def start_emit(
    scope: Any, receive: Any, send: Any, emit_loop: EmitLoop, tasks: set[asyncio.Task[None]]
) -> None:
    """``POST /_bench/emit?count=N&interval=S&warmup=W``: start ``emit_loop`` in the background
    (one request starts a whole run, so the trigger costs nothing per event)."""
    await read_body(receive)
    qs = parse_qs(scope.get("query_string", b"").decode())
    count = int(qs.get("count", ["1"])[0])
    interval = float(qs.get("interval", ["0.01"])[0])
    warmup = int(qs.get("warmup", ["0"])[0])
    gcstats.reset()
    task = asyncio.ensure_future(emit_loop(count, interval, warmup))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    await respond(send, 202, b'{"started":true}')
