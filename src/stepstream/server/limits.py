"""Bounds on a request body: its size and the time it takes to arrive (the ``Guard`` applies
them to every request with a body)."""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepstream.errors import BodyTooLarge, BodyTooSlow, StepstreamError
from stepstream.realtime.sse import error_response

MAX_BODY = 1_000_000  # bytes: the default limit on any request body
BODY_TIMEOUT = 30.0  # seconds a request body may take to arrive


async def bounded(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, *, max_body: int, time_limit: float
) -> None:
    """Run ``app`` with a body that raises ``BodyTooLarge`` once it passes ``max_body`` bytes
    and ``BodyTooSlow`` once it takes ``time_limit`` seconds, and answer 413/408 if the app did
    not answer (and did not catch them) itself."""
    deadline = asyncio.get_running_loop().time() + time_limit
    size = 0
    complete = started = False

    async def bounded_receive() -> Message:
        nonlocal size, complete
        if complete:  # later receives wait for a disconnect: no bound on those
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise BodyTooSlow(time_limit) from None
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > max_body:
                raise BodyTooLarge(max_body)
            complete = not message.get("more_body", False)
        return message

    async def watched_send(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, bounded_receive, watched_send)
    except (BodyTooLarge, BodyTooSlow, ClientDisconnect) as exc:
        if started:
            raise
        if isinstance(exc, StepstreamError):  # nobody to answer after a disconnect
            await error_response(exc)(scope, receive, send)
