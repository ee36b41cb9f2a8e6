"""A plain Starlette app embedding stepstream under a prefix, as a user's app would: the
built-in examples' ``workflows.asgi()`` mounted at ``/stepstream``, its lifespan (backend,
in-process worker) run by the parent's. Nothing is served at the root.

``uvicorn mounted_app:app --app-dir tests/browser``, with ``STEPSTREAM_BACKEND`` naming the
SQLite file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Mount

from stepstream.examples import workflows

PREFIX = "/stepstream"
stepstream = workflows.asgi()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with stepstream.router.lifespan_context(stepstream):
        yield


app = Starlette(routes=[Mount(PREFIX, stepstream)], lifespan=lifespan)
