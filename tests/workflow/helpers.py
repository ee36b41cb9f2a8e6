"""Helpers of the workflow tests: registries on the test store, workers, waiting, checks.

Each ``Harness.workflows()`` is a fresh ``Realtime`` + ``Workflows`` on the same store, as a new
process would build; everything the harness made is stopped and closed at teardown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from stepstream import Client, Realtime, Worker, Workflows

FINISHED = ("RUN_SUCCESS", "RUN_FAILED", "RUN_CANCELED")
WORKFLOW_KEYS = {
    "runStart": {"type", "workflowRunId", "timestamp"},
    "stepStart": {"type", "workflowRunId", "timestamp", "stepName"},
    "stepFinish": {"type", "workflowRunId", "timestamp", "stepName"},
    "stepFail": {"type", "workflowRunId", "timestamp", "stepName", "error"},
    "runFinish": {"type", "workflowRunId", "timestamp", "status"},
}


class Harness:
    """Builds registries and workers on one store and tears them down in the right order."""

    def __init__(self, backend_url: str) -> None:
        self.backend_url = backend_url
        self._registries: list[Workflows] = []
        self._workers: list[Worker] = []

    def workflows(self, **realtime_options: Any) -> Workflows:
        workflows = Workflows(realtime=Realtime(backend=self.backend_url, **realtime_options))
        self._registries.append(workflows)
        return workflows

    async def worker(self, workflows: Workflows, **options: Any) -> Worker:
        options.setdefault("poll_interval", 0.02)
        worker = workflows.worker(**options)
        await worker.start()
        self._workers.append(worker)
        return worker

    async def stop(self, worker: Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
            await worker.stop(grace=5)

    async def close(self, workflows: Workflows) -> None:
        """Stop this registry's workers and close it, like a process exiting cleanly."""
        for worker in [w for w in self._workers if w.engine is workflows.engine]:
            await self.stop(worker)
        if workflows in self._registries:
            self._registries.remove(workflows)
            await workflows.aclose()

    async def close_all(self) -> None:
        for worker in list(self._workers):
            await self.stop(worker)
        for workflows in list(self._registries):
            await self.close(workflows)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], seconds: float = 20, what: str = "condition"
) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_state(
    client: Client, run_id: str, states: Collection[str] = FINISHED, seconds: float = 20
) -> dict[str, Any]:
    """Poll the run's log until its state is one of ``states``; returns that log."""
    deadline = time.monotonic() + seconds
    while True:
        log = await client.logs(run_id)
        if log["workflowState"] in states:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(
                f"run {run_id} still {log['workflowState']} after {seconds}s, wanted "
                f"{sorted(states)}; steps: {[(s['stepName'], s['state']) for s in log['steps']]}"
            )
        await asyncio.sleep(0.02)


async def wait_for_step(
    client: Client, run_id: str, name: str, states: Collection[str], seconds: float = 20
) -> dict[str, Any]:
    """Poll the run's log until step ``name`` is in one of ``states``; returns the log."""
    found: dict[str, Any] = {}

    async def reached() -> bool:
        log = await client.logs(run_id)
        found["log"] = log
        return any(s["stepName"] == name and s["state"] in states for s in log["steps"])

    await wait_until(reached, seconds, f"step {name!r} of {run_id} in {sorted(states)}")
    return found["log"]  # type: ignore[no-any-return]


async def updates(workflows: Workflows, run_id: str) -> list[dict[str, Any]]:
    """The run's ``workflow.update`` payloads, oldest first."""
    assert workflows.realtime is not None
    messages = await workflows.realtime.channel(run_id).history(limit=None)
    return [m.data for m in messages if m.event == "workflow.update"]


def steps_by_name(log: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["stepName"]: step for step in log["steps"]}


def check_history(log: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """DESIGN §4 for a finished run: one runStart first, one runFinish last with the log's
    status, one stepFinish per completed step, each step's events opened by its stepStart,
    payload field names exactly as specified."""
    run_id = log["workflowRunId"]
    kinds = [e["type"] for e in events]
    assert kinds.count("runStart") == 1 and kinds[0] == "runStart", kinds
    assert kinds.count("runFinish") == 1 and kinds[-1] == "runFinish", kinds
    status = {"RUN_SUCCESS": "success", "RUN_FAILED": "failed", "RUN_CANCELED": "canceled"}
    assert events[-1]["status"] == status[log["workflowState"]]
    finished = sorted(e["stepName"] for e in events if e["type"] == "stepFinish")
    completed = sorted(s["stepName"] for s in log["steps"] if s["state"] == "STEP_SUCCESS")
    assert finished == completed
    started: set[str] = set()
    for event in events:
        assert set(event) >= WORKFLOW_KEYS[event["type"]], event
        # The guide's hook lists a step on its stepStart and updates it on stepFinish/stepFail:
        # an end without a start would never show.
        if event["type"] == "stepStart":
            started.add(event["stepName"])
        elif event["type"] in ("stepFinish", "stepFail"):
            assert event["stepName"] in started, ("no stepStart before", event)
        assert event["workflowRunId"] == run_id
        assert isinstance(event["timestamp"], int)
        assert event["timestamp"] > 1_600_000_000_000  # epoch milliseconds
