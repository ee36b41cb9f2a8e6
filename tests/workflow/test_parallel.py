"""Parallel steps: ``asyncio.gather`` over step calls runs them at once, results in order."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from stepstream import WorkflowContext
from tests.workflow.helpers import Harness, check_history, steps_by_name, updates, wait_for_state

pytestmark = pytest.mark.anyio


async def test_gathered_steps_return_in_order_and_run_once(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    running: set[str] = set()
    overlapped: list[set[str]] = []

    async def work(name: str, delay: float, fail_once: bool) -> str:
        running.add(name)
        overlapped.append(set(running))
        try:
            await asyncio.sleep(delay)
            if fail_once and not failed[name]:
                failed[name] += 1
                raise ConnectionError(f"{name} flaked")
            ran[name] += 1
            return f"{name}-result"
        finally:
            running.discard(name)

    @workflows.workflow("fan-out", retries=2, retry_delay=0.01)
    async def fan_out(context: WorkflowContext) -> list[str]:
        results = await asyncio.gather(
            context.run("slow", work, "slow", 0.15, False),
            context.run("flaky", work, "flaky", 0.01, True),
            context.run("fast", work, "fast", 0.0, False),
        )
        tail = await context.run("tail", work, "tail", 0, False)
        return [*results, tail]

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("fan-out")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == [
        "slow-result",
        "flaky-result",
        "fast-result",
        "tail-result",
    ]
    assert ran == {"slow": 1, "flaky": 1, "fast": 1, "tail": 1}
    assert failed == {"flaky": 1}
    assert any(len(names) == 3 for names in overlapped)  # the three bodies ran at the same time
    assert [s["stepName"] for s in log["steps"]] == ["slow", "flaky", "fast", "tail"]
    steps = steps_by_name(log)
    assert steps["flaky"]["attempts"] == 2
    assert all(steps[n]["attempts"] == 1 for n in ("slow", "fast", "tail"))
    check_history(log, await updates(workflows, run_id))
