"""The built-in progress events (DESIGN section 4): ``workflow.update`` payloads.

These are exactly the payloads of the Upstash Workflow + Realtime guide, so its frontend hook
works unchanged. Extra fields (``stepType``, ``attempt``) are allowed and passed through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Update(BaseModel):
    model_config = ConfigDict(extra="allow")

    workflowRunId: str
    timestamp: int


class RunStart(_Update):
    type: Literal["runStart"]


class StepStart(_Update):
    type: Literal["stepStart"]
    stepName: str


class StepFinish(_Update):
    type: Literal["stepFinish"]
    stepName: str
    result: Any = None


class StepFail(_Update):
    type: Literal["stepFail"]
    stepName: str
    error: str


class RunFinish(_Update):
    type: Literal["runFinish"]
    status: Literal["success", "failed", "canceled"]
    error: str | None = None


WorkflowUpdate = Annotated[
    RunStart | StepStart | StepFinish | StepFail | RunFinish, Field(discriminator="type")
]
"""The schema leaf of ``workflow.update``: one of the five payloads, chosen by ``type``."""

SCHEMA: dict[str, Any] = {"workflow": {"update": WorkflowUpdate}}
