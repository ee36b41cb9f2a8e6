"""What ``stepstream dev`` serves with no APP, until the workflow engine lands: a simulated
workflow run every few seconds, emitted as real ``workflow.update`` events on the channel
``demo`` and shown live by ``/`` through the JS client."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from stepstream.backends.base import HistoryPolicy
from stepstream.events import SCHEMA
from stepstream.realtime.channel import Realtime
from stepstream.server.app import create_app

STEPS = ("validate-data", "process-data", "send-notification")


def _ms() -> int:
    return time.time_ns() // 1_000_000


async def simulate(realtime: Realtime, pause: float = 3.0) -> None:
    channel = realtime.channel("demo")
    while True:
        run_id = "wfr_demo_" + secrets.token_urlsafe(6)
        await channel.emit(
            "workflow.update", {"type": "runStart", "workflowRunId": run_id, "timestamp": _ms()}
        )
        for step in STEPS:
            base = {"workflowRunId": run_id, "stepName": step}
            await channel.emit("workflow.update", {"type": "stepStart", "timestamp": _ms(), **base})
            await asyncio.sleep(random.uniform(0.3, 0.9))
            await channel.emit(
                "workflow.update",
                {"type": "stepFinish", "timestamp": _ms(), "result": {"ok": True}, **base},
            )
        await channel.emit(
            "workflow.update",
            {"type": "runFinish", "workflowRunId": run_id, "timestamp": _ms(), "status": "success"},
        )
        await asyncio.sleep(pause)


def demo_app(backend: str | None = None) -> Starlette:
    realtime = Realtime(schema=SCHEMA, backend=backend, history=HistoryPolicy(max_length=500))
    app = create_app(realtime)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner(app):
            task = asyncio.create_task(simulate(realtime))
            try:
                yield
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    app.router.lifespan_context = lifespan
    return app
