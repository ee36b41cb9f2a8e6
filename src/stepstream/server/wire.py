"""The JSON shapes of the HTTP API (DESIGN §5), as the server writes them and ``Client`` reads
them. ``openapi.py`` states the same shapes for other languages; ``ErrorBody`` lives with the
errors (``errors.error_body``), the SSE endpoint below this package answers with it too."""

from __future__ import annotations

import contextlib
import json
from typing import Any, NotRequired, TypedDict, cast

from stepstream.backends.base import RunFilter
from stepstream.clock import system_ms
from stepstream.errors import (
    BackendError,
    ErrorBody,
    ErrorFields,
    RunNotFound,
    ValidationError,
)
from stepstream.records import RUN_STATES, RunRecord, RunState, StepRecord, StepState, StepType
from stepstream.upstash.names import run_name
from stepstream.workflow.engine import Engine
from stepstream.workflow.presence import live_workers

__all__ = [
    "AttemptError",
    "Canceled",
    "ErrorBody",
    "ErrorFields",
    "FlowControlLog",
    "HistoryMessage",
    "HistoryPage",
    "MintedToken",
    "Notified",
    "RunLog",
    "RunPage",
    "ScheduleDeleted",
    "ScheduleInfo",
    "ScheduleList",
    "StepLog",
    "TriggerUnanswered",
    "Triggered",
    "WorkerInfo",
    "Workers",
    "WorkflowNames",
    "WorkflowPaused",
    "run_log",
]


class AttemptError(TypedDict):
    """One failed attempt of a step: its number, error, where the code failed, when."""

    attempt: int
    error: str
    traceback: str
    at: int


class StepLog(TypedDict):
    stepId: int
    stepName: str
    stepType: str
    state: str
    attempts: int
    startedAt: int | None
    finishedAt: int | None
    out: Any
    error: str | None
    errors: list[AttemptError]
    waitingFor: str | None
    waitEventId: NotRequired[str]
    waitDeadline: NotRequired[int | None]


class FlowControlLog(TypedDict):
    """A run's flow control: its key and limits (``period`` in seconds)."""

    key: str
    parallelism: int | None
    rate: int | None
    period: float


class RunSummary(TypedDict):
    """A run in ``GET /api/runs``: its log without payload, result and steps (those are in
    ``GET /api/runs/{id}``), so a page of runs stays small whatever they carry.
    ``displayName``: what lists call it, its workflow's name, or for an Upstash SDK run
    ``upstash <endpoint path>`` (``stepstream.upstash.names``)."""

    workflowRunId: str
    workflowName: str
    displayName: str
    workflowState: str
    workflowRunCreatedAt: int
    workflowRunCompletedAt: int | None
    error: str | None
    invoker: str | None
    flowControl: FlowControlLog | None
    status: str
    waitingFor: str | None
    labels: list[str]
    restartedFrom: str | None
    forkedFrom: str | None


class RunLog(RunSummary):
    """``GET /api/runs/{id}``: a run's log, the shape of Upstash's ``client.logs``.
    ``queuedBecause``: why a queued run is not claimed, when no live worker can run it."""

    requestPayload: Any
    workflowRunResponse: Any
    steps: list[StepLog]
    queuedBecause: NotRequired[str]


class RunPage(TypedDict):
    """``GET /api/runs``: newest first; pass ``cursor`` back for the next page."""

    runs: list[RunSummary]
    cursor: str | None


class Resumed(TypedDict):
    """``POST /api/runs/{id}/resume``: the run is started again."""

    workflowRunId: str
    workflowState: str


class Deleted(TypedDict):
    """``DELETE /api/runs/{id}``."""

    workflowRunId: str
    deleted: bool


class BulkCanceled(TypedDict):
    """``POST /api/runs/cancel``: how many runs it canceled."""

    canceled: int


class BulkResumed(TypedDict):
    """``POST /api/runs/resume``: how many runs it resumed."""

    resumed: int


class WaiterInfo(TypedDict):
    """A step waiting for an event: its run, name, position, timeout (epoch ms or null)."""

    workflowRunId: str
    stepName: str
    stepId: int
    deadline: int | None


class Waiters(TypedDict):
    """``GET /api/events/{eventId}/waiters``."""

    waiters: list[WaiterInfo]


class Triggered(TypedDict):
    """``POST /api/workflows/{name}``: 202."""

    workflowRunId: str


class TriggerUnanswered(ErrorBody):
    """``POST /api/workflows/{name}``: a 503 after which the run may or may not exist."""

    workflowRunId: str


