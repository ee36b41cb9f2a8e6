"""The QStash gateway end to end with the Python SDK (``upstash-workflow``, FastAPI ``serve``):
its app (``app.py``) runs under uvicorn in its own process with ``QSTASH_URL`` pointing at a real
stepstream server's ``/qstash``, and is triggered the ways its docs say (a POST to the endpoint,
or a message published with the ``qstash`` client). Each step body runs once (``/_executions``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import free_port
from tests.upstash.harness import missing, serving_app
from tests.upstash.test_gateway import (
    AUTH,
    TOKEN,
    finished_run,
    sdk_env,
    stepstream_server,
    timeline,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("signing_key"),
]

ROOT = Path(__file__).parents[3]


@pytest.fixture(scope="module", autouse=True)
def python_sdk() -> None:
    try:
        import upstash_workflow
    except ImportError:
        missing("upstash-workflow is not installed (pip install -e '.[test]')")
    # What pyproject.toml's test extra pins: the findings below were made with it.
    assert upstash_workflow.__version__ == "2.0.0"


def app_env(stepstream_url: str, *, signed: bool) -> dict[str, str]:
    """What the app's process sees. Unsigned: no keys, so a direct POST (no signature) can
    start a run, as the SDK's docs show; stepstream still signs every delivery."""
    env = sdk_env(stepstream_url)
    if not signed:
        env = {"QSTASH_URL": env["QSTASH_URL"], "QSTASH_TOKEN": env["QSTASH_TOKEN"]}
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}


@asynccontextmanager
async def serve_app(env: Mapping[str, str], log: Path) -> AsyncIterator[str]:
    """``app.py`` under uvicorn on a free port; yields its base URL, stops it after."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "tests.upstash.python.app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    async with serving_app(command, ROOT, env, port, log) as url:
        yield url


async def trigger(client: httpx.AsyncClient, url: str, payload: Any) -> str:
    """Start a run by POSTing to the endpoint (the SDK's "first invocation"); its run id."""
    response = await client.post(url, json=payload)
    assert response.status_code == 200, response.text
    run_id: str = response.json()["workflowRunId"]
    assert run_id.startswith("wfr_")
    return run_id


async def test_run_steps(tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "py.db") as base,
        serve_app(app_env(base, signed=False), tmp_path / "app.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        run_id = await trigger(client, f"{endpoint}/steps", {"user": "u1"})
        run = await finished_run(client, base, endpoint, run_id)

        log = run.log
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["requestPayload"] == {"user": "u1"}
        assert [(s["stepName"], s["stepType"], s["state"]) for s in log["steps"]] == [
            ("first", "Run", "STEP_SUCCESS"),
            ("second", "Run", "STEP_SUCCESS"),
        ]
        assert [s["out"] for s in log["steps"]] == [{"user": "u1", "n": 1}, "u1-2"]
        assert run.executions == ["first", "second"]
        assert timeline(run.events)[-3:] == [
            ("stepStart", "second"),
            ("stepFinish", "second"),
            ("runFinish", None),
        ]


async def test_sleep_steps(tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "sleep.db") as base,
        serve_app(app_env(base, signed=False), tmp_path / "app.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        run_id = await trigger(client, f"{endpoint}/sleepy", {})
        run = await finished_run(client, base, endpoint, run_id)

        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert [(s["stepName"], s["stepType"]) for s in run.log["steps"]] == [
            ("nap", "SleepFor"),
            ("wake", "SleepUntil"),
            ("after", "Run"),
        ]
        assert run.executions == ["after"]


async def test_context_call(tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "call.db") as base,
        serve_app(app_env(base, signed=False), tmp_path / "app.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        run_id = await trigger(client, f"{endpoint}/caller", {"url": f"{endpoint}/echo"})
        run = await finished_run(client, base, endpoint, run_id)

        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        fetch, status = run.log["steps"]
        assert (fetch["stepName"], fetch["stepType"]) == ("fetch", "Call")
        assert status["out"] == [200, {"got": {"n": 7}, "probe": "1"}]
        assert run.executions == ["status"]


async def test_failure_function(tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "fail.db") as base,
        serve_app(app_env(base, signed=False), tmp_path / "app.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        run_id = await trigger(client, f"{endpoint}/failing", None)
        run = await finished_run(client, base, endpoint, run_id)

        assert run.log["workflowState"] == "RUN_FAILED", run.log
        # The failure callback is made before the run is marked failed.
        assert run.executions == ["ok", "boom", "failure_function"]
        executions = (await client.get(f"{endpoint}/_executions")).json()
        assert [e["step"] for e in executions if e["workflow"] == "failure"] == ["failure_function"]
        logs = await client.get(
            f"{base}/qstash/v2/workflows/events", params={"workflowRunId": run_id}, headers=AUTH
        )
        failure = logs.json()["runs"][0]["failureFunction"]
        assert failure["state"] == "CALLBACK_SUCCESS", failure
        assert "boom" in failure["failResponse"]


async def test_signed_app_started_by_a_qstash_message(tmp_path: Path) -> None:
    """With signing keys the app refuses unsigned POSTs, so its docs start runs by publishing a
    message to the endpoint with the ``qstash`` client; QStash delivers it, signed, and the SDK
    answers that first invocation by publishing the run's Init message."""
    from qstash import AsyncQStash

    async with (
        stepstream_server(tmp_path / "signed.db") as base,
        serve_app(app_env(base, signed=True), tmp_path / "app.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        unsigned = await client.post(f"{endpoint}/steps", json={"user": "u1"})
        assert unsigned.status_code == 500
        assert "Failed to verify" in unsigned.json()["message"]

        qstash = AsyncQStash(TOKEN, base_url=f"{base}/qstash")
        await qstash.message.publish_json(url=f"{endpoint}/steps", body={"user": "u2"})
        with anyio.fail_after(15):
            while True:
                page = await client.get(f"{base}/qstash/v2/workflows/events", headers=AUTH)
                runs = [r for r in page.json()["runs"] if r["workflowState"] != "RUN_STARTED"]
                if runs:
                    break
                await anyio.sleep(0.05)  # polling, not an assertion
        assert runs[0]["workflowState"] == "RUN_SUCCESS"
