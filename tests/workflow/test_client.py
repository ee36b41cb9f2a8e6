"""Bad input to the client is refused with a stepstream error, and changes nothing stored. The
same calls go in-process (``EngineTransport``) and through the HTTP API (``HTTPTransport`` into
the app): same results, same errors, with the same fields."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstream import (
    Client,
    NoWaiters,
    RunConflict,
    RunFailed,
    RunNotFound,
    UnknownWorkflow,
    ValidationError,
    WorkflowContext,
    Workflows,
)
from stepstream.client import EngineTransport, HTTPTransport
from stepstream.errors import Unauthorized
from tests.upstash.harness import serve_uvicorn
from tests.workflow.helpers import Harness, updates, wait_for_state

pytestmark = pytest.mark.anyio

TRANSPORTS = ["engine", "http"]


@asynccontextmanager
async def client_of(workflows: Workflows, transport: str) -> AsyncIterator[Client]:
    """``workflows``' client over ``transport``: over HTTP, through the app's own API."""
    if transport == "engine":
        yield workflows.client()
        return
    app = workflows.asgi(workers=0)
    async with (
        app.lifespan(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http,
        Client(transport=HTTPTransport("http://127.0.0.1:8000", http=http)) as client,
    ):
        yield client


async def snapshot(workflows: Workflows, client: Client) -> dict[str, Any]:
    """Every stored run's log and event history."""
    runs = (await client.runs(count=1000))["runs"]
    return {
        run["workflowRunId"]: (
            await client.logs(run["workflowRunId"]),
            await updates(workflows, run["workflowRunId"]),
        )
        for run in runs
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_rejected_calls_change_nothing(harness: Harness, transport: str) -> None:
    workflows = harness.workflows()

    @workflows.workflow("echo", retry_delay=0.01)
    async def echo(context: WorkflowContext) -> Any:
        return await context.run("echo", lambda: context.request_payload)

    worker = await harness.worker(workflows)
    async with client_of(workflows, transport) as client:
        finished = await client.trigger("echo", {"n": 1}, workflow_run_id="finished-one")
        assert finished == "wfr_finished-one"
        assert (await wait_for_state(client, finished))["workflowState"] == "RUN_SUCCESS"
        await harness.stop(worker)  # nothing moves from here on
        pending = await client.trigger("echo", {"n": 2}, workflow_run_id="wfr_pending-one")
        assert pending == "wfr_pending-one"  # the prefix is not doubled
        before = await snapshot(workflows, client)
        assert set(before) == {finished, pending}
        await refuse_everything(client, finished, pending)
        assert await snapshot(workflows, client) == before
    log, events = before[pending]
    assert log["requestPayload"] == {"n": 2}
    assert [e["type"] for e in events] == ["runStart"]


async def refuse_everything(client: Client, finished: str, pending: str) -> None:
    with pytest.raises(UnknownWorkflow, match=r"'nope'.*echo") as unknown:
        await client.trigger("nope", {"n": 1})
    assert (unknown.value.name, unknown.value.known) == ("nope", ["echo"])
    for payload in ({1, 2}, object(), {"n": float("nan")}, {"bytes": b"x"}):
        with pytest.raises(ValidationError):
            await client.trigger("echo", payload)
    for taken in ("pending-one", "wfr_pending-one", "finished-one"):
        with pytest.raises(RunConflict):
            await client.trigger("echo", {"n": "other"}, workflow_run_id=taken)
    for bad_id in ("has space", "a/b", "x" * 200, "", "é"):
        with pytest.raises(ValidationError):
            await client.trigger("echo", {"n": 3}, workflow_run_id=bad_id)
    with pytest.raises(ValidationError):
        await client.trigger("echo", {"n": 3}, delay=-1)
    with pytest.raises(NoWaiters, match="nobody-waits") as nobody:
        await client.notify("nobody-waits", {"x": 1})
    assert nobody.value.event_id == "nobody-waits"
    with pytest.raises(ValidationError):
        await client.notify("some-event", {1, 2}, workflow_run_id=pending)
    with pytest.raises(RunNotFound) as missing:
        await client.notify("some-event", None, workflow_run_id="wfr_unknown")
    assert missing.value.run_id == "wfr_unknown"
    with pytest.raises(RunConflict):
        await client.notify("some-event", None, workflow_run_id=finished)
    with pytest.raises(RunConflict):
        await client.cancel(finished)
    with pytest.raises(RunNotFound):
        await client.cancel("wfr_unknown")
    with pytest.raises(RunNotFound) as missing:
        await client.logs("wfr_unknown")
    assert missing.value.run_id == "wfr_unknown"
    with pytest.raises(ValidationError):
        await client.runs(state="RUN_SOMEHOW")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_run_ids(harness: Harness, transport: str) -> None:
    workflows = harness.workflows()

    @workflows.workflow("noop")
    async def noop(context: WorkflowContext) -> None:
        return None

    async with client_of(workflows, transport) as client:
        generated = {await client.trigger("noop") for _ in range(20)}
        assert len(generated) == 20
        for run_id in generated:
            assert re.fullmatch(r"wfr_[A-Za-z0-9_\-]{22,}", run_id), run_id  # >= 128 random bits
        assert await client.trigger("noop", workflow_run_id="mine-1") == "wfr_mine-1"
        assert (await client.logs("wfr_mine-1"))["workflowName"] == "noop"


def test_the_public_constructors() -> None:
    workflows = Workflows(backend="memory://constructors")
    assert isinstance(workflows.client().transport, EngineTransport)
    assert isinstance(Client(workflows.engine).transport, EngineTransport)
    remote = Client(url="http://127.0.0.1:8000/", token="t")
    assert isinstance(remote.transport, HTTPTransport)
    assert remote.transport.url == "http://127.0.0.1:8000"
    for wrong in ({}, {"url": "http://x", "workflows": workflows}):
        with pytest.raises(ValueError, match="one of"):
            Client(**wrong)  # type: ignore[arg-type]


async def test_an_unreachable_server_is_a_stepstream_error() -> None:
    from stepstream import BackendUnavailable
    from tests.conftest import free_port

    async with Client(url=f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(BackendUnavailable, match="cannot reach stepstream"):
            await client.logs("wfr_x")


@asynccontextmanager
async def served_client(workflows: Workflows, transport: str) -> AsyncIterator[Client]:
    """``workflows``' client over ``transport``: over HTTP, through a real server (a wait for
    a run's end streams its channel, which an in-memory ASGI transport cannot)."""
    if transport == "engine":
        yield workflows.client()
        return
    app = workflows.asgi(workers=0)
    async with serve_uvicorn(app) as url, Client(url=url) as client:
        yield client


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_result_waits_for_the_run_to_end(harness: Harness, transport: str) -> None:
    """``result`` returns what the workflow returned once it ends, however late; a failed or
    canceled run is a ``RunFailed`` with its state and error; an unknown one ``RunNotFound``."""
    workflows = harness.workflows()
    gate = asyncio.Event()

    @workflows.workflow("gated")
    async def gated(context: WorkflowContext) -> Any:
        await context.run("wait", gate.wait)
        return await context.run("echo", lambda: {"got": context.request_payload})

    @workflows.workflow("broken", retries=0)
    async def broken(context: WorkflowContext) -> None:
        await context.run("explode", explode)

    await harness.worker(workflows)
    async with served_client(workflows, transport) as client:
        run_id = await client.trigger("gated", {"n": 1})
        waiting = asyncio.create_task(client.result(run_id))
        await wait_for_step(client, run_id, "wait")
        assert not waiting.done()  # the run has not ended: nothing to return yet
        gate.set()
        async with asyncio.timeout(10):
            assert await waiting == {"got": {"n": 1}}
        assert await client.result(run_id) == {"got": {"n": 1}}  # ended before the call
        assert (await client.wait(run_id))["workflowState"] == "RUN_SUCCESS"

        failing = await client.trigger("broken")
        with pytest.raises(RunFailed, match=r"RUN_FAILED.*boom") as failed:
            async with asyncio.timeout(10):
                await client.result(failing)
        assert (failed.value.run_id, failed.value.state) == (failing, "RUN_FAILED")
        assert "boom" in (failed.value.error or "")

        gate.clear()
        canceled = await client.trigger("gated")
        waiting = asyncio.create_task(client.result(canceled))
        await wait_for_step(client, canceled, "wait")
        await client.cancel(canceled)
        with pytest.raises(RunFailed) as stopped:
            async with asyncio.timeout(10):
                await waiting
        assert stopped.value.state == "RUN_CANCELED"
        gate.set()

        with pytest.raises(RunNotFound):
            await client.result("wfr_no-such-run")


async def test_result_without_a_realtime_reads_the_log_until_the_run_ends(
    backend_url: str,
) -> None:
    """A ``Workflows`` without a ``Realtime`` streams no progress: ``result`` then looks at
    the run's log again until it ends."""
    workflows = Workflows(backend=backend_url)
    gate = asyncio.Event()

    @workflows.workflow("gated")
    async def gated(context: WorkflowContext) -> str:
        await context.run("wait", gate.wait)
        return "done"

    worker = workflows.worker()
    await worker.start()
    try:
        client = workflows.client()
        run_id = await client.trigger("gated")
        waiting = asyncio.create_task(client.result(run_id))
        await wait_for_step(client, run_id, "wait")
        assert not waiting.done()
        gate.set()
        async with asyncio.timeout(10):
            assert await waiting == "done"
    finally:
        await worker.stop(grace=5)
        await workflows.aclose()


def explode() -> None:
    raise RuntimeError("boom")


async def wait_for_step(client: Client, run_id: str, name: str) -> None:
    """Until the run's log shows step ``name`` started."""
    async with asyncio.timeout(10):
        while True:
            if any(step["stepName"] == name for step in (await client.logs(run_id))["steps"]):
                return
            await asyncio.sleep(0.01)  # polling the log, not an assertion


async def test_a_remote_client_takes_its_token_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Client(url=...)`` sends ``$STEPSTREAM_TOKEN`` unless given ``token=``; a refused or
    missing token says how to give one, and a token that is not a string is refused at once."""
    workflows = Workflows(backend=f"sqlite:///{tmp_path / 'auth.db'}")
    async with serve_uvicorn(workflows.asgi(workers=0, token="s3cret")) as url:
        monkeypatch.delenv("STEPSTREAM_TOKEN", raising=False)
        async with Client(url=url) as client:
            with pytest.raises(Unauthorized, match=r"wants an API token.*token=\.\.\."):
                await client.workflows()
        async with Client(url=url, token="wrong") as client:
            with pytest.raises(Unauthorized, match="refused the API token given"):
                await client.workflows()
        monkeypatch.setenv("STEPSTREAM_TOKEN", "s3cret")
        async with Client(url=url) as client:
            assert (await client.workflows())["workflows"] == []
    with pytest.raises(ValidationError, match="token must be"):
        Client(url=url, token=...)  # type: ignore[arg-type]


async def test_a_wait_for_a_run_outlasts_an_outage_but_not_a_wrong_address() -> None:
    """Once the run's log has been read, a server or storage that stops answering (a restart)
    is waited out; the first read's failure is the error it is (a wrong URL, say)."""
    from stepstream.errors import BackendUnavailable
    from stepstream.run_end import until_finished

    started: Any = {"workflowState": "RUN_STARTED"}
    ended: Any = {"workflowState": "RUN_SUCCESS"}
    answers: list[Any] = [BackendUnavailable("restarting"), None, BackendUnavailable("x"), ended]

    async def log() -> Any:
        return started

    look = answering(answers)

    async with asyncio.timeout(10):
        assert await until_finished(log, look) is ended
    assert answers == []

    async def unreachable() -> Any:
        raise BackendUnavailable("cannot reach stepstream at http://nowhere")

    with pytest.raises(BackendUnavailable, match="nowhere"):
        await until_finished(unreachable, look, lambda: False)  # never reached: the error

    log_after_a_restart = answering([BackendUnavailable("restarting"), ended])
    async with asyncio.timeout(10):  # reached before: the restart is waited out
        assert await until_finished(log_after_a_restart, look, lambda: True) is ended


def answering(answers: list[Any]) -> Callable[[], Awaitable[Any]]:
    """A coroutine function giving ``answers`` one per call, raising those that are errors."""

    async def answer() -> Any:
        given = answers.pop(0)
        if isinstance(given, BaseException):
            raise given
        return given

    return answer
