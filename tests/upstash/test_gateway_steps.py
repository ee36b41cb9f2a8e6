"""The QStash gateway's step kinds beyond ``run`` and ``sleep``, end to end with the real SDK:
``waitForEvent``/``notify``, ``context.call``, failure callbacks, parallel steps, and
``client.logs``. Each step body runs once (``/_executions``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.upstash.harness import serve_workflows
from tests.upstash.test_gateway import (
    AUTH,
    finished_run,
    sdk_client,
    sdk_env,
    serve_uvicorn,
    stepstream_server,
    timeline,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("signing_key"),
]


async def waiting(client: httpx.AsyncClient, base: str, event_id: str) -> list[Any]:
    """The waiters of ``event_id`` once there is one."""
    with anyio.fail_after(10):
        while True:
            response = await client.get(f"{base}/api/events/{event_id}/waiters", headers=AUTH)
            if response.status_code == 200 and response.json()["waiters"]:
                return list(response.json()["waiters"])
            await anyio.sleep(0.05)  # polling, not an assertion


async def test_wait_for_event_and_notify(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "wait.db") as base,
        serve_workflows(node, "waiter", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{endpoint}/waiter"
        by_sdk = await sdk_client(node, base, "trigger", url, '{"eventId": "e-sdk"}')
        by_api = await sdk_client(node, base, "trigger", url, '{"eventId": "e-api"}')
        timed = await sdk_client(node, base, "trigger", url, '{"eventId": "e-t", "timeout": 1}')
        # Lookback: notified with its run id before (or while) it waits.
        early = await sdk_client(node, base, "trigger", url, '{"eventId": "e-early"}')
        sent = await sdk_client(node, base, "notify", "e-early", '"hi"', early["workflowRunId"])
        assert isinstance(sent, list)

        await waiting(client, base, "e-sdk")
        waiters = await sdk_client(node, base, "waiters", "e-sdk")
        assert [w["url"] for w in waiters] == [url]
        assert waiters[0]["deadline"] > 0
        released = await sdk_client(node, base, "notify", "e-sdk", '{"ok": 1}')
        assert len(released) == 1 and released[0]["waiter"]["url"] == url
        assert await sdk_client(node, base, "notify", "e-none", "1") == []

        await waiting(client, base, "e-api")
        response = await client.post(f"{base}/api/events/e-api", json=[1, 2], headers=AUTH)
        assert response.status_code == 200, response.text

        expected = {
            by_sdk["workflowRunId"]: {"eventData": {"ok": 1}, "timedOut": False},
            by_api["workflowRunId"]: {"eventData": [1, 2], "timedOut": False},
            timed["workflowRunId"]: {"timedOut": True},
            early["workflowRunId"]: {"eventData": "hi", "timedOut": False},
        }
        for run_id, result in expected.items():
            run = await finished_run(client, base, endpoint, run_id)
            assert run.log["workflowState"] == "RUN_SUCCESS", run.log
            assert run.log["workflowRunResponse"] == result
            assert [(s["stepName"], s["stepType"]) for s in run.log["steps"]] == [
                ("wait", "Wait"),
                ("echo", "Notify"),
                ("after", "Run"),
            ]
            assert run.executions == ["after"]


class Echo:
    """A called API: answers 201 with what it got; counts the calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.calls.append({"method": scope["method"], "headers": headers, "body": body.decode()})
        answer = json.dumps({"got": body.decode(), "probe": headers.get("x-probe")}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})


@pytest.mark.parametrize("object_body", [False, True])
async def test_context_call_is_made_by_stepstream(
    node: str, tmp_path: Path, object_body: bool
) -> None:
    """Made once, by stepstream; a body the SDK passes as an object (its types allow one) is
    sent as its JSON text."""
    echo = Echo()
    async with (
        stepstream_server(tmp_path / "call.db") as base,
        serve_workflows(node, "caller", sdk_env(base), tmp_path / "serve.log") as endpoint,
        serve_uvicorn(echo) as api,
        httpx.AsyncClient(timeout=10) as client,
    ):
        payload = {"url": f"{api}/things", "payload": {"a": 1}, "objectBody": object_body}
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/caller", json.dumps(payload))
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == 201
        assert run.executions == ["status"]
        assert len(echo.calls) == 1  # made once, by stepstream
        call = echo.calls[0]
        assert call["method"] == "POST"
        assert call["headers"]["x-probe"] == "1"
        assert json.loads(call["body"]) == {"a": 1}
        fetch = run.log["steps"][0]
        assert (fetch["stepName"], fetch["stepType"]) == ("fetch", "Call")
        assert fetch["out"]["status"] == 201
        assert json.loads(fetch["out"]["body"]) == {"got": call["body"], "probe": "1"}


