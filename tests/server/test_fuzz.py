"""Schemathesis against ``/openapi.json``, in-process (its ASGI transport runs the app's lifespan,
workers included, once): for every operation, valid, invalid and boundary paths, queries and
bodies (its fuzzing and coverage phases) must never get a 5xx (DESIGN §5: "never a 500 for
anything a client sent").

The schema is loaded from ``OPENAPI`` at import, its app built later by a fixture (``Late``):
schemathesis' ``from_fixture`` loader does not work with pytest 9 (it sets ``node._nodeid``),
and loading with ``from_asgi`` at import would start the app during collection.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans
from starlette.types import ASGIApp, Receive, Scope, Send

from stepstream import NonRetryableError, Realtime, WorkflowContext, Workflows
from stepstream.server.openapi import OPENAPI

MAX_EXAMPLES = 50

CONFIG = SchemathesisConfig.from_dict(
    {
        # An SSE response is cut after its first event ("connected", or the error it sends).
        "max-stream-events": 1,
        "request-timeout": 10,
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "phases": {"coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
    }
)


def fuzz_workflows(store: Path) -> Workflows:
    """Workflows that finish, fail, sleep and wait, so cancel and notify meet every state."""
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{store}"))

    @workflows.workflow("echo")
    async def echo(context: WorkflowContext) -> Any:
        return await context.run("echo", lambda: context.request_payload)

    @workflows.workflow("boom", retries=0)
    async def boom(context: WorkflowContext) -> None:
        def fail() -> None:
            raise NonRetryableError("boom")

        await context.run("fail", fail)

    @workflows.workflow("nap")
    async def nap(context: WorkflowContext) -> None:
        await context.sleep("nap", 3600)

    @workflows.workflow("approval")
    async def approval(context: WorkflowContext) -> Any:
        return await context.wait_for_event("approve", "approve", timeout=3600)

    return workflows


class Late:
    """The ASGI app the schema calls, built by the ``app`` fixture (not at import): schemathesis
    starts its lifespan, workers included, on the first request."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "the app fixture builds the app"
        await self.app(scope, receive, send)


# Runs made before the app starts, one per state, so reads and cancels meet real runs too.
SEEDED = {
    "wfr_fuzz-echo": ("echo", None),  # finishes
    "wfr_fuzz-boom": ("boom", None),  # fails
    "wfr_fuzz-nap": ("nap", None),  # sleeps an hour
    "wfr_fuzz-approval": ("approval", None),  # waits for "approve"
    "wfr_fuzz-later": ("echo", 3600.0),  # starts in an hour
}


def fuzzed_document() -> dict[str, Any]:
    """``OPENAPI`` with this app's names in it (the document can't list them: they are the
    app's): valid triggers start real runs, valid run ids and event ids exist."""
    document = copy.deepcopy(OPENAPI)

    def narrow(path: str, method: str, parameter: str, values: list[str]) -> None:
        [found] = [
            p for p in document["paths"][path][method]["parameters"] if p["name"] == parameter
        ]
        found["schema"] = {"enum": values}

    narrow("/api/workflows/{name}", "post", "name", ["echo", "boom", "nap", "approval"])
    narrow("/api/runs/{run_id}", "get", "run_id", list(SEEDED))
    narrow("/api/runs/{run_id}/cancel", "post", "run_id", list(SEEDED))
    narrow("/api/events/{event_id}", "post", "event_id", ["approve"])
    return document


APP = Late()
schema = schemathesis.openapi.from_dict(fuzzed_document(), config=CONFIG)
schema.app = APP


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Late]:
    store = tmp_path_factory.mktemp("fuzz") / "fuzz.db"

    async def seed() -> None:
        workflows = fuzz_workflows(store)
        client = workflows.client()
        for run_id, (name, delay) in SEEDED.items():
            await client.trigger(name, {"seeded": True}, workflow_run_id=run_id, delay=delay)
        await workflows.aclose()

    asyncio.run(seed())
    # schemathesis' ASGI client calls the host "testserver" (a token-less app serves only
    # loopback names otherwise).
    APP.app = fuzz_workflows(store).asgi(workers=1, allowed_hosts=["testserver"])
    try:
        yield APP
    finally:
        shutdown_lifespans()
        APP.app = None


def test_the_served_document_is_the_one_fuzzed(app: Late) -> None:
    served = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    assert served.raw_schema == OPENAPI
    operations = {(op.ok().method.upper(), op.ok().path) for op in served.get_all_operations()}
    assert len(operations) == sum(len(item) for item in OPENAPI["paths"].values())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_no_server_errors(case: schemathesis.Case, app: Late) -> None:
    case.call_and_validate(checks=[not_a_server_error], timeout=10)