class Canceled(TypedDict):
    """``POST /api/runs/{id}/cancel``."""

    workflowRunId: str
    workflowState: str


class Notified(TypedDict):
    """``POST /api/events/{eventId}``: how many waiting runs got the event."""

    eventId: str
    waiters: int


class WorkflowNames(TypedDict):
    """``GET /api/workflows``: the registered names, which of them are paused, and the example
    payloads declared (``example=``) by name."""

    workflows: list[str]
    paused: list[str]
    examples: dict[str, Any]


class WorkflowPaused(TypedDict):
    """``POST /api/workflows/{name}/pause`` and ``/resume``."""

    workflow: str
    paused: bool


class ScheduleInfo(TypedDict):
    """A schedule (DESIGN §13): ``GET /api/schedules/{id}``, and what creating, pausing and
    resuming one answer. ``nextRunAt``: epoch ms, ``None`` while paused. ``lastError``: why
    its last tick started no run (``lastRunId`` is then ``None``)."""

    id: str
    workflow: str
    cron: str
    timezone: str
    payload: Any
    paused: bool
    nextRunAt: int | None
    lastRunId: str | None
    lastError: str | None


class ScheduleList(TypedDict):
    """``GET /api/schedules``, by id."""

    schedules: list[ScheduleInfo]


class ScheduleDeleted(TypedDict):
    """``DELETE /api/schedules/{id}``."""

    id: str
    deleted: bool


class WorkerInfo(TypedDict):
    """One live worker: its id, where it runs, what it runs and holds, when it was heard."""

    id: str
    host: str
    pid: int
    startedAt: int
    lastHeartbeat: int
    workflows: list[str]
    concurrency: int
    runs: int


class Workers(TypedDict):
    """``GET /api/workers``: the workers heard from in the last 30 s, oldest first."""

    workers: list[WorkerInfo]


class HistoryMessage(TypedDict):
    id: str
    event: str
    channel: str
    data: Any


class HistoryPage(TypedDict):
    """``GET /api/realtime/history``: oldest first."""

    messages: list[HistoryMessage]


class MintedToken(TypedDict):
    """``POST /api/realtime/token``."""

    token: str
    channels: list[str]
    ttl: float


WAITS = {
    StepType.SLEEP: "sleep",
    StepType.SLEEP_UNTIL: "sleep",
    StepType.WAIT: "event",
    StepType.INVOKE: "childRun",
}


def run_status(run: RunRecord, now: int) -> tuple[str, str | None]:
    """What a run is doing at ``now``, and what it waits for: ``queued`` (due, not claimed),
    ``scheduled`` (not due yet), ``running``, ``retrying`` (a step's retry delay),
    ``waiting`` (``sleep``, ``event``, ``childRun``, ``flowControl``), or how it ended
    (``succeeded``, ``failed``, ``canceled``). A run listed without its steps says less: a
    run claimed before and not due is ``waiting`` for something it does not name."""
    if run.state is not RunState.STARTED:
        return FINISHED[run.state], None
    if run.lease_until is not None and run.lease_until >= now:
        return "running", None
    due = run.due_at is not None and run.due_at <= now
    for step in run.steps:
        if step.state is StepState.RETRY and not due:
            return "retrying", None
        if step.state is StepState.PROGRESS and not step.resolved and not due:
            if step.waiting_for:
                return "waiting", step.waiting_for
            if step.type in WAITS:
                return "waiting", WAITS[step.type]
    if due:
        return "queued", None
    # Claimed before (a list entry has no steps to tell): not a delayed start, a wait.
    return ("waiting", None) if run.due_at is None or run.epoch > 0 else ("scheduled", None)


FINISHED = {
    RunState.SUCCESS: "succeeded",
    RunState.FAILED: "failed",
    RunState.CANCELED: "canceled",
}


def run_log(run: RunRecord, now: int | None = None) -> RunLog:
    """A run in the log shape of DESIGN §5 (Upstash's ``client.logs``), with what it is doing
    at ``now`` (epoch ms; default: this machine's clock)."""
    log = {
        **run_summary(run, system_ms() if now is None else now),
        "requestPayload": json.loads(run.payload),
        "workflowRunResponse": None if run.result is None else json.loads(run.result),
        "steps": [step_log(step) for step in run.steps],
    }
    return cast(RunLog, log)  # mypy cannot spread a TypedDict into one with optional keys


