"""Lazy fetch end to end with the real SDK: a delivery whose history is over ``lazy_over``
bytes goes with an empty body, and the SDK fetches the history from
``GET /qstash/v2/workflows/runs/{id}``, cut after the delivered message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import stepstream.upstash
from stepstream import Realtime, Workflows
from stepstream.records import RunRecord, RunState
from stepstream.upstash.lazy import lazy
from tests.upstash.harness import serve_uvicorn, serve_workflows
from tests.upstash.test_gateway import (
    AUTH,
    TOKEN,
    finished_run,
    sdk_client,
    sdk_env,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("signing_key"),
]


class Fetches:
    """The app, counting the SDK's history fetches."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope.get("method") == "GET" and path.startswith("/qstash/v2/workflows/runs/"):
            self.paths.append(path)
        await self.app(scope, receive, send)


@asynccontextmanager
async def lazy_server(database: Path) -> AsyncIterator[tuple[str, Fetches]]:
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{database}"))
    stepstream.upstash.enable(workflows, lazy_over=50)
    app = Fetches(workflows.asgi(token=TOKEN, lease=1.0, workers=1))
    async with serve_uvicorn(app) as url:
        yield url, app


async def test_large_histories_are_fetched_by_the_sdk(node: str, tmp_path: Path) -> None:
    async with (
        lazy_server(tmp_path / "lazy.db") as (base, app),
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        two = await sdk_client(node, base, "trigger", f"{endpoint}/two-step", '{"user": "u1"}')
        par = await sdk_client(node, base, "trigger", f"{endpoint}/parallel", "{}")
        run = await finished_run(client, base, endpoint, two["workflowRunId"])
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == {"first": {"user": "u1", "n": 1}, "second": "u1-2"}
        assert run.executions == ["first", "second"]
        run = await finished_run(client, base, endpoint, par["workflowRunId"])
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == "ABC"
        assert sorted(run.executions) == ["a", "b", "c"]
        for run_id in (two["workflowRunId"], par["workflowRunId"]):
            assert f"/qstash/v2/workflows/runs/{run_id}" in app.paths  # went empty, was fetched

        # An ended run has no history to fetch: the SDK takes the 404 as "already ended".
        url = f"{base}/qstash/v2/workflows/runs/{two['workflowRunId']}"
        assert (await client.get(url, headers=AUTH)).status_code == 404


def test_only_the_typescript_sdk_gets_empty_bodies() -> None:
    workflows = Workflows()
    stepstream.upstash.enable(workflows, lazy_over=10)

    def run(features: str) -> RunRecord:
        headers = {"upstash-feature-set": features}
        return RunRecord("wfr_x", "upstash", RunState.STARTED, 0, headers=headers)

    ts = run("LazyFetch,InitialBody,WF_DetectTrigger,WF_TriggerOnConfig")
    python = run("LazyFetch,InitialBody,WF_DetectTrigger")  # advertised, not served by it
    engine = workflows.engine
    assert lazy(engine, ts, "x" * 11) and not lazy(engine, ts, "x" * 10)
    assert not lazy(engine, python, "x" * 11)
