"""Which runs a request asks for: the filters of ``GET /api/runs`` and of the bulk actions'
``filter`` (DESIGN §14), read into a ``RunFilter``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.datastructures import QueryParams

from stepstream.backends.base import RunFilter
from stepstream.errors import ValidationError

FILTER_FIELDS = ("state", "workflow", "label", "createdAfter", "createdBefore")


def run_filter(given: Mapping[str, Any]) -> RunFilter:
    """A ``RunFilter`` from the API's field names (strings; times as epoch ms)."""
    texts = {}
    for name in ("state", "workflow", "label"):
        value = given.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValidationError(f"{name} must be a non-empty string")
        texts[name] = value
    return RunFilter(
        state=texts["state"],
        workflow=texts["workflow"],
        label=texts["label"],
        created_after=epoch_ms(given.get("createdAfter"), "createdAfter"),
        created_before=epoch_ms(given.get("createdBefore"), "createdBefore"),
    )


def query_filter(params: QueryParams) -> RunFilter:
    """The ``RunFilter`` of ``GET /api/runs``' query: each field given at most once (a second
    value would otherwise be silently dropped)."""
    given: dict[str, str | None] = {}
    for name in FILTER_FIELDS:
        values = params.getlist(name)
        if len(values) > 1:
            raise ValidationError(f"give ?{name}= once: runs are filtered by one {name} at a time")
        given[name] = values[0] if values else None
    return run_filter(given)


def epoch_ms(value: Any, name: str) -> int | None:
    """``value`` as epoch milliseconds (an integer, or its digits as text), or ``None``."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**16:
        return value
    raise ValidationError(
        f"{name} must be a time in epoch milliseconds (such as 1767225600000), got {value!r:.40}"
    )


def filter_fields(where: RunFilter) -> dict[str, str | int]:
    """``where`` as the query parameters of ``GET /api/runs`` (the inverse of ``run_filter``)."""
    fields = {
        "state": where.state,
        "workflow": where.workflow,
        "label": where.label,
        "createdAfter": where.created_after,
        "createdBefore": where.created_before,
    }
    return {name: value for name, value in fields.items() if value is not None}
