"""The stepstream app embedded in a FastAPI or Starlette app under a prefix (README: "Embedding in
FastAPI or Starlette"): the README's recipes are ``examples/fastapi_app.py`` and
``examples/starlette_app.py``, byte for byte, and real uvicorn servers serve them here. A
triggered run executes to ``RUN_SUCCESS`` (a worker in the server's process, or a separate
``stepstream worker``), ``/sse`` streams with no trailing slash, and an app mounted without its
lifespan refuses every request with a 503 that names the fix."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from stepstream import Client, Realtime, WorkflowContext, Workflows
from stepstream.errors import Unauthorized
from stepstream.realtime.remote import subscribe_remote
from stepstream.server.wire import RunLog
from tests.conftest import free_port
from tests.readme import python_blocks

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
WITHIN = 30  # seconds a server may take to start, and a run to finish


def readme_block(first_line: str) -> str:
    """The README's ```python block that starts with ``first_line``."""
    [found] = [block for block in python_blocks() if block.startswith(first_line + "\n")]
    return found


@pytest.mark.parametrize("name", ["fastapi_app.py", "starlette_app.py"])
def test_the_readme_recipes_are_the_files_served_here(name: str) -> None:
    example = (ROOT / "examples" / name).read_text()
    assert readme_block(example.splitlines()[0]) == example


# -- real servers ---------------------------------------------------------------------------------


