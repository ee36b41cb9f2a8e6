"""The SSE endpoint: history then live events of channels, in three dialects.

See ``docs/sse-protocol.md`` for the wire format. ``handle(realtime)`` returns a plain ASGI app,
mountable in any Starlette/FastAPI application::

    app = Starlette(routes=[Route("/api/realtime", handle(realtime, middleware=auth))])

The response is written by one coroutine per connection that sleeps on its feed; pings and the
``reconnect`` deadline are timers, not tasks (the stalled-client check is one timer for all
connections), and an encoded frame is shared by every connection of the same dialect, so an
idle connection costs a few kilobytes.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import random
import re
import weakref
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from stepstream.auth import bearer, channel_refusal
from stepstream.clock import system_ms
from stepstream.errors import StepstreamError, ValidationError
from stepstream.realtime.channel import Realtime, check_channel_name
from stepstream.realtime.stream import Connected, Gap, Item, Start, Stream
from stepstream.records import Message, parse_cursor

Dialect = Literal["v0", "v1", "native"]
Middleware = Callable[[Request, list[str]], "Response | Awaitable[Response | None] | None"]

MAX_CHANNELS = 100
LAST_ACK = "last_ack_"
# Connections live 90-100 % of max_duration, so clients that connected together (a deploy, a
# page load burst) spread their reconnects out instead of coming back all at once.
RECONNECT_JITTER = 0.1
# Larger bodies are sent in pieces: what one send may wait for stays small, so send_timeout
# measures a stalled client, not a long replay on a slow link.
MAX_CHUNK = 65_536

log = logging.getLogger("stepstream.sse")
_MS = re.compile(r"^\d{1,16}$")


class BadRequest(Exception):
    pass


@dataclass
class Spec:
    """What one SSE request asks for."""

    dialect: Dialect
    channels: list[str]
    starts: dict[str, Start] = field(default_factory=dict)
    events: list[str] | None = None


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON error every stepstream endpoint answers with: ``{"error": {code, message}}``."""
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def handle(
    realtime: Realtime,
    *,
    middleware: Middleware | None = None,
    cors_origins: Sequence[str] | None = None,
    require_token: bool = False,
    api_token: str | None = None,
) -> SSEEndpoint:
    """The SSE endpoint of ``realtime`` as an ASGI app.

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
            response: Response = error_response(405, "method_not_allowed", "use GET")
            response.headers["allow"] = "GET, HEAD, OPTIONS"
            await response(scope, receive, send)
            return
        try:
            spec = parse_request(request, self.realtime.schema.events)
        except (BadRequest, ValidationError) as exc:
            response = error_response(400, "bad_request", str(exc))
            response.headers.update(cors)
            await response(scope, receive, send)
            return
        refusal = await self.authorize(request, spec.channels)
        if refusal is not None:
            refusal.headers.update(cors)  # let a cross-origin page read why it was refused
            await refusal(scope, receive, send)
            return
        self.active += 1
        try:
            try:
                stream = await self.realtime.stream(
                    spec.starts, events=spec.events, on_gap="report"
                )
                items = await stream.start()
            except StepstreamError as exc:
                response = error_response(503, "backend_unavailable", str(exc))
                response.headers.update(cors)
                await response(scope, receive, send)
                return
            try:
                await self._serve(spec, stream, items, request, cors, receive, send)
            finally:
                stream.close()
        finally:
            self.active -= 1

    async def authorize(self, request: Request, channels: list[str]) -> Response | None:
        """The access rule for reading ``channels`` (this endpoint's, and the history
        endpoint's): the subscription token check, then the ``middleware`` hook. ``None``
        allows; otherwise the response refusing the request."""
        if self.require_token:
            denied = self._check_token(request, channels)
            if denied is not None:
                return denied
        if self.middleware is None:
            return None
        refusal = self.middleware(request, list(channels))
        if inspect.isawaitable(refusal):
            refusal = await refusal
        return refusal

    def _check_token(self, request: Request, channels: list[str]) -> Response | None:
        refusal = channel_refusal(
            channels,
            signer=self.realtime.signer,
            api_token=self.api_token,
            query_token=request.query_params.get("token"),
            bearer_token=bearer(request.headers.get("authorization")),
        )
        if refusal is None:
            return None
        return error_response(refusal.status, refusal.code, refusal.message)

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
        encoder = Encoder(spec.dialect)
        loop = asyncio.get_running_loop()
        gone = False

        def client_left() -> None:
            nonlocal gone
            gone = True
            stream.feed.alarm()

        watcher = loop.create_task(_watch_disconnect(receive, client_left))
        realtime = self.realtime
        ping_every = realtime.ping_interval
        deadline = loop.time() + reconnect_after(realtime.max_duration)
        next_ping = loop.time() + ping_every
        fired = False

        def wake() -> None:
            nonlocal fired
            fired = True
            stream.feed.alarm()

        timer = loop.call_at(min(next_ping, deadline), wake)
        sender = Sender(send, realtime.send_timeout)
        try:
            await sender.body(encoder.encode_all(items))
            while not gone:
                try:
                    items = await stream.next()
                except StepstreamError as exc:
                    await sender.body(encoder.system({"type": "error", "error": str(exc)}))
                    await sender.body(encoder.reconnect())
                    return
                if gone:
                    return
                chunk = encoder.encode_all(items) if items else b""
                now = loop.time()
                if now >= deadline or stream.draining:
                    await sender.body(chunk + encoder.reconnect())
                    return
                rearm = fired
                if now >= next_ping:
                    chunk += encoder.system({"type": "ping", "timestamp": system_ms()})
                    next_ping = now + ping_every
                    rearm = True
                # A timer can fire with loop.time() a hair below its `when` (uvloop counts
                # whole milliseconds; float rounding): re-arm it whenever it fired, or
                # nothing would ever wake this connection again (no ping, no reconnect).
                if rearm:
                    fired = False
                    timer.cancel()
                    timer = loop.call_at(min(next_ping, deadline), wake)
                if chunk:
                    await sender.body(chunk)
        except asyncio.CancelledError:
            if not sender.stalled:
                raise
            sender.dropped()
        finally:
            timer.cancel()
            watcher.cancel()
            if not gone and not sender.stalled:
                await sender.end()
            sender.close()


def reconnect_after(max_duration: float) -> float:
    """Seconds from connect to the ``reconnect`` event. Like @upstash/realtime: 2 s before the
    limit, never sooner than 1 s after connect; the limit itself is drawn from 90-100 % of
    ``max_duration`` (``RECONNECT_JITTER``), never above it, so a proxy's hard limit holds."""
    jittered = max_duration * (1 - RECONNECT_JITTER * random.random())
    return max(jittered - 2, 1)


class Sender:
    """Writes a streaming response body, and drops a client that stops reading.

    ``send`` waits while the server's buffer for the client is full; a client that accepts
    nothing for ``timeout`` seconds is stalled (a dead peer, a frozen tab): its response is
    abandoned, which frees its feed and lets the server close the connection. Each send only
    notes when it began; one ``_StallWatch`` per event loop looks at every open response a few
    times per ``timeout``, so an idle connection holds no timer of its own.
    """

    __slots__ = ("_clock", "_send", "_task", "since", "stalled", "timeout")

    def __init__(self, send: Send, timeout: float) -> None:
        self._send = send
        self.timeout = timeout
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.since: float | None = None  # when the send in progress began
        self.stalled = False
        _stall_watch(loop).add(self)

    async def body(self, chunk: bytes) -> None:
        if len(chunk) <= MAX_CHUNK:
            self.since = self._clock()
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            for start in range(0, len(chunk), MAX_CHUNK):
                self.since = self._clock()
                piece = chunk[start : start + MAX_CHUNK]
                await self._send({"type": "http.response.body", "body": piece, "more_body": True})
        self.since = None

    async def end(self) -> None:
        """Finish the response (still watched: the last bytes can stall too)."""
        try:
            self.since = self._clock()
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.stalled:
                raise
            self.dropped()
        finally:
            self.since = None

    def stall(self) -> None:
        self.stalled = True
        self._task.cancel()

    def dropped(self) -> None:
        """Our own cancel was caught: the task goes on (to clean up), no longer cancelled."""
        self._task.uncancel()
        log.warning(
            "dropped an SSE client that accepted nothing for %g s (it resumes from its cursor "
            "when it reconnects)",
            self.timeout,
        )

    def close(self) -> None:
        _stall_watch(asyncio.get_running_loop()).discard(self)


class _StallWatch:
    """The stalled-client check of one event loop: one timer, running while responses are
    open, that looks at each one's send in progress four times per ``send_timeout``."""

    def __init__(self) -> None:
        self.senders: set[Sender] = set()
        self.period = math.inf
        self.timer: asyncio.TimerHandle | None = None

    def add(self, sender: Sender) -> None:
        self.senders.add(sender)
        period = sender.timeout / 4
        if self.timer is None or period < self.period:
            self.period = min(self.period, period)
            if self.timer is not None:
                self.timer.cancel()
            self.timer = asyncio.get_running_loop().call_later(self.period, self._check)

    def discard(self, sender: Sender) -> None:
        self.senders.discard(sender)
        if not self.senders and self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.period = math.inf

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for sender in self.senders:
            since = sender.since
            if since is not None and now - since >= sender.timeout and not sender.stalled:
                sender.stall()
        self.timer = loop.call_later(self.period, self._check)


_STALL_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _StallWatch] = (
    weakref.WeakKeyDictionary()
)


