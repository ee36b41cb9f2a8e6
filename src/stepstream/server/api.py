"""The JSON API of DESIGN §5. Each endpoint raises what went wrong; the app answers every
``StepstreamError`` with its 4xx (or 503) from the error table, never a 500 for anything a
client sent."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepstream.errors import (
    DETAIL_HEADER,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    MalformedJSON,
    ValidationError,
    error_body,
)
from stepstream.records import RunState
from stepstream.responses import Json
from stepstream.server.filters import query_filter
from stepstream.server.openapi import OPENAPI
from stepstream.server.wire import (
    Canceled,
    Notified,
    Triggered,
    TriggerUnanswered,
    Workers,
    read_log,
    read_runs,
    workflow_names,
)
from stepstream.workflow.engine import Engine, run_id_from
from stepstream.workflow.flow import MAX_LIMIT, FlowControl
from stepstream.workflow.presence import live_workers

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
    DETAIL_HEADER,  # stepstream's clients ask for error details on every request
}
# ...and credentials, by any name that looks like one: a run's headers are stored and readable
# by whoever can read the run.
CREDENTIAL = re.compile(r"auth|cookie|token|secret|passw|session|api-?key|credential", re.I)
MAX_DELAY = 366 * 24 * 3600  # seconds
MAX_DEPTH = 512  # levels of nesting in a request body


async def read_json(request: Request, what: str) -> Any:
    """The request's JSON body (``None`` if empty), or ``MalformedJSON`` saying what is wrong
    with it. The app's ``Guard`` bounds the body's size and checked it is said to be JSON."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedJSON(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # json.loads recurses per level: ~1000 "[" exhaust the stack
        raise MalformedJSON(f"{what} nests over {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # an integer of over 4300 digits (sys.get_int_max_str_digits)
        raise MalformedJSON(f"{what} cannot be read: {exc}") from None
    if _deeper_than(value, MAX_DEPTH):
        raise MalformedJSON(f"{what} nests over {MAX_DEPTH} levels deep")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` lists and objects deep. What is stored is
    written back into logs a few levels deeper, by an encoder that recurses per level: a value
    just short of the parser's limit would fail there, as a 500."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def forwarded_headers(request: Request) -> dict[str, str]:
    """The trigger request's headers a run keeps (``context.headers``): no transport headers,
    no credentials."""
    return {
        name: value
        for name, value in request.headers.items()
        if name not in NOT_FORWARDED and not CREDENTIAL.search(name)
    }


class JSONApi:
    """The endpoints over ``engine``, in ``routes()`` order."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def routes(self) -> list[Route]:
        return [
            Route("/api/workflows", self.list_workflows, methods=["GET"]),
            Route("/api/workflows/{name}", self.trigger, methods=["POST"]),
            Route("/api/runs", self.list_runs, methods=["GET"]),
            Route("/api/runs/{run_id}", self.get_run, methods=["GET"]),
            Route("/api/runs/{run_id}/cancel", self.cancel, methods=["POST"]),
            # :path: an event id may hold "/" (sent as %2F, which the server decodes).
            Route("/api/events/{event_id:path}", self.notify, methods=["POST"]),
            Route("/api/workers", self.workers, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    async def list_workflows(self, request: Request) -> Response:
        # The names are the code's; which are paused is storage's, as last read if it is down.
        with contextlib.suppress(BackendError):
            await self.engine.read_paused()
        return Json(workflow_names(self.engine))

    async def workers(self, request: Request) -> Response:
        """The workers heard from in the last 30 s (none: runs stay queued)."""
        found: Any = await live_workers(self.engine)  # entries as the workers wrote them
        return Json(Workers(workers=found))

    async def trigger(self, request: Request) -> Response:
        body = await read_json(request, "the request payload")
        delay = _delay(request.query_params.get("delay"))
        run_id = run_id_from(request.query_params.get("workflowRunId"))
        name = request.path_params["name"]
        definition = self.engine.registry.get(name)
        if definition.internal:
            raise ValidationError(
                f"workflow {name!r} is stepstream's own (the Upstash gateway's): its runs are "
                "started through /qstash, not here"
            )
        flow = flow_from_query(request.query_params, definition.flow_control)
        try:
            await self.engine.trigger(
                name,
                body,
                run_id=run_id,
                delay=delay,
                headers=forwarded_headers(request),
                flow_control=flow,
                labels=request.query_params.getlist("label"),
            )
        except BackendError as exc:
            # The write may have been applied and only its answer lost: say which run to look
            # for, so a retry with the same id cannot start it twice (a 409 means it exists).
            error = BackendUnavailable(
                f"{exc}; run {run_id} may or may not have been created: retry with "
                f"?workflowRunId={run_id} (409 then means it exists)"
            )
            unanswered = TriggerUnanswered(error=error_body(error)["error"], workflowRunId=run_id)
            return Json(unanswered, status_code=error.status)
        return Json(Triggered(workflowRunId=run_id), status_code=202)

    async def get_run(self, request: Request) -> Response:
        return Json(await read_log(self.engine, request.path_params["run_id"]))

    async def list_runs(self, request: Request) -> Response:
        params = request.query_params
        count = params.get("count", "50")
        # str.isdigit() alone lets "²" through to int(), which refuses it with a ValueError.
        if not _digits(count) or not 1 <= int(count) <= 1000:
            raise ValidationError("count must be an integer from 1 to 1000")
        cursor = params.get("cursor")
        if cursor is not None and (not _digits(cursor) or int(cursor) >= 2**63):
            raise ValidationError("cursor must be the value returned by the previous page")
        where = query_filter(params)
        page = await read_runs(self.engine, where, cursor=cursor, count=int(count))
        return Json(page)

    async def cancel(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await self.engine.cancel(run_id)
        return Json(Canceled(workflowRunId=run_id, workflowState=RunState.CANCELED.value))

    async def notify(self, request: Request) -> Response:
        data = await read_json(request, "the event data")
        event_id = request.path_params["event_id"]
        run_id = request.query_params.get("workflowRunId")
        waiters = await self.engine.notify(event_id, data, run_id)
        return Json(Notified(eventId=event_id, waiters=waiters))

    async def openapi(self, request: Request) -> Response:
        return Json(OPENAPI)


def flow_from_query(params: Mapping[str, str], declared: FlowControl | None) -> FlowControl | None:
    """The flow control a trigger's query asks for (``flowControlKey``, ``parallelism``,
    ``rate``, ``period``): a key alone keeps the workflow's declared limits."""
    key = params.get("flowControlKey")
    parallelism = _count(params, "parallelism")
    rate = _count(params, "rate")
    period = _seconds(params, "period")
    if key is None:
        if parallelism is not None or rate is not None or period is not None:
            raise ValidationError("parallelism, rate and period need flowControlKey=<key>")
        return None
    if parallelism is None and rate is None:
        if declared is None:
            raise ValidationError(
                "flowControlKey needs parallelism=<n> or rate=<n> (with period=<seconds>): "
                "this workflow declares no flow control to take them from"
            )
        parallelism, rate = declared.parallelism, declared.rate
        period = declared.period if period is None else period
    try:
        return FlowControl(key, parallelism, rate, 1.0 if period is None else period)
    except ConfigurationError as exc:
        raise ValidationError(str(exc)) from None


def _count(params: Mapping[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not _digits(text) or len(text) > 10 or not 1 <= int(text) <= MAX_LIMIT:
        raise ValidationError(
            f"{name}={text[:30]!r}: expected a whole number from 1 to {MAX_LIMIT:,}"
        )
    return int(text)


def _seconds(params: Mapping[str, str], name: str) -> float | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValidationError(f"{name}={text[:30]!r}: expected seconds") from None


def _delay(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        delay = float(text)
    except ValueError:
        raise ValidationError(f"delay={text[:30]!r}: expected seconds") from None
    if not 0 <= delay <= MAX_DELAY:
        raise ValidationError("delay must be between 0 and one year, in seconds")
    return delay


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()