async def test_failure_function_is_called_when_retries_run_out(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "fail.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        failing = await sdk_client(node, base, "trigger", f"{endpoint}/failing", "{}", "", "1")
        final = await sdk_client(node, base, "trigger", f"{endpoint}/non-retryable", "{}")

        run = await finished_run(client, base, endpoint, failing["workflowRunId"])
        assert run.log["workflowState"] == "RUN_FAILED", run.log
        assert run.executions == ["boom", "boom", "failureFunction"]  # 1 retry, then failure
        logs = await sdk_client(node, base, "logs", failing["workflowRunId"])
        (log,) = logs["runs"]
        assert log["workflowState"] == "RUN_FAILED"
        called = log["failureFunction"]
        assert called["state"] == "CALLBACK_SUCCESS", called
        assert "handled 500: boom failed" in called["responseBody"]

        # A WorkflowNonRetryableError (489) fails the run at once, failure function called.
        run = await finished_run(client, base, endpoint, final["workflowRunId"])
        assert run.log["workflowState"] == "RUN_FAILED", run.log
        assert run.executions == ["ok", "failureFunction"]
        assert "give up" in run.log["error"]


async def test_parallel_steps(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "parallel.db") as base,
        serve_workflows(node, "parallel", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/parallel", "{}")
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == "ABC"
        assert sorted(run.executions) == ["a", "b", "c"]  # each once
        assert [(s["stepName"], s["out"]) for s in run.log["steps"]] == [
            ("a", "A"),
            ("b", "B"),
            ("c", "C"),
        ]
        assert sorted(t for t in timeline(run.events) if t[0] == "stepFinish") == [
            ("stepFinish", "a"),
            ("stepFinish", "b"),
            ("stepFinish", "c"),
        ]
        logs = await sdk_client(node, base, "logs", answer["workflowRunId"])
        (log,) = logs["runs"]
        assert log["workflowState"] == "RUN_SUCCESS"
        assert log["workflowRunResponse"] == '"ABC"'
        assert [g["type"] for g in log["steps"]] == ["sequential", "parallel"]
        assert [s["stepName"] for s in log["steps"][1]["steps"]] == ["a", "b", "c"]


async def test_what_is_not_served_answers_400_naming_it(tmp_path: Path) -> None:
    run = {"Upstash-Workflow-RunId": "wfr_unsupported", "Upstash-Workflow-Init": "false"}
    plan = {"stepId": 0, "stepName": "s", "stepType": "Teleport", "concurrent": 2, "targetStep": 1}
    invoked = {"stepId": 1, "stepName": "i", "stepType": "Invoke", "concurrent": 101}
    async with (
        stepstream_server(tmp_path / "refused.db", workers=0) as base,
        httpx.AsyncClient(timeout=10) as client,
    ):
        refused = {
            "an invoke's concurrent must be 1 to 100": {
                "headers": {
                    **run,
                    "Upstash-Workflow-Init": "true",
                    "Upstash-Workflow-Invoke": "true",
                },
                "body": json.dumps({"workflowRunId": "wfr_parent", "step": invoked}),
            },
            "parallel Teleport steps are not served": {"headers": run, "body": json.dumps(plan)},
        }
        for what, message in refused.items():
            batch = [{"destination": "http://127.0.0.1:9/wf", **message}]
            response = await client.post(f"{base}/qstash/v2/batch", json=batch, headers=AUTH)
            assert response.status_code == 400
            assert what in response.json()["error"]
        step = {"stepId": 1, "stepName": "hooked", "stepType": "WaitForTeleport"}
        response = await client.post(
            f"{base}/qstash/v2/wait/evt_1", json={"step": step, "timeout": "1s"}, headers=run | AUTH
        )
        assert response.status_code == 400
        assert "WaitForTeleport wait is not served" in response.json()["error"]
