"""The schedule endpoints (DESIGN §13) and pausing workflows over HTTP, in-process
(``workflows.asgi(workers=1)`` in its lifespan): shapes, 201/404/409/422 answers each naming the
problem, the OpenAPI document, and ``Client`` over HTTP raising what the in-process one raises."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stepstream import (
    Client,
    RunConflict,
    Schedule,
    UnknownWorkflow,
    ValidationError,
    WorkflowContext,
    Workflows,
)
from stepstream.client import HTTPTransport
from stepstream.errors import RouteNotFound
from stepstream.workflow.cron import Cron
from tests.conftest import STORES
from tests.workflow.helpers import wait_for_state, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend_url", STORES, indirect=True)]

SCHEDULE_KEYS = {
    "id",
    "workflow",
    "cron",
    "timezone",
    "payload",
    "paused",
    "nextRunAt",
    "lastRunId",
    "lastError",
}


@pytest.fixture
async def served(backend_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Workflows]]:
    workflows = Workflows(backend=backend_url)

    @workflows.workflow("echo", schedule=Schedule("0 9 * * 1-5", "Europe/Berlin", {"d": 1}))
    async def echo(context: WorkflowContext) -> Any:
        return await context.run("echo", lambda: context.request_payload)

    @workflows.workflow("other")
    async def other(context: WorkflowContext) -> None:
        return None

    app = workflows.asgi(workers=1)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://127.0.0.1:8000",
            headers={"content-type": "application/json"},
            timeout=30,
        ) as http,
    ):
        yield http, workflows
    await workflows.aclose()


def assert_error(response: httpx.Response, status: int, code: str, *says: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for text in says:
        assert text in error["message"], error


async def test_schedules_over_http(served: tuple[httpx.AsyncClient, Workflows]) -> None:
    http, workflows = served
    listed = (await http.get("/api/schedules")).json()["schedules"]
    assert [s["id"] for s in listed] == ["echo"], "declared when the worker started"
    assert set(listed[0]) == SCHEDULE_KEYS
    assert listed[0]["timezone"] == "Europe/Berlin" and listed[0]["payload"] == {"d": 1}

    body = {"id": "nightly", "workflow": "other", "cron": "0 2 * * *", "timezone": "UTC"}
    before = workflows.engine.clock()
    created = await http.post("/api/schedules", json=body)
    after = workflows.engine.clock()
    assert created.status_code == 201, created.text
    info = created.json()
    assert set(info) == SCHEDULE_KEYS
    assert (info["paused"], info["lastRunId"], info["payload"]) == (False, None, None)
    nightly = Cron("0 2 * * *")
    assert info["nextRunAt"] in {nightly.next_after(before), nightly.next_after(after)}
    assert (await http.get("/api/schedules/nightly")).json() == info

    paused = (await http.post("/api/schedules/nightly/pause")).json()
    assert paused["paused"] is True and paused["nextRunAt"] is None
    resumed = (await http.post("/api/schedules/nightly/resume")).json()
    assert resumed["paused"] is False and isinstance(resumed["nextRunAt"], int)

    deleted = await http.delete("/api/schedules/nightly")
    assert deleted.status_code == 200 and deleted.json() == {"id": "nightly", "deleted": True}
    assert_error(await http.get("/api/schedules/nightly"), 404, "not_found", "'nightly'")
    assert [s["id"] for s in (await http.get("/api/schedules")).json()["schedules"]] == ["echo"]


async def test_bad_requests_say_what_is_wrong(served: tuple[httpx.AsyncClient, Workflows]) -> None:
    http, _ = served
    good = {"id": "s1", "workflow": "other", "cron": "* * * * *"}
    assert (await http.post("/api/schedules", json=good)).status_code == 201
    assert_error(await http.post("/api/schedules", json=good), 409, "conflict", "already exists")
    unknown = {**good, "id": "s2", "workflow": "nope"}
    assert_error(await http.post("/api/schedules", json=unknown), 404, "unknown_workflow", "nope")
    for body, says in [
        ({**good, "id": "s2", "cron": "* * * *"}, "has 4 fields: expected 5 fields"),
        ({**good, "id": "s2", "cron": "99 * * * *"}, "out of range"),
        ({**good, "id": "s2", "timezone": "Mars/Base"}, "unknown time zone 'Mars/Base'"),
        ({**good, "id": "has space"}, "1-64 characters"),
        ({**good, "id": "x" * 65}, "1-64 characters"),
        ({**good, "id": 5}, "id must be a string"),
        ({**good, "id": "s2", "timeZone": "UTC"}, "unknown fields timeZone"),
        ([1, 2], "must be a JSON object"),
        ({"id": "s2"}, "workflow must be a string"),
    ]:
        assert_error(await http.post("/api/schedules", json=body), 422, "validation_error", says)
    malformed = await http.post("/api/schedules", content=b"{not json")
    assert_error(malformed, 400, "malformed_json")
    for method, path in [
        ("GET", "/api/schedules/nope"),
        ("DELETE", "/api/schedules/nope"),
        ("POST", "/api/schedules/nope/pause"),
        ("POST", "/api/schedules/nope/resume"),
        ("GET", "/api/schedules/bad%00id"),
    ]:
        assert_error(await http.request(method, path), 404, "not_found", "no schedule")
    assert_error(await http.post("/api/workflows/nope/pause"), 404, "unknown_workflow")
    assert (await http.put("/api/schedules")).status_code == 405


async def test_pausing_a_workflow_over_http(served: tuple[httpx.AsyncClient, Workflows]) -> None:
    http, workflows = served
    assert (await http.get("/api/workflows")).json() == {
        "workflows": ["echo", "other"],
        "paused": [],
        "examples": {},
    }
    answer = await http.post("/api/workflows/echo/pause")
    assert answer.status_code == 200 and answer.json() == {"workflow": "echo", "paused": True}
    assert (await http.get("/api/workflows")).json()["paused"] == ["echo"]
    run_id = (await http.post("/api/workflows/echo", json={"n": 1})).json()["workflowRunId"]
    client = workflows.client()
    await wait_until(lambda: _started(client, run_id), 5, "the run stored")
    await _still_waiting(client, run_id)
    answer = await http.post("/api/workflows/echo/resume")
    assert answer.json() == {"workflow": "echo", "paused": False}
    assert (await wait_for_state(client, run_id))["workflowRunResponse"] == {"n": 1}


async def _started(client: Client, run_id: str) -> bool:
    return (await client.logs(run_id))["workflowState"] == "RUN_STARTED"


async def _still_waiting(client: Client, run_id: str) -> None:
    await asyncio.sleep(1.5)  # a worker would have claimed and finished it by now
    log = await client.logs(run_id)
    assert (log["workflowState"], log["steps"]) == ("RUN_STARTED", [])


async def test_the_client_over_http_raises_what_it_raises_in_process(
    served: tuple[httpx.AsyncClient, Workflows],
) -> None:
    http, workflows = served
    remote = Client(transport=HTTPTransport("http://127.0.0.1:8000", http=http))
    local = workflows.client()
    for client in (remote, local):
        name = "r" if client is remote else "l"
        created = await client.create_schedule(name, "other", "0 3 * * *", payload=[1])
        assert created["payload"] == [1] and created["id"] == name
        assert (await client.pause_schedule(name))["paused"]
        assert not (await client.resume_schedule(name))["paused"]
        assert (await client.schedule(name))["cron"] == "0 3 * * *"
        with pytest.raises(RunConflict, match="already exists"):
            await client.create_schedule(name, "other", "0 3 * * *")
        with pytest.raises(UnknownWorkflow):
            await client.create_schedule("x", "nope", "0 3 * * *")
        with pytest.raises(ValidationError, match="unknown time zone"):
            await client.create_schedule("x", "other", "0 3 * * *", timezone="Nowhere")
        with pytest.raises(ValidationError, match="fields"):
            await client.create_schedule("x", "other", "0 3")
        await client.delete_schedule(name)
        with pytest.raises(RouteNotFound):
            await client.delete_schedule(name)
        await client.pause_workflow("other")
        assert (await client.workflows())["paused"] == ["other"]
        await client.resume_workflow("other")
        assert (await client.workflows()) == {
            "workflows": ["echo", "other"],
            "paused": [],
            "examples": {},
        }
        with pytest.raises(UnknownWorkflow):
            await client.pause_workflow("nope")
    assert [s["id"] for s in await remote.schedules()] == ["echo"]
    assert await remote.schedules() == await local.schedules()


async def test_the_openapi_document_has_the_schedule_routes(
    served: tuple[httpx.AsyncClient, Workflows],
) -> None:
    http, _ = served
    document = (await http.get("/openapi.json")).json()
    operations = {(m, p) for p, item in document["paths"].items() for m in item}
    assert {
        ("get", "/api/schedules"),
        ("post", "/api/schedules"),
        ("get", "/api/schedules/{id}"),
        ("delete", "/api/schedules/{id}"),
        ("post", "/api/schedules/{id}/pause"),
        ("post", "/api/schedules/{id}/resume"),
        ("post", "/api/workflows/{name}/pause"),
        ("post", "/api/workflows/{name}/resume"),
    } <= operations
    schedule = document["components"]["schemas"]["Schedule"]
    assert set(schedule["properties"]) == SCHEDULE_KEYS
    listed = document["paths"]["/api/workflows"]["get"]["responses"]["200"]
    assert "paused" in listed["content"]["application/json"]["schema"]["properties"]
