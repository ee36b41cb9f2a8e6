"""The app the SSE tests run under uvicorn: ``create_app`` configured by environment.

``STEPSTREAM_TEST_BACKEND`` the store URL (the test process emits into the same store),
``STEPSTREAM_TEST_MAX_DURATION`` / ``STEPSTREAM_TEST_PING_INTERVAL`` /
``STEPSTREAM_TEST_SEND_TIMEOUT`` optional seconds, and
``STEPSTREAM_TEST_TOKEN``: when set, a middleware refuses requests without ``token=<it>``
(401) and channels starting with ``admin-`` (403).
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from stepstream import Realtime
from stepstream.events import SCHEMA
from stepstream.realtime.sse import error_response
from stepstream.server.app import create_app


def token_middleware(token: str) -> Any:
    async def middleware(request: Request, channels: list[str]) -> Response | None:
        if request.query_params.get("token") != token:
            return error_response(401, "unauthorized", "token= is missing or wrong")
        refused = [c for c in channels if c.startswith("admin-")]
        if refused:
            return error_response(403, "forbidden", f"no access to {', '.join(refused)}")
        return None

    return middleware


def _app() -> Starlette:
    options: dict[str, Any] = {}
    if max_duration := os.environ.get("STEPSTREAM_TEST_MAX_DURATION"):
        options["max_duration"] = float(max_duration)
    if ping_interval := os.environ.get("STEPSTREAM_TEST_PING_INTERVAL"):
        options["ping_interval"] = float(ping_interval)
    if send_timeout := os.environ.get("STEPSTREAM_TEST_SEND_TIMEOUT"):
        options["send_timeout"] = float(send_timeout)
    realtime = Realtime(schema=SCHEMA, backend=os.environ["STEPSTREAM_TEST_BACKEND"], **options)
    token = os.environ.get("STEPSTREAM_TEST_TOKEN")
    return create_app(realtime, middleware=token_middleware(token) if token else None)


app = _app() if "STEPSTREAM_TEST_BACKEND" in os.environ else None
