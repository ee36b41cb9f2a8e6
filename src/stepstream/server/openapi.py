"""The OpenAPI 3.1 description of the HTTP API (DESIGN §5), served at ``GET /openapi.json``.

Written by hand, next to the routes it describes (``api.py``, ``app.py``): the API is small and
its wire shapes are a contract, so the document states them rather than deriving them.
"""

from __future__ import annotations

from typing import Any

from stepstream.errors import ERROR_CODES
from stepstream.records import RunState, StepState, StepType
from stepstream.server.openapi_common import (
    ANY_JSON,
    EPOCH_MS,
    EVENT_ID_IN_PATH,
    LABEL,
    RUN_FILTER,
    RUN_ID_IN_PATH,
    merged_paths,
)
from stepstream.server.openapi_common import error as _error
from stepstream.server.openapi_common import json_body as _json
from stepstream.server.openapi_common import nullable as _nullable
from stepstream.server.openapi_common import obj as _object
from stepstream.server.openapi_common import ref as _ref
from stepstream.server.openapi_common import run_link as _run_link
from stepstream.server.openapi_recovery import RECOVERY_PATHS, RECOVERY_SCHEMAS
from stepstream.server.openapi_schedules import SCHEDULE_PATHS, SCHEDULE_SCHEMAS
from stepstream.version import __version__
from stepstream.workflow.engine import MAX_LABELS

RUN_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}
STATUS = ["queued", "scheduled", "running", "retrying", "waiting"]  # not finished
STATUS += ["succeeded", "failed", "canceled"]  # finished
# A run as ``GET /api/runs`` lists it (every field always present); its log
# (``GET /api/runs/{id}``) adds payload, result and steps.
RUN_SUMMARY = {
    "workflowRunId": {"type": "string"},
    "workflowName": {"type": "string"},
    "displayName": {
        "type": "string",
        "description": "what lists call the run: its workflow's name, or for an Upstash SDK run "
        "'upstash <endpoint path>' (the path is also one of its labels)",
    },
    "workflowState": {"enum": [s.value for s in RunState]},
    "workflowRunCreatedAt": EPOCH_MS,
    "workflowRunCompletedAt": _nullable(EPOCH_MS),
    "error": _nullable({"type": "string"}),
    "invoker": _nullable({"type": "string"}),
    "flowControl": _nullable(_ref("FlowControl")),
    "status": {
        "enum": STATUS,
        "description": "what the run is doing now (listed runs: without step details)",
    },
    "waitingFor": _nullable({"enum": ["sleep", "event", "childRun", "flowControl"]}),
    "labels": {"type": "array", "items": LABEL, "maxItems": MAX_LABELS},
    "restartedFrom": _nullable({"type": "string", "description": "the run this one restarts"}),
    "forkedFrom": _nullable({"type": "string", "description": "the run it was forked from"}),
}


SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {"enum": sorted(ERROR_CODES)},
                    "message": {"type": "string"},
                    "detail": {
                        "type": "object",
                        "description": "the error's constructor arguments (stepstream.errors), "
                        "only when the request sent the Stepstream-Error-Detail header",
                    },
                },
                required=["code", "message"],
            )
        }
    ),
    "Step": _object(
        {
            "stepId": {"type": "integer", "description": "the step's position in the run"},
            "stepName": {"type": "string"},
            "stepType": {"enum": [t.value for t in StepType]},
            "state": {"enum": [s.value for s in StepState]},
            "attempts": {"type": "integer", "minimum": 0},
            "startedAt": _nullable(EPOCH_MS),
            "finishedAt": _nullable(EPOCH_MS),
            "out": ANY_JSON,
            "error": _nullable({"type": "string"}),
            "errors": {
                "type": "array",
                "description": "each failed attempt, oldest first (at most the latest 20)",
                "items": _object(
                    {
                        "attempt": {"type": "integer"},
                        "error": {"type": "string"},
                        "traceback": {"type": "string", "description": "of the user's code"},
                        "at": EPOCH_MS,
                    }
                ),
            },
            "waitingFor": _nullable(
                {"enum": ["flowControl"], "description": "not started: waits for a slot"}
            ),
            "waitEventId": {"type": "string", "description": "a wait step: the event it waits for"},
            "waitDeadline": _nullable(EPOCH_MS),
        },
        required=["stepName", "stepType", "state", "attempts", "startedAt", "finishedAt"],
    ),
    "FlowControl": _object(
        {
            "key": {"type": "string"},
            "parallelism": _nullable({"type": "integer", "minimum": 1}),
            "rate": _nullable({"type": "integer", "minimum": 1}),
            "period": {"type": "number", "description": "seconds"},
        }
    ),
    "RunSummary": _object(RUN_SUMMARY),
    "RunLog": _object(
        {
            **RUN_SUMMARY,
            "requestPayload": ANY_JSON,
            "workflowRunResponse": ANY_JSON,
            "steps": {"type": "array", "items": _ref("Step")},
            "queuedBecause": {"type": "string", "description": "why no live worker claims it"},
        },
        required=[*RUN_SUMMARY, "requestPayload", "workflowRunResponse", "steps"],
    ),
    "RunPage": _object(
        {
            "runs": {"type": "array", "items": _ref("RunSummary")},
            "cursor": _nullable({"type": "string"}),
        }
    ),
    "Message": _object(
        {
            "id": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
            "event": {"type": "string"},
            "channel": {"type": "string"},
            "data": ANY_JSON,
        }
    ),
}

