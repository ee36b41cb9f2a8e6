"""The recovery endpoints of DESIGN §14 over HTTP, in-process on every backend (the ``api``
fixture of ``test_api.py``): resume, restart, fork, delete, bulk cancel and resume by ids or
filter, who waits for an event, listing by label and creation time, and every bad input a 4xx
in the error shape whose message names the problem."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stepstream import NonRetryableError, WorkflowContext
from tests.server.test_api import Api, api, assert_error

__all__ = ["api"]  # the fixture, imported to be used here

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fixable(api: Api) -> AsyncIterator[dict[str, Any]]:
    """A workflow ``fixable`` whose step ``second`` fails until ``state["fixed"]``; ``state``
    counts how often each step ran."""
    state: dict[str, Any] = {"fixed": False, "first": 0, "second": 0}

    def first() -> str:
        state["first"] += 1
        return "kept"

    def second() -> str:
        state["second"] += 1
        if not state["fixed"]:
            raise NonRetryableError("not fixed yet")
        return "fixed"

    @api.workflows.workflow("fixable", retries=0)
    async def fixable(context: WorkflowContext) -> Any:
        return [await context.run("first", first), await context.run("second", second)]

    yield state


def assert_says(response: httpx.Response, status: int, *words: str) -> str:
    """``response`` is a ``status`` error whose message holds each of ``words``."""
    assert_error(response, status)
    message: str = response.json()["error"]["message"]
    for word in words:
        assert word in message, (word, message)
    return message


async def waiting(api: Api, run_id: str) -> dict[str, Any]:
    return await api.until(run_id, lambda log: log["status"] == "waiting")


async def listed(api: Api, **params: Any) -> list[str]:
    response = await api.get("/api/runs", params=params)
    assert response.status_code == 200, response.text
    return [run["workflowRunId"] for run in response.json()["runs"]]


# -- one run ------------------------------------------------------------------------------------


async def test_resume_a_canceled_waiting_run_then_notify_finishes_it(api: Api) -> None:
    run_id = await api.trigger("approval")
    event = f"approve-{run_id}"
    await waiting(api, run_id)
    assert (await api.post(f"/api/runs/{run_id}/cancel")).status_code == 200
    assert (await api.get(f"/api/events/{event}/waiters")).json() == {"waiters": []}

    response = await api.post(f"/api/runs/{run_id}/resume")
    assert response.status_code == 200, response.text
    assert response.json() == {"workflowRunId": run_id, "workflowState": "RUN_STARTED"}
    log = await waiting(api, run_id)
    assert log["workflowState"] == "RUN_STARTED"

    waiters = (await api.get(f"/api/events/{event}/waiters")).json()["waiters"]
    assert [set(w) for w in waiters] == [{"workflowRunId", "stepName", "stepId", "deadline"}]
    [waiter] = waiters
    assert waiter["workflowRunId"] == run_id and waiter["stepName"] == "approve"
    assert type(waiter["stepId"]) is int and type(waiter["deadline"]) is int

    assert (await api.post(f"/api/events/{event}", json={"ok": True})).status_code == 200
    log = await api.finished(run_id)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["workflowRunResponse"] == {"data": {"ok": True}, "timedOut": False}
    assert (await api.get(f"/api/events/{event}/waiters")).json() == {"waiters": []}


async def test_resume_a_failed_run_keeps_its_completed_steps(
    api: Api, fixable: dict[str, Any]
) -> None:
    run_id = await api.trigger("fixable")
    assert (await api.finished(run_id))["workflowState"] == "RUN_FAILED"
    fixable["fixed"] = True
    assert (await api.post(f"/api/runs/{run_id}/resume")).status_code == 200
    log = await api.finished(run_id)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["workflowRunResponse"] == ["kept", "fixed"]
    assert fixable["first"] == 1  # kept, not run again
    assert fixable["second"] == 2


async def test_resume_is_a_409_unless_failed_or_canceled_and_a_404_if_unknown(api: Api) -> None:
    napping = await api.trigger("nap")
    await waiting(api, napping)
    assert_says(await api.post(f"/api/runs/{napping}/resume"), 409)
    done = await api.trigger("echo")
    await api.finished(done)
    assert_says(await api.post(f"/api/runs/{done}/resume"), 409)
    assert (await api.run_log(done))["workflowState"] == "RUN_SUCCESS"
    assert_error(await api.post("/api/runs/wfr_missing/resume"), 404, "run_not_found")


async def test_restart_starts_a_new_run_with_the_same_payload_and_labels(api: Api) -> None:
    old = await api.trigger("echo", {"sku": "A1"}, label=["import-7", "eu"])
    await api.finished(old)
    response = await api.post(f"/api/runs/{old}/restart")
    assert response.status_code == 201, response.text
    assert set(response.json()) == {"workflowRunId"}
    new = response.json()["workflowRunId"]
    assert new != old
    log = await api.finished(new)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["requestPayload"] == log["workflowRunResponse"] == {"sku": "A1"}
    assert log["restartedFrom"] == old and log["forkedFrom"] is None
    assert log["labels"] == ["import-7", "eu"]
    assert (await api.run_log(old))["restartedFrom"] is None
    assert_error(await api.post("/api/runs/wfr_missing/restart"), 404, "run_not_found")


async def test_fork_copies_the_steps_before_the_one_named(
    api: Api, fixable: dict[str, Any]
) -> None:
    old = await api.trigger("fixable")
    await api.finished(old)
    fixable["fixed"] = True
    response = await api.post(f"/api/runs/{old}/fork", params={"fromStep": "second"})
    assert response.status_code == 201, response.text
    assert set(response.json()) == {"workflowRunId"}
    new = response.json()["workflowRunId"]
    log = await api.finished(new)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["forkedFrom"] == old and log["restartedFrom"] is None
    assert [step["stepName"] for step in log["steps"]] == ["first", "second"]
    assert fixable["first"] == 1  # copied, not executed
    assert (await api.run_log(old))["workflowState"] == "RUN_FAILED"


async def test_fork_needs_a_step_of_the_run(api: Api, fixable: dict[str, Any]) -> None:
    run_id = await api.trigger("fixable")
    await api.finished(run_id)
    assert_says(await api.post(f"/api/runs/{run_id}/fork"), 422, "fromStep")
    assert_says(await api.post(f"/api/runs/{run_id}/fork?fromStep="), 422, "fromStep")
    unknown = await api.post(f"/api/runs/{run_id}/fork", params={"fromStep": "third"})
    assert_says(unknown, 422, "'third'", "'first'", "'second'")
    missing = await api.post("/api/runs/wfr_missing/fork", params={"fromStep": "first"})
    assert_error(missing, 404, "run_not_found")


async def test_delete_a_finished_run_then_it_is_gone(api: Api) -> None:
    run_id = await api.trigger("echo")
    await api.finished(run_id)
    response = await api.delete(f"/api/runs/{run_id}")
    assert response.status_code == 200, response.text
    assert response.json() == {"workflowRunId": run_id, "deleted": True}
    assert_error(await api.get(f"/api/runs/{run_id}"), 404, "run_not_found")
    assert_error(await api.delete(f"/api/runs/{run_id}"), 404, "run_not_found")
    assert run_id not in await listed(api)


async def test_delete_a_running_run_is_a_409(api: Api) -> None:
    run_id = await api.trigger("nap")
    await waiting(api, run_id)
    assert_says(await api.delete(f"/api/runs/{run_id}"), 409)
    assert (await api.run_log(run_id))["workflowState"] == "RUN_STARTED"


async def test_nobody_waits_for_an_unknown_event(api: Api) -> None:
    response = await api.get("/api/events/nobody-waits/waiters")
    assert response.status_code == 200, response.text
    assert response.json() == {"waiters": []}


# -- many runs ----------------------------------------------------------------------------------


async def test_bulk_cancel_and_resume_by_ids(api: Api) -> None:
    naps = [await api.trigger("nap") for _ in range(3)]
    for run_id in naps:
        await waiting(api, run_id)
    chosen = naps[:2]
    response = await api.post("/api/runs/cancel", json={"ids": [*chosen, "wfr_missing"]})
    assert response.status_code == 200, response.text
    assert response.json() == {"canceled": 2}  # an unknown id is skipped
    states = {run_id: (await api.run_log(run_id))["workflowState"] for run_id in naps}
    assert states == {naps[0]: "RUN_CANCELED", naps[1]: "RUN_CANCELED", naps[2]: "RUN_STARTED"}
    # A running run is in no state to resume: skipped, not an error.
    response = await api.post("/api/runs/resume", json={"ids": naps})
    assert response.status_code == 200, response.text
    assert response.json() == {"resumed": 2}
    for run_id in naps:
        assert (await api.run_log(run_id))["workflowState"] == "RUN_STARTED"
    assert (await api.post("/api/runs/cancel", json={"ids": []})).json() == {"canceled": 0}


async def test_bulk_cancel_and_resume_by_filter_with_a_label(api: Api) -> None:
    batch = [await api.trigger("nap", label="batch-7") for _ in range(2)]
    other = await api.trigger("nap", label="batch-8")
    for run_id in [*batch, other]:
        await waiting(api, run_id)
    response = await api.post("/api/runs/cancel", json={"filter": {"label": "batch-7"}})
    assert response.status_code == 200, response.text
    assert response.json() == {"canceled": 2}
    assert (await api.run_log(other))["workflowState"] == "RUN_STARTED"
    assert sorted(await listed(api, label="batch-7", state="RUN_CANCELED")) == sorted(batch)
    resume = {"filter": {"label": "batch-7", "workflow": "nap", "state": "RUN_CANCELED"}}
    response = await api.post("/api/runs/resume", json=resume)
    assert response.status_code == 200, response.text
    assert response.json() == {"resumed": 2}
    assert await listed(api, state="RUN_CANCELED") == []
    nothing = {"filter": {"label": "batch-7", "workflow": "echo"}}
    assert (await api.post("/api/runs/cancel", json=nothing)).json() == {"canceled": 0}


async def test_list_runs_by_label(api: Api) -> None:
    tagged = await api.trigger("echo", label=["import-7", "eu"])
    untagged = await api.trigger("echo")
    for run_id in (tagged, untagged):
        await api.finished(run_id)
    assert await listed(api, label="import-7") == [tagged]
    assert await listed(api, label="eu", workflow="echo") == [tagged]
    assert await listed(api, label="nope") == []
    response = await api.get("/api/runs", params={"label": "eu"})
    [entry] = response.json()["runs"]
    assert entry["labels"] == ["import-7", "eu"]
    assert entry["restartedFrom"] is None and entry["forkedFrom"] is None
    assert "requestPayload" not in entry and "steps" not in entry
    assert (await api.run_log(untagged))["labels"] == []


async def test_list_runs_by_creation_time_exclusive(api: Api) -> None:
    runs = [await api.trigger("echo", n) for n in range(3)]
    created = {run_id: (await api.run_log(run_id))["workflowRunCreatedAt"] for run_id in runs}
    middle = created[runs[1]]

    def newest_first(keep: Any) -> list[str]:
        return [run_id for run_id in runs[::-1] if keep(created[run_id])]

    after = await listed(api, createdAfter=middle)
    assert after == newest_first(lambda at: at > middle)
    assert runs[1] not in after  # exclusive
    assert runs[1] in await listed(api, createdAfter=middle - 1)
    before = await listed(api, createdBefore=middle)
    assert before == newest_first(lambda at: at < middle)
    assert runs[1] not in before
    assert await listed(api, createdAfter=middle - 1, createdBefore=middle + 1) == newest_first(
        lambda at: at == middle
    )
    assert await listed(api, createdAfter=0) == runs[::-1]


# -- bad input: a 4xx in the error shape, naming the problem --------------------------------------


@pytest.mark.parametrize("path", ["/api/runs/cancel", "/api/runs/resume"])
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", ["JSON object", '"ids"', '"filter"']),
        (b"[1, 2]", ["JSON object", "list"]),
        (b'"wfr_x"', ["JSON object"]),
        (b"null", ["JSON object"]),
        (b"{}", ['"ids"', '"filter"']),
        (b'{"ids": ["wfr_x"], "filter": {}}', ["not both"]),
        (b'{"id": ["wfr_x"]}', ["unknown", "id"]),
        (b'{"ids": "wfr_x"}', ['"ids" must be a list']),
        (b'{"ids": [1]}', ['"ids" must be a list of run ids']),
        (b'{"ids": [""]}', ['"ids" must be a list of run ids']),
        (json.dumps({"ids": [f"wfr_{n}" for n in range(1001)]}).encode(), ["1001", "1000"]),
        (b'{"filter": []}', ['"filter" must be an object']),
        (b'{"filter": {}}', ["empty filter would select every run", "state"]),
        (b'{"filter": {"state": null}}', ["empty filter would select every run"]),
        (b'{"filter": {"status": "failed"}}', ["unknown filter field", "status"]),
        (b'{"filter": {"state": "failed"}}', ["state", "RUN_FAILED"]),
        (b'{"filter": {"workflow": 5}}', ["workflow", "string"]),
        (b'{"filter": {"label": ""}}', ["label", "non-empty"]),
        (b'{"filter": {"createdAfter": "yesterday"}}', ["createdAfter", "epoch milli"]),
        (b'{"filter": {"createdAfter": -1}}', ["createdAfter", "epoch milli"]),
        (b'{"filter": {"createdAfter": 1e30}}', ["createdAfter", "epoch milli"]),
        (b'{"filter": {"createdAfter": true}}', ["createdAfter", "epoch milli"]),
        (b'{"filter": {"createdBefore": 1.5}}', ["createdBefore", "epoch milli"]),
    ],
)
async def test_a_bad_bulk_body_is_a_422_saying_what_to_send(
    api: Api, path: str, body: bytes, words: list[str]
) -> None:
    assert_says(await api.post(path, content=body), 422, *words)


@pytest.mark.parametrize("path", ["/api/runs/cancel", "/api/runs/resume"])
async def test_a_bulk_body_that_is_not_json_is_a_400(api: Api, path: str) -> None:
    assert_says(await api.post(path, content=b"{ids:"), 400, "not valid JSON")


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"createdAfter": "yesterday"}, ["createdAfter", "epoch milli"]),
        ({"createdAfter": "-1"}, ["createdAfter", "epoch milli"]),
        ({"createdAfter": "1e30"}, ["createdAfter", "epoch milli"]),
        ({"createdAfter": "true"}, ["createdAfter", "epoch milli"]),
        ({"createdAfter": "²"}, ["createdAfter", "epoch milli"]),
        ({"createdBefore": "9" * 30}, ["createdBefore", "epoch milli"]),
        ({"createdBefore": "2026-01-05"}, ["createdBefore", "epoch milli"]),
        ({"label": ["a", "b"]}, ["label", "once"]),
        ({"label": ""}, ["label", "non-empty"]),
        ({"createdAfter": ["1", "2"]}, ["createdAfter", "once"]),
        ({"state": ["RUN_FAILED", "RUN_SUCCESS"]}, ["state", "once"]),
    ],
)
async def test_bad_run_filters_are_a_422(
    api: Api, params: dict[str, Any], words: list[str]
) -> None:
    assert_says(await api.get("/api/runs", params=params), 422, *words)


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ([f"l{n}" for n in range(21)], ["at most 20 labels", "21"]),
        (["x" * 101], ["label", "1 to 100 characters"]),
        ([""], ["label", "1 to 100 characters"]),
    ],
)
async def test_bad_trigger_labels_are_a_422(api: Api, labels: list[str], words: list[str]) -> None:
    response = await api.post("/api/workflows/echo", params={"label": labels}, json=None)
    assert_says(response, 422, *words)
    assert await listed(api) == []  # no run was made


async def test_the_most_labels_a_run_takes_are_kept(api: Api) -> None:
    labels = [f"l{n}" for n in range(19)]  # and a duplicate, kept once
    run_id = await api.trigger("echo", label=[*labels, "l0", "x" * 100])
    assert (await api.run_log(run_id))["labels"] == [*labels, "x" * 100]


@pytest.mark.parametrize("odd", ["\x00", "wfr_\x00x", "é ✓ 😀", "x" * 10_000, "%2F/.."])
async def test_odd_ids_and_filter_values_are_not_server_errors(api: Api, odd: str) -> None:
    for path in ("/api/runs/cancel", "/api/runs/resume"):
        response = await api.post(path, json={"ids": [odd]})
        assert response.status_code == 200, response.text
        response = await api.post(path, json={"filter": {"label": odd, "workflow": odd}})
        assert response.status_code == 200, response.text
    response = await api.get("/api/runs", params={"label": odd, "workflow": odd})
    assert response.status_code == 200, response.text
    assert response.json()["runs"] == []


@pytest.mark.parametrize("bad", ["\x00", "a\x00b", "tab\there", "\x7f"])
async def test_a_label_with_control_characters_is_refused_on_every_backend(
    api: Api, bad: str
) -> None:
    response = await api.post("/api/workflows/echo", params={"label": bad}, json=None)
    assert "control characters" in assert_says(response, 422)


@pytest.mark.parametrize("odd", ["é ✓ 😀", "%2F/..", " "])
async def test_an_odd_label_is_kept(api: Api, odd: str) -> None:
    response = await api.post("/api/workflows/echo", params={"label": odd}, json=None)
    assert response.status_code == 202, response.text
    run_id = response.json()["workflowRunId"]
    assert (await api.run_log(run_id))["labels"] == [odd]
    assert await listed(api, label=odd) == [run_id]
