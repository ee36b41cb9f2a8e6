"""The app bench/e2e.py serves with ``stepstream dev|server|worker wf_app:workflows`` (run from
``bench/``; the backend comes from ``--backend``/``STEPSTREAM_BACKEND``).

- ``one``: a single trivial step (trigger → ``runStart`` → first ``stepStart`` latency);
- ``ten``: 10 steps of ~200 ms each (``await asyncio.sleep(0.2)``); each returns
  ``time.time_ns()`` taken as it ends, so a client can tell when the step really finished.
"""

from __future__ import annotations

import asyncio
import time

from stepstream import Realtime, Workflows

workflows = Workflows(realtime=Realtime())


def stamp() -> int:
    return time.time_ns()


async def slow_stamp() -> int:
    await asyncio.sleep(0.2)
    return time.time_ns()


@workflows.workflow("one")
async def one(context):  # type: ignore[no-untyped-def]
    return await context.run("only", stamp)


@workflows.workflow("ten")
async def ten(context):  # type: ignore[no-untyped-def]
    for i in range(10):
        await context.run(f"step-{i}", slow_stamp)
