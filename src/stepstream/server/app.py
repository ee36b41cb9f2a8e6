"""The stepstream ASGI app: routes, read top to bottom.

...  /qstash/v2/...              the QStash workflow API for Upstash Workflow SDK apps
                              (``stepstream.upstash``; 404 until ``upstash.enable``)
GET  /                        the dashboard (``static/dashboard.html``: runs, live run view)
GET  /healthz                 liveness + backend reachability
GET  /api/realtime            SSE, all three dialects (``realtime/sse.py``)
GET  /api/realtime/history    a channel's history as JSON (for clients without SSE history)
POST /api/realtime/token      mint a subscription token (API token needed)
...  /api/workflows, /api/runs, /api/events, /openapi.json: the JSON API (``api.py``), with
                              workflows
...  /api/schedules, /api/workflows/{name}/pause|resume: schedules and pauses
                              (``schedules.py``), with workflows
...  /api/runs/{id}/resume|restart|fork, /api/runs/cancel|resume, DELETE /api/runs/{id},
     /api/events/{id}/waiters: recovery (``recovery.py``), with workflows
GET  /static/...              the JS client (``stepstream.js``) and React hook (``react.js``)

Every request first passes ``RequireLifespan`` (an app with workflows mounted in another one:
503 until its lifespan runs) and ``Guard`` (Host, API token, Origin, body type and size). A
``StepstreamError`` raised by a route is answered by its entry in the error table
(``errors.py``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware as Middleware_
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from stepstream.auth import TOKEN_ENV
from stepstream.errors import (
    DETAIL_HEADER,
    BackendUnavailable,
    BadRequest,
    ClientDisconnected,
    MethodNotAllowed,
    RouteNotFound,
    StepstreamError,
    ValidationError,
)
from stepstream.realtime.channel import Realtime, check_channel_name
from stepstream.realtime.sse import Middleware, SSEEndpoint, error_response, handle
from stepstream.records import parse_cursor
from stepstream.responses import Json
from stepstream.server.api import JSONApi, read_json
from stepstream.server.guard import Guard
from stepstream.server.lifespan import Lifespan, RequireLifespan, tune_gc
from stepstream.server.limits import MAX_BODY
from stepstream.server.recovery import RecoveryApi
from stepstream.server.schedules import ScheduleApi
from stepstream.server.wire import HistoryPage, MintedToken
from stepstream.upstash import gateway_routes
from stepstream.workflow.engine import Engine, HasEngine, engine_of
from stepstream.workflow.presence import live_workers

__all__ = ["MAX_BODY", "Guard", "StepstreamApp", "create_app", "tune_gc", "workflows_app"]

STATIC = Path(__file__).parent / "static"
MINT_USAGE = 'send {"channels": ["..."], "ttl": seconds (max 7 days)}'
log = logging.getLogger("stepstream.server")


class StepstreamApp(Starlette):
    """The stepstream app (a Starlette app). ``lifespan`` is what it needs running while it
    serves (the store open, in-process workers): its own router runs it, and an app that
    mounts it runs it too, e.g. ``FastAPI(lifespan=stepstream_app.lifespan)``.
    """

    def __init__(
        self,
        *,
        routes: Sequence[BaseRoute],
        middleware: Sequence[Middleware_],
        lifespan: Lifespan,
    ) -> None:
        super().__init__(
            routes=routes,
            middleware=middleware,
            exception_handlers={
                StepstreamError: _stepstream_error,
                ClientDisconnect: _client_disconnected,
                404: _http_error,
                405: _http_error,
            },
            lifespan=lifespan,
        )
        self.lifespan = lifespan
        lifespan.owner = self


def engine_routes(engine: Engine) -> list[BaseRoute]:
    """The JSON API over ``engine``: recovery first (its bulk paths under ``/api/runs``). The
    QStash gateway's ``/qstash`` mount comes before every route (``create_app``): an SDK app
    publishes there on each step, and no other route is under ``/qstash``."""
    return [
        *RecoveryApi(engine).routes(),
        *JSONApi(engine).routes(),
        *ScheduleApi(engine).routes(),
    ]


def create_app(
    realtime: Realtime,
    *,
    middleware: Middleware | None = None,
    cors_origins: Sequence[str] | None = None,
    routes: Sequence[BaseRoute] = (),
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_body: int = MAX_BODY,
    engine: Engine | None = None,
    workers: int = 1,
    concurrency: int = 100,
    lease: float = 15.0,
) -> StepstreamApp:
    """The stepstream app for ``realtime`` (plus ``routes``); with an ``engine``, its JSON API
    too, and a lifespan that runs ``workers`` in-process workers (each with ``concurrency``
    and ``lease`` as ``Worker`` takes them), which an app mounting it must run (``lifespan``).

    ``token`` (default ``$STEPSTREAM_TOKEN``) protects the app: every route but the dashboard
    shell, ``/static``, ``/healthz`` and the SSE and history endpoints needs
    ``Authorization: Bearer <token>``, however the app is mounted; the SSE and history endpoints
    need a subscription token for each channel (``POST /api/realtime/token`` or
    ``realtime.token(...)``) or the API token as a bearer header.
    ``allowed_hosts``: the ``Host`` names served (``["*"]``: any; by default any with a token,
    only loopback names without one). ``max_body``: the largest body, in bytes (413 past it).

    >>> # app = create_app(Realtime(), token=os.environ["STEPSTREAM_TOKEN"])
    """
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    sse = handle(realtime, middleware=middleware, cors_origins=cors_origins, api_token=token)
    channels = ChannelEndpoints(realtime, sse, engine)
    lifespan = Lifespan(
        realtime, engine, workers=workers if engine else 0, concurrency=concurrency, lease=lease
    )
    guard = Middleware_(
        Guard,
        token=token,
        allowed_hosts=allowed_hosts,
        cors_origins=cors_origins or (),
        max_body=max_body,
    )
    return StepstreamApp(
        routes=[
            *(gateway_routes(engine) if engine else ()),
            Route("/", index),
            Route("/healthz", channels.healthz),
            Route("/api/realtime", sse),
            Route("/api/realtime/history", channels.history),
            Route("/api/realtime/token", channels.mint, methods=["POST"]),
            *(engine_routes(engine) if engine else ()),
            *routes,
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[
            *cross_origin(cors_origins, token),
            *([Middleware_(RequireLifespan, lifespan=lifespan)] if engine else ()),
            guard,
        ],
        lifespan=lifespan,
    )


def cross_origin(origins: Sequence[str] | None, token: str | None) -> list[Middleware_]:
    """Pages of ``origins`` may call the whole API: the answers carry the CORS headers, and a
    preflight is answered before the token check (a browser sends none with it). Outermost,
    so a refusal's answer is readable there too. ``"*"`` (any page, without credentials)
    opens the API only when a token guards it: without one, any site a developer visits could
    list, trigger and cancel runs, so there ``"*"`` keeps to the SSE endpoint (its own CORS)."""
    anyone = "*" in (origins or ())
    if anyone and token is None:
        origins = [origin for origin in origins or () if origin != "*"]
        anyone = False
    if not origins:
        return []
    return [
        Middleware_(
            CORSMiddleware,
            allow_origins=["*"] if anyone else list(origins),
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["*"],
            allow_credentials=not anyone,
            max_age=600,
        )
    ]


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
) -> StepstreamApp:
    """The app for a ``Workflows`` registry (``workflows.asgi()``); its lifespan runs
    ``workers`` in-process workers (``0`` for an API/SSE-only server). Mounted in another app,
    that app must run its ``lifespan`` (README: Embedding in FastAPI or Starlette); until
    then every request is a 503 saying so. Options: see ``create_app``."""
    engine = engine_of(workflows)
    app = create_app(
        engine.realtime or Realtime(backend=engine.backend),
        middleware=middleware,
        cors_origins=cors_origins,
        token=token,
        allowed_hosts=allowed_hosts,
        max_body=max_body,
        engine=engine,
        workers=workers,
        concurrency=concurrency,
        lease=lease,
    )
    app.state.workflows = workflows
    return app


# -- the endpoints ------------------------------------------------------------------------------


async def index(request: Request) -> Response:
    # Small and always current: never let a browser keep a stale copy of the shell.
    return FileResponse(STATIC / "dashboard.html", headers={"cache-control": "no-cache"})


class ChannelEndpoints:
    """Health, and the JSON side of realtime: a channel's history, minting tokens."""

    def __init__(self, realtime: Realtime, sse: SSEEndpoint, engine: Engine | None = None) -> None:
        self.realtime = realtime
        self.sse = sse
        self.engine = engine

    async def healthz(self, request: Request) -> Response:
        try:
            hub = await self.realtime.hub()
            await self.realtime.backend.ping()
        except StepstreamError as exc:
            # Public route: the backend's own message may name its URL (and a password in it).
            log.warning("health check: %s", exc)
            problem = {"code": "backend_unavailable", "message": "the backend does not answer"}
            body = {"status": "unavailable", "error": problem}
            return Json(body, status_code=503)
        health = {
            "status": "ok",
            "backend": self.realtime.backend.url.split(":", 1)[0],
            "sse_connections": self.sse.active,
            "live_channels": hub.watched,
        }
        if self.engine is not None:  # how many, not who: this route is public
            health["workers"] = len(await live_workers(self.engine))
            health["retention"] = self.engine.retention
        return Json(health)

    async def history(self, request: Request) -> Response:
        params = request.query_params
        channel = params.get("channel", "default")
        try:
            check_channel_name(channel)
        except ValidationError as exc:
            raise BadRequest(f"bad channel name: {exc}") from None
        refusal = await self.sse.authorize(request, [channel])
        if refusal is not None:
            return refusal
        limit = _limit(params.get("limit", "100"))
        after = _cursor("after", params.get("after"))
        messages = await self.realtime.channel(channel).history(limit=limit, after=after)
        page = HistoryPage(
            messages=[
                {"id": m.id, "event": m.event, "channel": m.channel, "data": m.data}
                for m in messages
            ]
        )
        return Json(page, headers={"cache-control": "no-store"})

    async def mint(self, request: Request) -> Response:
        body = await read_json(request, "the token request")
        try:
            channels, ttl = body["channels"], float(body.get("ttl", 3600))
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError):
            raise BadRequest(MINT_USAGE) from None
        if not isinstance(channels, list) or not channels or not 0 < ttl <= 7 * 86400:
            raise BadRequest(MINT_USAGE)
        token = self.realtime.token(channels, ttl)
        return Json(MintedToken(token=token, channels=channels, ttl=ttl))


