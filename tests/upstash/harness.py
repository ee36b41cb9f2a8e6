"""What the Upstash SDK tests share: the pinned install, and ``serve.mjs`` as a process."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import anyio
import httpx
import pytest
import uvicorn

from tests.conftest import IN_CI, free_port

NODE_DIR = Path(__file__).parent / "node"
SDK_VERSION = "1.3.3"  # what package-lock.json pins; checked so the two stay in step


def missing(what: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{what}: CI must run the Upstash SDK tests (`make test` installs npm)")
    pytest.skip(what)


def install_is_current() -> bool:
    """Whether ``node_modules`` holds exactly the versions the lock file pins."""
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed.is_file():
        return False
    wanted = json.loads((NODE_DIR / "package-lock.json").read_text())["packages"]
    have = json.loads(installed.read_text())["packages"]
    return all(
        have.get(path, {}).get("version") == entry["version"]
        for path, entry in wanted.items()
        if path
    )


def node_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A minimal environment for node (no QSTASH_DEV: it makes the SDK start a dev server)."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **extra}


@asynccontextmanager
async def serve_workflows(
    node: str, workflow: str, env: Mapping[str, str], log: Path
) -> AsyncIterator[str]:
    """``serve.mjs`` serving ``workflow`` on a free port with ``env`` (QSTASH_URL, ...); yields
    its base URL, stops it after."""
    port = free_port()
    command = [node, "serve.mjs", workflow, str(port)]
    async with serving_app(command, NODE_DIR, node_env(env), port, log) as url:
        yield url


@asynccontextmanager
async def serving_app(
    command: list[str], cwd: Path, env: Mapping[str, str], port: int, log: Path
) -> AsyncIterator[str]:
    """``command`` (an app that answers ``GET /_executions`` on ``port``) once it answers; its
    base URL. Stopped after (SIGTERM, then SIGKILL after 5 s)."""
    with log.open("wb") as output:
        process = await anyio.open_process(
            command, cwd=cwd, env=dict(env), stdout=output, stderr=output
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(15):
                while True:
                    if process.returncode is not None:
                        text = await anyio.Path(log).read_text()
                        raise RuntimeError(f"{command[1]} exited:\n{text}")
                    try:
                        await client.get(f"{url}/_executions")
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.02)  # waiting for the port, not an assertion
        yield url
    finally:
        process.terminate()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def serve_uvicorn(app: Any, port: int | None = None, **config: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn in this event loop on ``port`` (default: a free one), once it
    listens; its base URL. ``config``: more ``uvicorn.Config`` options."""
    port = free_port() if port is None else port
    config.setdefault("log_level", "error")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        with anyio.fail_after(10):
            while True:
                if server.started:
                    break
                await anyio.sleep(0.01)  # waiting for the socket, not an assertion
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
