"""Scale-out on Redis and on PostgreSQL: two ``stepstream server`` processes (API + SSE, no
workers) and two ``stepstream worker`` processes share one Redis (or one PostgreSQL database). A
hundred runs are triggered through server A and followed through SSE on server B, subscribed
before the runs exist: every run's progress crosses three processes, arrives exactly once and in
order, the logs on A agree, and both workers did some of the work."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstream.records import parse_cursor
from tests.conftest import free_port, store_url
from tests.realtime.sse_client import SSEStream, connect

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

RUNS = 100
CHANNELS_PER_STREAM = 25  # 4 SSE connections, each watching 25 run channels
STEPS = ["one", "two", "three"]
DEADLINE = 60  # seconds for all runs to be followed to the end

APP = '''
"""Three quick steps; each step and the result name the process that executed them."""

import asyncio
import os

from stepstream import Realtime, WorkflowContext, Workflows

realtime = Realtime()  # the backend comes from --backend (STEPSTREAM_BACKEND)
workflows = Workflows(realtime=realtime)


async def step(n: int) -> dict:
    await asyncio.sleep(0.02)  # long enough that one worker cannot take every run at once
    return {"n": n, "pid": os.getpid()}


@workflows.workflow("three-steps")
async def three_steps(context: WorkflowContext) -> dict:
    outs = [
        await context.run("one", step, 1),
        await context.run("two", step, 2),
        await context.run("three", step, 3),
    ]
    return {"pid": os.getpid(), "steps": outs, "payload": context.request_payload}
'''


class Process:
    """A ``stepstream`` command in the background, its output in a log file."""

    def __init__(self, name: str, args: list[str], cwd: Path) -> None:
        self.name = name
        self.log = cwd / f"{name}.log"
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"STEPSTREAM_BACKEND", "STEPSTREAM_TOKEN"}
        }
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stepstream.cli", *args],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def wait_for(what: str, condition: Any, processes: list[Process], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        for process in processes:
            process.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {within}s")
        await asyncio.sleep(0.05)  # polling for start-up, not an assertion


class Cluster:
    def __init__(self, tmp_path: Path, backend: str) -> None:
        self.tmp_path = tmp_path
        self.backend = backend
        self.processes: list[Process] = []
        self.urls: list[str] = []

    async def server(self, name: str) -> str:
        port = free_port()
        args = ["server", "mp_app:workflows", "--port", str(port), "--backend", self.backend]
        process = Process(name, [*args, "--log-level", "warning"], self.tmp_path)
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"

        async def healthy() -> bool:
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    return (await client.get(f"{url}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(f"{name} answering /healthz", healthy, [process])
        return url

    async def worker(self, name: str) -> Process:
        args = ["worker", "mp_app:workflows", "--backend", self.backend, "--concurrency", "10"]
        process = Process(name, args, self.tmp_path)
        self.processes.append(process)

        async def started() -> bool:
            return "stepstream worker" in process.log.read_text()

        await wait_for(f"{name} claiming", started, [process])
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture(params=["redis", "postgres"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Two servers and two workers on one Redis, or on one PostgreSQL database."""
    (tmp_path / "mp_app.py").write_text(APP)
    cluster = Cluster(tmp_path, store_url(request.param, request, tmp_path))
    try:
        yield cluster
    finally:
        cluster.stop()
    for process in cluster.processes:
        text = process.log.read_text()
        print(f"--- {process.name} log:\n{text}")
        assert "Traceback" not in text, f"{process.name} logged an exception"


async def follow(
    stream: SSEStream, channels: list[str], received: dict[str, list[dict[str, Any]]]
) -> None:
    """Collect the user events of ``channels`` until each has its runFinish."""
    open_channels = set(channels)
    while open_channels:
        frame = await stream.next(within=DEADLINE)
        body = frame.json
        if "type" in body and "event" not in body:
            assert body["type"] in {"connected", "ping"}, body
            continue
        assert body["event"] == "workflow.update", body
        assert frame.id is not None, "a native user event carries an id: line"
        channel = body["channel"]
        assert channel in open_channels, f"an event after runFinish on {channel}: {body}"
        received[channel].append({"id": body["id"], **body["data"]})
        if body["data"]["type"] == "runFinish":
            open_channels.discard(channel)


