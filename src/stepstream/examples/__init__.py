"""The built-in examples ``stepstream dev`` serves when given no APP.

- ``basic``: the guide's workflow — validate, process, notify, with short pauses.
- ``failing``: a step that always fails, is retried, and then the failure function runs.
- ``approval``: waits for the event ``approve-<run id>`` (the dashboard has a button for it).
- ``parallel``: three steps at once with ``asyncio.gather``, then a summary step.
- ``one-per-user``: flow control, one step execution at a time per ``userId``: trigger it twice
  for the same user and the second run waits for the first (its page says so).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from stepstream import Backoff, FlowControl, Realtime, WorkflowContext, Workflows

realtime = Realtime()
workflows = Workflows(realtime=realtime)


async def _work(seconds: float, result: Any) -> Any:
    await asyncio.sleep(seconds)
    return result


@workflows.workflow("basic", example={"userId": "user-123"})
async def basic(context: WorkflowContext) -> dict[str, Any]:
    payload = context.request_payload or {}
    user = payload.get("userId", "user-123") if isinstance(payload, dict) else "user-123"
    data = await context.run("validate-data", _work, 0.5, {"valid": True, "userId": user})
    processed = await context.run("process-data", _work, 0.8, {"processed": True, **data})
    await context.sleep("cool-down", 0.5)
    await context.run("send-notification", _work, 0.4, {"notified": user})
    return {"success": True, "workflowRunId": context.workflow_run_id, **processed}


async def _report_failure(context: WorkflowContext, error: BaseException) -> None:
    await context.run("record-failure", _work, 0.1, {"recorded": str(error)})


@workflows.workflow(
    "failing",
    example={"report": "weekly"},
    retries=2,
    retry_delay=Backoff(initial=0.5, factor=2, jitter=0),
    failure_function=_report_failure,
)
async def failing(context: WorkflowContext) -> None:
    await context.run("fetch-data", _work, 0.3, {"rows": 3})

    async def flaky_upload() -> None:
        await asyncio.sleep(0.2)
        raise ConnectionError("upstream storage answered 503")

    await context.run("upload-report", flaky_upload)


@workflows.workflow("approval", example={"amount": 420, "requestedBy": "ann"})
async def approval(context: WorkflowContext) -> dict[str, Any]:
    payload = context.request_payload
    asked = payload if isinstance(payload, dict) else {"amount": payload}
    request = await context.run("prepare-request", _work, 0.3, asked)
    decision, timed_out = await context.wait_for_event(
        "wait-for-approval", f"approve-{context.workflow_run_id}", timeout=3600
    )
    if timed_out:
        return {"approved": False, "reason": "no decision within an hour"}
    await context.run("apply-decision", _work, 0.3, {"applied": decision})
    return {"approved": True, "request": request, "decision": decision}


@workflows.workflow("parallel", example={"upload": "meeting.mp4"})
async def parallel(context: WorkflowContext) -> dict[str, Any]:
    results = await asyncio.gather(
        context.run("resize-image", _work, random.uniform(0.3, 1.0), "thumb.png"),
        context.run("transcribe-audio", _work, random.uniform(0.3, 1.0), "transcript.txt"),
        context.run("scan-virus", _work, random.uniform(0.3, 1.0), "clean"),
    )
    summary: dict[str, Any] = await context.run("summarize", _work, 0.2, {"outputs": results})
    return summary


def _user(payload: Any) -> str:
    user = payload.get("userId") if isinstance(payload, dict) else None
    return user if isinstance(user, str) and user else "user-123"


@workflows.workflow(
    "one-per-user",
    flow_control=FlowControl(key=_user, parallelism=1),
    example={"userId": "ada", "document": "q3-report.pdf"},
)
async def one_per_user(context: WorkflowContext) -> dict[str, Any]:
    user = _user(context.request_payload)
    summary = await context.run("call-model", _work, 3.0, {"summary": f"report for {user}"})
    return {"userId": user, **summary}


__all__ = ["realtime", "workflows"]
