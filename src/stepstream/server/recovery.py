"""The recovery endpoints of DESIGN §14: routes over ``workflow.recovery``.

POST   /api/runs/cancel                 bulk: {"ids": [...]} or {"filter": {...}} -> {"canceled"}
POST   /api/runs/resume                 bulk, the same body -> {"resumed"}
POST   /api/runs/{id}/resume            a failed or canceled run continues in place
POST   /api/runs/{id}/restart           201 {"workflowRunId"}: a new run, same payload
POST   /api/runs/{id}/fork?fromStep=N   201 {"workflowRunId"}: steps before N copied
DELETE /api/runs/{id}                   a finished run and its channel history
GET    /api/events/{id}/waiters         {"waiters": [...]}: the steps waiting for it
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepstream.errors import ValidationError
from stepstream.records import RunState
from stepstream.responses import Json
from stepstream.server.api import read_json
from stepstream.server.filters import FILTER_FIELDS, run_filter
from stepstream.server.wire import (
    BulkCanceled,
    BulkResumed,
    Deleted,
    Resumed,
    Triggered,
    WaiterInfo,
    Waiters,
)
from stepstream.workflow import recovery
from stepstream.workflow.engine import Engine
from stepstream.workflow.recovery import Selection

BULK_USAGE = (
    'send {"ids": ["wfr_..."]} or {"filter": {"state": "RUN_FAILED", "workflow": "<name>", '
    '"label": "<label>", "createdAfter": <epoch ms>, "createdBefore": <epoch ms>}} '
    "(at least one filter field)"
)


class RecoveryApi:
    """The endpoints over ``engine``'s recovery, in ``routes()`` order (the bulk paths before
    ``/api/runs/{id}`` routes of other methods would shadow them)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def routes(self) -> list[Route]:
        return [
            Route("/api/runs/cancel", self.bulk_cancel, methods=["POST"]),
            Route("/api/runs/resume", self.bulk_resume, methods=["POST"]),
            Route("/api/runs/{run_id}/resume", self.resume, methods=["POST"]),
            Route("/api/runs/{run_id}/restart", self.restart, methods=["POST"]),
            Route("/api/runs/{run_id}/fork", self.fork, methods=["POST"]),
            Route("/api/runs/{run_id}", self.delete, methods=["DELETE"]),
            Route("/api/events/{event_id:path}/waiters", self.waiters, methods=["GET"]),
        ]

    async def resume(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await recovery.resume(self.engine, run_id)
        return Json(Resumed(workflowRunId=run_id, workflowState=RunState.STARTED.value))

    async def restart(self, request: Request) -> Response:
        new = await recovery.restart(self.engine, request.path_params["run_id"])
        return Json(Triggered(workflowRunId=new), status_code=201)

    async def fork(self, request: Request) -> Response:
        step = request.query_params.get("fromStep")
        if not step:
            raise ValidationError("fork needs ?fromStep=<step name>: the first step to execute")
        new = await recovery.fork(self.engine, request.path_params["run_id"], step)
        return Json(Triggered(workflowRunId=new), status_code=201)

    async def delete(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await recovery.delete(self.engine, run_id)
        return Json(Deleted(workflowRunId=run_id, deleted=True))

    async def waiters(self, request: Request) -> Response:
        found = await recovery.waiters(self.engine, request.path_params["event_id"])
        return Json(
            Waiters(
                waiters=[
                    WaiterInfo(
                        workflowRunId=w.run_id,
                        stepName=w.step_name,
                        stepId=w.position,
                        deadline=w.deadline,
                    )
                    for w in found
                ]
            )
        )

    async def bulk_cancel(self, request: Request) -> Response:
        selection = selection_from(await read_json(request, "the request body"))
        return Json(BulkCanceled(canceled=await recovery.bulk(self.engine, "cancel", selection)))

    async def bulk_resume(self, request: Request) -> Response:
        selection = selection_from(await read_json(request, "the request body"))
        return Json(BulkResumed(resumed=await recovery.bulk(self.engine, "resume", selection)))


def selection_from(body: Any) -> Selection:
    """The runs a bulk request's body names, or a ``ValidationError`` saying what to send."""
    if not isinstance(body, dict):
        raise ValidationError(f"the body must be a JSON object, not {_kind(body)}: {BULK_USAGE}")
    unknown = sorted(set(body) - {"ids", "filter"})
    if unknown:
        raise ValidationError(f"unknown fields {', '.join(unknown)}: {BULK_USAGE}")
    if len(body) != 1:
        which = "not both" if body else "got neither"
        raise ValidationError(f'give "ids" or "filter", {which}: {BULK_USAGE}')
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise ValidationError(f'"ids" must be a list of run ids: {BULK_USAGE}')
        return Selection(ids=tuple(ids))
    given = body["filter"]
    if not isinstance(given, dict):
        raise ValidationError(f'"filter" must be an object: {BULK_USAGE}')
    unknown = sorted(set(given) - set(FILTER_FIELDS))
    if unknown:
        raise ValidationError(f"unknown filter fields {', '.join(unknown)}: {BULK_USAGE}")
    return Selection(where=run_filter(given))


def _kind(value: Any) -> str:
    """What a JSON value is, for a message."""
    if value is None:
        return "empty (or null)"
    kinds = {bool: "a boolean", str: "a string", list: "a list", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)
