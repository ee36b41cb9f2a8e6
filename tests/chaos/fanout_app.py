"""The server of the fan-out scenario: stepstream's app, with its SSE send timeout set.

Configured by environment (set by ``test_fanout.py``): ``STEPSTREAM_TEST_BACKEND`` the store
URL (the test process emits into it), ``STEPSTREAM_TEST_SEND_TIMEOUT`` the SSE send timeout in
seconds. Raises its own ``RLIMIT_NOFILE`` to the hard limit (it holds a socket per client).
``GET /_chaos/pid`` says which process to measure.
"""

from __future__ import annotations

import os
from typing import Any

from bench.sse_clients import raise_fd_limit
from bench.stepstream_schema import Tick
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepstream import Realtime
from stepstream.server.app import create_app


class Blob(BaseModel):
    pad: str


# ``bench.tick`` ``{"t": time.time_ns()}``: the broadcast ``bench/sse_clients.py`` measures;
# ``bench.blob``: large events only the stalled clients subscribe to (their buffers fill fast).
SCHEMA: dict[str, Any] = {"bench": {"tick": Tick, "blob": Blob}}


def _app() -> Starlette:
    raise_fd_limit()
    realtime = Realtime(
        schema=SCHEMA,
        backend=os.environ["STEPSTREAM_TEST_BACKEND"],
        send_timeout=float(os.environ["STEPSTREAM_TEST_SEND_TIMEOUT"]),
    )

    async def pid(request: Request) -> Response:
        return JSONResponse({"pid": os.getpid()})

    return create_app(realtime, routes=[Route("/_chaos/pid", pid)])


app = _app() if "STEPSTREAM_TEST_BACKEND" in os.environ else None
