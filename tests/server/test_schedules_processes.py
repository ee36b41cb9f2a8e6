"""Schedules across real processes: two ``stepstream server --workers 1`` and two ``stepstream
worker`` on one store, each running a scheduler, and a workflow declaring a 6-field every-second
cron. Every second of the window gets exactly one run (id ``wfr_<schedule>-<tick ms>``), started
within a second of its tick, and every run finishes: no tick missed, none run twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, store_url
from tests.server.test_multiprocess import Process, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

WINDOW = 6  # seconds of ticks watched
APP = '''
"""A workflow that runs every second by itself."""

import os

from stepstream import Realtime, Schedule, WorkflowContext, Workflows

workflows = Workflows(realtime=Realtime())  # the backend: --backend (STEPSTREAM_BACKEND)


@workflows.workflow("tick", schedule=Schedule("* * * * * *", payload={"every": "second"}))
async def tick(context: WorkflowContext) -> dict:
    return await context.run("where", lambda: {"pid": os.getpid()})
'''


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def backend(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    (tmp_path / "cron_app.py").write_text(APP)
    return store_url(request.param, request, tmp_path)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in started:
            process.stop()
    for process in started:
        text = process.log.read_text()
        print(f"--- {process.name} log:\n{text}")
        assert "Traceback" not in text, f"{process.name} logged an exception"


async def test_every_second_over_two_servers_and_two_workers(
    tmp_path: Path, backend: str, processes: list[Process]
) -> None:
    urls = []
    for name in ("server-a", "server-b"):
        port = free_port()
        args = ["server", "cron_app:workflows", "--port", str(port), "--backend", backend]
        processes.append(
            Process(name, [*args, "--workers", "1", "--log-level", "warning"], tmp_path)
        )
        urls.append(f"http://127.0.0.1:{port}")
    for name in ("worker-1", "worker-2"):
        args = ["worker", "cron_app:workflows", "--backend", backend, "--concurrency", "10"]
        processes.append(Process(name, args, tmp_path))

    async with httpx.AsyncClient(timeout=10) as http:

        async def all_up() -> bool:
            try:
                for url in urls:
                    (await http.get(f"{url}/healthz")).raise_for_status()
            except httpx.HTTPError:
                return False
            return all("stepstream worker" in p.log.read_text() for p in processes[2:])

        await wait_for("every process up", all_up, processes)
        start = (time.time_ns() // 1_000_000 // 1000 + 1) * 1000
        await asyncio.sleep(WINDOW + 1)
        end = start + WINDOW * 1000
        for process in processes:
            process.check_alive()

        async def ticks_finished() -> bool:
            runs = await runs_of(http, urls[1])
            return all(run["workflowState"] == "RUN_SUCCESS" for run in runs)

        await wait_for("the runs finished", ticks_finished, processes)
        runs = await runs_of(http, urls[0])

    ids = [run["workflowRunId"] for run in runs]
    assert len(ids) == len(set(ids))
    ticks = sorted(int(run_id.removeprefix("wfr_tick-")) for run_id in ids)
    assert all(f"wfr_tick-{tick}" in ids for tick in ticks), ids
    watched = [tick for tick in ticks if start <= tick <= end]
    assert watched == list(range(start, end + 1000, 1000)), "one run per tick, none missed"
    for run in runs:
        tick = int(run["workflowRunId"].removeprefix("wfr_tick-"))
        if start <= tick <= end:
            late = run["workflowRunCreatedAt"] - tick
            assert 0 <= late < 1000, (run["workflowRunId"], late)


async def runs_of(http: httpx.AsyncClient, url: str) -> list[dict[str, object]]:
    page = (await http.get(f"{url}/api/runs", params={"workflow": "tick", "count": 1000})).json()
    runs: list[dict[str, object]] = page["runs"]
    return runs
