"""The app the browser tests run under uvicorn: stepstream's app plus the built test pages.

Configured by environment (set by ``browser_harness.Server``):
``STEPSTREAM_TEST_DB`` the SQLite file, ``STEPSTREAM_TEST_PAGES`` the directory of built pages,
``STEPSTREAM_TEST_MAX_DURATION`` optional SSE ``max_duration`` in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from stepstream import Realtime
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
