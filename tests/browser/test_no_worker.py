"""With no worker running, the dashboard says so (runs would stay queued, silently); the run
page of a queued run says it is queued. ``stepstream server`` runs no worker by default."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from browser_harness import _free_port

from tests.browser.test_dashboard import ARTIFACTS, TIMEOUT_MS, trigger
from tests.processes import serving

pytestmark = pytest.mark.browser


@pytest.fixture
def server_only(tmp_path: Path) -> Iterator[str]:
    """``stepstream server`` on the built-in examples: the API and dashboard, no worker."""
    port = _free_port()
    command = [
        sys.executable, "-m", "stepstream.cli", "server", "stepstream.examples:workflows",
        "--host", "127.0.0.1",
        "--port", str(port), "--backend", f"sqlite:///{tmp_path / 'x.db'}",
        "--log-level", "warning",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "STEPSTREAM_BACKEND"}
    with serving(command, port=port, cwd=tmp_path, env=env, log_path=tmp_path / "s.log") as url:
        yield url


def test_the_dashboard_says_when_no_worker_runs(page: Page, server_only: str) -> None:
    run_id = trigger(server_only, "basic", {"userId": "nobody-runs-me"})
    page.goto(f"{server_only}/")
    banner = page.locator("#no-worker")
    expect(banner).to_be_visible(timeout=TIMEOUT_MS)
    expect(banner).to_contain_text("No worker is running")
    page.goto(f"{server_only}/#/runs/{run_id}")
    expect(page.locator("#run-state")).to_have_text("Queued", timeout=TIMEOUT_MS)
    expect(page.locator("#run-status-note")).to_have_text(
        "Queued: no worker is running (stepstream worker APP, a server with --workers 1, "
        "or workflows.worker() in a script)"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "no-worker.png"), full_page=True)
