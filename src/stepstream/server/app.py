"""The stepstream ASGI app: routes, read top to bottom.

GET  /                        the dashboard (``static/dashboard.html``: runs, live run view)
GET  /healthz                 liveness + backend reachability
GET  /api/realtime            SSE, all three dialects (``realtime/sse.py``)
GET  /api/realtime/history    a channel's history as JSON (for clients without SSE history)
GET  /static/...              the JS client (``stepstream.js``) and React hook (``react.js``)
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware as Middleware_
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from stepstream.auth import TOKEN_ENV, bearer, same_token
from stepstream.backends.base import parse_cursor
from stepstream.errors import CursorUnavailable, StepstreamError, ValidationError
from stepstream.realtime.channel import Realtime
from stepstream.realtime.sse import Middleware, error_response, handle
from stepstream.server.api import api_routes

if TYPE_CHECKING:
    from stepstream.workflow.registry import Workflows

STATIC = Path(__file__).parent / "static"
GC_YOUNG_THRESHOLD = 50_000


def create_app(
    realtime: Realtime,
    *,
    middleware: Middleware | None = None,
    cors_origins: Sequence[str] | None = None,
    routes: Sequence[BaseRoute] = (),
    token: str | None = None,
) -> Starlette:
    """The stepstream app for ``realtime`` (plus ``routes``). Its lifespan opens and closes the
    backend.

    ``token`` (default ``$STEPSTREAM_TOKEN``) protects the API: every ``/api/...`` request needs
    ``Authorization: Bearer <token>``, and the SSE endpoint needs a subscription token for each
    channel (``POST /api/realtime/token`` or ``realtime.token(...)``).
    """
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    sse = handle(realtime, middleware=middleware, cors_origins=cors_origins, api_token=token)

    async def mint(request: Request) -> Response:
        try:
            body = await request.json()
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
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
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
        middleware=[Middleware_(BearerAuth, token=token)] if token else [],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such route, wrong method) in the API's JSON error shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = f"no route for {request.method} {request.url.path}"
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, code, message, headers=exc.headers)


class BearerAuth:
    """Refuses ``/api/...`` requests (but the SSE endpoint, which checks its own tokens)
    without ``Authorization: Bearer <token>``, before they reach any route."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and path.startswith("/api/")
            and path != "/api/realtime"
            and scope.get("method") != "OPTIONS"
            and not same_token(bearer(Headers(scope=scope).get("authorization")), self.token)
        ):
            response = error_response(
                401, "unauthorized", "send Authorization: Bearer <STEPSTREAM_TOKEN>"
            )
            response.headers["www-authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


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
    workflows: Workflows,
    *,
    workers: int = 1,
    concurrency: int = 100,
    middleware: Middleware | None = None,
    cors_origins: Sequence[str] | None = None,
    token: str | None = None,
) -> Starlette:
    """The app for a ``Workflows`` registry; its lifespan runs ``workers`` in-process workers
    (``0`` for an API/SSE-only server). ``token``: see ``create_app``."""
    realtime = workflows.realtime or Realtime(backend=workflows.backend.url)
    app = create_app(
        realtime,
        middleware=middleware,
        cors_origins=cors_origins,
        routes=api_routes(workflows),
        token=token,
    )
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner(app):
            await workflows.open()
            pool = [workflows.worker(concurrency=concurrency) for _ in range(workers)]
            for worker in pool:
                await worker.start()
            try:
                yield
            finally:
                for worker in pool:
                    await worker.stop(grace=10)
                await workflows.engine.aclose()

    app.router.lifespan_context = lifespan
    app.state.workflows = workflows
    return app
