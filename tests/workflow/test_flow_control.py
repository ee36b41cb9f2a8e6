"""Flow control (DESIGN §12) and per-step policies, on every backend: keyed parallelism and
rate hold across workers, keys are independent, a run without budget waits visibly and holds
no worker; a step's own retries and timeout override its workflow's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from stepstream import FlowControl, WorkflowContext
from stepstream.errors import ConfigurationError, ValidationError
from stepstream.workflow.flow import MAX_LIMIT
from tests.workflow.helpers import Harness, wait_for_state, wait_until

pytestmark = pytest.mark.anyio


def overlap(logs: list[dict[str, Any]]) -> int:
    """The most step executions in flight at once, from the logs' startedAt/finishedAt."""
    edges = []
    for log in logs:
        for step in log["steps"]:
            edges += [(step["startedAt"], 1), (step["finishedAt"], -1)]
    edges.sort(key=lambda edge: (edge[0], edge[1]))  # an end before a start at the same ms
    most = current = 0
    for _, change in edges:
        current += change
        most = max(most, current)
    return most


async def test_parallelism_bounds_steps_across_workers(harness: Harness) -> None:
    workflows = harness.workflows()

    async def slow() -> str:
        await asyncio.sleep(0.5)
        return "done"

    @workflows.workflow("limited", flow_control=FlowControl(key="shared", parallelism=2))
    async def limited(context: WorkflowContext) -> Any:
        return await context.run("slow", slow)

    client = workflows.client()
    run_ids = [await client.trigger("limited", {"n": n}) for n in range(8)]
    # Two workers of their own registries (as two processes): the limit is storage's.
    await harness.worker(workflows, concurrency=8)
    second = harness.workflows()
    second.workflow("limited", flow_control=FlowControl(key="shared", parallelism=2))(limited)
    await harness.worker(second, concurrency=8)
    began = time.monotonic()
    logs = [await wait_for_state(client, run_id, seconds=60) for run_id in run_ids]
    print(f"8 runs of a 0.5 s step, parallelism 2: {time.monotonic() - began:.2f} s")
    assert {log["workflowState"] for log in logs} == {"RUN_SUCCESS"}
    assert overlap(logs) == 2  # never more, and the budget is used, not serialised
    assert all(log["flowControl"]["key"] == "shared" for log in logs)


async def test_rate_spaces_step_starts(harness: Harness) -> None:
    workflows = harness.workflows()

    @workflows.workflow("rated", flow_control=FlowControl(key="api", rate=3, period=1))
    async def rated(context: WorkflowContext) -> Any:
        return [await context.run(f"call-{i}", int, i) for i in range(3)]

    client = workflows.client()
    run_ids = [await client.trigger("rated") for _ in range(3)]
    await harness.worker(workflows)
    logs = [await wait_for_state(client, run_id, seconds=60) for run_id in run_ids]
    assert {log["workflowState"] for log in logs} == {"RUN_SUCCESS"}
    starts = sorted(step["startedAt"] for log in logs for step in log["steps"])
    assert len(starts) == 9
    # At most 3 starts in any second (a little slack: a start is stamped just after its slot
    # was granted), so nine take at least two seconds.
    assert all(later - earlier >= 900 for earlier, later in zip(starts, starts[3:], strict=False))
    assert starts[-1] - starts[0] >= 1800


async def test_keys_are_independent_and_a_waiting_run_says_so(harness: Harness) -> None:
    workflows = harness.workflows()
    release = asyncio.Event()

    async def hold(customer: str) -> str:
        if customer == "noisy":
            await release.wait()
        return customer

    flow = FlowControl(key=lambda payload: payload["customer"], parallelism=1)

    @workflows.workflow("per-customer", flow_control=flow)
    async def per_customer(context: WorkflowContext) -> Any:
        return await context.run("work", hold, context.request_payload["customer"])

    client = workflows.client()
    await harness.worker(workflows)
    first = await client.trigger("per-customer", {"customer": "noisy"})
    await wait_until(
        lambda: _step_state(client, first, "STEP_PROGRESS"), what="the noisy run's step started"
    )
    blocked = await client.trigger("per-customer", {"customer": "noisy"})
    quiet = await client.trigger("per-customer", {"customer": "quiet"})
    assert (await wait_for_state(client, quiet))["workflowState"] == "RUN_SUCCESS"

    async def waiting() -> bool:
        log = await client.logs(blocked)
        return log["waitingFor"] == "flowControl"

    await wait_until(waiting, what="the second noisy run waiting for flow control")
    log = await client.logs(blocked)
    assert log["flowControl"] == {"key": "noisy", "parallelism": 1, "rate": None, "period": 1.0}
    assert log["steps"][0]["waitingFor"] == "flowControl"
    assert log["steps"][0]["startedAt"] is None
    release.set()
    for run_id in (first, blocked):
        assert (await wait_for_state(client, run_id))["workflowState"] == "RUN_SUCCESS"
    assert (await client.logs(blocked))["waitingFor"] is None


