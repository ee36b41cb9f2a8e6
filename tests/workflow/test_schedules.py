"""Schedules (DESIGN §13) and pausing whole workflows, on every backend: create, list, get,
pause, resume, delete; exactly one run per tick with schedulers racing on one store; only the
latest missed tick after downtime; nothing while paused or before creation; declared schedules
kept, paused and removed as the code says; real workers ticking a 6-field every-second cron."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stepstream import (
    BackendUnavailable,
    Client,
    ConfigurationError,
    FlowControl,
    RunConflict,
    Schedule,
    UnknownWorkflow,
    ValidationError,
    WorkflowContext,
    Workflows,
)
from stepstream.errors import RouteNotFound
from stepstream.workflow.cron import Cron
from stepstream.workflow.scheduler import SCHEDULE, TICK, ScheduleRecord, Schedules
from tests.workflow.helpers import Harness, wait_for_state, wait_until

pytestmark = pytest.mark.anyio

MINUTE = 60_000


def with_tick(workflows: Workflows, schedule: str | Schedule | None = None) -> list[Any]:
    """Register ``tick``, which records each payload it runs with."""
    seen: list[Any] = []

    @workflows.workflow("tick", schedule=schedule)
    async def tick(context: WorkflowContext) -> Any:
        seen.append(context.request_payload)
        return await context.run("echo", lambda: context.request_payload)

    return seen


async def run_ids(client: Client, workflow: str = "tick") -> list[str]:
    page = await client.runs(workflow=workflow, count=1000)
    return sorted(run["workflowRunId"] for run in page["runs"])


async def test_create_list_get_pause_resume_delete(harness: Harness) -> None:
    workflows = harness.workflows()
    with_tick(workflows)
    client = workflows.client()
    created = await client.create_schedule(
        "nightly", "tick", "0  2 * * *", timezone="Europe/Berlin", payload={"k": 1}
    )
    now = workflows.engine.clock()
    assert created == {
        "id": "nightly",
        "workflow": "tick",
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "payload": {"k": 1},
        "paused": False,
        "nextRunAt": Cron("0 2 * * *", "Europe/Berlin").next_after(now),
        "lastRunId": None,
        "lastError": None,
    }
    await client.create_schedule("every-second", "tick", "* * * * * *")
    assert [s["id"] for s in await client.schedules()] == ["every-second", "nightly"]
    assert await client.schedule("nightly") == created

    paused = await client.pause_schedule("nightly")
    assert paused["paused"] and paused["nextRunAt"] is None
    assert (await client.schedule("nightly"))["paused"]
    resumed = await client.resume_schedule("nightly")
    assert not resumed["paused"] and resumed["nextRunAt"] == created["nextRunAt"]

    await client.delete_schedule("nightly")
    assert [s["id"] for s in await client.schedules()] == ["every-second"]
    for call in (client.schedule, client.delete_schedule, client.pause_schedule):
        with pytest.raises(RouteNotFound, match="no schedule 'nightly'"):
            await call("nightly")


async def test_bad_schedules_are_refused_saying_why(harness: Harness) -> None:
    workflows = harness.workflows()
    with_tick(workflows)
    client = workflows.client()
    await client.create_schedule("taken", "tick", "* * * * *")
    with pytest.raises(RunConflict, match="schedule 'taken' already exists"):
        await client.create_schedule("taken", "tick", "0 * * * *")
    with pytest.raises(UnknownWorkflow):
        await client.create_schedule("other", "nope", "* * * * *")
    with pytest.raises(ValidationError, match="has 4 fields"):
        await client.create_schedule("other", "tick", "* * * *")
    with pytest.raises(ValidationError, match="unknown time zone"):
        await client.create_schedule("other", "tick", "* * * * *", timezone="Europe/Nowhere")
    with pytest.raises(ValidationError, match="1-64 characters"):
        await client.create_schedule("has space", "tick", "* * * * *")
    assert [s["id"] for s in await client.schedules()] == ["taken"]
    assert (await client.schedule("taken"))["cron"] == "* * * * *"


async def test_racing_schedulers_start_one_run_per_tick(harness: Harness) -> None:
    # Two processes' worth of engines on one store, firing the same ticks at the same moment.
    first, second = harness.workflows(), harness.workflows()
    with_tick(first)
    with_tick(second)
    await second.open()
    client = first.client()
    await client.create_schedule("race", "tick", "* * * * * *", payload={"n": 1})
    schedulers = [Schedules(first.engine), Schedules(second.engine)]
    start = Cron("* * * * * *").next_after(first.engine.clock())
    ticks = [start + 1000 * n for n in range(10)]
    for tick in ticks:
        await asyncio.gather(*(s.fire_due(tick + 500, {"tick"}) for s in schedulers))
        await asyncio.gather(*(s.fire_due(tick + 900, {"tick"}) for s in schedulers))
    assert await run_ids(client) == [f"wfr_race-{tick}" for tick in ticks]
    log = await client.logs(f"wfr_race-{ticks[0]}")
    assert log["requestPayload"] == {"n": 1}
    assert (await client.schedule("race"))["lastRunId"] == f"wfr_race-{ticks[-1]}"


async def test_after_downtime_only_the_latest_missed_tick_runs(harness: Harness) -> None:
    workflows = harness.workflows()
    with_tick(workflows)
    client = workflows.client()
    await client.create_schedule("minutely", "tick", "* * * * *")
    schedules = Schedules(workflows.engine)
    created = workflows.engine.clock()
    assert await schedules.fire_due(created, {"tick"}) == Cron("* * * * *").next_after(created)
    assert await run_ids(client) == [], "no tick before the schedule was created"

    later = created + 10 * MINUTE + 1234  # ten ticks missed
    latest = Cron("* * * * *").latest(later)
    for _ in range(3):
        await schedules.fire_due(later, {"tick"})
    assert await run_ids(client) == [f"wfr_minutely-{latest}"]
    await schedules.fire_due(later + MINUTE, {"tick"})
    assert len(await run_ids(client)) == 2


async def test_a_paused_schedule_starts_nothing(harness: Harness) -> None:
    workflows = harness.workflows()
    with_tick(workflows)
    client = workflows.client()
    await client.create_schedule("minutely", "tick", "* * * * *")
    await client.pause_schedule("minutely")
    schedules = Schedules(workflows.engine)
    later = workflows.engine.clock() + 10 * MINUTE
    await schedules.fire_due(later, {"tick"})
    assert await run_ids(client) == []
    await client.resume_schedule("minutely")
    await schedules.fire_due(later, {"tick"})
    assert await run_ids(client) == [f"wfr_minutely-{Cron('* * * * *').latest(later)}"]
    # A scheduler fires only the schedules of the workflows it has (and which are not paused).
    await schedules.fire_due(later + MINUTE, {"other"})
    assert len(await run_ids(client)) == 1


async def test_declared_schedules_follow_the_code_and_keep_a_pause(harness: Harness) -> None:
    first = harness.workflows()
    with_tick(first, Schedule("0 9 * * 1-5", "Europe/Berlin", {"kind": "daily"}))
    await harness.worker(first)
    client = first.client()
    [stored] = await client.schedules()
    assert stored["id"] == "tick" and stored["cron"] == "0 9 * * 1-5"
    assert stored["payload"] == {"kind": "daily"} and not stored["paused"]
    await client.pause_schedule("tick")
    await harness.close(first)

    # A new deploy changes the time: the operator's pause stays.
    second = harness.workflows()
    with_tick(second, "0 10 * * 1-5")
    await harness.worker(second)
    [stored] = await second.client().schedules()
    assert (stored["cron"], stored["timezone"], stored["paused"]) == ("0 10 * * 1-5", "UTC", True)
    await second.client().create_schedule("by-hand", "tick", "0 3 * * *")
    await harness.close(second)

    # The schedule is gone from the code: its stored twin goes; one made by hand stays.
    third = harness.workflows()
    with_tick(third)
    await harness.worker(third)
    assert [s["id"] for s in await third.client().schedules()] == ["by-hand"]


async def test_workers_tick_every_second_once_per_tick(harness: Harness) -> None:
    """Two workers (two registries, as two processes) run the scheduler on one store: every
    second in the window has exactly one run, and each finishes."""
    registries = [harness.workflows(), harness.workflows()]
    for workflows in registries:
        with_tick(workflows, Schedule("* * * * * *", payload={"every": "second"}))
    for workflows in registries:
        await harness.worker(workflows)
    client = registries[0].client()
    await wait_until(lambda: _at_least(client, 4), 15, "four ticks")
    for workflows in registries:
        await harness.close(workflows)
    client = harness.workflows().client()
    ids = await run_ids(client)
    ticks = sorted(int(run_id.rsplit("-", 1)[1]) for run_id in ids)
    assert ids == [f"wfr_tick-{tick}" for tick in ticks]
    assert all(tick % 1000 == 0 for tick in ticks)
    assert ticks == list(range(ticks[0], ticks[-1] + 1000, 1000)), "a tick was missed"
    for run_id in ids:
        log = await client.logs(run_id)
        assert log["requestPayload"] == {"every": "second"}


async def _at_least(client: Client, count: int) -> bool:
    return len(await run_ids(client)) >= count


# The storage errors are injected above the backend: one backend is enough.
@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
async def test_the_scheduler_survives_storage_errors(harness: Harness) -> None:
    workflows = harness.workflows()
    with_tick(workflows, "* * * * * *")
    backend = workflows.backend
    original = backend.list_entries
    failures = 0

    async def flaky(kind: str) -> dict[str, str]:
        nonlocal failures
        if kind == TICK and failures < 2:
            failures += 1
            raise BackendUnavailable("storage restarting")
        return await original(kind)

    backend.list_entries = flaky  # type: ignore[method-assign]
    await harness.worker(workflows)
    client = workflows.client()
    await wait_until(lambda: _at_least(client, 2), 15, "ticks after the errors")
    assert failures == 2


def with_keyed(workflows: Workflows, schedule: str | Schedule | None = None) -> None:
    """Register ``keyed``, whose flow control key reads ``userId`` from the payload."""

    @workflows.workflow(
        "keyed",
        flow_control=FlowControl(key=lambda payload: payload["userId"], parallelism=1),
        schedule=schedule,
    )
    async def keyed(context: WorkflowContext) -> Any:
        return context.request_payload


async def test_a_schedule_whose_runs_could_not_start_is_refused(harness: Harness) -> None:
    workflows = harness.workflows()
    with_keyed(workflows)
    client = workflows.client()
    with pytest.raises(ValidationError, match="flow control key of workflow 'keyed'"):
        await client.create_schedule("no-user", "keyed", "* * * * *")
    assert await client.schedules() == []
    await client.create_schedule("for-u1", "keyed", "* * * * *", payload={"userId": "u1"})
    with pytest.raises(ConfigurationError, match="the schedule of workflow 'keyed'"):
        with_keyed(harness.workflows(), "* * * * *")


async def test_a_tick_that_cannot_start_its_run_stops_no_other_schedule(
    harness: Harness,
) -> None:
    """A stored schedule whose run the workflow refuses (here: its flow control key cannot be
    read from the payload, as after a deploy that added the key): the tick is recorded as not
    started, saying why, and every other schedule goes on ticking."""
    workflows = harness.workflows()
    with_tick(workflows, "* * * * * *")
    with_keyed(workflows)
    await harness.worker(workflows)
    now = workflows.engine.clock()
    bad = ScheduleRecord("aaa-bad", "keyed", "* * * * * *", "UTC", None, False, now)
    await workflows.backend.put_entry(SCHEDULE, bad.id, bad.definition(), create=True)
    client = workflows.client()
    await wait_until(lambda: _at_least(client, 3), 15, "ticks of the good schedule")

    async def refused() -> bool:
        return (await client.schedule("aaa-bad"))["lastError"] is not None

    await wait_until(refused, 15, "the bad schedule's tick recorded")
    listed = await client.schedule("aaa-bad")
    assert listed["lastRunId"] is None
    assert "flow control key of workflow 'keyed'" in listed["lastError"]
    assert await run_ids(client, "keyed") == []


async def test_a_paused_workflow_runs_nothing_until_resumed(harness: Harness) -> None:
    workflows = harness.workflows()
    seen = with_tick(workflows)
    await harness.worker(workflows)
    client = workflows.client()
    await client.pause_workflow("tick")
    assert await client.workflows() == {"workflows": ["tick"], "paused": ["tick"], "examples": {}}
    run_id = await client.trigger("tick", {"n": 1})  # accepted while paused
    await asyncio.sleep(1.5)  # long enough for a worker to have claimed it, were it not paused
    log = await client.logs(run_id)
    assert (log["workflowState"], log["steps"], seen) == ("RUN_STARTED", [], [])
    await client.resume_workflow("tick")
    assert await client.workflows() == {"workflows": ["tick"], "paused": [], "examples": {}}
    assert (await wait_for_state(client, run_id))["workflowState"] == "RUN_SUCCESS"
    assert seen == [{"n": 1}]
    with pytest.raises(UnknownWorkflow):
        await client.pause_workflow("nope")
