"""The built-in progress events (DESIGN section 4): ``workflow.update`` payloads, as schema
models (what subscribers validate) and as the builders the engine makes them with.

These are exactly the payloads of the Upstash Workflow + Realtime guide, so its frontend hook
works unchanged. Extra fields (``stepType``, ``attempt``, ``willRetry``, ``failureFunction``) are
allowed and passed through.

>>> run_start("wfr_1", 1700000000000).raw
'{"type":"runStart","workflowRunId":"wfr_1","timestamp":1700000000000}'
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stepstream.records import FAILURE_POSITIONS, Emit, RunState, StepRecord, dumps


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


class RunChange(BaseModel):
    """One run's new state on the runs feed (``None``: deleted)."""

    model_config = ConfigDict(extra="allow")

    workflowRunId: str
    workflowState: str | None


class RunsUpdate(BaseModel):
    """``runs.update`` on the ``stepstream:runs`` feed: runs that changed state in the last
    moment, oldest first. Live run lists reload on it."""

    model_config = ConfigDict(extra="allow")

    type: Literal["runStates"]
    changes: list[RunChange]
    timestamp: int


SCHEMA: dict[str, Any] = {"workflow": {"update": WorkflowUpdate}, "runs": {"update": RunsUpdate}}


# -- builders: the one place the engine's progress events are made --------------------------------
#
# Each returns the ``Emit`` that reports a state change, written in the same atomic unit as the
# change. They build JSON text directly: a step's result is already JSON text (``step.out``) and
# is spliced in rather than parsed and dumped again.

EVENT = "workflow.update"
STATUS: dict[RunState, Literal["success", "failed", "canceled"]] = {
    RunState.SUCCESS: "success",
    RunState.FAILED: "failed",
    RunState.CANCELED: "canceled",
}


def ran_to_end(run_id: str, event: str, data: Any) -> bool:
    """Whether an event of the channel ``run_id`` is that run's last: its own ``runFinish``."""
    return (
        event == EVENT
        and isinstance(data, dict)
        and data.get("type") == "runFinish"
        and data.get("workflowRunId") == run_id
    )


def run_start(run_id: str, at: int, *, resumed: bool = False) -> Emit:
    """``runStart``: the run was created at ``at`` (epoch ms), or ``resumed`` then."""
    fields: dict[str, Any] = {"type": "runStart", "workflowRunId": run_id, "timestamp": at}
    if resumed:
        fields["resumed"] = True
    return _emit(run_id, fields)


def run_states(changes: list[tuple[str, RunState | None]], at: int) -> str:
    """The ``runs.update`` payload (JSON text): each run of ``changes`` in its new state
    (``None``: deleted), announced ``at``."""
    listed = [
        {"workflowRunId": run_id, "workflowState": None if state is None else state.value}
        for run_id, state in changes
    ]
    return dumps({"type": "runStates", "changes": listed, "timestamp": at})


def run_finish(run_id: str, at: int, state: RunState, error: str | None = None) -> Emit:
    """``runFinish`` with ``status`` success / failed / canceled, and the error if any."""
    fields: dict[str, Any] = {
        "type": "runFinish",
        "workflowRunId": run_id,
        "timestamp": at,
        "status": STATUS[state],
    }
    if error is not None:
        fields["error"] = error
    return _emit(run_id, fields)


def step_start(run_id: str, step: StepRecord, *, copied: bool = False) -> Emit:
    """``stepStart`` of ``step``, stamped with its ``started_at``; ``copied``: from the run a
    fork was made of, not executed in this one."""
    fields = _step("stepStart", run_id, step, step.started_at)
    if copied:
        fields["copied"] = True
    return _emit(run_id, fields)


def step_finish(run_id: str, step: StepRecord, *, copied: bool = False) -> Emit:
    """``stepFinish`` of ``step`` with its result (``step.out``), stamped ``finished_at``."""
    fields = _step("stepFinish", run_id, step, step.finished_at)
    if copied:
        fields["copied"] = True
    raw = dumps(fields)
    if step.out is not None:
        raw = f'{raw[:-1]},"result":{step.out}}}'
    return Emit(run_id, EVENT, raw)


def step_fail(run_id: str, step: StepRecord, *, will_retry: bool) -> Emit:
    """``stepFail`` of ``step`` with its error, and whether it will be retried."""
    fields = _step("stepFail", run_id, step, step.finished_at)
    fields["error"] = step.error or "failed"
    fields["willRetry"] = will_retry
    return _emit(run_id, fields)


def _step(kind: str, run_id: str, step: StepRecord, at: int | None) -> dict[str, Any]:
    fields = {
        "type": kind,
        "workflowRunId": run_id,
        "timestamp": at if at is not None else step.started_at,
        "stepName": step.name,
        "stepType": step.type.value,
        "attempt": step.attempts,
    }
    if step.position >= FAILURE_POSITIONS:
        fields["failureFunction"] = True  # a step of the failure function, after the run failed
    return fields


def _emit(run_id: str, fields: dict[str, Any]) -> Emit:
    return Emit(run_id, EVENT, dumps(fields))