async def test_a_waiting_run_holds_no_worker_slot(harness: Harness) -> None:
    """One worker with room for one execution: the run waiting for a key's slot must not
    occupy it, or the other key's run could never run."""
    workflows = harness.workflows()
    release = asyncio.Event()

    async def hold(key: str) -> str:
        if key == "a":
            await release.wait()
        return key

    @workflows.workflow("keyed", flow_control=FlowControl(key=lambda p: p["k"], parallelism=1))
    async def keyed(context: WorkflowContext) -> Any:
        return await context.run("work", hold, context.request_payload["k"])

    client = workflows.client()
    await harness.worker(workflows, concurrency=2)
    holder = await client.trigger("keyed", {"k": "a"})
    await wait_until(lambda: _step_state(client, holder, "STEP_PROGRESS"), what="a started")
    waiters = [await client.trigger("keyed", {"k": "a"}) for _ in range(3)]
    other = await client.trigger("keyed", {"k": "b"})
    assert (await wait_for_state(client, other))["workflowState"] == "RUN_SUCCESS"
    release.set()
    for run_id in [holder, *waiters]:
        assert (await wait_for_state(client, run_id))["workflowState"] == "RUN_SUCCESS"


async def test_trigger_overrides_and_bad_keys(harness: Harness) -> None:
    workflows = harness.workflows()

    @workflows.workflow("keyed", flow_control=FlowControl(key=lambda p: p["userId"], rate=5))
    async def keyed(context: WorkflowContext) -> Any:
        return await context.run("one", lambda: 1)

    client = workflows.client()
    with pytest.raises(ValidationError, match=r"flow control key .* cannot be computed"):
        await client.trigger("keyed", {"no": "user"})
    own = FlowControl(key="vip", parallelism=3)
    run_id = await client.trigger("keyed", {"no": "user"}, flow_control=own)
    log = await client.logs(run_id)
    assert log["flowControl"] == {"key": "vip", "parallelism": 3, "rate": None, "period": 1.0}


async def test_the_largest_limits_run_and_larger_ones_are_refused(harness: Harness) -> None:
    """Every backend stores a limit up to ``MAX_LIMIT`` (PostgreSQL's bigint wedged claims on
    10**30: each claim failed, the run neither started nor failed); past it, one error."""
    workflows = harness.workflows()
    for too_big in (MAX_LIMIT + 1, 2**63, 10**30):
        with pytest.raises(ConfigurationError, match="from 1 to 1,000,000,000"):
            FlowControl(key="k", parallelism=too_big)
        with pytest.raises(ConfigurationError, match="from 1 to 1,000,000,000"):
            FlowControl(key="k", rate=too_big)

    @workflows.workflow("wide", flow_control=FlowControl(key="k", parallelism=MAX_LIMIT))
    async def wide(context: WorkflowContext) -> Any:
        return await context.run("one", lambda: 1)

    client = workflows.client()
    await harness.worker(workflows)
    rated = FlowControl(key="r", rate=MAX_LIMIT, period=1)
    for own in (None, rated):
        log = await wait_for_state(client, await client.trigger("wide", flow_control=own))
        assert log["workflowState"] == "RUN_SUCCESS"


async def test_a_steps_own_retries_and_timeout(harness: Harness) -> None:
    workflows = harness.workflows()
    attempts: dict[str, int] = {"flaky": 0, "slow": 0}

    def flaky() -> str:
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            raise RuntimeError("not yet")
        return "ok"

    async def slow() -> str:
        attempts["slow"] += 1
        await asyncio.sleep(5)
        return "late"

    @workflows.workflow("policies", retries=0)
    async def policies(context: WorkflowContext) -> Any:
        first = await context.run("flaky", flaky, retries=2, retry_delay=0.01)
        return [first, await context.run("slow", slow, timeout=0.2, retries=1, retry_delay=0.01)]

    client = workflows.client()
    await harness.worker(workflows)
    log = await wait_for_state(client, await client.trigger("policies"))
    steps = {step["stepName"]: step for step in log["steps"]}
    assert steps["flaky"]["state"] == "STEP_SUCCESS" and steps["flaky"]["attempts"] == 3
    assert steps["slow"]["state"] == "STEP_FAILED" and steps["slow"]["attempts"] == 2
    assert "took over 0.2s" in steps["slow"]["error"]
    assert log["workflowState"] == "RUN_FAILED"
    assert attempts == {"flaky": 3, "slow": 2}


async def _step_state(client: Any, run_id: str, state: str) -> bool:
    log = await client.logs(run_id)
    return any(step["state"] == state and step["startedAt"] for step in log["steps"])
