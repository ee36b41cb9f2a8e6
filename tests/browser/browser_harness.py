"""What the browser-test fixtures are made of: page bundling, the server process, the emitter."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import browser_app
import httpx

from tests.conftest import free_port as _free_port  # this xdist worker's own ports

HERE = Path(__file__).parent
PAGES = HERE / "pages"
STATIC = HERE.parents[1] / "src" / "stepstream" / "server" / "static"
# Bundled pages: entry file -> the npm alias `@upstash/realtime` stands for in it.
BUNDLES = {
    "guide-v03": "upstash-realtime-03",
    "provider-v11": "upstash-realtime-11",
    "react-hook": None,
}
HTML = """<!doctype html>
<meta charset="utf-8">
<title>{name}</title>
<link rel="icon" href="data:,">
<div id="root"></div>
<script type="module" src="{name}.js"></script>
"""

T = TypeVar("T")


def build_pages(npm: str, out: Path) -> None:
    """Bundle ``pages/*.jsx`` into ``out`` (one ``.html`` + ``.js`` each); copy plain pages."""
    if not (HERE / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    esbuild = HERE / "node_modules" / ".bin" / "esbuild"
    # NODE_PATH lets react.js (outside this directory) resolve `react` from node_modules.
    env = {**os.environ, "NODE_PATH": str(HERE / "node_modules")}
    for name, realtime_package in BUNDLES.items():
        args = [
            str(esbuild),
            str(PAGES / f"{name}.jsx"),
            "--bundle",
            "--format=esm",
            "--jsx=automatic",
            '--define:process.env.NODE_ENV="production"',
            f"--alias:stepstream-static={STATIC}",
            f"--outfile={out / f'{name}.js'}",
            "--log-level=warning",
        ]
        if realtime_package:
            args.append(f"--alias:@upstash/realtime={realtime_package}")
        subprocess.run(args, cwd=HERE, env=env, check=True)
        (out / f"{name}.html").write_text(HTML.format(name=name))
    shutil.copy(PAGES / "native.html", out / "native.html")


class PortTaken(Exception):
    """The server could not listen: something else took its port first."""


class Server:
    """``browser_app`` under uvicorn in a subprocess; ``stop()``/``start()`` keep port and file."""

    def __init__(self, db: Path, pages: Path, log: Path, settings: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db
        self.log = log
        self._env = {
            **os.environ,
            "STEPSTREAM_TEST_DB": str(db),
            "STEPSTREAM_TEST_PAGES": str(pages),
            **settings,
        }
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it; if its port was taken meanwhile (another run of the suite on this machine
        walks the same ports), on another one (a restart keeps the port it had)."""
        for _ in range(5):
            try:
                return self._start()
            except PortTaken:
                self.port = _free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        return self._start()

    def _start(self) -> None:
        command = [
            sys.executable, "-m", "uvicorn", "browser_app:app",
            "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning",
            # uvicorn waits for open responses on shutdown, and an SSE response lasts until
            # max_duration: without this a stop would hang for minutes.
            "--timeout-graceful-shutdown", "1",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(command, env=self._env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                said = self.log.read_text()
                if f"address ('127.0.0.1', {self.port}): address already in use" in said:
                    raise PortTaken(self.port)
                raise RuntimeError(f"test server exited:\n{said}")
            try:
                if httpx.get(f"{self.url}/pages/native.html", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling for the port, not an assertion
        raise RuntimeError(f"test server did not start:\n{self.log.read_text()}")

    def freeze(self) -> None:
        """Suspend the server (SIGSTOP): its connections stay open but go silent."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self, *, crash: bool = False) -> None:
        """Stop the server gracefully (SIGTERM), or with ``crash`` kill it (SIGKILL)."""
        if self._process is None:
            return
        if crash:
            self._process.kill()
        self._process.send_signal(signal.SIGCONT)  # in case it is frozen
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


class Emitter:
    """Emits from the test process on the server's SQLite file.

    The ``Realtime`` lives on an event loop in a thread because Playwright's sync API owns the
    main thread; the methods here are synchronous.
    """

    def __init__(self, db: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.realtime = browser_app.make_realtime(db)
        self._run(self.realtime.open())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=30)

    def emit(self, channel: str, data: Any, event: str = "workflow.update") -> str:
        cursor: str = self._run(self.realtime.channel(channel).emit(event, data))
        return cursor

    def stored(self, channel: str) -> list[dict[str, Any]]:
        """The channel's events as stored, oldest first: what a page must end up showing."""
        messages = self._run(self.realtime.channel(channel).history(limit=10_000))
        return [{"id": m.id, "event": m.event, "data": m.data} for m in messages]

    def close(self) -> None:
        try:
            self._run(self.realtime.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
