"""The OpenAPI description of schedules (DESIGN §13) and of pausing workflows
(``schedules.py``); ``openapi.py`` merges it into the document."""

from __future__ import annotations

from typing import Any

from stepstream.server.openapi_common import (
    ANY_JSON,
    EPOCH_MS,
    error,
    json_body,
    nullable,
    obj,
    ref,
)

SCHEDULE_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
CRON = {
    "type": "string",
    "description": "5 fields (minute hour day-of-month month day-of-week), or 6 with a leading "
    "seconds field",
    "examples": ["0 9 * * 1-5", "*/10 * * * * *"],
}
TIMEZONE = {"type": "string", "description": "IANA time zone", "examples": ["Europe/Berlin"]}
ID_IN_PATH = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
NAME_IN_PATH = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

SCHEDULE_SCHEMAS: dict[str, Any] = {
    "Schedule": obj(
        {
            "id": SCHEDULE_ID,
            "workflow": {"type": "string"},
            "cron": CRON,
            "timezone": TIMEZONE,
            "payload": ANY_JSON,
            "paused": {"type": "boolean"},
            "nextRunAt": nullable({**EPOCH_MS, "description": "epoch ms; null while paused"}),
            "lastRunId": nullable({"type": "string", "description": "its last tick's run"}),
            "lastError": nullable(
                {"type": "string", "description": "why its last tick started no run"}
            ),
        }
    ),
}


def _schedule_action(summary: str, operation_id: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": operation_id,
            "parameters": [ID_IN_PATH],
            "responses": {
                "200": json_body(ref("Schedule"), "the schedule"),
                "404": error("no such schedule"),
            },
        }
    }


def _workflow_action(summary: str, operation_id: str, paused: bool) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": operation_id,
            "parameters": [NAME_IN_PATH],
            "responses": {
                "200": json_body(
                    obj({"workflow": {"type": "string"}, "paused": {"const": paused}}), "done"
                ),
                "404": error("no workflow by that name"),
            },
        }
    }


SCHEDULE_PATHS: dict[str, Any] = {
    "/api/schedules": {
        "get": {
            "summary": "Every schedule, by id",
            "operationId": "listSchedules",
            "responses": {
                "200": json_body(
                    obj({"schedules": {"type": "array", "items": ref("Schedule")}}), "schedules"
                )
            },
        },
        "post": {
            "summary": "Create a schedule: the workflow starts on each tick of the cron",
            "operationId": "createSchedule",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": obj(
                            {
                                "id": SCHEDULE_ID,
                                "workflow": {"type": "string"},
                                "cron": CRON,
                                "timezone": {**TIMEZONE, "default": "UTC"},
                                "payload": ANY_JSON,
                            },
                            required=["id", "workflow", "cron"],
                        )
                    }
                },
            },
            "responses": {
                "201": json_body(ref("Schedule"), "created"),
                "400": error("the body is not JSON"),
                "404": error("no workflow by that name"),
                "409": error("that id is taken"),
                "413": error("the body is over the size limit"),
                "415": error("a body not sent as application/json"),
                "422": error("a bad id, cron expression or time zone, or unknown fields"),
            },
        },
    },
    "/api/schedules/{id}": {
        "get": {
            "summary": "One schedule",
            "operationId": "getSchedule",
            "parameters": [ID_IN_PATH],
            "responses": {
                "200": json_body(ref("Schedule"), "the schedule"),
                "404": error("no such schedule"),
            },
        },
        "delete": {
            "summary": "Delete a schedule (one a workflow declares comes back when a worker "
            "starts)",
            "operationId": "deleteSchedule",
            "parameters": [ID_IN_PATH],
            "responses": {
                "200": json_body(obj({"id": SCHEDULE_ID, "deleted": {"const": True}}), "gone"),
                "404": error("no such schedule"),
            },
        },
    },
    "/api/schedules/{id}/pause": _schedule_action(
        "Pause a schedule: no run starts until it is resumed", "pauseSchedule"
    ),
    "/api/schedules/{id}/resume": _schedule_action(
        "Resume a schedule from its next tick (ticks skipped while paused stay skipped)",
        "resumeSchedule",
    ),
    "/api/workflows/{name}/pause": _workflow_action(
        "Pause a workflow: its runs are still accepted, none executes", "pauseWorkflow", True
    ),
    "/api/workflows/{name}/resume": _workflow_action(
        "Resume a paused workflow: its runs execute again", "resumeWorkflow", False
    ),
}
