"""Recovering runs (DESIGN §14) on every backend, through the client: resume a failed run in
place once its code is fixed, restart and fork it as new runs, act on many by label, delete
finished runs (one, or all past the retention), list who waits for an event, and
``context.patched`` for deploys that change a workflow under runs in flight."""

from __future__ import annotations

from typing import Any

import pytest

from stepstream import Realtime, WorkflowContext, Workflows
from stepstream.errors import RunConflict, RunNotFound, ValidationError
from stepstream.workflow.engine import RUNS_FEED
from tests.workflow.helpers import Harness, wait_for_state, wait_for_step, wait_until

pytestmark = pytest.mark.anyio

WAITING = ("STEP_PROGRESS",)


def flaky_registry(harness: Harness, calls: dict[str, int], broken: dict[str, bool]) -> Workflows:
    workflows = harness.workflows()

    @workflows.workflow("charge", retries=0)
    async def charge(context: WorkflowContext) -> Any:
        async def reserve() -> str:
            calls["reserve"] += 1
            return "seat-7"

        async def pay() -> str:
            calls["pay"] += 1
            if broken["pay"]:
                raise RuntimeError("card declined")
            return "paid"

        seat = await context.run("reserve", reserve)
        receipt = await context.run("pay", pay)
        return {"seat": seat, "receipt": receipt}

    return workflows


async def test_resume_continues_a_failed_run_in_place(harness: Harness) -> None:
    calls, broken = {"reserve": 0, "pay": 0}, {"pay": True}
    workflows = flaky_registry(harness, calls, broken)
    client = workflows.client()
    await harness.worker(workflows)
    run_id = await client.trigger("charge", {"order": 1}, labels=["tenant-a"])
    failed = await wait_for_state(client, run_id)
    assert failed["workflowState"] == "RUN_FAILED" and failed["labels"] == ["tenant-a"]
    assert calls == {"reserve": 1, "pay": 1}

    broken["pay"] = False  # the fix is deployed
    await client.resume(run_id)
    done = await wait_for_state(client, run_id)
    assert done["workflowState"] == "RUN_SUCCESS", done
    assert done["workflowRunResponse"] == {"seat": "seat-7", "receipt": "paid"}
    assert calls == {"reserve": 1, "pay": 2}  # the completed step was not run again
    assert [s["stepName"] for s in done["steps"]] == ["reserve", "pay"]
    assert done["steps"][1]["attempts"] == 1  # fresh retries
    events = [m.data for m in await workflows.realtime.channel(run_id).history()]
    starts = [e for e in events if e["type"] == "runStart"]
    assert [e.get("resumed") for e in starts] == [None, True]
    finishes = [e["status"] for e in events if e["type"] == "runFinish"]
    assert finishes == ["failed", "success"]
    with pytest.raises(RunConflict, match="RUN_SUCCESS"):
        await client.resume(run_id)
    with pytest.raises(RunNotFound):
        await client.resume("wfr_missing")


async def test_restart_and_fork_start_new_runs(harness: Harness) -> None:
    calls, broken = {"reserve": 0, "pay": 0}, {"pay": False}
    workflows = flaky_registry(harness, calls, broken)
    client = workflows.client()
    await harness.worker(workflows)
    first = await client.trigger("charge", {"order": 2}, labels=["batch-9"])
    assert (await wait_for_state(client, first))["workflowState"] == "RUN_SUCCESS"

    again = await client.restart(first)
    log = await wait_for_state(client, again)
    assert again != first and log["workflowState"] == "RUN_SUCCESS"
    assert log["restartedFrom"] == first and log["forkedFrom"] is None
    assert log["requestPayload"] == {"order": 2} and log["labels"] == ["batch-9"]
    assert calls == {"reserve": 2, "pay": 2}

    forked = await client.fork(first, "pay")
    log = await wait_for_state(client, forked)
    assert log["workflowState"] == "RUN_SUCCESS" and log["forkedFrom"] == first
    assert calls == {"reserve": 2, "pay": 3}  # "reserve" was copied, not executed
    assert log["steps"][0]["out"] == "seat-7"
    history = [m.data for m in await workflows.realtime.channel(forked).history()]
    assert [(e["type"], e.get("stepName"), e.get("copied")) for e in history][:4] == [
        ("runStart", None, None),
        ("stepStart", "reserve", True),
        ("stepFinish", "reserve", True),
        ("stepStart", "pay", None),
    ]
    with pytest.raises(ValidationError, match=r"no step named 'nope'.*'reserve', 'pay'"):
        await client.fork(first, "nope")