PAYLOAD = {
    "required": False,
    "description": "any JSON value (an empty body is null); at most the configured size",
    "content": {"application/json": {"schema": ANY_JSON}},
}

FLOW_PARAMETERS = [
    {
        "name": "flowControlKey",
        "in": "query",
        "description": "flow control key of this run (limits: below, or the workflow's own)",
        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    },
    {
        "name": "parallelism",
        "in": "query",
        "description": "at most so many step executions of the key at once",
        "schema": {"type": "integer", "minimum": 1},
    },
    {
        "name": "rate",
        "in": "query",
        "description": "at most so many step executions of the key started per period",
        "schema": {"type": "integer", "minimum": 1},
    },
    {
        "name": "period",
        "in": "query",
        "description": "seconds of the rate window (default 1)",
        "schema": {"type": "number", "minimum": 0.001, "maximum": 366 * 24 * 3600},
    },
]

PATHS: dict[str, Any] = {
    "/api/workflows": {
        "get": {
            "summary": "The registered workflow names, and which of them are paused",
            "operationId": "listWorkflows",
            "responses": {
                "200": _json(
                    _object(
                        {
                            "workflows": {"type": "array", "items": {"type": "string"}},
                            "paused": {"type": "array", "items": {"type": "string"}},
                            "examples": {
                                "type": "object",
                                "description": "example payloads declared, by workflow name",
                            },
                        }
                    ),
                    "the names",
                )
            },
        }
    },
    "/api/workflows/{name}": {
        "post": {
            "summary": "Trigger a run; the body is its request payload",
            "operationId": "trigger",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "workflowRunId",
                    "in": "query",
                    "description": "choose the run id (gets the wfr_ prefix unless it has it)",
                    "schema": RUN_ID,
                },
                {
                    "name": "delay",
                    "in": "query",
                    "description": "seconds before the run starts",
                    "schema": {"type": "number", "minimum": 0, "maximum": 366 * 24 * 3600},
                },
                {
                    "name": "label",
                    "in": "query",
                    "description": f"a label to find the run by (repeatable, at most {MAX_LABELS})",
                    "style": "form",
                    "explode": True,
                    "schema": {"type": "array", "items": LABEL, "maxItems": MAX_LABELS},
                },
                *FLOW_PARAMETERS,
            ],
            "requestBody": PAYLOAD,
            "responses": {
                "202": {
                    **_json(_object({"workflowRunId": {"type": "string"}}), "started"),
                    "links": {
                        "GetRun": _run_link("getRun"),
                        "CancelRun": _run_link("cancelRun"),
                    },
                },
                "400": _error("the body is not JSON (or nests over 512 levels)"),
                "404": _error("no workflow by that name"),
                "409": _error("that workflowRunId is taken"),
                "413": _error("the body is over the size limit"),
                "415": _error("a body not sent as application/json"),
                "422": _error(
                    "a bad workflowRunId, delay, label or flow control, or a payload JSON cannot "
                    "hold"
                ),
            },
        }
    },
    "/api/runs": {
        "get": {
            "summary": "Runs, newest first (their steps are left out: read one run for them)",
            "operationId": "listRuns",
            "parameters": [
                *({"name": name, "in": "query", "schema": f} for name, f in RUN_FILTER.items()),
                {
                    "name": "count",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "description": "the cursor of the previous page",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            ],
            "responses": {
                "200": _json(_ref("RunPage"), "a page of runs"),
                "422": _error("a bad or repeated filter, a bad count or cursor"),
            },
        }
    },
    "/api/runs/{run_id}": {
        "get": {
            "summary": "A run's log",
            "operationId": "getRun",
            "parameters": [RUN_ID_IN_PATH],
            "responses": {
                "200": _json(_ref("RunLog"), "the log"),
                "404": _error("no such run"),
            },
        }
    },
    "/api/runs/{run_id}/cancel": {
        "post": {
            "summary": "Cancel a run that has not finished",
            "operationId": "cancelRun",
            "parameters": [RUN_ID_IN_PATH],
            "responses": {
                "200": _json(
                    _object(
                        {
                            "workflowRunId": {"type": "string"},
                            "workflowState": {"const": "RUN_CANCELED"},
                        }
                    ),
                    "canceled",
                ),
                "404": _error("no such run"),
                "409": _error("the run has already finished"),
            },
        }
    },
    "/api/events/{event_id}": {
        "post": {
            "summary": "Notify the runs waiting for an event; the body is the event data",
            "operationId": "notify",
            "parameters": [
                EVENT_ID_IN_PATH,
                {
                    "name": "workflowRunId",
                    "in": "query",
                    "description": "keep the event for this run if it is not waiting yet",
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": PAYLOAD,
            "responses": {
                "200": _json(
                    _object({"eventId": {"type": "string"}, "waiters": {"type": "integer"}}),
                    "how many runs were woken",
                ),
                "400": _error("the body is not JSON (or nests over 512 levels)"),
                "404": _error("nobody waits (and no workflowRunId), or no such run"),
                "413": _error("the body is over the size limit"),
                "415": _error("a body not sent as application/json"),
                "422": _error("data JSON cannot hold"),
            },
        }
    },
    "/api/workers": {
        "get": {
            "summary": "The workers heard from in the last 30 s (none: runs stay queued)",
            "operationId": "listWorkers",
            "responses": {
                "200": _json(
                    _object(
                        {
                            "workers": {
                                "type": "array",
                                "items": _object(
                                    {
                                        "id": {"type": "string"},
                                        "host": {"type": "string"},
                                        "pid": {"type": "integer"},
                                        "startedAt": EPOCH_MS,
                                        "lastHeartbeat": EPOCH_MS,
                                        "workflows": {"type": "array", "items": {"type": "string"}},
                                        "concurrency": {"type": "integer"},
                                        "runs": {"type": "integer", "description": "runs held"},
                                    }
                                ),
                            }
                        }
                    ),
                    "the live workers, oldest first",
                )
            },
        }
    },
    "/api/realtime": {
        "get": {
            "summary": "Server-Sent Events: history and live events of channels (DESIGN §6)",
            "operationId": "realtime",
            "parameters": [
                {
                    "name": "channel",
                    "in": "query",
                    "description": "stepstream:runs: runs.update (RunsUpdate) on each run's change",
                    "style": "form",
                    "explode": True,
                    "schema": {"type": "array", "items": {"type": "string"}},
                },
                {"name": "history", "in": "query", "schema": {"type": "string"}},
                {"name": "events", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "the event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _error("bad parameters"),
                "401": _error("no valid token (with a server token: a subscription token)"),
                "403": _error("the token does not grant a channel, or middleware refused"),
            },
        }
    },
    "/api/realtime/history": {
        "get": {
            "summary": "A channel's stored events, oldest first",
            "operationId": "history",
            "parameters": [
                {"name": "channel", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                },
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
                },
            ],
            "responses": {
                "200": _json(
                    _object({"messages": {"type": "array", "items": _ref("Message")}}),
                    "the events",
                ),
                "400": _error("a bad channel, limit or cursor"),
                "401": _error("no valid token (with a server token: a subscription token)"),
                "403": _error("the token does not grant the channel, or middleware refused"),
                "410": _error("the cursor was trimmed away"),
            },
        }
    },
    "/api/realtime/token": {
        "post": {
            "summary": "Mint a subscription token for channels",
            "operationId": "token",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _object(
                            {
                                "channels": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "minItems": 1,
                                },
                                "ttl": {
                                    "type": "number",
                                    "exclusiveMinimum": 0,
                                    "maximum": 7 * 86400,
                                },
                            },
                            required=["channels"],
                        )
                    }
                },
            },
            "responses": {
                "200": _json(
                    _object(
                        {
                            "token": {"type": "string"},
                            "channels": {"type": "array", "items": {"type": "string"}},
                            "ttl": {"type": "number"},
                        }
                    ),
                    "the token",
                ),
                "400": _error("the body is not JSON, or not {channels, ttl}"),
                "413": _error("the body is over the size limit"),
                "415": _error("a body not sent as application/json"),
                "422": _error("a bad channel name"),
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness and backend reachability",
            "operationId": "health",
            "responses": {
                "200": _json(_object({"status": {"const": "ok"}}), "up"),
                "503": _json(
                    {"allOf": [_ref("Error"), _object({"status": {"const": "unavailable"}}, [])]},
                    "no backend, or (mounted in another app) the app's lifespan has not run",
                ),
            },
        }
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "stepstream",
        "version": __version__,
        "description": "Durable workflows whose progress streams live to the browser. Every "
        'error is {"error": {"code", "message"}} with a 4xx for anything a client sent; a 503 '
        "is backend_unavailable, or app_not_started on every route of an app mounted in another "
        "one whose lifespan has not run.",
    },
    "paths": merged_paths(PATHS, SCHEDULE_PATHS, RECOVERY_PATHS),
    # A bearer token is needed only when the server was given one (STEPSTREAM_TOKEN). Without
    # one, only loopback Host names are served (403 otherwise), and with or without, a write
    # from another origin is a 403 unless the app lists it in cors_origins.
    "security": [{}, {"bearer": []}],
    "components": {
        "schemas": {**SCHEMAS, **SCHEDULE_SCHEMAS, **RECOVERY_SCHEMAS},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}
