"""The stepstream ASGI app: routes, read top to bottom.

GET  /                        the dashboard (``static/dashboard.html``: runs, live run view)
GET  /healthz                 liveness + backend reachability
GET  /api/realtime            SSE, all three dialects (``realtime/sse.py``)
GET  /api/realtime/history    a channel's history as JSON (for clients without SSE history)
POST /api/realtime/token      mint a subscription token (API token needed)
GET  /static/...              the JS client (``stepstream.js``) and React hook (``react.js``)

Every request first passes ``Guard`` (Host, API token, Origin, body type and size).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware as Middleware_
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepstream.auth import TOKEN_ENV, bearer, is_loopback, same_token
from stepstream.errors import CursorUnavailable, StepstreamError, ValidationError
from stepstream.realtime.channel import Realtime, check_channel_name
from stepstream.realtime.sse import Middleware, error_response, handle
from stepstream.records import parse_cursor
from stepstream.server.api import api_routes, read_json
from stepstream.workflow.engine import Engine, HasEngine, engine_of
from stepstream.workflow.worker import Worker

STATIC = Path(__file__).parent / "static"
GC_YOUNG_THRESHOLD = 50_000
MAX_BODY = 1_000_000  # bytes: the default limit on any request body
log = logging.getLogger("stepstream.server")


def create_app(
    realtime: Realtime,
    *,
    middleware: Middleware | None = None,
    cors_origins: Sequence[str] | None = None,
    routes: Sequence[BaseRoute] = (),
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_body: int = MAX_BODY,
) -> Starlette:
    """The stepstream app for ``realtime`` (plus ``routes``). Its lifespan opens and closes the
    backend.

    ``token`` (default ``$STEPSTREAM_TOKEN``) protects the app: every route but the dashboard
    shell, ``/static``, ``/healthz`` and the SSE and history endpoints needs
    ``Authorization: Bearer <token>``, however the app is mounted; the SSE and history endpoints
    need a subscription token for each channel (``POST /api/realtime/token`` or
    ``realtime.token(...)``) or the API token as a bearer header.
    ``allowed_hosts``: the ``Host`` names served (``["*"]``: any); by default any with a token,
    only loopback names without one (a DNS-rebinding page then gets nothing).
    ``max_body``: the largest request body, in bytes (413 past it).

    >>> # app = create_app(Realtime(), token=os.environ["STEPSTREAM_TOKEN"])
    """
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    sse = handle(realtime, middleware=middleware, cors_origins=cors_origins, api_token=token)

    async def mint(request: Request) -> Response:
        try:
            body = await read_json(request, "the token request")
            channels, ttl = body["channels"], float(body.get("ttl", 3600))
            if not isinstance(channels, list) or not 0 < ttl <= 7 * 86400:
                raise ValueError
            minted = realtime.token(channels, ttl)
        except ValidationError as exc:
            return error_response(422, "validation_error", str(exc))
        except (ValueError, KeyError, TypeError, RecursionError):
            return error_response(
                400, "bad_request", 'send {"channels": ["..."], "ttl": seconds (max 7 days)}'
            )
        return JSONResponse({"token": minted, "channels": channels, "ttl": ttl})

    async def healthz(request: Request) -> Response:
        try:
            hub = await realtime.hub()
            await realtime.backend.ping()
        except StepstreamError as exc:
            # Public route: the backend's own message may name its URL (and a password in it).
            log.warning("health check: %s", exc)
            body = {"status": "unavailable", "error": "the backend does not answer"}
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "backend": realtime.backend.url.split(":", 1)[0],
                "sse_connections": sse.active,
                "live_channels": hub.watched,
            }
        )

    async def history(request: Request) -> Response:
        params = request.query_params
        channel = params.get("channel", "default")
        try:
            check_channel_name(channel)
        except ValidationError as exc:
            return error_response(400, "bad_request", f"bad channel name: {exc}")
        refusal = await sse.authorize(request, [channel])
        if refusal is not None:
            return refusal
        try:
            limit = _limit(params.get("limit", "100"))
            after = params.get("after")
            if after is not None:
                try:
                    parse_cursor(after)
                except ValueError:
                    raise ValidationError(f"after={after[:40]!r} is not a cursor") from None
            messages = await realtime.channel(channel).history(limit=limit, after=after)
        except ValidationError as exc:
            return error_response(400, "bad_request", str(exc))
        except CursorUnavailable as exc:
            return error_response(410, "cursor_unavailable", str(exc))
        except StepstreamError as exc:
            return error_response(503, "backend_unavailable", str(exc))
        return JSONResponse(
            {
                "messages": [
                    {"id": m.id, "event": m.event, "channel": m.channel, "data": m.data}
                    for m in messages
                ]
            },
            headers={"cache-control": "no-store"},
        )

    async def index(request: Request) -> Response:
        # Small and always current: never let a browser keep a stale copy of the shell.
        return FileResponse(STATIC / "dashboard.html", headers={"cache-control": "no-cache"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await realtime.open()
        tune_gc()
        try:
            yield
        finally:
            await realtime.aclose()

    return Starlette(
        routes=[
            Route("/", index),
            Route("/healthz", healthz),
            Route("/api/realtime", sse),
            Route("/api/realtime/history", history),
            Route("/api/realtime/token", mint, methods=["POST"]),
            *routes,
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[
            Middleware_(
                Guard,
                token=token,
                allowed_hosts=allowed_hosts,
                cors_origins=cors_origins or (),
                max_body=max_body,
            )
        ],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such route, wrong method) in the API's JSON error shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    # The scope's path, not request.url: building a URL decodes the raw query string as UTF-8.
    path = str(request.scope.get("path", ""))[:200]
    message = f"no route for {request.method} {path}"
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {path}"
    return error_response(exc.status_code, code, message, headers=exc.headers)


# Routes anyone may call, by the path Starlette routes on: the dashboard's HTML shell and assets
# (no data in them), liveness, and the SSE and history endpoints (they check their own tokens).
# Everything else, a route added later included, needs the API token.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/api/realtime", "/api/realtime/history"})
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]@/]+)(?::\d{1,5})?")


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class Guard:
    """What every request passes before it reaches a route, in this order:

    1. ``Host``: only ``allowed_hosts`` (by default, without a token, loopback names only: a
       DNS-rebinding page names its own host and is refused).
    2. The API token, on every route but ``PUBLIC_PATHS``. The path is the one Starlette routes
       on (``root_path`` removed), so a ``Mount`` or ``--root-path`` prefix changes nothing.
    3. ``Origin``: a write (POST...) from another origin is refused unless it is one of
       ``cors_origins``: no cross-site form or ``fetch`` can trigger, cancel or notify.
    4. A write's body must be JSON (no "simple" cross-site ``text/plain`` request), at most
       ``max_body`` bytes, and arrive within ``body_timeout`` seconds (slow senders).
    """

    body_timeout = 30.0

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_hosts: Sequence[str] | None,
        cors_origins: Sequence[str],
        max_body: int,
    ) -> None:
        self.app = app
        self.token = token
        if allowed_hosts is None and token is not None:
            allowed_hosts = ["*"]
        self.hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self.origins = frozenset(cors_origins)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body: nothing to bound (SSE streams)
            return
        await self.bounded(scope, receive, send)

    def refusal(self, scope: Scope, headers: Headers) -> Response | None:
        try:
            # Starlette decodes it as UTF-8 to build a URL (redirects, error pages): raw bytes
            # from a server that passes them through (uvicorn refuses them) would be a 500.
            scope["query_string"].decode()
        except UnicodeDecodeError:
            return error_response(400, "bad_request", "the query string is not UTF-8")
        host = headers.get("host")
        if not self.host_allowed(host):
            served = "loopback names" if self.hosts is None else ", ".join(sorted(self.hosts))
            return error_response(
                403,
                "forbidden_host",
                f"Host {str(host)[:100]!r} is not served here (only {served}): set "
                "STEPSTREAM_TOKEN to serve the app under other names",
            )
        if not self.authorized(scope, headers):
            return error_response(
                401,
                "unauthorized",
                "send Authorization: Bearer <STEPSTREAM_TOKEN>",
                headers={"www-authenticate": "Bearer"},
            )
        if scope["method"] in SAFE_METHODS:
            return None
        return self.write_refusal(headers, host)

    def host_allowed(self, host: str | None) -> bool:
        if self.hosts is not None and "*" in self.hosts:
            return True
        if host is None:
            return True  # HTTP/1.0 without Host: not a browser, so not DNS rebinding
        match = HOST.fullmatch(host)
        if match is None:
            return False
        name = match.group(1).lower()
        return is_loopback(name) if self.hosts is None else name in self.hosts

    def authorized(self, scope: Scope, headers: Headers) -> bool:
        if self.token is None:
            return True
        path = get_route_path(scope)  # what the router matches routes against
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return True
        return same_token(bearer(headers.get("authorization")), self.token)

    def write_refusal(self, headers: Headers, host: str | None) -> Response | None:
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return error_response(
                403,
                "cross_origin",
                f"a write from origin {origin[:100]!r} is refused: add it to cors_origins to "
                "allow it",
            )
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()):
            return error_response(400, "bad_request", "Content-Length is not a number")
        media = headers.get("content-type", "").partition(";")[0].strip().lower()
        has_body = length != "0" or "transfer-encoding" in headers
        if has_body and not (media == "application/json" or media.endswith("+json")):
            return error_response(
                415,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json (got "
                f"{media[:60] or 'none'!r})",
            )
        return self.too_large() if int(length) > self.max_body else None

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        _, sep, netloc = origin.partition("://")
        same = bool(sep) and host is not None and netloc.lower() == host.lower()
        return same or "*" in self.origins or origin in self.origins

    def too_large(self) -> Response:
        message = f"the request body is over the {self.max_body}-byte limit"
        return error_response(413, "payload_too_large", message)

    async def bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a body that raises once it passes ``max_body`` bytes or
        ``body_timeout`` seconds, and answer 413/408 if the app had not answered yet."""
        deadline = asyncio.get_running_loop().time() + self.body_timeout
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
                raise BodyTooSlow from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_body:
                    raise BodyTooLarge
                complete = not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, watched_send)
        except (BodyTooLarge, BodyTooSlow, ClientDisconnect) as exc:
            if started:
                raise
            if isinstance(exc, ClientDisconnect):
                return  # nobody to answer
            if isinstance(exc, BodyTooLarge):
                response = self.too_large()
            else:
                message = f"the request body did not arrive within {self.body_timeout:g} s"
                response = error_response(408, "request_timeout", message)
                response.headers["connection"] = "close"  # a slow sender is not kept
            await response(scope, receive, send)


