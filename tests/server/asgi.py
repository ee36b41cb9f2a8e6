"""ASGI helpers for the server and chaos tests: call an app with any request a socket could carry
(raw path, query, header bytes, a body in chunks, a ``root_path``), hanging up once a streaming
response has started; serve it mounted three ways; list its routes; snapshot what it stores."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from stepstream import Workflows
from stepstream.server.wire import run_log

LOOPBACK = (b"host", b"127.0.0.1:8000")


@dataclass
class Result:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def streamed(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/event-stream")


async def call(
    app: ASGIApp,
    method: str = "GET",
    path: str | bytes = "/",
    *,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes | Sequence[bytes] = b"",
    root_path: str = "",
    within: float = 10,
) -> Result:
    """One request; ``Host: 127.0.0.1:8000`` unless ``headers`` has a host. The app must answer
    (or start streaming) ``within`` seconds, else ``TimeoutError``."""
    if not any(name == b"host" for name, _ in headers):
        headers = [LOOPBACK, *headers]
    chunks = [body] if isinstance(body, bytes) else list(body)
    raw_path = path if isinstance(path, bytes) else path.encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        # What uvicorn does: the path percent-decoded (bad UTF-8 replaced), the raw one kept.
        "path": unquote(raw_path.decode("latin-1"), errors="replace"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    status = 0
    response_headers: dict[str, str] = {}
    received = bytearray()
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers.update(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
            )
        elif message["type"] == "http.response.body":
            received.extend(message.get("body", b""))
            if received or not message.get("more_body", False):
                answered.set()

    await asyncio.wait_for(app(scope, receive, send), within)
    return Result(status, response_headers, bytes(received))


MOUNTINGS = ["root", "mount", "root_path"]


@dataclass
class Mounted:
    """An app as a server would see it: at ``/``, under ``Mount("/wf")`` in another app, or
    behind ``root_path="/wf"`` (uvicorn's ``--root-path``: the path keeps the prefix)."""

    app: ASGIApp
    prefix: str
    root_path: str

    async def call(self, method: str, path: str, **options: Any) -> Result:
        return await call(self.app, method, self.prefix + path, root_path=self.root_path, **options)


def mounted(app: Starlette, how: str) -> Mounted:
    if how == "root":
        return Mounted(app, "", "")
    if how == "mount":
        return Mounted(Starlette(routes=[Mount("/wf", app)]), "/wf", "")
    return Mounted(app, "/wf", "/wf")


def route_templates(app: Starlette) -> list[tuple[str, str]]:
    """``(method, path template)`` for every route of ``app``, read from its router (a route
    added later is listed too); a mount as ``<prefix>/{path}``."""
    found = []
    for route in app.router.routes:
        if isinstance(route, Route):
            found += [(method, route.path) for method in sorted(route.methods or {"GET"})]
        elif isinstance(route, Mount):
            found.append(("GET", f"{route.path}/{{path}}"))
    return found


async def snapshot(workflows: Workflows, channels: Sequence[str] = ()) -> dict[str, Any]:
    """Every run's log and the history of its channel and of ``channels``."""
    backend = workflows.backend
    page = await backend.list_runs(state=None, workflow=None, cursor=None, count=1000)
    runs = {}
    for listed in page.runs:
        run = await backend.get_run(listed.id)
        runs[listed.id] = None if run is None else run_log(run)
    histories = {}
    assert workflows.realtime is not None
    for channel in [*runs, *channels]:
        messages = await workflows.realtime.channel(channel).history(limit=None)
        histories[channel] = [(m.id, m.event, m.data) for m in messages]
    return {"runs": runs, "histories": histories}
