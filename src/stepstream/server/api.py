"""The JSON API of DESIGN §5. Every client mistake is a 4xx ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepstream.errors import (
    NoWaiters,
    RunConflict,
    RunNotFound,
    StepstreamError,
    UnknownWorkflow,
    ValidationError,
)
from stepstream.realtime.sse import error_response
from stepstream.server.openapi import OPENAPI
from stepstream.workflow.client import run_log
from stepstream.workflow.records import RunState

if TYPE_CHECKING:
    from stepstream.workflow.registry import Workflows

Endpoint = Callable[[Request], Awaitable[Response]]
FORWARDED_HEADERS_DROPPED = {
    "host",
    "content-length",
    "content-type",
    "connection",
    "authorization",
    "cookie",
    "accept-encoding",
    "transfer-encoding",
}


class BodyTooLarge(Exception):
    pass


def api_routes(workflows: Workflows, *, max_body: int = 1_000_000) -> list[Route]:
    engine = workflows.engine

    async def read_json(request: Request, what: str) -> Any:
        size = 0
        chunks = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise BodyTooLarge(f"{what} is over the {max_body}-byte limit")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{what} is not valid JSON: {exc}") from None

    async def trigger(request: Request) -> Response:
        body = await read_json(request, "the request payload")
        delay_text = request.query_params.get("delay")
        delay = None
        if delay_text is not None:
            try:
                delay = float(delay_text)
            except ValueError:
                raise ValidationError(f"delay={delay_text[:30]!r}: expected seconds") from None
            if not 0 <= delay <= 366 * 24 * 3600:
                raise ValidationError("delay must be between 0 and one year, in seconds")
        headers = {k: v for k, v in request.headers.items() if k not in FORWARDED_HEADERS_DROPPED}
        run_id = await engine.trigger(
            request.path_params["name"],
            body,
            run_id=request.query_params.get("workflowRunId"),
            delay=delay,
            headers=headers,
        )
        return JSONResponse({"workflowRunId": run_id}, status_code=202)

    async def get_run(request: Request) -> Response:
        run = await workflows.backend.get_run(request.path_params["run_id"])
        if run is None:
            raise RunNotFound(request.path_params["run_id"])
        return JSONResponse(run_log(run))

    async def list_runs(request: Request) -> Response:
        params = request.query_params
        state = params.get("state")
        if state is not None and state not in {s.value for s in RunState}:
            raise ValidationError(
                f"state={state[:40]!r}: use one of {', '.join(s.value for s in RunState)}"
            )
        count_text = params.get("count", "50")
        # str.isdigit() alone lets "²" through to int(), which refuses it with a ValueError.
        if not _digits(count_text) or not 1 <= int(count_text) <= 1000:
            raise ValidationError("count must be an integer from 1 to 1000")
        cursor = params.get("cursor")
        if cursor is not None and (not _digits(cursor) or int(cursor) >= 2**63):
            raise ValidationError("cursor must be the value returned by the previous page")
        page = await workflows.backend.list_runs(
            state=state, workflow=params.get("workflow"), cursor=cursor, count=int(count_text)
        )
        return JSONResponse({"runs": [run_log(run) for run in page.runs], "cursor": page.cursor})

    async def cancel(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await engine.cancel(run_id)
        return JSONResponse({"workflowRunId": run_id, "workflowState": RunState.CANCELED.value})

    async def notify(request: Request) -> Response:
        data = await read_json(request, "the event data")
        waiters = await engine.notify(
            request.path_params["event_id"], data, request.query_params.get("workflowRunId")
        )
        return JSONResponse({"eventId": request.path_params["event_id"], "waiters": waiters})

    async def list_workflows(request: Request) -> Response:
        return JSONResponse({"workflows": workflows.names})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    return [
        Route("/api/workflows", guarded(list_workflows), methods=["GET"]),
        Route("/api/workflows/{name}", guarded(trigger), methods=["POST"]),
        Route("/api/runs", guarded(list_runs), methods=["GET"]),
        Route("/api/runs/{run_id}", guarded(get_run), methods=["GET"]),
        Route("/api/runs/{run_id}/cancel", guarded(cancel), methods=["POST"]),
        Route("/api/events/{event_id}", guarded(notify), methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def guarded(endpoint: Endpoint) -> Endpoint:
    """Map every error a client can cause to its 4xx; a backend failure is a 503."""

    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except BodyTooLarge as exc:
            return error_response(413, "payload_too_large", str(exc))
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                return error_response(422, "validation_error", str(exc))
            return error_response(400, "malformed_json", str(exc))
        except UnknownWorkflow as exc:
            return error_response(404, "unknown_workflow", str(exc))
        except RunNotFound as exc:
            return error_response(404, "run_not_found", str(exc))
        except NoWaiters as exc:
            return error_response(404, "no_waiters", str(exc))
        except RunConflict as exc:
            return error_response(409, "conflict", str(exc))
        except RecursionError:
            # json.loads/dumps recurse per nesting level: ~1000 "[" would otherwise be a 500.
            return error_response(400, "malformed_json", "the JSON is nested too deeply")
        except ClientDisconnect:
            return error_response(400, "client_disconnected", "the request body was cut off")
        except StepstreamError as exc:
            return error_response(503, "backend_unavailable", str(exc))

    return wrapper
