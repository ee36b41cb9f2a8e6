"""The dashboard's Schedules page (``#/schedules``) in headless Chromium against ``stepstream
dev`` on a SQLite file: create a 6-field every-second schedule with the form, see its next run
and its last run (a link to that run) arrive by themselves, pause, resume and delete it (with the
confirm), pause a workflow and see the trigger dialog say so and resume it. Screenshots go to
``/tmp/shots/`` and ``test-artifacts/``."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from browser_harness import _free_port

from tests.processes import serving

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = [Path("/tmp/shots"), ROOT / "test-artifacts"]
TIMEOUT_MS = 20_000


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path / "dev.log"
    command = [
        sys.executable, "-m", "stepstream.cli", "dev", "--host", "127.0.0.1",
        "--port", str(port), "--backend", f"sqlite:///{tmp_path / 'dash.db'}",
        "--log-level", "warning",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "STEPSTREAM_BACKEND"}
    try:
        with serving(command, port=port, cwd=tmp_path, env=env, log_path=log_path) as url:
            yield url
    finally:
        if log_path.stat().st_size:
            print(f"stepstream dev log:\n{log_path.read_text()}")
        assert "Traceback" not in log_path.read_text()


def shoot(page: Page, name: str) -> None:
    for folder in SHOTS:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)


def test_the_schedules_page(page: Page, dashboard: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{dashboard}/#/schedules")
    expect(page.locator("#schedules-view")).to_be_visible()
    expect(page.locator("#schedules-empty")).to_be_visible()

    page.fill("#schedule-id", "every-sec")
    page.select_option("#schedule-workflow", "basic")
    page.fill("#schedule-cron", "* * * * * *")
    page.fill("#schedule-timezone", "Europe/Berlin")
    page.fill("#schedule-payload", '{"userId": "cron"}')
    page.click("#schedule-create")
    row = page.locator('.schedule-row[data-id="every-sec"]')
    expect(row).to_be_visible(timeout=TIMEOUT_MS)
    expect(row.locator(".badge")).to_have_text("Active")
    expect(row).to_contain_text("* * * * * *")
    expect(row).to_contain_text("Europe/Berlin")
    expect(row).to_contain_text(re.compile(r"in \d+ s"))  # the next run, a second away

    # The worker of `stepstream dev` fires it; the page's polling shows the last run.
    last = row.locator("a.last")
    expect(last).to_have_text(re.compile(r"^wfr_every-sec-\d{13}$"), timeout=TIMEOUT_MS)

    # A bad cron: the form says what is wrong, nothing is added.
    page.fill("#schedule-id", "broken")
    page.fill("#schedule-cron", "0 9 * *")
    page.click("#schedule-create")
    expect(page.locator("#schedule-error")).to_contain_text("has 4 fields")
    expect(page.locator('.schedule-row[data-id="broken"]')).to_have_count(0)

    # Pause a workflow: its badge, and the trigger dialog says so and can resume it.
    workflow = page.locator('#workflow-list li[data-workflow="parallel"]')
    workflow.get_by_role("button", name="Pause").click()
    expect(workflow.locator(".badge")).to_have_text("Paused")
    assert httpx.get(f"{dashboard}/api/workflows").json()["paused"] == ["parallel"]
    shoot(page, "schedules.png")
    page.set_viewport_size({"width": 375, "height": 812})
    shoot(page, "schedules-phone.png")
    page.set_viewport_size({"width": 1280, "height": 900})

    page.click("#new-run")
    page.select_option("#trigger-workflow", "parallel")
    expect(page.locator("#trigger-paused")).to_be_visible()
    shoot(page, "trigger-paused.png")
    page.select_option("#trigger-workflow", "basic")
    expect(page.locator("#trigger-paused")).to_be_hidden()
    page.select_option("#trigger-workflow", "parallel")
    page.click("#trigger-resume")
    expect(page.locator("#trigger-paused")).to_be_hidden()
    assert httpx.get(f"{dashboard}/api/workflows").json()["paused"] == []
    page.click("#trigger-cancel")
    expect(workflow.locator(".badge")).to_have_text("Active", timeout=TIMEOUT_MS)

    row.get_by_role("button", name="Pause").click()
    expect(row.locator(".badge")).to_have_text("Paused")
    expect(row.get_by_role("button", name="Resume")).to_be_visible()
    assert httpx.get(f"{dashboard}/api/schedules/every-sec").json()["paused"] is True
    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".badge")).to_have_text("Active")

    # The last run's link opens that run.
    run_id = last.inner_text()
    last.click()
    expect(page).to_have_url(re.compile(rf".*#/runs/{run_id}$"))
    expect(page.locator("#run-id")).to_have_text(run_id)
    expect(page.locator("#run-state")).to_have_text("Succeeded", timeout=TIMEOUT_MS)

    page.click("#nav-schedules")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('.schedule-row[data-id="every-sec"]').get_by_role("button", name="Delete").click()
    expect(page.locator(".schedule-row")).to_have_count(0)
    expect(page.locator("#schedules-empty")).to_be_visible()
    assert httpx.get(f"{dashboard}/api/schedules").json() == {"schedules": []}
