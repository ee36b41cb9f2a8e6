"""The building blocks of the OpenAPI document (``openapi.py``, ``openapi_schedules.py``)."""

from __future__ import annotations

from typing import Any

ANY_JSON: dict[str, Any] = {}  # the empty schema: any JSON value
EPOCH_MS = {"type": "integer", "description": "Unix epoch milliseconds"}


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
