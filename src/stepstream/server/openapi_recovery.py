"""The OpenAPI description of recovering, finding and removing runs (DESIGN §14,
``recovery.py``); ``openapi.py`` merges it into the document."""

from __future__ import annotations

from typing import Any

from stepstream.records import RunState
from stepstream.server.openapi_common import (
    EPOCH_MS,
    EVENT_ID_IN_PATH,
    RUN_FILTER,
    RUN_ID_IN_PATH,
    error,
    json_body,
    nullable,
    obj,
    ref,
    run_link,
)
from stepstream.workflow.recovery import BULK_LIMIT

RECOVERY_SCHEMAS: dict[str, Any] = {
    "RunFilter": {
        **obj(RUN_FILTER, required=[]),
        "additionalProperties": False,
        "description": "the runs matching every field given (times: epoch ms, exclusive)",
    },
    "BulkRequest": {
        "oneOf": [
            {
                **obj(
                    {
                        "ids": {
                            "type": "array",
                            "maxItems": BULK_LIMIT,
                            "items": {"type": "string", "minLength": 1},
                        }
                    }
                ),
                "additionalProperties": False,
            },
            {**obj({"filter": ref("RunFilter")}), "additionalProperties": False},
        ],
        "description": f"these runs, or those matching the filter (at most {BULK_LIMIT}); a "
        "filter names at least one field",
    },
    "RunsUpdate": {
        **obj(
            {
                "type": {"const": "runStates"},
                "changes": {
                    "type": "array",
                    "items": obj(
                        {
                            "workflowRunId": {"type": "string"},
                            "workflowState": nullable({"enum": [s.value for s in RunState]}),
                        }
                    ),
                },
                "timestamp": EPOCH_MS,
            }
        ),
        "description": "the data of runs.update on the channel stepstream:runs: the runs that "
        "started, finished, were canceled, resumed or deleted (workflowState null) in the last "
        "0.1 s of one process; best effort (the latest 1,000 events kept): reload GET /api/runs "
        "on it",
    },
    "Waiter": obj(
        {
            "workflowRunId": {"type": "string"},
            "stepName": {"type": "string"},
            "stepId": {"type": "integer", "description": "the step's position in the run"},
            "deadline": nullable({**EPOCH_MS, "description": "when the wait times out"}),
        }
    ),
}

NEW_RUN = {
    **json_body(obj({"workflowRunId": {"type": "string"}}), "the new run, started"),
    "links": {"GetRun": run_link("getRun")},
}


def _bulk(summary: str, operation_id: str, counted: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": operation_id,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("BulkRequest")}},
            },
            "responses": {
                "200": json_body(
                    obj({counted: {"type": "integer", "minimum": 0}}), f"how many runs it {counted}"
                ),
                "400": error("the body is not JSON (or nests over 512 levels)"),
                "413": error("the body is over the size limit"),
                "415": error("a body not sent as application/json"),
                "422": error(
                    f'not {{"ids"}} or {{"filter"}}, over {BULK_LIMIT} ids, an empty filter, an '
                    "unknown filter field or a bad filter value"
                ),
            },
        }
    }


RECOVERY_PATHS: dict[str, Any] = {
    "/api/runs/cancel": _bulk(
        "Cancel the runs named, or the running runs matching a filter", "cancelRuns", "canceled"
    ),
    "/api/runs/resume": _bulk(
        "Resume the runs named, or the failed and canceled runs matching a filter",
        "resumeRuns",
        "resumed",
    ),
    "/api/runs/{run_id}/resume": {
        "post": {
            "summary": "A failed or canceled run continues in place: its completed steps are "
            "kept, the failed step runs with fresh retries",
            "operationId": "resumeRun",
            "parameters": [RUN_ID_IN_PATH],
            "responses": {
                "200": json_body(
                    obj(
                        {
                            "workflowRunId": {"type": "string"},
                            "workflowState": {"const": "RUN_STARTED"},
                        }
                    ),
                    "resumed",
                ),
                "404": error("no such run"),
                "409": error("the run is neither failed nor canceled"),
            },
        }
    },
    "/api/runs/{run_id}/restart": {
        "post": {
            "summary": "A new run of the same workflow, payload and labels (restartedFrom)",
            "operationId": "restartRun",
            "parameters": [RUN_ID_IN_PATH],
            "responses": {"201": NEW_RUN, "404": error("no such run")},
        }
    },
    "/api/runs/{run_id}/fork": {
        "post": {
            "summary": "A new run whose steps before the first step named fromStep are copied "
            "from this one, not executed (forkedFrom)",
            "operationId": "forkRun",
            "parameters": [
                RUN_ID_IN_PATH,
                {
                    "name": "fromStep",
                    "in": "query",
                    "required": True,
                    "description": "the first step to execute",
                    "schema": {"type": "string", "minLength": 1},
                },
            ],
            "responses": {
                "201": NEW_RUN,
                "404": error("no such run"),
                "422": error(
                    "no fromStep, or the run has no step by that name (the message lists its steps)"
                ),
            },
        }
    },
    "/api/runs/{run_id}": {
        "delete": {
            "summary": "Delete a finished run and its channel history",
            "operationId": "deleteRun",
            "parameters": [RUN_ID_IN_PATH],
            "responses": {
                "200": json_body(
                    obj({"workflowRunId": {"type": "string"}, "deleted": {"const": True}}),
                    "gone",
                ),
                "404": error("no such run"),
                "409": error("the run has not finished: cancel it first"),
            },
        }
    },
    "/api/events/{event_id}/waiters": {
        "get": {
            "summary": "The steps waiting for an event now",
            "operationId": "listWaiters",
            "parameters": [EVENT_ID_IN_PATH],
            "responses": {
                "200": json_body(
                    obj({"waiters": {"type": "array", "items": ref("Waiter")}}), "the waiters"
                )
            },
        }
    },
}
