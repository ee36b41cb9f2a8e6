"""The HTTP API of DESIGN §5, in-process (``workflows.asgi(workers=1)`` inside its lifespan,
through ``httpx.ASGITransport``), on every backend: status codes, the error shape, the log shape
with epoch-millisecond integers, filters and cursor paging, cancel, notify and lookback, and the
OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from stepstream import Realtime, WorkflowContext, Workflows
from stepstream.errors import DETAIL_HEADER
from stepstream.records import HistoryPolicy

pytestmark = pytest.mark.anyio

RUN_ID = re.compile(r"wfr_[A-Za-z0-9_-]{22,}")
TIMEOUT = 30  # seconds a condition may take to come true
LOG_KEYS = {
    "workflowRunId", "workflowName", "workflowState", "workflowRunCreatedAt",
    "workflowRunCompletedAt", "requestPayload", "workflowRunResponse", "error", "steps",
}  # fmt: skip
LARGE_KEYS = {"requestPayload", "workflowRunResponse", "steps"}
SUMMARY_KEYS = {
    "workflowRunId", "workflowName", "displayName", "workflowState", "workflowRunCreatedAt",
    "workflowRunCompletedAt", "error", "invoker", "flowControl", "status", "waitingFor",
    "labels", "restartedFrom", "forkedFrom",
}  # fmt: skip
STEP_KEYS = {
    "stepName", "stepType", "state", "attempts", "startedAt", "finishedAt", "out", "error"
}  # fmt: skip


class Api(httpx.AsyncClient):
    gate: asyncio.Event
    workflows: Workflows

    async def run_log(self, run_id: str) -> dict[str, Any]:
        response = await self.get(f"/api/runs/{run_id}")
        assert response.status_code == 200, response.text
        log: dict[str, Any] = response.json()
        return log

    async def trigger(
        self, name: str, payload: Any = None, headers: dict[str, str] | None = None, **params: Any
    ) -> str:
        response = await self.post(
            f"/api/workflows/{name}", json=payload, params=params, headers=headers
        )
        assert response.status_code == 202, response.text
        run_id: str = response.json()["workflowRunId"]
        return run_id

    async def until(self, run_id: str, check: Any) -> dict[str, Any]:
        """The run's log once ``check(log)`` holds (polled, bounded)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            log = await self.run_log(run_id)
            if check(log):
                return log
            assert time.monotonic() < deadline, f"condition never held: {log}"
            await asyncio.sleep(0.02)  # polling for progress, not an assertion

    async def finished(self, run_id: str) -> dict[str, Any]:
        return await self.until(run_id, lambda log: log["workflowState"] != "RUN_STARTED")


@pytest.fixture
async def api(backend_url: str) -> AsyncIterator[Api]:
    realtime = Realtime(backend=backend_url)
    workflows = Workflows(realtime=realtime)
    gate = asyncio.Event()

    @workflows.workflow("echo")
    async def echo(context: WorkflowContext) -> Any:
        return await context.run("echo", lambda: context.request_payload)

    @workflows.workflow("nap")
    async def nap(context: WorkflowContext) -> None:
        await context.sleep("nap", 3600)

    @workflows.workflow("approval")
    async def approval(context: WorkflowContext) -> Any:
        data, timed_out = await context.wait_for_event(
            "approve", f"approve-{context.workflow_run_id}", timeout=3600
        )
        return {"data": data, "timedOut": timed_out}

    @workflows.workflow("gated")
    async def gated(context: WorkflowContext) -> Any:
        async def wait_for_the_test() -> str:
            await gate.wait()
            return "open"

        await context.run("gate", wait_for_the_test)
        data, timed_out = await context.wait_for_event("wait", "lookback-event", timeout=3600)
        return {"data": data, "timedOut": timed_out}

    app = workflows.asgi(workers=1)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with Api(
            transport=transport,
            base_url="http://127.0.0.1:8000",  # without a token, only loopback names are served
            headers={"content-type": "application/json"},  # what a body must say it is
            timeout=TIMEOUT,
        ) as client:
            client.gate = gate
            client.workflows = workflows
            yield client
            gate.set()  # let the gated step end so the worker stops promptly


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body


# -- trigger ------------------------------------------------------------------------------------


