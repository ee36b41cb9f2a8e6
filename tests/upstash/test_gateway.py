"""The QStash gateway end to end: the real ``@upstash/workflow`` SDK (``node/serve.mjs``, triggered
by the SDK's own ``Client`` in ``node/client.mjs``) runs on a real stepstream server, with
``QSTASH_URL`` pointing at its ``/qstash`` and the stepstream token as ``QSTASH_TOKEN``.
Deliveries are signed, and the SDK verifies every one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import stepstream.upstash
from stepstream import Realtime, Workflows
from stepstream.errors import BackendUnavailable
from stepstream.upstash.messages import INBOX
from tests.upstash.harness import NODE_DIR, node_env, serve_uvicorn, serve_workflows

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

TOKEN = "gateway-token"
CURRENT_KEY = "sig_gateway_current_key_of_32_bytes"
NEXT_KEY = "sig_gateway_next_key_of_32_bytes_too"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """stepstream signs deliveries with the key the SDK verifies them against."""
    monkeypatch.setenv("QSTASH_CURRENT_SIGNING_KEY", CURRENT_KEY)


@asynccontextmanager
async def stepstream_server(database: Path, *, workers: int = 1) -> AsyncIterator[str]:
    """A stepstream server with the gateway enabled, on SQLite, with a 1 s lease."""
    async with stepstream_app(database, workers=workers) as (url, _):
        yield url


@asynccontextmanager
async def stepstream_app(database: Path, *, workers: int) -> AsyncIterator[tuple[str, Workflows]]:
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{database}"))
    stepstream.upstash.enable(workflows)
    async with serve_uvicorn(workflows.asgi(token=TOKEN, lease=1.0, workers=workers)) as url:
        yield url, workflows


def sdk_env(stepstream_url: str, token: str = TOKEN) -> dict[str, str]:
    return {
        "QSTASH_URL": f"{stepstream_url}/qstash",
        "QSTASH_TOKEN": token,
        "QSTASH_CURRENT_SIGNING_KEY": CURRENT_KEY,
        "QSTASH_NEXT_SIGNING_KEY": NEXT_KEY,
    }


async def sdk_client(node: str, stepstream_url: str, *args: str, token: str = TOKEN) -> Any:
    """Run ``node/client.mjs`` (the SDK's ``Client``) against stepstream; its JSON answer."""
    result = await anyio.run_process(
        [node, "client.mjs", *args],
        cwd=NODE_DIR,
        env=node_env(sdk_env(stepstream_url, token)),
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


@dataclass
class Finished:
    log: dict[str, Any]
    events: list[dict[str, Any]]
    executions: list[str]


async def finished_run(
    client: httpx.AsyncClient, base: str, endpoint: str, run_id: str, seconds: float = 15
) -> Finished:
    """The run's log once it ended, its ``workflow.update`` events, and the step bodies the
    endpoint ran for it."""
    with anyio.fail_after(seconds):
        while True:
            response = await client.get(f"{base}/api/runs/{run_id}", headers=AUTH)
            if response.status_code == 200 and response.json()["workflowState"] != "RUN_STARTED":
                break
            await anyio.sleep(0.05)  # polling the run, not an assertion
    history = await client.get(
        f"{base}/api/realtime/history", params={"channel": run_id, "limit": 1000}, headers=AUTH
    )
    events = [m["data"] for m in history.json()["messages"] if m["event"] == "workflow.update"]
    executions = (await client.get(f"{endpoint}/_executions")).json()
    steps = [e["step"] for e in executions if e["runId"] == run_id]
    return Finished(response.json(), events, steps)


def timeline(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(event["type"], event.get("stepName")) for event in events]


async def test_a_two_step_sdk_workflow_runs_on_stepstream(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "gateway.db") as base,
        serve_workflows(node, "two-step", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{endpoint}/api/two-step"
        answer = await sdk_client(node, base, "trigger", url, '{"user": "u1"}', "batch-7")
        run_id = answer["workflowRunId"]
        assert run_id.startswith("wfr_")
        run = await finished_run(client, base, endpoint, run_id)

        log = run.log
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowName"] == stepstream.upstash.WORKFLOW
        assert log["workflowRunResponse"] == {"first": {"user": "u1", "n": 1}, "second": "u1-2"}
        assert log["requestPayload"] == {"user": "u1"}
        assert log["labels"] == ["/api/two-step", "batch-7"]  # the endpoint's, then the SDK's
        assert [(s["stepName"], s["stepType"], s["state"]) for s in log["steps"]] == [
            ("first", "Run", "STEP_SUCCESS"),
            ("second", "Run", "STEP_SUCCESS"),
        ]
        assert [s["out"] for s in log["steps"]] == [{"user": "u1", "n": 1}, "u1-2"]
        assert run.executions == ["first", "second"]  # each step body ran once
        assert timeline(run.events) == [
            ("runStart", None),
            ("stepStart", "first"),
            ("stepFinish", "first"),
            ("stepStart", "second"),
            ("stepFinish", "second"),
            ("runFinish", None),
        ]
        assert run.events[-1]["status"] == "success"

        # Listed like any run, and found by its label.
        listed = await client.get(f"{base}/api/runs", params={"label": "batch-7"}, headers=AUTH)
        assert [r["workflowRunId"] for r in listed.json()["runs"]] == [run_id]

        # A repeated trigger of the same run id is QStash's dedup, not a second run.
        again = await client.post(
            f"{base}/qstash/v2/batch",
            json=[
                {
                    "destination": url,
                    "headers": {"Upstash-Workflow-Init": "true", "Upstash-Workflow-RunId": run_id},
                    "body": "{}",
                }
            ],
            headers=AUTH,
        )
        assert again.status_code == 200
        assert again.json()[0]["deduplicated"] is True


async def test_the_gateway_needs_the_api_token(tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "token.db", workers=0) as base,
        httpx.AsyncClient(timeout=10) as client,
    ):
        message = {
            "destination": "http://127.0.0.1:9/wf",
            "headers": {"Upstash-Workflow-Init": "true", "Upstash-Workflow-RunId": "wfr_x"},
            "body": "{}",
        }
        for headers in ({}, {"authorization": "Bearer wrong"}):
            response = await client.post(f"{base}/qstash/v2/batch", json=[message], headers=headers)
            assert response.status_code == 401
        response = await client.get(f"{base}/api/runs/wfr_x", headers=AUTH)
        assert response.status_code == 404  # nothing was started


async def test_sleeps_are_durable_timers(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "sleepy.db") as base,
        serve_workflows(node, "sleepy", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/sleepy", "{}")
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        log = run.log
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowRunResponse"] == "awake"
        steps = log["steps"]
        assert [(s["stepName"], s["stepType"]) for s in steps] == [
            ("nap", "SleepFor"),
            ("wake", "SleepUntil"),
            ("after", "Run"),
        ]
        nap = steps[0]
        assert nap["finishedAt"] - nap["startedAt"] >= 1900  # slept 2 s, as a stored timer
        assert run.executions == ["after"]
        assert [t for t in timeline(run.events) if t[0] != "runStart"][:2] == [
            ("stepStart", "nap"),
            ("stepFinish", "nap"),
        ]


class FaultyRoute:
    """Between stepstream's workers and ``serve.mjs``: forwards deliveries, but the first one
    carrying ``steps`` history entries is signed wrongly (``corrupt``), or held until
    ``release`` is set (``held`` says it arrived, ``answered`` that the endpoint answered it)."""

    def __init__(self, target: str, steps: int, *, corrupt: bool) -> None:
        self.target = target
        self.steps = steps
        self.corrupt = corrupt
        self.done = False
        self.held = anyio.Event()
        self.release = anyio.Event()
        self.answered = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {
            k.decode(): v.decode()
            for k, v in scope["headers"]
            if k not in (b"host", b"content-length")
        }
        if not self.done and body and len(json.loads(body)) == self.steps:
            self.done = True
            if self.corrupt:
                headers["upstash-signature"] = "not.a.signature"
            else:
                self.held.set()
                await self.release.wait()
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(self.target + scope["path"], content=body, headers=headers)
        if self.release.is_set():
            self.answered.set()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status_code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer.content})


async def test_a_refused_delivery_is_retried(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "retry.db") as base,
        serve_workflows(node, "two-step", sdk_env(base), tmp_path / "serve.log") as endpoint,
        serve_uvicorn(FaultyRoute(endpoint, 2, corrupt=True)) as route,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await sdk_client(node, base, "trigger", f"{route}/two-step", '{"user": "u2"}')
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        log = run.log
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowRunResponse"] == {"first": {"user": "u2", "n": 1}, "second": "u2-2"}
        assert run.executions == ["first", "second"]
        first, second = log["steps"]
        assert (first["stepName"], first["attempts"]) == ("first", 1)
        # The SDK refused the delivery for step 2 (500: bad signature): a failed attempt,
        # retried after a backoff; the retry ran the step.
        assert (second["stepName"], second["state"], second["attempts"]) == (
            "second",
            "STEP_SUCCESS",
            2,
        )
        assert "500" in second["errors"][0]["error"]
        assert ("stepFail", "delivery") in timeline(run.events)
        assert timeline(run.events)[-3:] == [
            ("stepStart", "second"),
            ("stepFinish", "second"),
            ("runFinish", None),
        ]


async def test_a_worker_killed_mid_delivery(node: str, tmp_path: Path) -> None:
    """The worker process delivering step 2 is SIGKILLed while the SDK has not yet run it. The
    SDK then runs it and publishes its result; a second worker process takes the run over when
    the lease expires, records that result first, and delivers on: no step runs twice.

    The second worker starts once the SDK's publish is stored. Had it claimed the run before
    (the SDK still running the step when the lease expired, as under load), it would deliver
    step 2 again and the SDK would run it again: a step in flight when its worker died is
    at-least-once (docs/upstash-protocol.md, "Deliveries are executed by workers")."""
    database = tmp_path / "crash.db"
    async with (
        stepstream_app(database, workers=0) as (base, workflows),
        serve_workflows(node, "two-step", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        faulty = FaultyRoute(endpoint, 2, corrupt=False)
        async with serve_uvicorn(faulty) as route, worker_processes(database, tmp_path, 1):
            answer = await sdk_client(node, base, "trigger", f"{route}/two-step", "{}")
            run_id = answer["workflowRunId"]
            with anyio.fail_after(10):
                await faulty.held.wait()
            record = await workflows.backend.get_run(run_id)
            assert record is not None and record.lease_owner is not None
            pid = int(record.lease_owner.split(":")[1])
            os.kill(pid, signal.SIGKILL)
            faulty.release.set()  # the dead worker's delivery reaches the SDK all the same
            with anyio.fail_after(10):
                await faulty.answered.wait()  # the SDK ran step 2; its publish is stored
            async with worker_processes(database, tmp_path, 1, first=1):
                run = await finished_run(client, base, endpoint, run_id)
        log = run.log
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowRunResponse"] == {"first": {"user": None, "n": 1}, "second": "null-2"}
        assert run.executions == ["first", "second"]  # each step body ran once
        assert [s["stepName"] for s in log["steps"]] == ["first", "second"]
        finishes = [t for t in timeline(run.events) if t[0] == "stepFinish"]
        assert finishes == [("stepFinish", "first"), ("stepFinish", "second")]


async def test_a_worker_stalled_past_its_lease_delivers_nothing_stale(
    node: str, tmp_path: Path
) -> None:
    """Two worker processes. The one delivering the run stalls (its event loop blocked, so its
    lease lapses) after recording step 1, before delivering step 2; the other takes the run
    over, delivers step 2, records its result and ends the run. When the stalled worker wakes,
    it must not deliver its stale history: the SDK would run step 2's body again, though it
    succeeded and was recorded (a completed step never runs again)."""
    database, stall = tmp_path / "stall.db", tmp_path / "stall"
    stall.mkdir()
    async with (
        stepstream_app(database, workers=0) as (base, _),
        serve_workflows(node, "two-step", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
        worker_processes(database, tmp_path, 2, stall=stall),
    ):
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/two-step", "{}")
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        with anyio.fail_after(20):
            while True:
                if (stall / "ended").exists():
                    break  # the stalled execution is over
                await anyio.sleep(0.05)  # polling for it, not an assertion
        executions = (await client.get(f"{endpoint}/_executions")).json()
    assert (stall / "stalled").exists()
    assert run.log["workflowState"] == "RUN_SUCCESS", run.log
    assert [e["step"] for e in executions] == ["first", "second"]  # each step body ran once
    finishes = [t for t in timeline(run.events) if t[0] == "stepFinish"]
    assert finishes == [("stepFinish", "first"), ("stepFinish", "second")]


async def test_a_stopping_worker_hands_its_run_back_between_deliveries(
    node: str, tmp_path: Path
) -> None:
    """A worker told to stop while the SDK runs step 1 for it records that step's result,
    delivers nothing more (a delivery it began would be cut off at the deadline and its step
    run again) and hands the run back due at once; the next worker delivers step 2."""
    async with (
        stepstream_app(tmp_path / "stop.db", workers=0) as (base, workflows),
        serve_workflows(node, "two-step", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        faulty = FaultyRoute(endpoint, 1, corrupt=False)  # holds the delivery of step 1
        async with serve_uvicorn(faulty) as route:
            worker = workflows.worker(lease=30)
            await worker.start()
            answer = await sdk_client(node, base, "trigger", f"{route}/two-step", "{}")
            run_id = answer["workflowRunId"]
            with anyio.fail_after(10):
                await faulty.held.wait()
            stopping = asyncio.create_task(worker.stop(grace=20))
            await anyio.sleep(0.1)  # the worker is stopping while the SDK runs step 1
            faulty.release.set()
            with anyio.fail_after(10):
                await stopping  # long before the grace: the run went back after step 1
            record = await workflows.backend.get_run(run_id)
            assert record is not None and record.lease_owner is None, "not handed back"
            assert [step.name for step in record.steps] == ["first"]
            executions = (await client.get(f"{endpoint}/_executions")).json()
            assert [e["step"] for e in executions] == ["first"]
            successor = workflows.worker(lease=30)
            await successor.start()
            try:
                run = await finished_run(client, base, endpoint, run_id)
            finally:
                await successor.stop(grace=5)
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.executions == ["first", "second"]  # each step body ran once


async def test_storage_down_when_the_sdk_publishes_spends_no_retry(
    node: str, tmp_path: Path
) -> None:
    """The SDK's publish of a step's result finds this gateway's storage down (a 503 it passes
    on, answering the delivery 500): storage failed, not the endpoint. The run is handed back
    and goes on; with no retries left it failed, blaming the app (found by a review)."""
    database = tmp_path / "blip.db"
    async with (
        stepstream_app(database, workers=0) as (base, workflows),
        serve_workflows(node, "two-step", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
        worker_processes(database, tmp_path, 1),  # the publish reaches it through storage
    ):
        backend = workflows.backend
        original = backend.put_entry
        refused: list[str] = []

        async def down_once(key: str, *args: Any, **kwargs: Any) -> Any:
            if key.startswith(INBOX) and not refused:
                refused.append(key)
                raise BackendUnavailable("storage is down (injected)")
            return await original(key, *args, **kwargs)

        backend.put_entry = down_once  # type: ignore[method-assign]
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/two-step", "{}", "", "0")
        run = await finished_run(client, base, endpoint, answer["workflowRunId"], seconds=30)
    assert refused, "the SDK's publish never met the outage"
    assert run.log["workflowState"] == "RUN_SUCCESS", run.log


async def test_a_worker_killed_in_the_failure_callback_ends_the_run_without_a_second(
    node: str, tmp_path: Path
) -> None:
    """The worker making a failed run's failure callback is SIGKILLed while the SDK's
    failureFunction runs: the worker that takes the run over ends it failed. It delivered the
    failed step again (run past its retries) and called the failure function a second time
    (found by a review)."""
    database = tmp_path / "failure-call.db"
    async with (
        stepstream_app(database, workers=0) as (base, workflows),
        serve_workflows(node, "failing", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
        worker_processes(database, tmp_path, 2),
    ):
        payload = json.dumps({"slowFailure": 3000})
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/failing", payload, "", "0")
        run_id = answer["workflowRunId"]
        with anyio.fail_after(15):
            while True:
                executions = (await client.get(f"{endpoint}/_executions")).json()
                if any(e["runId"] == run_id and e["step"] == "failureFunction" for e in executions):
                    break
                await anyio.sleep(0.05)  # polling for the callback, not an assertion
        record = await workflows.backend.get_run(run_id)
        assert record is not None and record.lease_owner is not None
        os.kill(int(record.lease_owner.split(":")[1]), signal.SIGKILL)
        run = await finished_run(client, base, endpoint, run_id, seconds=30)
    assert run.log["workflowState"] == "RUN_FAILED", run.log
    assert run.executions == ["boom", "failureFunction"]  # each once


class SlowAPI:
    """A slow API (an LLM, a payment provider) a ``context.call`` calls: answers in 3 s."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.calls += 1
        await anyio.sleep(3)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})


async def test_a_stopping_worker_makes_no_call_the_sdk_asked_for(node: str, tmp_path: Path) -> None:
    """The SDK asks for a ``context.call`` in the delivery a stopping worker made: the worker
    hands the run back rather than start the call (its deadline would cut a slow call off,
    and the next worker call again); the next worker makes it once (found by a review)."""
    api = SlowAPI()
    async with (
        stepstream_app(tmp_path / "stop-call.db", workers=0) as (base, workflows),
        serve_workflows(node, "caller", sdk_env(base), tmp_path / "serve.log") as endpoint,
        serve_uvicorn(api) as api_url,
        httpx.AsyncClient(timeout=10) as client,
    ):
        faulty = FaultyRoute(endpoint, 1, corrupt=False)  # holds the first delivery
        async with serve_uvicorn(faulty) as route:
            worker = workflows.worker(lease=30)
            await worker.start()
            payload = {"url": f"{api_url}/things", "payload": {"a": 1}}
            answer = await sdk_client(node, base, "trigger", f"{route}/caller", json.dumps(payload))
            with anyio.fail_after(10):
                await faulty.held.wait()
            stopping = asyncio.create_task(worker.stop(grace=1))
            await anyio.sleep(0.1)  # the worker is stopping while the SDK answers the delivery
            faulty.release.set()
            with anyio.fail_after(10):
                await stopping
            assert api.calls == 0, "a stopping worker started a context.call"
            successor = workflows.worker(lease=30)
            await successor.start()
            try:
                run = await finished_run(client, base, endpoint, answer["workflowRunId"])
            finally:
                await successor.stop(grace=5)
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert api.calls == 1


@asynccontextmanager
async def worker_processes(
    database: Path, tmp_path: Path, count: int, *, first: int = 0, stall: Path | None = None
) -> AsyncIterator[None]:
    """``count`` worker processes (``gateway_worker.py``) on ``database``, logging to
    ``worker<first>.log`` and on; with ``stall``, its stall hook on. Killed after."""
    env = {**node_env({}), "QSTASH_CURRENT_SIGNING_KEY": CURRENT_KEY}
    repo = Path(__file__).parents[2]
    command = [sys.executable, "-m", "tests.upstash.gateway_worker", str(database)]
    if stall is not None:
        command.append(str(stall))
    processes = []
    try:
        for n in range(first, first + count):
            with (tmp_path / f"worker{n}.log").open("wb") as output:
                processes.append(
                    await anyio.open_process(
                        command, cwd=repo, env=env, stdout=output, stderr=output
                    )
                )
        yield
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def test_runs_are_canceled_by_the_sdk_and_by_its_client(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "cancel.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        # context.cancel() inside the workflow: DELETE .../runs/{id}?cancel=true.
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/canceller", "{}")
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        assert run.log["workflowState"] == "RUN_CANCELED", run.log
        assert run.executions == ["before"]
        assert run.events[-1]["status"] == "canceled"

        # client.cancel(ids) while the run waits: DELETE /v2/workflows/runs?workflowRunIds=.
        # (A wait that times out long after the test, not a short sleep: a loaded machine can
        # take seconds to start the client, and the run must still be waiting then.)
        payload = json.dumps({"eventId": "never-sent", "timeout": "60s"})
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/waiter", payload)
        run_id = answer["workflowRunId"]
        with anyio.fail_after(10):
            while True:
                response = await client.get(f"{base}/api/runs/{run_id}", headers=AUTH)
                if response.json()["steps"]:
                    break  # waiting
                await anyio.sleep(0.05)  # polling the run, not an assertion
        assert await sdk_client(node, base, "cancel", run_id) == {"cancelled": 1}
        run = await finished_run(client, base, endpoint, run_id)
        assert run.log["workflowState"] == "RUN_CANCELED"
        assert run.executions == []
        assert await sdk_client(node, base, "cancel", run_id) == {"cancelled": 0}


def test_a_delivery_signature_is_an_hs256_jwt_over_url_and_body() -> None:
    """``outbound.sign`` builds the JWT by hand; a JWT library reads it as the SDK does."""
    import base64
    import hashlib

    import jwt

    from stepstream.upstash.outbound import sign

    body = b'[{"messageId": "msg_0"}]'
    token = sign("http://app/api/wf", body, CURRENT_KEY)
    claims = jwt.decode(token, CURRENT_KEY, algorithms=["HS256"], issuer="Upstash")
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
    assert (claims["sub"], claims["body"]) == ("http://app/api/wf", digest)
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, NEXT_KEY, algorithms=["HS256"])
