"""Event schemas: a nested dict of validators flattened to dotted event names.

``{"workflow": {"update": WorkflowUpdate}}`` defines the event ``workflow.update``. A leaf is a
pydantic model or any type pydantic can validate (``int``, ``Annotated[...]``, a discriminated
union ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pydantic
import pydantic_core

from stepstream.errors import ConfigurationError, FieldError, ValidationError

EVENT_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")

Schema = Mapping[str, Any]


class EventSchema:
    """The validators of a ``Realtime``, keyed by dotted event name.

    >>> schema = EventSchema({"chat": {"message": str}})
    >>> schema.encode("chat.message", "hi")
    '"hi"'
    """

    def __init__(self, schema: Schema | None = None) -> None:
        self._adapters: dict[str, pydantic.TypeAdapter[Any]] = {}
        if schema:
            self._flatten(schema, ())

    def _flatten(self, node: Schema, path: tuple[str, ...]) -> None:
        for key, value in node.items():
            if not isinstance(key, str) or not EVENT_NAME.match(key) or "." in key:
                raise ConfigurationError(
                    f"schema key {key!r} at {'.'.join(path) or 'top level'} is not a valid event "
                    "name part: use letters, digits, '_' and '-'"
                )
            here = (*path, key)
            if isinstance(value, Mapping):
                self._flatten(value, here)
            else:
                self.add(".".join(here), value)

    def add(self, event: str, validator: Any) -> None:
        """Register ``validator`` (a type pydantic understands) for ``event``."""
        if not EVENT_NAME.match(event):
            raise ConfigurationError(f"invalid event name {event!r}")
        try:
            self._adapters[event] = pydantic.TypeAdapter(validator)
        except pydantic.PydanticSchemaGenerationError as exc:
            raise ConfigurationError(
                f"schema leaf for {event!r} is not a type pydantic can validate: {validator!r}"
            ) from exc

    @property
    def events(self) -> list[str]:
        return sorted(self._adapters)

    def __contains__(self, event: object) -> bool:
        return event in self._adapters

    def encode(self, event: str, data: Any) -> str:
        """Validate ``data`` for ``event`` and return it as JSON text.

        Raises ``ValidationError`` naming the field path of every problem.
        """
        adapter = self._adapters.get(event)
        if adapter is None:
            known = ", ".join(self.events) or "none (the schema is empty)"
            raise ValidationError(f"unknown event {event!r}; known events: {known}")
        try:
            value = adapter.validate_python(data)
        except pydantic.ValidationError as exc:
            raise ValidationError(f"invalid data for event {event!r}", _field_errors(exc)) from None
        try:
            return adapter.dump_json(value).decode()
        except pydantic_core.PydanticSerializationError as exc:
            raise ValidationError(
                f"data for event {event!r} is not JSON-serialisable", [FieldError("", str(exc))]
            ) from None


def _field_errors(exc: pydantic.ValidationError) -> list[FieldError]:
    return [
        FieldError(".".join(str(part) for part in err["loc"]), err["msg"]) for err in exc.errors()
    ]