async def test_two_servers_two_workers_one_store(cluster: Cluster) -> None:
    server_a = await cluster.server("server-a")
    server_b = await cluster.server("server-b")
    worker_1 = await cluster.worker("worker-1")
    worker_2 = await cluster.worker("worker-2")
    run_ids = [f"wfr_mp-{uuid.uuid4().hex}" for _ in range(RUNS)]
    groups = [run_ids[i : i + CHANNELS_PER_STREAM] for i in range(0, RUNS, CHANNELS_PER_STREAM)]
    received: dict[str, list[dict[str, Any]]] = {run_id: [] for run_id in run_ids}

    async with AsyncExitStack() as stack:
        # Subscribe on B first (native dialect, with history), and wait until every channel is
        # connected, so the runs' events reach B live from the workers through the store.
        streams = []
        for group in groups:
            params = [("dialect", "native"), ("history", "true")]
            params += [("channel", run_id) for run_id in group]
            stream = await stack.enter_async_context(connect(f"{server_b}/api/realtime", params))
            assert stream.response.status_code == 200
            connected = set()
            while connected != set(group):
                body = (await stream.next(within=DEADLINE)).json
                assert body.get("type") == "connected", body
                connected.add(body["channel"])
            streams.append(stream)

        async with httpx.AsyncClient(base_url=server_a, timeout=30) as api:
            for number, run_id in enumerate(run_ids):
                response = await api.post(
                    "/api/workflows/three-steps",
                    params={"workflowRunId": run_id},
                    json={"number": number},
                )
                assert response.status_code == 202, response.text
                assert response.json() == {"workflowRunId": run_id}

            async with asyncio.timeout(DEADLINE):
                await asyncio.gather(
                    *(
                        follow(stream, group, received)
                        for stream, group in zip(streams, groups, strict=True)
                    )
                )

            expected = [("runStart", None)]
            for step in STEPS:
                expected += [("stepStart", step), ("stepFinish", step)]
            expected.append(("runFinish", None))
            for run_id, events in received.items():
                kinds = [(event["type"], event.get("stepName")) for event in events]
                assert kinds == expected, (run_id, kinds)
                assert all(event["workflowRunId"] == run_id for event in events)
                ids = [parse_cursor(event["id"]) for event in events]
                assert ids == sorted(set(ids)), f"{run_id}: ids repeat or go backwards"
                assert events[-1]["status"] == "success", events[-1]

                # What B streamed is exactly what is stored (read back through A).
                history = await api.get(
                    "/api/realtime/history", params={"channel": run_id, "limit": 1000}
                )
                stored = [message["id"] for message in history.json()["messages"]]
                assert stored == [event["id"] for event in events], run_id

            pids = set()
            for number, run_id in enumerate(run_ids):
                log = (await api.get(f"/api/runs/{run_id}")).json()
                assert log["workflowState"] == "RUN_SUCCESS", log
                assert log["requestPayload"] == {"number": number}
                assert [step["stepName"] for step in log["steps"]] == STEPS
                assert all(step["state"] == "STEP_SUCCESS" for step in log["steps"])
                assert all(step["attempts"] == 1 for step in log["steps"])
                result = log["workflowRunResponse"]
                pids.add(result["pid"])
                pids.update(out["pid"] for out in result["steps"])
            assert pids == {worker_1.pid, worker_2.pid}, "both workers, and only workers, ran"

            page = await api.get("/api/runs", params={"state": "RUN_SUCCESS", "count": 1000})
            assert {run["workflowRunId"] for run in page.json()["runs"]} == set(run_ids)
