"""The JSON API of DESIGN §5. Every client mistake is a 4xx ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepstream.errors import (
    BackendError,
    NoWaiters,
    RunConflict,
    RunNotFound,
    StepstreamError,
    UnknownWorkflow,
    ValidationError,
)
from stepstream.realtime.sse import error_response
from stepstream.records import RunState
from stepstream.server.openapi import OPENAPI
from stepstream.workflow.client import run_log
from stepstream.workflow.engine import Engine, run_id_from

Endpoint = Callable[[Request], Awaitable[Response]]
# Headers a run does not keep from its trigger request: transport and body framing...
NOT_FORWARDED = {
    "host",
    "content-length",
    "content-type",
    "connection",
    "keep-alive",
    "accept-encoding",
    "transfer-encoding",
    "te",
    "upgrade",
}
# ...and credentials, by any name that looks like one: a run's headers are stored and readable
# by whoever can read the run.
CREDENTIAL = re.compile(r"auth|cookie|token|secret|passw|session|api-?key|credential", re.I)


async def read_json(request: Request, what: str) -> Any:
    """The request's JSON body (``None`` if empty), or ``ValueError`` saying what is wrong with
    it. The app's ``Guard`` bounds the body's size and checked it is said to be JSON."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None


def forwarded_headers(request: Request) -> dict[str, str]:
    """The trigger request's headers a run keeps (``context.headers``): no transport headers,
    no credentials."""
    return {
        name: value
        for name, value in request.headers.items()
        if name not in NOT_FORWARDED and not CREDENTIAL.search(name)
    }


def api_routes(engine: Engine) -> list[Route]:
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
        run_id = run_id_from(request.query_params.get("workflowRunId"))
        try:
            await engine.trigger(
                request.path_params["name"],
                body,
                run_id=run_id,
                delay=delay,
                headers=forwarded_headers(request),
            )
        except BackendError as exc:
            # The write may have been applied and only its answer lost: say which run to look
            # for, so a retry with the same id cannot start it twice (a 409 means it exists).
            return JSONResponse(
                {
                    "error": {
                        "code": "backend_unavailable",
                        "message": f"{exc}; run {run_id} may or may not have been created: "
                        f"retry with ?workflowRunId={run_id} (409 then means it exists)",
                    },
                    "workflowRunId": run_id,
                },
                status_code=503,
            )
        return JSONResponse({"workflowRunId": run_id}, status_code=202)

    async def get_run(request: Request) -> Response:
        run = await engine.backend.get_run(request.path_params["run_id"])
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
        page = await engine.backend.list_runs(
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
        return JSONResponse({"workflows": engine.registry.names})

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