@contextmanager
def process(command: Sequence[str], tmp_path: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` run from the repository root on the test's own store; SIGTERM at the end."""
    env = {**os.environ, "STEPSTREAM_BACKEND": f"sqlite:///{tmp_path / 'embedded.db'}"}
    env.pop("STEPSTREAM_TOKEN", None)
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        child = subprocess.Popen(list(command), cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        print(f"--- {name} ---\n{log.read_text()}")  # shown if the test failed


async def answering(url: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WITHIN
    async with httpx.AsyncClient(timeout=1) as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert child.poll() is None, "the server exited"
            assert time.monotonic() < deadline, f"{url} never answered 200"
            await asyncio.sleep(0.05)  # waiting for the port, not an assertion


@asynccontextmanager
async def uvicorn_serving(target: str, tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", target, "--port", str(port)]
    with process([*command, "--log-level", "warning"], tmp_path, "uvicorn") as child:
        base = f"http://127.0.0.1:{port}"
        await answering(f"{base}/stepstream/healthz", child)
        yield base


async def finished(base: str, run_id: str) -> RunLog:
    """The run's log once it ends, read by a ``Client`` through the mount's prefix."""
    deadline = time.monotonic() + WITHIN
    async with Client(url=f"{base}/stepstream") as client:
        while True:
            log = await client.logs(run_id)
            if log["workflowState"] != "RUN_STARTED":
                return log
            assert time.monotonic() < deadline, f"{run_id} never finished: {log}"
            await asyncio.sleep(0.05)  # waiting for the worker, not an assertion


async def streamed_updates(base: str, run_id: str, token: str) -> list[str]:
    """The run's progress events through ``/sse`` (no trailing slash, redirects not followed),
    from history to ``runFinish``, with a channel ``token``: without one, ``/sse`` refuses."""
    with pytest.raises(Unauthorized):
        async for _ in subscribe_remote(f"{base}/sse", [run_id], history=True):
            pass
    kinds = []
    # Closed on the way out: a stream left open holds the server's graceful shutdown (uvicorn
    # waits for open connections) until ``process`` gives up on it and kills the server.
    stream = subscribe_remote(f"{base}/sse", [run_id], history=True, channel_token=token)
    async with aclosing(stream):
        async for message in stream:
            kinds.append(message.data["type"])
            if kinds[-1] == "runFinish":
                return kinds
    raise AssertionError("the stream ended before runFinish")


async def test_fastapi_mounts_the_app_and_its_worker_runs_what_is_triggered(
    tmp_path: Path,
) -> None:
    async with (
        uvicorn_serving("examples.fastapi_app:api", tmp_path) as base,
        httpx.AsyncClient(timeout=10) as http,
    ):
        health = (await http.get(f"{base}/stepstream/healthz")).json()
        assert health["status"] == "ok", health
        started = await http.post(f"{base}/greetings", params={"name": "ann"})
        assert started.status_code == 200, started.text
        run_id = started.json()["workflowRunId"]
        log = await finished(base, run_id)
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowRunResponse"] == "hello ann"
        token = started.json()["token"]
        assert await asyncio.wait_for(streamed_updates(base, run_id, token), WITHIN) == [
            "runStart", "stepStart", "stepFinish", "runFinish",
        ]  # fmt: skip
        dashboard = await http.get(f"{base}/stepstream/")
        assert dashboard.status_code == 200 and "text/html" in dashboard.headers["content-type"]


async def test_starlette_mounts_the_app_and_a_separate_worker_runs_what_is_triggered(
    tmp_path: Path,
) -> None:
    worker = [sys.executable, "-m", "stepstream.cli", "worker", "examples.starlette_app:workflows"]
    async with (
        uvicorn_serving("examples.starlette_app:app", tmp_path) as base,
        httpx.AsyncClient(timeout=10) as http,
    ):
        started = await http.post(f"{base}/stepstream/api/workflows/greet", json={"name": "bob"})
        assert started.status_code == 202, started.text
        run_id = started.json()["workflowRunId"]
        # The server runs no worker: nothing happens until one starts.
        await asyncio.sleep(0.5)
        response = await http.get(f"{base}/stepstream/api/runs/{run_id}")
        assert response.json()["steps"] == []
        with process(worker, tmp_path, "worker"):
            log = await finished(base, run_id)
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowRunResponse"] == "hello bob"
        minted = await http.post(
            f"{base}/stepstream/api/realtime/token", json={"channels": [run_id]}
        )
        token = minted.json()["token"]
        kinds = await asyncio.wait_for(streamed_updates(base, run_id, token), WITHIN)
        assert kinds == ["runStart", "stepStart", "stepFinish", "runFinish"]


# -- mounted without its lifespan ------------------------------------------------------------------


async def test_mounted_without_its_lifespan_every_request_names_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The newcomer's mistake: ``api.mount(...)`` alone. Nothing may look fine: no 202 for a
    run no worker would ever execute, no healthy ``/healthz``."""
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{tmp_path / 'forgot.db'}"))

    @workflows.workflow("greet")
    async def greet(context: WorkflowContext) -> str:
        return "hello"

    api = FastAPI()
    api.mount("/stepstream", workflows.asgi())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn exited"
            await asyncio.sleep(0.02)  # waiting for the port, not an assertion
        base = f"http://127.0.0.1:{port}/stepstream"
        with caplog.at_level(logging.ERROR, logger="stepstream.server"):
            async with httpx.AsyncClient(timeout=10) as http:
                answers = [
                    await http.post(f"{base}/api/workflows/greet", json={}),
                    await http.get(f"{base}/healthz"),
                    await http.get(f"{base}/api/runs"),
                    await http.get(f"{base}/api/realtime", params={"channel": "c"}),
                    await http.get(f"{base}/"),
                ]
    finally:
        server.should_exit = True
        await task
    for response in answers:
        assert response.status_code == 503, (response.request.url, response.text)
        error = response.json()["error"]
        assert error["code"] == "app_not_started", error
        assert "lifespan=stepstream_app.lifespan" in error["message"], error
    logged = [r for r in caplog.records if r.name == "stepstream.server"]
    assert len(logged) == 1 and "lifespan" in logged[0].getMessage(), logged
    await workflows.open()
    page = await workflows.backend.list_runs(state=None, workflow=None, cursor=None, count=10)
    await workflows.aclose()
    assert page.runs == []  # the trigger was refused, not accepted for nobody


async def test_a_host_keeps_its_gc_and_requests_are_served_while_workers_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stepstream.server import lifespan as lifespan_module
    from stepstream.workflow.worker import Worker

    tuned: list[object] = []
    monkeypatch.setattr(lifespan_module, "tune_gc", lambda: tuned.append("tuned"))
    running_while_stopping: list[bool] = []
    stop = Worker.stop

    async def recording_stop(worker: Worker, grace: float = 0) -> None:
        running_while_stopping.append(stepstream_app.lifespan.running)
        await stop(worker, grace)

    monkeypatch.setattr(Worker, "stop", recording_stop)
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{tmp_path / 'host.db'}"))
    stepstream_app = workflows.asgi()
    host = FastAPI(lifespan=stepstream_app.lifespan)
    async with host.router.lifespan_context(host):
        assert stepstream_app.lifespan.running
    assert tuned == []  # the host's process, the host's GC settings
    assert running_while_stopping == [True]  # requests are still served while it stops
    assert not stepstream_app.lifespan.running
    async with stepstream_app.router.lifespan_context(stepstream_app):
        pass
    assert tuned == ["tuned"]  # served on its own, it tunes the GC as before
