"""Workflows written with the Python SDK (``upstash-workflow``, FastAPI ``Serve``), for
stepstream's QStash-compatibility tests. Serve it with uvicorn; the SDK reads ``QSTASH_URL``,
``QSTASH_TOKEN`` and, when both are set, ``QSTASH_CURRENT_SIGNING_KEY`` /
``QSTASH_NEXT_SIGNING_KEY`` from the environment, as in any app.

``GET /_executions`` answers the step bodies run so far in this process, in order, as
``[{"workflow", "step", "runId"}]``: tests count them to prove a step body ran once.
``POST /echo`` is a plain endpoint for ``context.call``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from upstash_workflow import AsyncWorkflowContext
from upstash_workflow.fastapi import Serve

app = FastAPI()
serve = Serve(app)
executions: list[dict[str, str]] = []


async def body(
    workflow: str, context: AsyncWorkflowContext[Any], step: str, fn: Callable[[], Any]
) -> Any:
    async def run() -> Any:
        executions.append({"workflow": workflow, "step": step, "runId": context.workflow_run_id})
        return fn()

    return await context.run(step, run)


@app.get("/_executions")
async def _executions() -> list[dict[str, str]]:
    return executions


@app.post("/echo")
async def echo(request: Request) -> dict[str, Any]:
    return {"got": await request.json(), "probe": request.headers.get("x-probe")}


@serve.post("/steps")
async def steps(context: AsyncWorkflowContext[dict[str, Any]]) -> None:
    user = context.request_payload["user"]
    first = await body("steps", context, "first", lambda: {"user": user, "n": 1})
    await body("steps", context, "second", lambda: f"{first['user']}-{first['n'] + 1}")


@serve.post("/sleepy")
async def sleepy(context: AsyncWorkflowContext[Any]) -> None:
    await context.sleep("nap", 1)
    await context.sleep_until("wake", time.time() + 1)
    await body("sleepy", context, "after", lambda: "awake")


@serve.post("/caller")
async def caller(context: AsyncWorkflowContext[dict[str, Any]]) -> None:
    response = await context.call(
        "fetch",
        url=context.request_payload["url"],
        method="POST",
        body={"n": 7},
        headers={"content-type": "application/json", "x-probe": "1"},
    )
    await body("caller", context, "status", lambda: [response.status, response.body])


async def failure_function(
    context: AsyncWorkflowContext[Any], status: int, response: str, headers: dict[str, str]
) -> str:
    executions.append(
        {"workflow": "failure", "step": "failure_function", "runId": context.workflow_run_id}
    )
    return f"handled {status}: {response}"


@serve.post("/failing", retries=0, failure_function=failure_function)
async def failing(context: AsyncWorkflowContext[Any]) -> None:
    await body("failing", context, "ok", lambda: "fine")

    def boom() -> None:
        raise RuntimeError("boom")

    await body("failing", context, "boom", boom)