def _stall_watch(loop: asyncio.AbstractEventLoop) -> _StallWatch:
    watch = _STALL_WATCHES.get(loop)
    if watch is None:
        watch = _STALL_WATCHES[loop] = _StallWatch()
    return watch


async def _watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    while True:
        message: ASGIMessage = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


class Encoder:
    """Turns stream items into SSE frames of one dialect. User-event frames are cached on the
    message, so a broadcast encodes each event once per dialect, not once per connection."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        # What this client has received, per channel: its Last-Event-ID if it drops now.
        self.sent: dict[str, str] = {}
        self._quoted: dict[str, str] = {}

    def encode_all(self, items: list[Item]) -> bytes:
        if len(items) == 1:  # the common case of a live broadcast
            return self.encode(items[0])
        return b"".join([self.encode(item) for item in items])

    def encode(self, item: Item) -> bytes:
        if isinstance(item, Message):
            return self.user(item)
        if isinstance(item, Connected):
            self.sent[item.channel] = item.cursor
            frame = self.system(
                {"type": "connected", "channel": item.channel, "cursor": item.cursor}
            )
            return self._id_line() + frame if self.dialect == "native" else frame
        if isinstance(item, Gap):
            if self.dialect == "native":
                event = {"type": "gap", "channel": item.channel, "cursor": item.cursor}
            else:
                event = {"type": "error"}
            message = (
                f"events after cursor {item.cursor} on channel {item.channel!r} were trimmed "
                "from history; replaying what remains"
            )
            key = "message" if self.dialect == "native" else "error"
            return self.system({**event, key: message})
        raise TypeError(f"cannot encode {item!r}")

    def user(self, message: Message) -> bytes:
        frames = message.frames
        frame = frames.get(self.dialect)
        if frame is None:
            frame = frames[self.dialect] = _user_frame(self.dialect, message)
        if self.dialect == "native":
            self.sent[message.channel] = message.id
            if len(self.sent) == 1:
                # One channel: the id line is the same for every such connection, so a
                # broadcast builds the whole frame once.
                whole = frames.get("native-1")
                if whole is None:
                    whole = frames["native-1"] = self._id_line() + frame
                return whole
            return self._id_line() + frame
        return frame

    def _id_line(self) -> bytes:
        quoted = self._quoted
        parts = []
        for channel, cursor in self.sent.items():
            name = quoted.get(channel)
            if name is None:
                name = quoted[channel] = quote(channel, safe="")
            parts.append(f"{name}={cursor}")
        return f"id: {'&'.join(parts)}\n".encode()

    def system(self, event: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

    def reconnect(self) -> bytes:
        return self.system({"type": "reconnect", "timestamp": system_ms()})


def _user_frame(dialect: Dialect, message: Message) -> bytes:
    channel = json.dumps(message.channel)
    if dialect == "v0":
        path = json.dumps(message.event.split("."), separators=(",", ":"))
        body = (
            f'{{"data":{message.raw},"__event_path":{path},"__stream_id":"{message.id}",'
            f'"__channel":{channel}}}'
        )
    else:
        body = (
            f'{{"id":"{message.id}","event":"{message.event}","channel":{channel},'
            f'"data":{message.raw}}}'
        )
    return b"data: " + body.encode() + b"\n\n"


# -- request parsing ---------------------------------------------------------------------------


def parse_request(request: Request, known_events: Collection[str] = ()) -> Spec:
    """Read dialect, channels, cursors and history options from the query (and
    ``Last-Event-ID``); raise ``BadRequest`` naming the problem."""
    params = request.query_params
    dialect = _dialect(params)
    names = params.getlist("channels" if dialect == "v0" else "channel")
    if not names:
        names = params.getlist("channel" if dialect == "v0" else "channels") or ["default"]
    channels = list(dict.fromkeys(names))
    if len(channels) > MAX_CHANNELS:
        raise BadRequest(
            f"{len(channels)} channels requested; one connection takes at most {MAX_CHANNELS}: "
            "open several connections or group events into fewer channels"
        )
    for name in channels:
        try:
            check_channel_name(name)
        except ValidationError as exc:
            raise BadRequest(f"bad channel name: {exc}") from None
    acks = _cursors_from_query(params.multi_items(), channels)
    if dialect == "native":
        for channel, value in _cursors_from_last_event_id(request.headers.get("last-event-id")):
            if channel in channels:
                acks.setdefault(channel, value)
    spec = Spec(dialect, channels)
    history = _history_options(dialect, params)
    for channel in channels:
        ack = acks.get(channel)
        if ack is None:
            spec.starts[channel] = history
        elif "-" in ack:
            spec.starts[channel] = Start(after=parse_cursor(ack))
        else:
            spec.starts[channel] = Start(since_ms=int(ack))
    if dialect == "native":
        events = [e for value in params.getlist("events") for e in value.split(",") if e]
        unknown = [e for e in events if known_events and e not in known_events]
        if unknown:
            raise BadRequest(
                f"unknown event(s) in events=: {', '.join(unknown)}; "
                f"known: {', '.join(known_events)}"
            )
        spec.events = events or None
    return spec


def _dialect(params: Any) -> Dialect:
    explicit = params.get("dialect")
    if explicit is not None:
        if explicit not in {"v0", "v1", "native"}:
            raise BadRequest(f"dialect={explicit!r}: use v0, v1 or native")
        if "channels" in params and "channel" in params:
            raise BadRequest("give channels with either channel= or channels=, not both")
        result: Dialect = explicit
        return result
    if "channels" in params and "channel" in params:
        raise BadRequest(
            "both channels= (the @upstash/realtime 0.3 dialect) and channel= (1.x / native) "
            "given: use one"
        )
    if "channels" in params:
        return "v0"
    if "history" in params or "events" in params:
        return "native"
    return "v1"


def _cursors_from_query(items: list[tuple[str, str]], channels: list[str]) -> dict[str, str]:
    acks: dict[str, str] = {}
    for key, value in items:
        if not key.startswith(LAST_ACK):
            continue
        channel = key[len(LAST_ACK) :]
        if channel not in channels:
            raise BadRequest(
                f"{key} names channel {channel!r}, which this request does not subscribe"
            )
        acks[channel] = _check_ack(key, value)
    return acks


def _check_ack(name: str, value: str) -> str:
    if _MS.match(value):
        return value
    try:
        parse_cursor(value)
    except ValueError:
        raise BadRequest(
            f"{name}={value[:40]!r} is not a cursor: expected '<ms>-<seq>' (an event id) "
            "or '<ms>' (a time)"
        ) from None
    return value


def _cursors_from_last_event_id(value: str | None) -> list[tuple[str, str]]:
    if not value:
        return []
    try:
        pairs = parse_qsl(value, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadRequest(
            "Last-Event-ID does not parse: expected channel=cursor pairs joined by '&' as sent "
            "in this endpoint's id: lines"
        ) from None
    for _, cursor in pairs:
        try:
            parse_cursor(cursor)
        except ValueError:
            raise BadRequest(
                f"Last-Event-ID holds {cursor[:40]!r}, which is not a cursor"
            ) from None
    return pairs


def _history_options(dialect: Dialect, params: Any) -> Start:
    if dialect == "v0":
        if params.get("history_all") == "true":
            return Start(history=True)
        length = _int_param(params, "history_length", 1)
        since = _int_param(params, "history_since", 0)
        if length is not None or since is not None:
            return Start(history=True, limit=length, since_ms=since)
        start = _int_param(params, "connection_start", 0)
        return Start(since_ms=start) if start is not None else Start.live()
    if dialect == "native":
        value = params.get("history")
        if value is None or value in {"false", "0"}:
            return Start.live()
        if value == "true":
            return Start(history=True)
        limit = _int_param(params, "history", 1)
        return Start(history=True, limit=limit)
    return Start.live()


def _int_param(params: Any, name: str, minimum: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not _MS.match(value) or not minimum <= int(value) <= 10**16:
        raise BadRequest(f"{name}={value[:40]!r}: expected an integer >= {minimum}")
    return int(value)
