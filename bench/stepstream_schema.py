"""The benchmark's realtime schema, shared by the server app and the out-of-process emitter."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from stepstream import Realtime

CHANNEL = "bench"


class Tick(BaseModel):
    t: int  # time.time_ns() taken right before emit()


SCHEMA: dict[str, Any] = {"bench": {"tick": Tick}}


def make_realtime(backend: str) -> Realtime:
    return Realtime(schema=SCHEMA, backend=backend)