async def test_trigger_returns_202_and_an_unguessable_run_id(api: Api) -> None:
    first = await api.post("/api/workflows/echo", json={"userId": "u1"})
    second = await api.post("/api/workflows/echo", json={"userId": "u1"})
    assert first.status_code == 202, first.text
    assert first.headers["content-type"].startswith("application/json")
    run_id = first.json()["workflowRunId"]
    assert set(first.json()) == {"workflowRunId"}
    # wfr_ + at least 128 bits of URL-safe base64 (22 characters)
    assert RUN_ID.fullmatch(run_id), run_id
    assert second.json()["workflowRunId"] != run_id
    log = await api.finished(run_id)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["requestPayload"] == {"userId": "u1"}
    assert log["workflowRunResponse"] == {"userId": "u1"}


@pytest.mark.parametrize(
    "payload",
    [None, 0, 1.5, "text", [1, "two", None], {"nested": {"deep": [True, False]}}, "é ✓ 😀"],
)
async def test_any_json_is_a_payload(api: Api, payload: Any) -> None:
    response = await api.post(
        "/api/workflows/echo",
        content=json.dumps(payload).encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    log = await api.finished(response.json()["workflowRunId"])
    assert log["requestPayload"] == payload
    assert log["workflowRunResponse"] == payload


async def test_an_empty_body_is_a_null_payload(api: Api) -> None:
    response = await api.post("/api/workflows/echo")
    assert response.status_code == 202, response.text
    log = await api.finished(response.json()["workflowRunId"])
    assert log["requestPayload"] is None


async def test_a_chosen_run_id_gets_the_prefix_once(api: Api) -> None:
    assert await api.trigger("echo", workflowRunId="order-42") == "wfr_order-42"
    assert await api.trigger("echo", workflowRunId="wfr_order-43") == "wfr_order-43"
    assert (await api.finished("wfr_order-42"))["workflowState"] == "RUN_SUCCESS"


async def test_reusing_a_run_id_is_a_409(api: Api) -> None:
    await api.trigger("echo", workflowRunId="once")
    again = await api.post("/api/workflows/echo", params={"workflowRunId": "once"}, json=1)
    assert_error(again, 409, "conflict")
    prefixed = await api.post("/api/workflows/nap", params={"workflowRunId": "wfr_once"})
    assert_error(prefixed, 409, "conflict")
    log = await api.finished("wfr_once")
    assert log["workflowName"] == "echo" and log["requestPayload"] is None  # untouched


@pytest.mark.parametrize("run_id", ["", "wfr_", "has space", "slash/inside", "ümlaut", "x" * 200])
async def test_a_bad_run_id_is_refused(api: Api, run_id: str) -> None:
    response = await api.post("/api/workflows/echo", params={"workflowRunId": run_id})
    assert_error(response, 422)


async def test_unknown_workflow_is_a_404(api: Api) -> None:
    response = await api.post("/api/workflows/nope", json={})
    assert_error(response, 404, "unknown_workflow")
    assert "nope" in response.json()["error"]["message"]
    assert (await api.get("/api/runs")).json()["runs"] == []


@pytest.mark.parametrize(
    "body", [b"{bad", b'{"a": 1', b"\xff\xfe", b"[1, 2,]", b"nul", b'"unterminated']
)
async def test_malformed_json_is_a_400(api: Api, body: bytes) -> None:
    for path in ("/api/workflows/echo", "/api/events/some-event"):
        response = await api.post(path, content=body, headers={"content-type": "application/json"})
        assert_error(response, 400, "malformed_json")


async def test_json_nested_too_deeply_is_a_400(api: Api) -> None:
    for depth in (990, 5000, 100_000):
        body = b"[" * depth + b"]" * depth
        for path in ("/api/workflows/echo", "/api/events/some-event"):
            response = await api.post(path, content=body)
            assert_error(response, 400, "malformed_json")


async def test_an_integer_too_long_for_python_is_a_400(api: Api) -> None:
    """Python refuses to read integers of over 4300 digits (a ``ValueError``, not a JSON
    error): still the client's mistake, never a 500."""
    body = b'{"n": ' + b"7" * 5000 + b"}"
    for path in ("/api/workflows/echo", "/api/events/some-event", "/api/runs/cancel"):
        response = await api.post(path, content=body, headers={"content-type": "application/json"})
        assert_error(response, 400, "malformed_json")
        assert "4300" in response.json()["error"]["message"]


async def test_nan_is_not_json(api: Api) -> None:
    response = await api.post("/api/workflows/echo", content=b'{"x": NaN}')
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)


