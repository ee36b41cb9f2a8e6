"""The app the browser tests run under uvicorn: stepstream's app plus the built test pages.

Configured by environment (set by ``browser_harness.Server``):
``STEPSTREAM_TEST_DB`` the SQLite file, ``STEPSTREAM_TEST_PAGES`` the directory of built pages,
``STEPSTREAM_TEST_MAX_DURATION`` optional SSE ``max_duration`` in seconds.

``workflows``: user workflows for the dashboard's recovery tests, served by
``stepstream dev browser_app:workflows`` (on ``$STEPSTREAM_BACKEND``, which ``--backend`` sets).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from stepstream import Realtime, WorkflowContext, Workflows
from stepstream.events import SCHEMA
from stepstream.server.app import create_app


def make_realtime(db: Path | str, **options: Any) -> Realtime:
    """The ``Realtime`` both the server and the test's emitter open on the same file."""
    return Realtime(schema=SCHEMA, backend=f"sqlite:///{db}", **options)


def _app() -> Starlette:
    options: dict[str, Any] = {}
    if max_duration := os.environ.get("STEPSTREAM_TEST_MAX_DURATION"):
        options["max_duration"] = float(max_duration)
    realtime = make_realtime(os.environ["STEPSTREAM_TEST_DB"], **options)
    app = create_app(realtime)
    # Added to the stepstream app itself (not mounted around it) so that its lifespan runs.
    pages = StaticFiles(directory=os.environ["STEPSTREAM_TEST_PAGES"])
    app.router.routes.append(Mount("/pages", pages))
    return app


app = _app() if "STEPSTREAM_TEST_DB" in os.environ else None

workflows = Workflows(realtime=Realtime())


async def _work(seconds: float, result: Any) -> Any:
    await asyncio.sleep(seconds)
    return result


def _load(flag: str) -> dict[str, Any]:
    if not Path(flag).exists():
        raise ConnectionError("the warehouse refused the connection")
    return {"loaded": 3}


@workflows.workflow("import-orders", retries=0)
async def import_orders(context: WorkflowContext) -> dict[str, Any]:
    """Fails at ``load`` until the file ``payload["flag"]`` exists (the test creates it)."""
    flag = context.request_payload["flag"]
    rows = await context.run("fetch-orders", _work, 0.1, {"rows": 3})
    loaded = await context.run("load", _load, flag)
    await context.run("notify-team", _work, 0.1, "sent")
    return {**rows, **loaded}


@workflows.workflow("pipeline")
async def pipeline(context: WorkflowContext) -> dict[str, Any]:
    """Three steps of about half a second each."""
    extracted = await context.run("extract", _work, 0.4, {"rows": 10})
    transformed = await context.run("transform", _work, 0.4, {"rows": 10, "clean": True})
    await context.run("load", _work, 0.4, "stored")
    return {**extracted, **transformed}


@workflows.workflow("await-release")
async def await_release(context: WorkflowContext) -> Any:
    """Waits for the event ``release-<run id>``."""
    await context.run("prepare", _work, 0.05, "ready")
    data, timed_out = await context.wait_for_event(
        "wait-for-release", f"release-{context.workflow_run_id}", timeout=600
    )
    return {"released": not timed_out, "data": data}


async def _refund(context: WorkflowContext, error: Exception) -> None:
    await context.run("refund", _work, 0.005, "refunded")


@workflows.workflow("charge-or-refund", retries=0, failure_function=_refund)
async def charge_or_refund(context: WorkflowContext) -> None:
    """Its one step fails; the failure function's step ``refund`` runs."""
    await context.run("charge", _decline)


def _decline() -> None:
    raise RuntimeError("card declined")


@workflows.workflow("napper")
async def napper(context: WorkflowContext) -> str:
    """A step, then a 60 s sleep (the test cancels it)."""
    await context.run("prepare", _work, 0.005, "ok")
    await context.sleep("nap", 60)
    return "rested"


@workflows.workflow("quick-and-slow")
async def quick_and_slow(context: WorkflowContext) -> str:
    """A 5 ms step, a 3 s sleep, another 5 ms step: all three visible on the timeline."""
    await context.run("check", _work, 0.005, "ok")
    await context.sleep("cool-down", 3)
    await context.run("ping", _work, 0.005, "pong")
    return "done"
