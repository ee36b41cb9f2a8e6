"""stepstream's runs in the shapes of QStash's client API: ``client.logs``'s ``WorkflowRunLog``
and ``client.getWaiters``'s ``Waiter`` (docs/upstash-protocol.md §12, §7).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepstream.backends.base import RunFilter, Waiter
from stepstream.errors import BadRequest
from stepstream.records import RunRecord, RunState, StepRecord, StepState
from stepstream.upstash import plans
from stepstream.upstash.messages import FAILURES, KEPT_APART
from stepstream.upstash.names import WORKFLOW, sdk_labels
from stepstream.upstash.text import count_of, loads, query_cursor, query_ms

if TYPE_CHECKING:
    from stepstream.workflow.engine import Engine

MAX_COUNT = 100
STEP_STATES = {
    StepState.SUCCESS: "STEP_SUCCESS",
    StepState.RETRY: "STEP_RETRY",
    StepState.FAILED: "STEP_FAILED",
}
STATES = {state.value for state in RunState}


def parsed(text: str) -> Any:
    """A body as the SDK's ``tryParsing`` reads it: JSON if it parses, else the text."""
    if text == "":
        return None
    try:
        return loads(text)
    except ValueError:
        return text


def waiter(found: Waiter, run: RunRecord | None) -> dict[str, Any]:
    """QStash's ``Waiter``: the run's endpoint, the deadline (unix seconds [inferred]) and the
    headers its delivery carries."""
    url = run.headers.get("upstash-workflow-url", "") if run is not None else ""
    headers = {
        name: [value]
        for name, value in (run.headers.items() if run is not None else ())
        if not name.startswith(KEPT_APART)
    }
    return {
        "url": url,
        "deadline": None if found.deadline is None else found.deadline // 1000,
        "headers": headers,
        "timeoutUrl": url,
        "timeoutHeaders": headers,
    }


async def page(engine: Engine, params: Mapping[str, str]) -> dict[str, Any]:
    """``GET /v2/workflows/events``: ``{cursor, runs}``, newest first; by ``workflowRunId``,
    ``state``, ``label``, ``fromDate``/``toDate``, ``workflowUrl``."""
    count = count_of(params.get("count") or "10")
    if count is None or not 1 <= count <= MAX_COUNT:
        raise BadRequest(f"count must be 1 to {MAX_COUNT}")
    state = params.get("state")
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(sorted(STATES))}")
    run_id = params.get("workflowRunId")
    if run_id:
        run = await engine.backend.get_run(run_id)
        runs = [run] if run is not None and run.workflow == WORKFLOW else []
        cursor = None
    else:
        where = RunFilter(
            state=state,
            workflow=WORKFLOW,
            label=params.get("label"),
            created_after=query_ms(params, "fromDate"),
            created_before=query_ms(params, "toDate"),
        )
        found = await engine.backend.find_runs(where, cursor=query_cursor(params), count=count)
        cursor = found.cursor
        runs = [r for r in [await engine.backend.get_run(f.id) for f in found.runs] if r]
    url = params.get("workflowUrl")
    logs = []
    for run in runs:
        if (state and run.state.value != state) or (url and _url(run) != url):
            continue
        logs.append(await run_log(engine, run))
    return {"cursor": cursor or "", "runs": logs}


def _url(run: RunRecord) -> str:
    return run.headers.get("upstash-workflow-url", "")


async def run_log(engine: Engine, run: RunRecord) -> dict[str, Any]:
    """One run as ``WorkflowRunLog``."""
    log: dict[str, Any] = {
        "workflowRunId": run.id,
        "workflowUrl": _url(run),
        "workflowState": run.state.value,
        "workflowRunCreatedAt": run.created_at,
        "steps": await step_groups(engine, run),
    }
    if run.completed_at is not None:
        log["workflowRunCompletedAt"] = run.completed_at
    if run.result is not None:
        log["workflowRunResponse"] = run.result
    if labels := sdk_labels(run):
        log["label"] = ",".join(labels)
        log["labels"] = labels
    failure = await engine.backend.get_entry(FAILURES, run.id)
    if failure is not None:
        log["failureFunction"] = json.loads(failure)
    invoker = None if run.parent is None else await engine.backend.get_run(run.parent)
    if invoker is not None:
        log["invoker"] = {
            "workflowRunId": invoker.id,
            "workflowUrl": _url(invoker),
            "workflowRunCreatedAt": invoker.created_at,
        }
    return log


async def step_groups(engine: Engine, run: RunRecord) -> list[dict[str, Any]]:
    """The run's steps as ``StepLogGroup``s: the initial payload, then each step
    (``sequential``) or parallel group; what is under way or retrying as ``next``."""
    kept = await plans.load(engine, run.id)
    sizes = {target: plan.size for target, plan in kept.plans.items()}
    groups: list[dict[str, Any]] = [
        {"type": "sequential", "steps": [_initial(run)]},
    ]
    steps = sorted(run.steps, key=lambda s: s.position)
    finished = [s for s in steps if s.state is StepState.SUCCESS]
    pending = [s for s in steps if s.state is not StepState.SUCCESS]
    index = 0
    while index < len(finished):
        step = finished[index]
        size = sizes.get(step.position, 1)
        members = [s for s in finished[index : index + size] if s.position in sizes] or [step]
        kind = "parallel" if size > 1 else "sequential"
        logged = [_step_log(run, s, size, kept.kinds.get(s.position)) for s in members]
        groups.append({"type": kind, "steps": logged})
        index += len(members)
    if pending:
        groups.append({"type": "next", "steps": [_next_log(run, s) for s in pending]})
    return groups


def _initial(run: RunRecord) -> dict[str, Any]:
    return {
        "stepId": 0,
        "stepName": "init",
        "stepType": "Initial",
        "callType": "step",
        "messageId": f"msg_{run.id}_0",
        "out": json.loads(run.payload),
        "concurrent": 1,
        "state": "STEP_SUCCESS",
        "createdAt": run.created_at,
        "retries": 0,
        "headers": {},
    }


def _step_log(
    run: RunRecord, step: StepRecord, concurrent: int, kind: str | None
) -> dict[str, Any]:
    log: dict[str, Any] = {
        "stepId": step.position + 1,
        "stepName": step.name,
        "stepType": kind or step.type.value,
        "callType": "step",
        "messageId": f"msg_{run.id}_{step.position + 1}",
        "out": parsed(step.out or ""),
        "concurrent": concurrent,
        "state": "STEP_SUCCESS",
        "createdAt": step.started_at,
        "retries": max(0, step.attempts - 1),
        "headers": {},
    }
    if step.child is not None:
        log["invokedWorkflowRunId"] = step.child
    if step.event_id is not None:
        log["waitEventId"] = step.event_id
        log["waitTimeout"] = bool((parsed(step.out or "") or {}).get("timed_out"))
    return log


def _next_log(run: RunRecord, step: StepRecord) -> dict[str, Any]:
    state = STEP_STATES.get(step.state, "STEP_PROGRESS")
    log: dict[str, Any] = {
        "messageId": f"msg_{run.id}_{step.position + 1}",
        "stepName": step.name,
        "state": state,
        "retries": max(0, step.attempts - 1),
    }
    if step.errors:
        log["errors"] = [
            {"error": e.get("error"), "body": "", "headers": {}, "status": 0, "time": e.get("at")}
            for e in step.errors
        ]
    return log