async def test_bulk_cancel_and_resume_by_label(harness: Harness) -> None:
    workflows = harness.workflows()

    @workflows.workflow("hold")
    async def hold(context: WorkflowContext) -> Any:
        data, _ = await context.wait_for_event("wait", f"go-{context.workflow_run_id}")
        return data

    client = workflows.client()
    await harness.worker(workflows)
    tagged = [await client.trigger("hold", labels=["sweep"]) for _ in range(3)]
    other = await client.trigger("hold", labels=["keep"])
    for run_id in [*tagged, other]:
        await wait_for_step(client, run_id, "wait", WAITING)

    for no_filter in (client.cancel_many(), client.resume_many(label=None)):
        with pytest.raises(ValidationError, match="empty filter would select every run"):
            await no_filter  # not every run of the server
    assert (await client.logs(other))["workflowState"] == "RUN_STARTED"
    assert await client.cancel_many(label="sweep") == 3
    for run_id in tagged:
        assert (await client.logs(run_id))["workflowState"] == "RUN_CANCELED"
    assert (await client.logs(other))["workflowState"] == "RUN_STARTED"
    listed = await client.runs(label="sweep", state="RUN_CANCELED")
    assert sorted(run["workflowRunId"] for run in listed["runs"]) == sorted(tagged)
    assert all("requestPayload" not in run for run in listed["runs"])

    assert await client.resume_many([tagged[0], other, "wfr_missing"]) == 1
    await wait_for_step(client, tagged[0], "wait", WAITING)
    waiting = await client.waiters(f"go-{tagged[0]}")
    assert [(w["workflowRunId"], w["stepName"]) for w in waiting] == [(tagged[0], "wait")]
    assert await client.notify(f"go-{tagged[0]}", {"ok": 1}) == 1
    done = await wait_for_state(client, tagged[0])
    assert done["workflowState"] == "RUN_SUCCESS" and done["workflowRunResponse"] == {"ok": 1}
    assert await client.resume_many(label="sweep", state="RUN_CANCELED") == 2


async def test_delete_and_retention(harness: Harness) -> None:
    workflows = harness.workflows()

    @workflows.workflow("quick")
    async def quick(context: WorkflowContext) -> Any:
        return await context.run("one", lambda: 1)

    client = workflows.client()
    await harness.worker(workflows)
    run_id = await client.trigger("quick")
    await wait_for_state(client, run_id)
    assert await workflows.realtime.channel(run_id).history() != []
    await client.delete(run_id)
    with pytest.raises(RunNotFound):
        await client.logs(run_id)
    assert await workflows.realtime.channel(run_id).history() == []

    # A second registry on the same store keeps runs one second: its worker deletes the rest.
    kept = Workflows(realtime=Realtime(backend=harness.backend_url), retention=1)
    kept.workflow("quick")(quick)
    old = await client.trigger("quick")
    await wait_for_state(client, old)
    await harness.worker(kept)
    try:

        async def gone() -> bool:
            return (await client.runs(workflow="quick"))["runs"] == []

        await wait_until(gone, seconds=15, what="the retention sweep")
    finally:
        await harness.close_all()
        await kept.aclose()


async def test_patched_keeps_old_runs_on_their_path(harness: Harness) -> None:
    executed: list[str] = []
    old_code = harness.workflows()

    @old_code.workflow("deploy")
    async def before(context: WorkflowContext) -> Any:
        await context.run("a", lambda: executed.append("a"))
        await context.wait_for_event("approve", f"ok-{context.workflow_run_id}")
        return "done"

    client = old_code.client()
    await harness.worker(old_code)
    in_flight = await client.trigger("deploy")
    await wait_for_step(client, in_flight, "approve", WAITING)
    await harness.close(old_code)

    new_code = harness.workflows()

    @new_code.workflow("deploy")
    async def after(context: WorkflowContext) -> Any:
        await context.run("a", lambda: executed.append("a"))
        if context.patched("audit"):
            await context.run("audit", lambda: executed.append("audit"))
        await context.wait_for_event("approve", f"ok-{context.workflow_run_id}")
        return "done"

    client = new_code.client()
    await harness.worker(new_code)
    fresh = await client.trigger("deploy")
    await wait_for_step(client, fresh, "approve", WAITING)
    for run_id in (in_flight, fresh):
        await client.notify(f"ok-{run_id}")
        assert (await wait_for_state(client, run_id))["workflowState"] == "RUN_SUCCESS"
    assert executed == ["a", "a", "audit"]
    old_steps = [s["stepName"] for s in (await client.logs(in_flight))["steps"]]
    new_steps = [(s["stepName"], s["stepType"]) for s in (await client.logs(fresh))["steps"]]
    assert old_steps == ["a", "approve"]
    assert new_steps == [("a", "Run"), ("audit", "Patch"), ("audit", "Run"), ("approve", "Wait")]


async def test_every_run_state_change_is_announced_on_the_runs_feed(harness: Harness) -> None:
    calls, broken = {"reserve": 0, "pay": 0}, {"pay": True}
    workflows = flaky_registry(harness, calls, broken)
    client = workflows.client()
    await harness.worker(workflows)
    run_id = await client.trigger("charge")
    await wait_for_state(client, run_id)
    broken["pay"] = False
    await client.resume(run_id)
    await wait_for_state(client, run_id)
    await client.delete(run_id)
    feed = workflows.realtime.channel(RUNS_FEED)

    async def announced() -> bool:
        changes = [c for m in await feed.history() for c in m.data["changes"]]
        return [c["workflowState"] for c in changes if c["workflowRunId"] == run_id] == [
            "RUN_STARTED",
            "RUN_FAILED",
            "RUN_STARTED",
            "RUN_SUCCESS",
            None,
        ]

    await wait_until(announced, what="the feed to announce each change of the run")
