"""Fixtures for the browser tests: built pages, a real uvicorn server, an emitter, Chromium.

The server runs as a subprocess (``browser_app.py``) on a SQLite file in ``tmp_path``; the test
process opens its own ``Realtime`` on the same file and emits, so every event crosses processes
the way a worker's would. Pages are bundled by esbuild from ``pages/`` once per session, against
the exact npm versions in ``package-lock.json`` (``npm ci`` runs if ``node_modules`` is missing).

Needs ``/usr/bin/chromium`` (Debian's package; Playwright's own browsers are never downloaded)
and ``npm``; without either the tests are skipped, saying which is missing (they fail in CI).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # whichever import mode pytest uses
from browser_harness import HERE, Emitter, Server, build_pages

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def missing(what: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{what}: CI must run the browser tests (`make test` installs it)")
    pytest.skip(what)


@pytest.fixture(scope="session", autouse=True)
def node_modules() -> None:
    """``npm ci`` if ``node_modules`` is missing, holding a lock on this directory: pytest-xdist
    workers (or two runs of the suite) must never install into one ``node_modules`` at once.
    The page bundlers (``build_pages``, ``examples/guide/build.sh``) then find it in place."""
    npm = shutil.which("npm")
    if npm is None:
        return  # the tests that need it say so
    directory = os.open(HERE, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        if not (HERE / "node_modules").is_dir():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    finally:
        os.close(directory)  # releases the lock


@pytest.fixture(scope="session")
def pages_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test pages, built into a temporary directory the test app serves at ``/pages``."""
    npm = shutil.which("npm")
    if npm is None:
        missing("npm is not installed")
    out = tmp_path_factory.mktemp("pages")
    build_pages(npm, out)
    return out


@pytest.fixture
def server_settings() -> dict[str, str]:
    """Extra environment for the test server; parametrize it to tune a test's server."""
    return {}


@pytest.fixture
def server(tmp_path: Path, pages_dir: Path, server_settings: dict[str, str]) -> Iterator[Server]:
    running = Server(tmp_path / "realtime.db", pages_dir, tmp_path / "server.log", server_settings)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        if running.log.stat().st_size:
            print(f"server log:\n{running.log.read_text()}")


@pytest.fixture
def emitter(server: Server) -> Iterator[Emitter]:
    emitting = Emitter(server.db)
    try:
        yield emitting
    finally:
        emitting.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, per module: while Playwright's sync API is started, its event loop counts as
    running in this thread, which would break the async tests that run after these."""
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; its console errors and uncaught exceptions are printed (shown on failure)."""
    context = browser.new_context()
    opened = context.new_page()
    problems: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error":
            problems.append(message.text)

    opened.on("console", on_console)
    opened.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        yield opened
    finally:
        if problems:
            print("browser console errors:\n" + "\n".join(problems))
        context.close()