def run_summary(run: RunRecord, now: int) -> RunSummary:
    """A run as a list shows it (``RunSummary``); from its steps, if it has them, what it
    waits for."""
    flow = run.flow
    status, waiting_for = run_status(run, now)
    return RunSummary(
        workflowRunId=run.id,
        workflowName=run.workflow,
        displayName=run_name(run),
        workflowState=run.state.value,
        workflowRunCreatedAt=run.created_at,
        workflowRunCompletedAt=run.completed_at,
        error=run.error if run.state is not RunState.SUCCESS else None,
        invoker=run.parent,
        flowControl=None
        if flow is None
        else FlowControlLog(
            key=flow.key,
            parallelism=flow.parallelism,
            rate=flow.rate,
            period=flow.period_ms / 1000,
        ),
        status=status,
        waitingFor=waiting_for,
        labels=list(run.labels),
        restartedFrom=run.restarted_from,
        forkedFrom=run.forked_from,
    )


def step_log(step: StepRecord) -> StepLog:
    """One step in the log shape: what it is, how it went, each failed attempt; a wait step
    also says what it waits for and until when."""
    log = StepLog(
        stepId=step.position,
        stepName=step.name,
        stepType=step.type.value,
        state=step.state.value,
        attempts=step.attempts,
        startedAt=step.started_at,
        finishedAt=step.finished_at,
        # A notify or a finished child may have written ``out`` before the run's worker
        # completed the step: not a result yet.
        out=None
        if step.out is None or (step.resolved and step.state is StepState.PROGRESS)
        else json.loads(step.out),
        error=step.error,
        errors=[
            AttemptError(
                attempt=error["attempt"],
                error=error["error"],
                traceback=error["traceback"],
                at=error["at"],
            )
            for error in step.errors or []
        ],
        waitingFor=step.waiting_for if step.state is StepState.PROGRESS else None,
    )
    if step.type is StepType.WAIT and step.event_id is not None:
        log["waitEventId"] = step.event_id
        log["waitDeadline"] = step.wake_at
    return log


def workflow_names(engine: Engine) -> WorkflowNames:
    """``GET /api/workflows`` (and ``client.workflows()``): the registered names, which are
    paused (as the engine last read them), and the declared example payloads."""
    registry = engine.registry
    names = [name for name in registry.names if not registry.get(name).internal]
    examples = {name: registry.get(name).example for name in names}
    return WorkflowNames(
        workflows=names,
        paused=[name for name in names if name in engine.paused],
        examples={name: example for name, example in examples.items() if example is not None},
    )


async def read_log(engine: Engine, run_id: str) -> RunLog:
    """The log of run ``run_id`` (``RunNotFound`` if there is none): what ``GET /api/runs/{id}``
    answers and ``client.logs`` returns."""
    run = await engine.backend.get_run(run_id)
    if run is None:
        raise RunNotFound(run_id)
    log = run_log(run, engine.clock())
    if log["status"] == "queued":
        with contextlib.suppress(BackendError):  # the log without it rather than none
            if reason := await why_queued(engine, run.workflow):
                log["queuedBecause"] = reason
    return log


async def why_queued(engine: Engine, workflow: str) -> str | None:
    """Why no worker claims a due run of ``workflow``, if none that is alive would: the
    workflow is paused, no worker runs, or none of those running registers it."""
    await engine.read_paused()
    if engine.is_paused(workflow):
        return f"workflow {workflow!r} is paused (resume it to run its runs)"
    workers = await live_workers(engine)
    if not workers:
        return (
            "no worker is running (stepstream worker APP, a server with --workers 1, or "
            "workflows.worker() in a script)"
        )
    if any(workflow in worker.get("workflows", ()) for worker in workers):
        return None
    return (
        f"none of the {len(workers)} live worker(s) registers workflow {workflow!r}: start "
        "one with the app that defines it"
    )


async def read_runs(engine: Engine, where: RunFilter, *, cursor: str | None, count: int) -> RunPage:
    """A page of runs, newest first: what ``GET /api/runs`` answers and ``client.runs``
    returns. ``state`` must be one of ``RUN_STATES`` (``ValidationError`` otherwise)."""
    state = where.state
    if state is not None and state not in RUN_STATES:
        raise ValidationError(f"state={state[:40]!r}: use one of {', '.join(RUN_STATES)}")
    page = await engine.backend.find_runs(where, cursor=cursor, count=count)
    now = engine.clock()
    return RunPage(runs=[run_summary(run, now) for run in page.runs], cursor=page.cursor)
