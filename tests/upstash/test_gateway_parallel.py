"""Parallel groups (``Promise.all``) of steps other than ``context.run``, end to end with the
real SDK: sleeps, waits, calls and invokes. Each plan is delivered on its own (a sleep's plan
once the sleep is over); the group's results are recorded at their positions; the whole history
goes once every one is in."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import free_port
from tests.upstash.harness import serve_uvicorn, serve_workflows
from tests.upstash.test_gateway import (
    AUTH,
    finished_run,
    sdk_client,
    sdk_env,
    stepstream_server,
)
from tests.upstash.test_gateway_steps import Echo, waiting

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("signing_key"),
]


def steps_of(log: dict[str, object]) -> list[tuple[str, str]]:
    return [(s["stepName"], s["stepType"]) for s in log["steps"]]  # type: ignore[attr-defined]


async def test_parallel_sleeps_beside_a_run_and_a_notify(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "sleeps.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/parallel-sleeps", "{}")
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        log = run.log
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowRunResponse"] == "ran"
        assert steps_of(log) == [
            ("nap", "SleepFor"),
            ("wake", "SleepUntil"),
            ("beside", "Run"),
            ("poke", "Notify"),
            ("after", "Run"),
        ]
        nap, wake, beside, poke, after = log["steps"]
        assert poke["out"] == {
            "eventId": "nobody-waits",
            "eventData": {"n": 1},
            "notifyResponse": [],
        }
        assert nap["finishedAt"] - nap["startedAt"] >= 900  # slept 1 s, a stored timer
        assert wake["finishedAt"] - log["workflowRunCreatedAt"] >= 1000  # until now + 2 s
        assert beside["finishedAt"] < nap["finishedAt"]  # ran while the sleeps slept
        assert after["startedAt"] >= max(nap["finishedAt"], wake["finishedAt"])
        assert sorted(run.executions) == ["after", "beside"]  # each body once

        (sdk_log,) = (await sdk_client(node, base, "logs", answer["workflowRunId"]))["runs"]
        assert [g["type"] for g in sdk_log["steps"]] == ["sequential", "parallel", "sequential"]


async def test_parallel_waits(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "waits.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{endpoint}/parallel-waits"
        answer = await sdk_client(node, base, "trigger", url, '{"eventId": "pw"}')
        await waiting(client, base, "pw-1")
        released = await sdk_client(node, base, "notify", "pw-1", '{"ok": 1}')
        assert len(released) == 1
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        log = run.log
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowRunResponse"] == {
            "first": {"eventData": {"ok": 1}, "timeout": False},
            "second": {"timeout": True},
        }
        assert steps_of(log) == [("first", "Wait"), ("second", "Wait"), ("after", "Run")]
        assert run.executions == ["after"]


async def test_parallel_calls(node: str, tmp_path: Path) -> None:
    echo = Echo()
    async with (
        stepstream_server(tmp_path / "calls.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        serve_uvicorn(echo) as api,
        httpx.AsyncClient(timeout=10) as client,
    ):
        payload = json.dumps({"urls": [f"{api}/a", f"{api}/b"]})
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/parallel-calls", payload)
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        log = run.log
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowRunResponse"] == [
            [201, {"got": "0", "probe": None}],
            [201, {"got": "1", "probe": None}],
        ]
        assert sorted(call["body"] for call in echo.calls) == ["0", "1"]  # each made once
        assert steps_of(log) == [("call-0", "Call"), ("call-1", "Call"), ("after", "Run")]
        assert run.executions == ["after"]


async def test_parallel_invokes(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "invokes.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/parallel-invoker", "{}")
        parent = await finished_run(client, base, endpoint, answer["workflowRunId"])
        assert parent.log["workflowState"] == "RUN_SUCCESS", parent.log
        assert parent.log["workflowRunResponse"] == [
            {"result": {"doubled": 2}, "isFailed": False},
            {"result": {"doubled": 4}, "isFailed": False},
        ]
        assert steps_of(parent.log) == [("invoke-1", "Invoke"), ("invoke-2", "Invoke")]
        children = await client.get(f"{base}/api/runs", params={"label": "/child"}, headers=AUTH)
        listed = children.json()["runs"]
        assert len(listed) == 2
        assert {r["invoker"] for r in listed} == {answer["workflowRunId"]}


async def test_a_failed_call_beside_a_wait_is_retried_without_touching_the_wait(
    node: str, tmp_path: Path
) -> None:
    port = free_port()
    async with (
        stepstream_server(tmp_path / "wait-call.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        payload = json.dumps({"eventId": "wc", "url": f"http://127.0.0.1:{port}/x"})
        options = json.dumps({"retryDelay": "1000"})
        url = f"{endpoint}/parallel-wait-call"
        answer = await sdk_client(node, base, "trigger", url, payload, "", "3", options)
        run_id = answer["workflowRunId"]
        with anyio.fail_after(15):  # the call finds nobody listening: a failed attempt
            while True:
                log = (await client.get(f"{base}/api/runs/{run_id}", headers=AUTH)).json()
                if any(s["state"] == "STEP_RETRY" for s in log["steps"]):
                    break
                await anyio.sleep(0.05)  # polling the run, not an assertion
        assert [(s["stepName"], s["stepType"], s["state"]) for s in log["steps"]] == [
            ("wait", "Wait", "STEP_PROGRESS"),  # still waiting for its event
            ("call", "Call", "STEP_RETRY"),
        ]
        async with serve_uvicorn(Echo(), port=port):
            await sdk_client(node, base, "notify", "wc", '"go"', run_id)
            run = await finished_run(client, base, endpoint, run_id)
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == {"eventData": "go", "status": 201}


async def test_a_sleep_beside_a_wait_ends_on_time(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "sleep-wait.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{endpoint}/parallel-sleep-wait"
        answer = await sdk_client(node, base, "trigger", url, '{"eventId": "sw"}')
        run_id = answer["workflowRunId"]
        with anyio.fail_after(8):  # the 1 s sleep ends while the wait (30 s) goes on
            while True:
                log = (await client.get(f"{base}/api/runs/{run_id}", headers=AUTH)).json()
                states = {s["stepName"]: s["state"] for s in log["steps"]}
                if states.get("nap") == "STEP_SUCCESS":
                    break
                await anyio.sleep(0.05)  # polling the run, not an assertion
        assert states["wait"] == "STEP_PROGRESS"
        await sdk_client(node, base, "notify", "sw", '"done"', run_id)
        run = await finished_run(client, base, endpoint, run_id)
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == "done"
