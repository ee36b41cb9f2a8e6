"""The building blocks of the OpenAPI document (``openapi.py``, ``openapi_schedules.py``,
``openapi_recovery.py``)."""

from __future__ import annotations

from typing import Any

from stepstream.records import RunState
from stepstream.workflow.engine import MAX_LABEL_LENGTH

ANY_JSON: dict[str, Any] = {}  # the empty schema: any JSON value
EPOCH_MS = {"type": "integer", "description": "Unix epoch milliseconds"}
RUN_ID_IN_PATH = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
EVENT_ID_IN_PATH = {
    "name": "event_id",
    "in": "path",
    "required": True,
    "description": "any text; a '/' in it may be sent as is or as %2F",
    "schema": {"type": "string"},
}
LABEL = {"type": "string", "minLength": 1, "maxLength": MAX_LABEL_LENGTH}
# Which runs: the query of ``GET /api/runs`` and the ``filter`` of the bulk actions (filters.py).
RUN_FILTER: dict[str, Any] = {
    "state": {"enum": [s.value for s in RunState]},
    "workflow": {"type": "string", "minLength": 1},
    "label": {**LABEL, "description": "runs given this label at trigger"},
    "createdAfter": {
        "type": "integer",
        "minimum": 0,
        "maximum": 10**16 - 1,
        "description": "runs created after this time (epoch ms, exclusive)",
    },
    "createdBefore": {
        "type": "integer",
        "minimum": 0,
        "maximum": 10**16 - 1,
        "description": "runs created before this time (epoch ms, exclusive)",
    },
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    return json_body(ref("Error"), description)


def obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def run_link(operation_id: str) -> dict[str, Any]:
    """A response link: the run the response names, read by ``operation_id``."""
    return {
        "operationId": operation_id,
        "parameters": {"run_id": "$response.body#/workflowRunId"},
    }


def merged_paths(*groups: dict[str, Any]) -> dict[str, Any]:
    """The path items of ``groups`` in one, a path's operations gathered from every group."""
    paths: dict[str, Any] = {}
    for group in groups:
        for path, item in group.items():
            paths[path] = {**paths.get(path, {}), **item}
    return paths