async def test_a_body_over_one_megabyte_is_a_413(api: Api) -> None:
    limit = 1_000_000
    at_limit = b'"' + b"a" * (limit - 2) + b'"'
    assert (await api.post("/api/workflows/echo", content=at_limit)).status_code == 202
    over = b'"' + b"a" * (limit - 1) + b'"'
    assert_error(await api.post("/api/workflows/echo", content=over), 413, "payload_too_large")
    assert_error(await api.post("/api/events/e", content=over), 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the limit still holds
        for _ in range(30):
            yield b" " * 50_000

    streamed = await api.post("/api/workflows/echo", content=chunks())
    assert_error(streamed, 413, "payload_too_large")


async def test_forwarded_trigger_headers_keep_no_credentials(api: Api) -> None:
    credentials = {
        "authorization": "Bearer a",
        "proxy-authorization": "Basic b",
        "cookie": "session=c",
        "x-api-key": "d",
        "x-auth-token": "e",
        "x-amz-security-token": "f",
        "x-goog-api-key": "g",
        "x-session-id": "h",
    }
    kept = {"x-request-id": "r-1", "user-agent": "test-agent", "x-tenant": "acme"}
    ours = {DETAIL_HEADER: "1"}  # what stepstream's own clients add to every request
    run_id = await api.trigger("echo", {}, headers={**credentials, **kept, **ours})
    run = await api.workflows.backend.get_run(run_id)
    assert run is not None
    assert not (set(credentials) | set(ours)) & set(run.headers), run.headers
    assert kept.items() <= run.headers.items()


@pytest.mark.parametrize("delay", ["soon", "-1", "nan", "inf", "1e400", "", "99999999999"])
async def test_a_bad_delay_is_refused(api: Api, delay: str) -> None:
    response = await api.post("/api/workflows/echo", params={"delay": delay})
    assert response.status_code in {400, 422}, response.text
    assert_error(response, response.status_code)
    assert (await api.get("/api/runs")).json()["runs"] == []


async def test_a_delayed_run_waits(api: Api) -> None:
    run_id = await api.trigger("echo", {"later": True}, delay="3600")
    log = await api.run_log(run_id)
    assert log["workflowState"] == "RUN_STARTED"
    assert log["steps"] == []
    immediate = await api.trigger("echo", delay="0")
    assert (await api.finished(immediate))["workflowState"] == "RUN_SUCCESS"
    assert (await api.run_log(run_id))["steps"] == []  # the worker ran the other, not this


# -- the log ------------------------------------------------------------------------------------


async def test_the_log_shape_and_integer_epoch_ms(api: Api) -> None:
    before = int(time.time() * 1000)
    run_id = await api.trigger("echo", {"k": "v"})
    log = await api.finished(run_id)
    after = int(time.time() * 1000)
    assert set(log) >= LOG_KEYS, set(log)
    assert log["workflowRunId"] == run_id
    assert log["workflowName"] == "echo"
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["error"] is None
    created, completed = log["workflowRunCreatedAt"], log["workflowRunCompletedAt"]
    assert type(created) is int and type(completed) is int
    assert before - 1000 <= created <= completed <= after + 1000  # ms, not s or µs
    [step] = log["steps"]
    assert set(step) >= STEP_KEYS, set(step)
    assert step["stepName"] == "echo"
    assert step["stepType"] == "Run"
    assert step["state"] == "STEP_SUCCESS"
    assert step["attempts"] == 1
    assert step["out"] == {"k": "v"}
    assert step["error"] is None
    assert type(step["startedAt"]) is int and type(step["finishedAt"]) is int
    assert created <= step["startedAt"] <= step["finishedAt"] <= completed


async def test_a_running_run_shows_its_step_in_progress(api: Api) -> None:
    run_id = await api.trigger("nap")
    log = await api.until(run_id, lambda log: log["steps"])
    assert log["workflowState"] == "RUN_STARTED"
    assert log["workflowRunCompletedAt"] is None
    [step] = log["steps"]
    assert (step["stepName"], step["stepType"]) == ("nap", "SleepFor")
    assert step["state"] == "STEP_PROGRESS"
    assert step["finishedAt"] is None


@pytest.mark.parametrize("run_id", ["wfr_missing", "nope", "%00", "x" * 300])
async def test_an_unknown_run_is_a_404(api: Api, run_id: str) -> None:
    assert_error(await api.get(f"/api/runs/{run_id}"), 404, "run_not_found")


# -- listing ------------------------------------------------------------------------------------


async def test_runs_filter_and_page_with_the_cursor(api: Api) -> None:
    echoes = [await api.trigger("echo", n) for n in range(7)]
    naps = [await api.trigger("nap") for _ in range(2)]
    for run_id in echoes:
        await api.finished(run_id)
    for run_id in naps:
        await api.until(run_id, lambda log: log["steps"])

    async def pages(**params: Any) -> list[list[str]]:
        found, cursor = [], None
        for _ in range(20):
            query = {**params, **({"cursor": cursor} if cursor else {})}
            response = await api.get("/api/runs", params=query)
            assert response.status_code == 200, response.text
            page = response.json()
            assert set(page) == {"runs", "cursor"}
            found.append([run["workflowRunId"] for run in page["runs"]])
            for run in page["runs"]:
                # A list entry is the log without what can be large: payload, result, steps.
                assert set(run) >= LOG_KEYS - LARGE_KEYS
                assert not set(run) & LARGE_KEYS
            cursor = page["cursor"]
            if cursor is None:
                return found
            assert isinstance(cursor, str)
        raise AssertionError(f"paging never ended: {found}")

    newest_first = [*echoes, *naps][::-1]
    everything = await pages()
    assert [run_id for page in everything for run_id in page] == newest_first
    by_three = await pages(count=3)
    assert [len(page) for page in by_three] == [3, 3, 3]
    assert [run_id for page in by_three for run_id in page] == newest_first
    echo_pages = await pages(workflow="echo", count=2)
    assert [run_id for page in echo_pages for run_id in page] == echoes[::-1]
    assert max(len(page) for page in echo_pages) == 2
    success = await pages(state="RUN_SUCCESS", count=4)
    assert [run_id for page in success for run_id in page] == echoes[::-1]
    started = await pages(state="RUN_STARTED")
    assert [run_id for page in started for run_id in page] == naps[::-1]
    assert await pages(workflow="nope") == [[]]
    assert await pages(state="RUN_FAILED", workflow="echo") == [[]]


@pytest.mark.parametrize(
    "params",
    [
        {"state": "DONE"},
        {"state": "run_success"},
        {"count": "0"},
        {"count": "1001"},
        {"count": "-1"},
        {"count": "ten"},
        {"count": "²"},
        {"cursor": "abc"},
        {"cursor": "-5"},
        {"cursor": "²"},
        {"cursor": "9" * 30},
    ],
)
async def test_bad_listing_parameters_are_a_422(api: Api, params: dict[str, str]) -> None:
    assert_error(await api.get("/api/runs", params=params), 422, "validation_error")


# -- cancel -------------------------------------------------------------------------------------


async def test_cancel_a_running_run_then_409(api: Api) -> None:
    run_id = await api.trigger("nap")
    await api.until(run_id, lambda log: log["steps"])
    response = await api.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json() == {"workflowRunId": run_id, "workflowState": "RUN_CANCELED"}
    log = await api.run_log(run_id)
    assert log["workflowState"] == "RUN_CANCELED"
    assert type(log["workflowRunCompletedAt"]) is int
    assert_error(await api.post(f"/api/runs/{run_id}/cancel"), 409, "conflict")


async def test_cancel_a_finished_run_is_a_409(api: Api) -> None:
    run_id = await api.trigger("echo")
    await api.finished(run_id)
    assert_error(await api.post(f"/api/runs/{run_id}/cancel"), 409, "conflict")
    assert (await api.run_log(run_id))["workflowState"] == "RUN_SUCCESS"


async def test_cancel_a_delayed_run(api: Api) -> None:
    run_id = await api.trigger("echo", delay="3600")
    assert (await api.post(f"/api/runs/{run_id}/cancel")).status_code == 200
    assert (await api.run_log(run_id))["workflowState"] == "RUN_CANCELED"


async def test_cancel_an_unknown_run_is_a_404(api: Api) -> None:
    assert_error(await api.post("/api/runs/wfr_missing/cancel"), 404, "run_not_found")


# -- notify -------------------------------------------------------------------------------------


async def test_notify_wakes_the_waiting_runs(api: Api) -> None:
    run_id = await api.trigger("approval")
    await api.until(run_id, lambda log: log["steps"])
    response = await api.post(f"/api/events/approve-{run_id}", json={"ok": True})
    assert response.status_code == 200, response.text
    assert response.json() == {"eventId": f"approve-{run_id}", "waiters": 1}
    log = await api.finished(run_id)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["workflowRunResponse"] == {"data": {"ok": True}, "timedOut": False}
    assert [step["stepType"] for step in log["steps"]] == ["Wait"]
    # delivered once: nobody waits any more
    assert_error(await api.post(f"/api/events/approve-{run_id}", json=1), 404, "no_waiters")


async def test_notify_with_nobody_waiting_is_a_404(api: Api) -> None:
    assert_error(await api.post("/api/events/nobody-waits", json={}), 404, "no_waiters")


async def test_notify_naming_the_run_is_kept_for_it_lookback(api: Api) -> None:
    run_id = await api.trigger("gated")
    await api.until(run_id, lambda log: log["steps"])  # in its first step, not waiting yet
    response = await api.post(
        "/api/events/lookback-event", params={"workflowRunId": run_id}, json={"early": True}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"eventId": "lookback-event", "waiters": 0}
    api.gate.set()
    log = await api.finished(run_id)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["workflowRunResponse"] == {"data": {"early": True}, "timedOut": False}


async def test_an_event_id_may_hold_a_slash() -> None:
    """``wait_for_event`` takes any id, ``orders/42`` too: notifying it and listing its waiters
    work with the slash sent as ``%2F`` (as ``Client.notify`` and the dashboard send it, and
    the server decodes) or as it is."""
    workflows = Workflows(realtime=Realtime(backend="memory://"))

    @workflows.workflow("order")
    async def order(context: WorkflowContext) -> Any:
        data, _ = await context.wait_for_event("paid", "orders/42", timeout=3600)
        return data

    app = workflows.asgi(workers=1)
    async with (
        app.router.lifespan_context(app),
        Api(
            transport=httpx.ASGITransport(app=app),
            base_url="http://127.0.0.1:8000",
            headers={"content-type": "application/json"},
            timeout=TIMEOUT,
        ) as api,
    ):
        run_id = await api.trigger("order")
        await api.until(run_id, lambda log: log["steps"])
        for path in ("/api/events/orders%2F42/waiters", "/api/events/orders/42/waiters"):
            response = await api.get(path)
            assert response.status_code == 200, response.text
            assert [w["workflowRunId"] for w in response.json()["waiters"]] == [run_id]
        response = await api.post("/api/events/orders%2F42", json={"paid": True})
        assert response.status_code == 200, response.text
        assert response.json() == {"eventId": "orders/42", "waiters": 1}
        assert (await api.finished(run_id))["workflowRunResponse"] == {"paid": True}
        assert_error(await api.post("/api/events/orders/42", json=1), 404, "no_waiters")


async def test_notify_naming_an_unknown_run_is_a_404(api: Api) -> None:
    response = await api.post("/api/events/e", params={"workflowRunId": "wfr_missing"}, json=1)
    assert_error(response, 404, "run_not_found")


# -- the rest -----------------------------------------------------------------------------------


async def test_workflows_and_health(api: Api) -> None:
    names = (await api.get("/api/workflows")).json()["workflows"]
    assert sorted(names) == ["approval", "echo", "gated", "nap"]
    health = await api.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["workers"] == 1  # how many, not who: the route is public


async def test_live_workers_are_listed_and_a_stopped_one_leaves(api: Api) -> None:
    (worker,) = (await api.get("/api/workers")).json()["workers"]
    assert worker["pid"] == os.getpid() and worker["host"] == socket.gethostname()
    assert sorted(worker["workflows"]) == ["approval", "echo", "gated", "nap"]
    assert worker["runs"] == 0 and worker["concurrency"] == 100
    assert worker["lastHeartbeat"] >= worker["startedAt"]
    run_id = (await api.post("/api/workflows/nap", json=None)).json()["workflowRunId"]
    assert run_id
    other = api.workflows.worker(poll_interval=0.05)
    async with other:
        ids = {w["id"] for w in (await api.get("/api/workers")).json()["workers"]}
        assert ids == {worker["id"], other.owner}
    ids = {w["id"] for w in (await api.get("/api/workers")).json()["workers"]}
    assert ids == {worker["id"]}  # a stopping worker removes its entry


async def test_the_openapi_document_describes_the_api(api: Api) -> None:
    response = await api.get("/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["openapi"].startswith("3.1")
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    routed = app_operations(api)
    api_routes = {(method, path) for method, path in routed if path.startswith("/api/")}
    assert api_routes - described == set(), "routes the document leaves out"
    assert described - routed == set(), "documented operations no route serves"
    schemas = document["components"]["schemas"]
    assert set(schemas["RunLog"]["properties"]) >= LOG_KEYS | SUMMARY_KEYS
    summary = schemas["RunSummary"]["properties"]
    assert set(summary) == SUMMARY_KEYS
    assert schemas["RunPage"]["properties"]["runs"]["items"] == {
        "$ref": "#/components/schemas/RunSummary"
    }
    assert set(schemas["Step"]["properties"]) >= STEP_KEYS
    listing = document["paths"]["/api/runs"]["get"]["parameters"]
    assert {"label", "createdAfter", "createdBefore"} <= {p["name"] for p in listing}
    trigger = document["paths"]["/api/workflows/{name}"]["post"]["parameters"]
    assert "label" in {p["name"] for p in trigger}
    assert_refs_resolve(document)


def app_operations(api: Api) -> set[tuple[str, str]]:
    """Every (method, path) the app routes, mounts aside (HEAD is GET's), each path as OpenAPI
    writes it (``{event_id}``, not Starlette's ``{event_id:path}``)."""
    found: set[tuple[str, str]] = set()
    for route in api.workflows.asgi(workers=0).routes:
        if isinstance(route, Route):
            methods = route.methods or {"GET"}  # the SSE endpoint (an ASGI app) serves GET
            path = re.sub(r":\w+}", "}", route.path)
            found |= {(method.lower(), path) for method in methods - {"HEAD"}}
    return found


def assert_refs_resolve(document: dict[str, Any]) -> None:
    def refs(value: Any) -> set[str]:
        if isinstance(value, dict):
            found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
            return found.union(*(refs(v) for v in value.values()))
        if isinstance(value, list):
            return set().union(*(refs(v) for v in value))
        return set()

    names = {f"#/components/schemas/{name}" for name in document["components"]["schemas"]}
    assert refs(document) - names == set()


async def test_wrong_methods_are_not_server_errors(api: Api) -> None:
    for method, path in [
        ("GET", "/api/workflows/echo"),
        ("PUT", "/api/runs/wfr_x"),
        ("GET", "/api/runs/wfr_x/cancel"),
        ("GET", "/api/runs/wfr_x/resume"),
        ("GET", "/api/events/e"),
        ("PUT", "/api/runs"),
    ]:
        response = await api.request(method, path)
        assert response.status_code == 405, (method, path, response.status_code)


async def test_unrouted_api_requests_get_the_json_error_shape(api: Api) -> None:
    assert_error(await api.get("/api/runs/a%2Fb"), 404)
    assert_error(await api.get("/api/nothing-here"), 404)
    assert_error(await api.get("/api/workflows/echo"), 405)


async def test_history_limit_with_a_non_ascii_digit_is_a_400(api: Api) -> None:
    response = await api.get("/api/realtime/history", params={"channel": "x", "limit": "²"})
    assert_error(response, 400)


async def test_token_body_nested_too_deeply_is_a_400(api: Api) -> None:
    response = await api.post("/api/realtime/token", content=b"[" * 100_000)
    assert_error(response, 400)


async def test_a_trigger_that_storage_may_have_lost_names_its_run(api: Api) -> None:
    """A storage error on trigger is a 503 that says which run to look for: the write may have
    been applied with only its answer lost, and retrying with the same id cannot start it twice."""
    from stepstream.errors import BackendUnavailable

    backend = api.workflows.backend
    original = backend.create_run

    async def applied_but_unanswered(*args: Any, **kwargs: Any) -> None:
        await original(*args, **kwargs)
        raise BackendUnavailable("Redis at redis://***@db:6379/0: Timeout reading from socket")

    backend.create_run = applied_but_unanswered  # type: ignore[method-assign]
    response = await api.post("/api/workflows/echo", json={"n": 1})
    backend.create_run = original  # type: ignore[method-assign]
    assert response.status_code == 503
    body = response.json()
    run_id = body["workflowRunId"]
    assert body["error"]["code"] == "backend_unavailable"
    assert run_id in body["error"]["message"]
    retry = await api.post(f"/api/workflows/echo?workflowRunId={run_id}", json={"n": 1})
    assert retry.status_code == 409
    assert (await api.finished(run_id))["workflowState"] == "RUN_SUCCESS"


async def test_without_a_realtime_the_app_streams_from_the_registry_store_itself() -> None:
    # One store, not a second connection to "the same URL": a private memory:// store (or a
    # pool setting on the object) exists once.
    workflows = Workflows(backend="memory://")
    app = workflows.asgi(workers=0)
    async with app.router.lifespan_context(app):
        await workflows.backend.append("feed", "note", '{"n":1}', HistoryPolicy())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
        ) as http:
            answer = await http.get("/api/realtime/history", params={"channel": "feed"})
    assert answer.status_code == 200, answer.text
    assert [message["data"] for message in answer.json()["messages"]] == [{"n": 1}]
