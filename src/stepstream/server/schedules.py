"""The schedule endpoints of DESIGN §13 and pausing whole workflows: routes over
``workflow.scheduler.Schedules`` and ``Engine.pause``/``resume``.

POST   /api/schedules                   create: {"id", "workflow", "cron", "timezone"?, "payload"?}
GET    /api/schedules                   {"schedules": [...]}, by id
GET    /api/schedules/{id}              one
DELETE /api/schedules/{id}              remove it
POST   /api/schedules/{id}/pause        no more runs until resumed
POST   /api/schedules/{id}/resume       runs again from the next tick
POST   /api/workflows/{name}/pause      no run of it executes (triggers are still accepted)
POST   /api/workflows/{name}/resume     its runs execute again
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepstream.errors import ValidationError
from stepstream.responses import Json
from stepstream.server.api import read_json
from stepstream.server.wire import ScheduleDeleted, ScheduleInfo, ScheduleList, WorkflowPaused
from stepstream.workflow.engine import Engine
from stepstream.workflow.scheduler import ScheduleRecord, Schedules

CREATE_USAGE = (
    'send {"id": "nightly", "workflow": "<name>", "cron": "0 2 * * *", '
    '"timezone": "Europe/Berlin" (optional, default UTC), "payload": <any JSON> (optional)}'
)
CREATE_FIELDS = {"id", "workflow", "cron", "timezone", "payload"}


def schedule_info(record: ScheduleRecord, now: int) -> ScheduleInfo:
    """A stored schedule in its wire shape, its next run counted from ``now``."""
    return ScheduleInfo(
        id=record.id,
        workflow=record.workflow,
        cron=record.cron,
        timezone=record.timezone,
        payload=record.payload,
        paused=record.paused,
        nextRunAt=record.next_run_at(now),
        lastRunId=record.last_run_id,
        lastError=record.last_error,
    )


async def read_schedules(engine: Engine) -> ScheduleList:
    now = engine.clock()
    records = await Schedules(engine).list()
    return ScheduleList(schedules=[schedule_info(record, now) for record in records])


def create_arguments(body: Any) -> dict[str, Any]:
    """The arguments of ``Schedules.create`` in a ``POST /api/schedules`` body, or a
    ``ValidationError`` saying what is wrong and what to send."""
    if not isinstance(body, dict):
        raise ValidationError(f"the body must be a JSON object: {CREATE_USAGE}")
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise ValidationError(f"unknown fields {', '.join(unknown)}: {CREATE_USAGE}")
    for name in ("id", "workflow", "cron"):
        if not isinstance(body.get(name), str):
            raise ValidationError(f"{name} must be a string: {CREATE_USAGE}")
    timezone = body.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise ValidationError(f"timezone must be a string such as 'Europe/Berlin': {CREATE_USAGE}")
    return {
        "schedule_id": body["id"],
        "workflow": body["workflow"],
        "cron": body["cron"],
        "timezone": timezone,
        "payload": body.get("payload"),
    }


class ScheduleApi:
    """The endpoints over ``engine``'s schedules and pauses, in ``routes()`` order."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.schedules = Schedules(engine)

    def routes(self) -> list[Route]:
        return [
            Route("/api/schedules", self.list, methods=["GET"]),
            Route("/api/schedules", self.create, methods=["POST"]),
            Route("/api/schedules/{id}", self.get, methods=["GET"]),
            Route("/api/schedules/{id}", self.delete, methods=["DELETE"]),
            Route("/api/schedules/{id}/pause", self.pause, methods=["POST"]),
            Route("/api/schedules/{id}/resume", self.resume, methods=["POST"]),
            Route("/api/workflows/{name}/pause", self.pause_workflow, methods=["POST"]),
            Route("/api/workflows/{name}/resume", self.resume_workflow, methods=["POST"]),
        ]

    def _answer(self, record: ScheduleRecord, status: int = 200) -> Response:
        return Json(schedule_info(record, self.engine.clock()), status_code=status)

    async def list(self, request: Request) -> Response:
        return Json(await read_schedules(self.engine))

    async def create(self, request: Request) -> Response:
        body = await read_json(request, "the schedule")
        record = await self.schedules.create(**create_arguments(body))
        return self._answer(record, 201)

    async def get(self, request: Request) -> Response:
        return self._answer(await self.schedules.get(request.path_params["id"]))

    async def delete(self, request: Request) -> Response:
        schedule_id = request.path_params["id"]
        await self.schedules.delete(schedule_id)
        return Json(ScheduleDeleted(id=schedule_id, deleted=True))

    async def pause(self, request: Request) -> Response:
        return self._answer(await self.schedules.pause(request.path_params["id"]))

    async def resume(self, request: Request) -> Response:
        return self._answer(await self.schedules.resume(request.path_params["id"]))

    async def pause_workflow(self, request: Request) -> Response:
        name = request.path_params["name"]
        await self.engine.pause(name)
        return Json(WorkflowPaused(workflow=name, paused=True))

    async def resume_workflow(self, request: Request) -> Response:
        name = request.path_params["name"]
        await self.engine.resume(name)
        return Json(WorkflowPaused(workflow=name, paused=False))
