"""The SSE endpoint: history then live events of channels, in three dialects.

See ``docs/sse-protocol.md`` for the wire format; ``sse_request.py`` reads what a request asks
for, ``dialects.py`` writes the frames, ``sender.py`` drops clients that stop reading.
``handle(realtime)`` returns a plain ASGI app for any Starlette/FastAPI application. Add it as a
route, which serves exactly its path (a ``Mount`` serves only what is under ``/sse/``: the host
app redirects ``/sse`` there)::

    app = Starlette(routes=[Route("/sse", handle(realtime, middleware=auth))])
    api.add_route("/sse", handle(realtime))                   # FastAPI

The response is written by one coroutine per connection that sleeps on its feed; pings and the
``reconnect`` deadline are one timer, not tasks (the stalled-client check is one timer for all
connections), and an encoded frame is shared by every connection of the same dialect, so an
idle connection costs a few kilobytes.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import overload

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from stepstream.auth import bearer, channel_refusal
from stepstream.clock import system_ms
from stepstream.errors import (
    DETAIL_HEADER,
    BadRequest,
    MethodNotAllowed,
    StepstreamError,
    error_body,
)
from stepstream.realtime.channel import Realtime
from stepstream.realtime.dialects import Encoder
from stepstream.realtime.sender import Sender
from stepstream.realtime.sse_request import Spec, parse_request
from stepstream.realtime.stream import Item, Stream
from stepstream.responses import Json

Middleware = Callable[[Request, list[str]], "Response | Awaitable[Response | None] | None"]

# Connections live 90-100 % of max_duration, so clients that connected together (a deploy, a
# page load burst) spread their reconnects out instead of coming back all at once.
RECONNECT_JITTER = 0.1


@overload
def error_response(
    error: StepstreamError, *, headers: Mapping[str, str] | None = None, detail: bool = False
) -> Json: ...


@overload
def error_response(
    error: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Json: ...


def error_response(
    error: StepstreamError | int,
    code: str = "",
    message: str = "",
    headers: Mapping[str, str] | None = None,
    *,
    detail: bool = False,
) -> Json:
    """The JSON error every stepstream endpoint answers with: ``error``'s status, headers and
    body (``errors.error_body``; with ``detail``, what rebuilds it). In a ``middleware`` hook,
    ``error_response(Forbidden("not yours"))``, or a body of your own:
    ``error_response(403, "forbidden", "not yours")``."""
    if isinstance(error, int):
        body: object = {"error": {"code": code, "message": message}}
        return Json(body, status_code=error, headers=headers)
    merged = {**error.headers, **(headers or {})}
    return Json(error_body(error, detail=detail), status_code=error.status, headers=merged)


def handle(
    realtime: Realtime,
    *,
    middleware: Middleware | None = None,
    cors_origins: Sequence[str] | None = None,
    require_token: bool = False,
    api_token: str | None = None,
) -> SSEEndpoint:
    """The SSE endpoint of ``realtime`` as an ASGI app: add it as a route,
    ``Route("/sse", handle(realtime))`` (FastAPI: ``api.add_route("/sse", handle(realtime))``).

    ``middleware(request, channels)`` runs before anything else and may return a response
    (e.g. 401/403) to refuse the connection. ``cors_origins``: origins allowed to connect from
    another site (``["*"]`` for any); by default only the same origin. ``require_token``: every
    channel must be granted by a ``realtime.token(...)`` passed as ``?token=`` (or the
    ``api_token`` itself, as a bearer header only) — checked before any byte is sent.
    """
    return SSEEndpoint(
        realtime,
        middleware=middleware,
        cors_origins=cors_origins,
        require_token=require_token,
        api_token=api_token,
    )


class SSEEndpoint:
    def __init__(
        self,
        realtime: Realtime,
        *,
        middleware: Middleware | None = None,
        cors_origins: Sequence[str] | None = None,
        require_token: bool = False,
        api_token: str | None = None,
    ) -> None:
        self.realtime = realtime
        self.middleware = middleware
        self.require_token = require_token or api_token is not None
        self.api_token = api_token
        self.cors_origins = frozenset(cors_origins or ())
        self.active = 0  # SSE responses being served now (reported by /healthz)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise TypeError("the SSE endpoint serves HTTP only")
        request = Request(scope)
        cors = self._cors_headers(request.headers.get("origin"))
        if request.method == "OPTIONS":
            await Response(status_code=204, headers=cors)(scope, receive, send)
            return
        if request.method not in {"GET", "HEAD"}:
            allow = {"allow": "GET, HEAD, OPTIONS"}
            await error_response(MethodNotAllowed("use GET"), headers=allow)(scope, receive, send)
            return
        try:
            spec = parse_request(request, self.realtime.schema.events)
        except BadRequest as exc:
            refusal: Response | None = error_response(exc)
        else:
            refusal = await self.authorize(request, spec.channels)
        if refusal is not None:
            refusal.headers.update(cors)  # let a cross-origin page read why it was refused
            await refusal(scope, receive, send)
            return
        await self._open(spec, request, cors, receive, send)

    async def authorize(self, request: Request, channels: list[str]) -> Response | None:
        """The access rule for reading ``channels`` (this endpoint's, and the history
        endpoint's): the subscription token check, then the ``middleware`` hook. ``None``
        allows; otherwise the response refusing the request."""
        if self.require_token:
            refused = channel_refusal(
                channels,
                signer=self.realtime.signer,
                api_token=self.api_token,
                query_token=request.query_params.get("token"),
                bearer_token=bearer(request.headers.get("authorization")),
            )
            if refused is not None:
                return error_response(refused)
        if self.middleware is None:
            return None
        refusal = self.middleware(request, list(channels))
        if inspect.isawaitable(refusal):
            refusal = await refusal
        return refusal

    def _cors_headers(self, origin: str | None) -> dict[str, str]:
        if origin is None or not self.cors_origins:
            return {}
        if "*" in self.cors_origins:
            return {"access-control-allow-origin": "*", "access-control-allow-headers": "*"}
        if origin in self.cors_origins:
            return {
                "access-control-allow-origin": origin,
                "access-control-allow-credentials": "true",
                "access-control-allow-headers": "cache-control, last-event-id, authorization",
                "vary": "origin",
            }
        return {}

    async def _open(
        self, spec: Spec, request: Request, cors: dict[str, str], receive: Receive, send: Send
    ) -> None:
        """Subscribe (an error answer if storage fails before the response starts), then
        stream."""
        self.active += 1
        try:
            try:
                stream = await self.realtime.stream(
                    spec.starts, events=spec.events, on_gap="report"
                )
                items = await stream.start()
            except StepstreamError as exc:
                detail = DETAIL_HEADER in request.headers
                response = error_response(exc, headers=cors, detail=detail)
                await response(request.scope, receive, send)
                return
            try:
                await self._serve(spec, stream, items, request, cors, receive, send)
            finally:
                stream.close()
        finally:
            self.active -= 1

    async def _serve(
        self,
        spec: Spec,
        stream: Stream,
        items: list[Item],
        request: Request,
        cors: dict[str, str],
        receive: Receive,
        send: Send,
    ) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *((k.encode(), v.encode()) for k, v in cors.items()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if request.method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        gone = False

        def client_left() -> None:
            nonlocal gone
            gone = True
            stream.feed.alarm()

        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, client_left))
        ticker = Ticker(stream, self.realtime.ping_interval, self.realtime.max_duration)
        sender = Sender(send, self.realtime.send_timeout)
        try:
            await self._pump(Encoder(spec.dialect), stream, items, ticker, sender, lambda: gone)
        except asyncio.CancelledError:
            if not sender.stalled:
                raise
            sender.dropped()
        finally:
            ticker.cancel()
            watcher.cancel()
            if not gone and not sender.stalled:
                await sender.end()
            sender.close()

    @staticmethod
    async def _pump(
        encoder: Encoder,
        stream: Stream,
        items: list[Item],
        ticker: Ticker,
        sender: Sender,
        gone: Callable[[], bool],
    ) -> None:
        """Write the replay, then each batch the feed wakes up with, a ping when one is due,
        until the client leaves or the stream ends with ``reconnect``."""
        await sender.body(encoder.encode_all(items))
        while not gone():
            if stream.draining:  # opened after the drain began (a client straight back)
                await sender.body(encoder.reconnect())
                return
            try:
                items = await stream.next()
            except StepstreamError as exc:
                await sender.body(encoder.system({"type": "error", "error": str(exc)}))
                await sender.body(encoder.reconnect())
                return
            if gone():
                return
            chunk = encoder.encode_all(items) if items else b""
            now = ticker.now()
            if ticker.expired(now) or stream.draining:
                await sender.body(chunk + encoder.reconnect())
                return
            if ticker.ping_due(now):
                chunk += encoder.system({"type": "ping", "timestamp": system_ms()})
            if chunk:
                await sender.body(chunk)


class Ticker:
    """When one response pings and when it must end (``reconnect``): one loop timer that wakes
    the stream's feed at the earlier of the two."""

    __slots__ = ("_loop", "_stream", "deadline", "fired", "next_ping", "ping_every", "timer")

    def __init__(self, stream: Stream, ping_every: float, max_duration: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._stream = stream
        now = self._loop.time()
        self.ping_every = ping_every
        self.deadline = now + reconnect_after(max_duration)
        self.next_ping = now + ping_every
        self.fired = False
        self.timer = self._arm()

    def now(self) -> float:
        return self._loop.time()

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    def ping_due(self, now: float) -> bool:
        """Whether a ping is due now. The timer is re-armed whenever it fired: it can fire with
        ``loop.time()`` a hair below its ``when`` (uvloop counts whole milliseconds; float
        rounding), and then nothing would ever wake this connection again."""
        due = now >= self.next_ping
        if due:
            self.next_ping = now + self.ping_every
        if due or self.fired:
            self.fired = False
            self.timer.cancel()
            self.timer = self._arm()
        return due

    def cancel(self) -> None:
        self.timer.cancel()

    def _arm(self) -> asyncio.TimerHandle:
        return self._loop.call_at(min(self.next_ping, self.deadline), self._wake)

    def _wake(self) -> None:
        self.fired = True
        self._stream.feed.alarm()


def reconnect_after(max_duration: float) -> float:
    """Seconds from connect to the ``reconnect`` event. Like @upstash/realtime: 2 s before the
    limit, never sooner than 1 s after connect; the limit itself is drawn from 90-100 % of
    ``max_duration`` (``RECONNECT_JITTER``), never above it, so a proxy's hard limit holds."""
    jittered = max_duration * (1 - RECONNECT_JITTER * random.random())
    return max(jittered - 2, 1)


async def _watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    while True:
        message: ASGIMessage = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return