def _limit(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 10_000:
        raise BadRequest(f"limit={value[:20]!r}: expected an integer from 1 to 10000")
    return int(value)


def _cursor(name: str, value: str | None) -> str | None:
    if value is not None:
        try:
            parse_cursor(value)
        except ValueError:
            raise BadRequest(f"{name}={value[:40]!r} is not a cursor") from None
    return value


# -- errors: every answer in the error table's shape ---------------------------------------------


class _Outages:
    """A storage outage is the operator's news, which otherwise shows only as 503s in the
    access log: a warning at most once every ``every`` seconds, not one per request."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last = -math.inf

    def report(self, exc: BackendUnavailable) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.warning("storage unavailable, answering 503: %s", exc)


_OUTAGES = _Outages(10.0)


async def _stepstream_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StepstreamError)
    if isinstance(exc, BackendUnavailable):
        _OUTAGES.report(exc)
    return error_response(exc, detail=DETAIL_HEADER in request.headers)


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    return error_response(ClientDisconnected("the request body was cut off"))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such route, wrong method) in the API's JSON error shape."""
    assert isinstance(exc, HTTPException)
    # The scope's path, not request.url: building a URL decodes the raw query string as UTF-8.
    path = str(request.scope.get("path", ""))[:200]
    error: StepstreamError = RouteNotFound(f"no route for {request.method} {path}")
    if exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {path}")
    return error_response(error, headers=exc.headers)
