"""The run page of a run waiting for flow control says so, naming the key and its limits; once
the run ahead of it finishes, it runs (the ``one-per-user`` example, one at a time per user)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))

from tests.browser.test_dashboard import (  # noqa: F401  (dashboard: the fixture)
    ARTIFACTS,
    TIMEOUT_MS,
    dashboard,
    expect_run_state,
    trigger,
    wait_finished,
)

pytestmark = pytest.mark.browser


def test_a_run_waiting_for_flow_control_says_so(page: Page, dashboard: str) -> None:  # noqa: F811
    first = trigger(dashboard, "one-per-user", {"userId": "ada"})
    second = trigger(dashboard, "one-per-user", {"userId": "ada"})
    other = trigger(dashboard, "one-per-user", {"userId": "bob"})
    page.goto(f"{dashboard}/#/runs/{second}")
    note = page.locator("#run-status-note")
    expect(note).to_have_text(
        "Waiting for flow control: key “ada” (at most 1 at once)", timeout=TIMEOUT_MS
    )
    expect(page.locator("#run-state")).to_have_text("Waiting")
    expect(page.locator("#notify-card")).to_be_hidden()  # it waits for no event
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "run-waiting-for-flow-control.png"), full_page=True)
    log = httpx.get(f"{dashboard}/api/runs/{second}", timeout=10).json()
    holder = httpx.get(f"{dashboard}/api/runs/{first}", timeout=10).json()
    # The API agrees while the first run still holds the key's one slot (its 3 s step may have
    # ended already on a busy machine, and then the second runs).
    if [s["state"] for s in holder["steps"]] == ["STEP_PROGRESS"]:
        assert (log["status"], log["waitingFor"]) == ("waiting", "flowControl")
    assert wait_finished(dashboard, other)["workflowState"] == "RUN_SUCCESS"  # not held up
    assert wait_finished(dashboard, first)["workflowState"] == "RUN_SUCCESS"
    expect_run_state(page, "RUN_SUCCESS")
    expect(note).to_be_hidden()


def test_the_new_run_form_offers_each_workflows_example(page: Page, dashboard: str) -> None:  # noqa: F811
    page.goto(dashboard + "/")
    page.locator("#new-run").click()
    box = page.locator("#trigger-payload")
    page.locator("#trigger-workflow").select_option("one-per-user")
    expect(box).to_have_value('{\n  "userId": "ada",\n  "document": "q3-report.pdf"\n}')
    page.locator("#trigger-workflow").select_option("parallel")
    expect(box).to_have_value('{\n  "upload": "meeting.mp4"\n}')
    box.fill('{"mine": true}')  # typed by the user: kept when the workflow changes
    page.locator("#trigger-workflow").select_option("basic")
    expect(box).to_have_value('{"mine": true}')