def tune_gc() -> None:
    """Tune the cyclic GC for a server holding thousands of SSE streams (``create_app`` calls it
    at start-up; call it once in your own server that mounts ``handle``).

    Everything loaded so far (modules, schemas) lives as long as the process: ``gc.freeze``
    keeps it out of the full passes, which otherwise stall every stream at once. And the young
    generation is collected less often: a broadcast to thousands of streams has thousands of
    objects in flight, and each collection that catches them promotes them towards the full
    passes (250-300 ms stalls at 5,000 connections).
    """
    gc.freeze()
    gc.set_threshold(max(gc.get_threshold()[0], GC_YOUNG_THRESHOLD), 20, 20)


def _limit(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 10_000:
        raise ValidationError(f"limit={value[:20]!r}: expected an integer from 1 to 10000")
    return int(value)


def workflows_app(
    workflows: Engine | HasEngine,
    *,
    workers: int = 1,
    concurrency: int = 100,
    lease: float = 15.0,
    middleware: Middleware | None = None,
    cors_origins: Sequence[str] | None = None,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_body: int = MAX_BODY,
) -> Starlette:
    """The app for a ``Workflows`` registry; its lifespan runs ``workers`` in-process workers
    (``0`` for an API/SSE-only server), each with ``concurrency`` and ``lease`` as ``Worker``
    takes them. ``token``, ``allowed_hosts``, ``max_body``: see ``create_app``."""
    engine = engine_of(workflows)
    realtime = engine.realtime or Realtime(backend=engine.backend.url)
    app = create_app(
        realtime,
        middleware=middleware,
        cors_origins=cors_origins,
        routes=api_routes(engine),
        token=token,
        allowed_hosts=allowed_hosts,
        max_body=max_body,
    )
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner(app):
            await engine.open()
            pool = [Worker(engine, concurrency=concurrency, lease=lease) for _ in range(workers)]
            for worker in pool:
                await worker.start()
            try:
                yield
            finally:
                for worker in pool:
                    await worker.stop(grace=10)
                await engine.aclose()

    app.router.lifespan_context = lifespan
    app.state.workflows = workflows
    return app
