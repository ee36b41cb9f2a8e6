"""The dashboard under a mount prefix: ``mounted_app.py`` (a plain Starlette parent mounting
``workflows.asgi()`` at ``/stepstream``, nothing at the root) in headless Chromium. The page
at ``/stepstream/`` (and ``/stepstream``, redirected) lists runs live, triggers one, and shows
its steps arriving; every request the page makes stays under the prefix. Screenshots are saved
to ``test-artifacts/``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from browser_harness import _free_port
from mounted_app import PREFIX

from tests.browser.test_dashboard import (
    ARTIFACTS,
    BASIC_STEPS,
    DESKTOP,
    TIMEOUT_MS,
    expect_run_state,
    expect_step,
    open_trigger_form,
    run_id_from,
)

pytestmark = pytest.mark.browser

HERE = Path(__file__).parent


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[str]:
    """``mounted_app`` under uvicorn on a free port; yields the root URL (no prefix)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "mounted.log"
    env = {**os.environ, "STEPSTREAM_BACKEND": f"sqlite:///{tmp_path / 'mounted.db'}"}
    command = [
        sys.executable, "-m", "uvicorn", "mounted_app:app", "--app-dir", str(HERE),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--timeout-graceful-shutdown", "1",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not _healthy(f"{url}{PREFIX}/healthz"):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"mounted_app did not start:\n{log_path.read_text()}")
            time.sleep(0.05)  # waiting for the port, not an assertion
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path.stat().st_size:
            print(f"mounted_app log:\n{log_path.read_text()}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def stored(base: str, run_id: str) -> list[dict[str, Any]]:
    reply = httpx.get(
        f"{base}/api/realtime/history", params={"channel": run_id, "limit": 10_000}, timeout=10
    )
    return [{"id": m["id"], "data": m["data"]} for m in reply.json()["messages"]]


def watch_requests(page: Page) -> list[tuple[str, int]]:
    """Every response the page gets, as (path, status), EventSource streams included."""
    seen: list[tuple[str, int]] = []
    page.on(
        "response", lambda response: seen.append((urlsplit(response.url).path, response.status))
    )
    return seen


def test_dashboard_under_a_prefix(page: Page, mounted: str) -> None:
    base = mounted + PREFIX
    assert httpx.get(f"{mounted}/", timeout=10).status_code == 404  # nothing at the root
    seen = watch_requests(page)
    page.set_viewport_size(DESKTOP)

    page.goto(f"{base}/")
    expect(page.locator("#runs-view")).to_be_visible()
    expect(page.locator("#runs-empty")).to_be_visible(timeout=TIMEOUT_MS)

    # A run started elsewhere shows up in the list live, with what it is doing.
    waiting = httpx.post(f"{base}/api/workflows/approval", json={"userId": "u"}, timeout=10)
    assert waiting.status_code == 202, waiting.text
    waiting_id = waiting.json()["workflowRunId"]
    row = page.locator(f'.run-row[data-run-id="{waiting_id}"]')
    expect(row).to_have_attribute("data-state", "RUN_STARTED", timeout=TIMEOUT_MS)
    expect(row.locator(".step-now")).to_have_text("waiting: wait-for-approval", timeout=TIMEOUT_MS)
    _shoot(page, "dashboard-prefix-runs.png")

    # Trigger from the form: the run page opens and its steps arrive one by one.
    open_trigger_form(page, "basic", '{"userId": "under-a-prefix"}')
    page.locator("#trigger-submit").click()
    run_id = run_id_from(page)
    assert page.url == f"{base}/#/runs/{run_id}"
    expect(page.locator("#conn")).to_have_attribute("data-status", "connected")
    for step in BASIC_STEPS:
        expect_step(page, step, "success")
    expect_run_state(page, "RUN_SUCCESS")
    expect(page.locator("#run-result")).to_contain_text('"under-a-prefix"')
    events = stored(base, run_id)
    expect(page.locator("#events li")).to_have_count(len(events), timeout=TIMEOUT_MS)
    _shoot(page, "dashboard-prefix-run.png")

    # The approval run, opened from the list, approved with the button: live to the end.
    page.locator(".crumbs a", has_text="Runs").click()
    row.click()
    expect_step(page, "wait-for-approval", "waiting")
    _shoot(page, "dashboard-prefix-run-waiting.png")
    page.locator("#notify-send").click()
    expect(page.locator("#notify-result")).to_contain_text("delivered to 1 waiting step")
    expect_step(page, "apply-decision", "success")
    expect_run_state(page, "RUN_SUCCESS")

    # Without the trailing slash the parent redirects, and the page works the same.
    page.goto(base)
    expect(page).to_have_url(f"{base}/")
    expect(page.locator(".run-row")).to_have_count(2, timeout=TIMEOUT_MS)
    expect(page.locator(f'.run-row[data-run-id="{run_id}"]')).to_have_attribute(
        "data-state", "RUN_SUCCESS"
    )

    outside = [(path, status) for path, status in seen if not path.startswith(f"{PREFIX}")]
    assert outside == []  # no root-absolute URL anywhere in the page or its scripts
    failed = [(path, status) for path, status in seen if status >= 400]
    assert failed == []
    assert any(path == f"{PREFIX}/api/realtime" for path, _ in seen)  # SSE, under the prefix


def _shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True, animations="disabled")
