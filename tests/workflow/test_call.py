"""``context.call``: a durable HTTP call to a real local server (uvicorn in a thread)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from stepstream import WorkflowContext
from tests.conftest import free_port
from tests.workflow.helpers import Harness, check_history, steps_by_name, updates, wait_for_state

pytestmark = pytest.mark.anyio


class Server:
    """A tiny HTTP service that counts the requests it gets."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.url = ""

    def app(self) -> Starlette:
        async def echo(request: Request) -> Response:
            self.hits[request.url.path] += 1
            raw = await request.body()
            return JSONResponse(
                {
                    "method": request.method,
                    "query": dict(request.query_params),
                    "body": raw.decode(),
                    "contentType": request.headers.get("content-type"),
                    "token": request.headers.get("x-token"),
                }
            )

        async def missing(request: Request) -> Response:
            self.hits[request.url.path] += 1
            return PlainTextResponse("nothing here", status_code=404)

        async def broken(request: Request) -> Response:
            self.hits[request.url.path] += 1
            return JSONResponse({"error": "down for maintenance"}, status_code=503)

        return Starlette(
            routes=[
                Route("/echo", echo, methods=["GET", "POST", "PUT"]),
                Route("/missing", missing),
                Route("/broken", broken),
            ]
        )


@pytest.fixture(scope="module")
def http_server() -> Iterator[Server]:
    server = Server()
    port = free_port()
    config = uvicorn.Config(
        server.app(), host="127.0.0.1", port=port, log_level="warning", loop="asyncio"
    )
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "the test HTTP server did not start"
        time.sleep(0.02)
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


async def test_call_get_post_and_non_2xx(harness: Harness, http_server: Server) -> None:
    workflows = harness.workflows()
    base = http_server.url
    tag = harness.backend_url[:5]

    @workflows.workflow("caller", retry_delay=0.01)
    async def caller(context: WorkflowContext) -> dict[str, Any]:
        got = await context.call("get", f"{base}/echo?tag={tag}")
        posted = await context.call(
            "post",
            f"{base}/echo?tag={tag}",
            method="POST",
            body={"order": 7},
            headers={"x-token": "secret"},
        )
        missing = await context.call("missing", f"{base}/missing")
        broken = await context.call("broken", f"{base}/broken")
        await context.sleep("replay", 0.05)  # the calls are replayed, not sent again
        return {
            "get": got["body"],
            "post": posted["body"],
            "missing": [missing["status"], missing["body"]],
            "broken": [broken["status"], broken["body"]],
        }

    hits_before = Counter(http_server.hits)
    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("caller")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    result = log["workflowRunResponse"]
    assert result["get"]["method"] == "GET" and result["get"]["query"] == {"tag": tag}
    assert result["post"]["method"] == "POST"
    assert result["post"]["body"] == '{"order": 7}' or result["post"]["body"] == '{"order":7}'
    assert result["post"]["contentType"] == "application/json"
    assert result["post"]["token"] == "secret"
    assert result["missing"] == [404, "nothing here"]
    assert result["broken"] == [503, {"error": "down for maintenance"}]
    assert http_server.hits - hits_before == Counter({"/echo": 2, "/missing": 1, "/broken": 1})

    steps = steps_by_name(log)
    for name in ("get", "post", "missing", "broken"):
        assert steps[name]["stepType"] == "Call"
        assert steps[name]["state"] == "STEP_SUCCESS"
        assert steps[name]["attempts"] == 1
    assert steps["missing"]["out"]["status"] == 404
    assert steps["get"]["out"]["headers"]["content-type"] == "application/json"
    check_history(log, await updates(workflows, run_id))


async def test_call_network_error_is_retried_then_fails(harness: Harness) -> None:
    workflows = harness.workflows()
    port = free_port()
    closed = f"http://127.0.0.1:{port}/nobody-listens"

    @workflows.workflow("unreachable", retries=1, retry_delay=0.01)
    async def unreachable(context: WorkflowContext) -> Any:
        secret = f"http://bob:hunter2@127.0.0.1:{port}/nobody-listens?api_key=x"
        return await context.call("call", secret, timeout=5)

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("unreachable")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_FAILED"
    step = steps_by_name(log)["call"]
    assert step["state"] == "STEP_FAILED" and step["attempts"] == 2
    # What failed and where, in one line; no frames of httpx (the body is stepstream's own),
    # and not the URL's user, password or query (the error is stored and streamed).
    assert step["error"].startswith(f"ConnectionError: GET {closed}: ")
    assert "hunter2" not in json.dumps(log) and "api_key" not in json.dumps(log)
    assert step["error"].endswith("(ConnectError)")
    assert [failure["traceback"] for failure in step["errors"]] == ["", ""]
    check_history(log, await updates(workflows, run_id))
