"""The dashboard at ``/`` in headless Chromium against ``stepstream dev`` (the built-in examples)
on a SQLite file: trigger from the form, live steps, reload mid-run (history exactly once, then
live), approve and cancel with the buttons, the runs list updating by itself, and screenshots
(list + run page, desktop and phone, light and dark) saved to ``test-artifacts/``."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, ViewportSize, expect

sys.path.insert(0, str(Path(__file__).parent))
from browser_harness import _free_port

from tests.processes import serving

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 20_000
BASIC_STEPS = ["validate-data", "process-data", "cool-down", "send-notification"]
DESKTOP: ViewportSize = {"width": 1280, "height": 860}
PHONE: ViewportSize = {"width": 375, "height": 812}
RUN_URL = re.compile(r".*#/runs/wfr_[A-Za-z0-9_-]+$")


@contextlib.contextmanager
def dev_server(tmp_path: Path, **extra_env: str) -> Iterator[str]:
    """``stepstream dev`` (API, SSE, dashboard, one in-process worker) on a free port, with
    ``extra_env`` in its environment; its log is printed afterwards (shown on failure)."""
    port = _free_port()
    log_path = tmp_path / "dev.log"
    command = [
        sys.executable, "-m", "stepstream.cli", "dev", "--host", "127.0.0.1",
        "--port", str(port), "--backend", f"sqlite:///{tmp_path / 'dash.db'}",
        "--log-level", "warning",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "STEPSTREAM_BACKEND"}
    env.update(extra_env)
    try:
        with serving(command, port=port, cwd=tmp_path, env=env, log_path=log_path) as url:
            yield url
    finally:
        if log_path.stat().st_size:
            print(f"stepstream dev log:\n{log_path.read_text()}")


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    with dev_server(tmp_path) as url:
        yield url


def trigger(url: str, workflow: str, payload: Any = None) -> str:
    reply = httpx.post(f"{url}/api/workflows/{workflow}", json=payload, timeout=10)
    assert reply.status_code == 202, reply.text
    run_id: str = reply.json()["workflowRunId"]
    return run_id


def stored(url: str, run_id: str) -> list[dict[str, Any]]:
    """The run channel's events as stored, oldest first: what the event log must show."""
    reply = httpx.get(
        f"{url}/api/realtime/history", params={"channel": run_id, "limit": 10_000}, timeout=10
    )
    return [{"id": m["id"], "data": m["data"]} for m in reply.json()["messages"]]


def shown(page: Page) -> list[dict[str, Any]]:
    """The event log on the run page: one entry per event the page received."""
    items: list[dict[str, Any]] = page.locator("#events li").evaluate_all(
        "items => items.map(i => ({id: i.dataset.id, data: JSON.parse(i.dataset.json)}))"
    )
    return items


def expect_event_log(page: Page, url: str, run_id: str) -> list[dict[str, Any]]:
    """The page shows every stored event of the run once, in order."""
    events = stored(url, run_id)
    expect(page.locator("#events li")).to_have_count(len(events), timeout=TIMEOUT_MS)
    assert shown(page) == events
    return events


def expect_step(page: Page, step: str, state: str) -> None:
    row = page.locator(f'.tl-row[data-step="{step}"]')
    expect(row).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)


def expect_run_state(page: Page, state: str) -> None:
    expect(page.locator("#run-state")).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)


def run_id_from(page: Page) -> str:
    """The run id of the run page the dashboard navigated to."""
    expect(page).to_have_url(RUN_URL, timeout=TIMEOUT_MS)
    return page.url.rsplit("/", 1)[-1]


def wait_finished(url: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        log: dict[str, Any] = httpx.get(f"{url}/api/runs/{run_id}", timeout=10).json()
        if log["workflowState"] != "RUN_STARTED":
            return log
        assert time.monotonic() < deadline, f"{run_id} still running: {log}"
        time.sleep(0.05)  # polling the API for the end of the run, not an assertion


def open_trigger_form(page: Page, workflow: str, payload: str) -> None:
    page.locator("#new-run").click()
    expect(page.locator("#trigger-dialog")).to_be_visible()
    expect(page.locator(f'#trigger-workflow option[value="{workflow}"]')).to_have_count(1)
    page.locator("#trigger-workflow").select_option(workflow)
    page.locator("#trigger-payload").fill(payload)


def test_trigger_basic_from_the_form_and_watch_its_steps(page: Page, dashboard: str) -> None:
    page.goto(dashboard + "/")
    expect(page.locator("#runs-view")).to_be_visible()
    expect(page.locator("#runs-empty")).to_be_visible(timeout=TIMEOUT_MS)

    # invalid JSON: a clear error, nothing sent
    open_trigger_form(page, "basic", '{"userId": ')
    page.locator("#trigger-submit").click()
    error = page.locator("#trigger-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("not valid JSON")
    expect(page.locator("#trigger-payload")).to_have_attribute("aria-invalid", "true")
    assert httpx.get(f"{dashboard}/api/runs", timeout=10).json()["runs"] == []

    # an API error is shown with the server's message (a workflow the server does not know)
    page.locator("#trigger-payload").fill('{"userId": "dash-user"}')
    expect(error).to_be_hidden()
    page.locator("#trigger-workflow").evaluate(
        "select => { select.add(new Option('no-such-workflow', 'no-such-workflow'));"
        " select.value = 'no-such-workflow'; }"
    )
    page.locator("#trigger-submit").click()
    expect(error).to_contain_text("unknown workflow 'no-such-workflow'")

    page.locator("#trigger-workflow").select_option("basic")
    page.locator("#trigger-submit").click()
    run_id = run_id_from(page)
    expect(page.locator("#trigger-dialog")).to_be_hidden()
    expect(page.locator("#run-view")).to_be_visible()
    expect(page.locator("#run-workflow")).to_have_text("basic", timeout=TIMEOUT_MS)

    for step in BASIC_STEPS:  # each one turns complete, in order
        expect_step(page, step, "success")
    expect_run_state(page, "RUN_SUCCESS")
    expect(page.locator("#run-state")).to_have_text("Succeeded")
    expect(page.locator(".tl-row")).to_have_count(len(BASIC_STEPS))
    expect(page.locator("#run-payload")).to_contain_text('"dash-user"')
    expect(page.locator("#run-result")).to_contain_text('"success": true')
    expect(page.locator("#cancel-run")).to_be_hidden()
    events = expect_event_log(page, dashboard, run_id)
    types = [(e["data"]["type"], e["data"].get("stepName")) for e in events]
    steps = [(kind, step) for step in BASIC_STEPS for kind in ("stepStart", "stepFinish")]
    assert types == [("runStart", None), *steps, ("runFinish", None)]
    assert events[-1]["data"]["status"] == "success"

    # back to the list: the run is there, succeeded
    page.locator(".crumbs a", has_text="Runs").click()
    row = page.locator(f'.run-row[data-run-id="{run_id}"]')
    expect(row).to_be_visible(timeout=TIMEOUT_MS)
    expect(row).to_have_attribute("data-state", "RUN_SUCCESS", timeout=TIMEOUT_MS)
    expect(row.locator(".wf-name")).to_have_text("basic")


def test_reload_mid_run_shows_the_history_once_then_live(page: Page, dashboard: str) -> None:
    run_id = trigger(dashboard, "approval", {"userId": "reload"})
    page.goto(f"{dashboard}/#/runs/{run_id}")
    expect_step(page, "wait-for-approval", "waiting")
    expect(page.locator("#conn")).to_have_attribute("data-status", "connected")

    page.reload()  # mid-run: the run waits for its approval event
    expect(page.locator("#run-view")).to_be_visible()
    expect_step(page, "prepare-request", "success")
    expect_step(page, "wait-for-approval", "waiting")
    expect(page.locator("#conn")).to_have_attribute("data-status", "connected")
    history = expect_event_log(page, dashboard, run_id)
    assert [e["data"]["type"] for e in history] == [
        "runStart",
        "stepStart",
        "stepFinish",
        "stepStart",
    ]
    expect(page.locator("#run-started")).not_to_have_text("—")

    # the rest arrives live, each event once
    reply = httpx.post(
        f"{dashboard}/api/events/approve-{run_id}",
        params={"workflowRunId": run_id},
        json={"approved": True},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    expect_step(page, "wait-for-approval", "success")
    expect_step(page, "apply-decision", "success")
    expect_run_state(page, "RUN_SUCCESS")
    events = expect_event_log(page, dashboard, run_id)
    assert events[: len(history)] == history
    assert len({e["id"] for e in events}) == len(events) > len(history)


def test_a_run_page_that_could_not_read_the_run_clears_its_banner_once_it_can(
    page: Page, dashboard: str
) -> None:
    """The server unreachable for a moment: the banner says the run could not be read, and
    goes once a retry reads it (it stayed beside a green "live" dot)."""
    run_id = trigger(dashboard, "approval", {"userId": "blip"})
    log_url = f"{dashboard}/api/runs/{run_id}"
    page.route(log_url, lambda route: route.abort())
    page.goto(f"{dashboard}/#/runs/{run_id}")
    banner = page.locator("#run-banner")
    expect(banner).to_contain_text("Could not load the run", timeout=TIMEOUT_MS)
    page.unroute(log_url)
    expect(banner).to_be_hidden(timeout=TIMEOUT_MS)
    expect_step(page, "wait-for-approval", "waiting")


def test_approve_a_waiting_run_with_the_button(page: Page, dashboard: str) -> None:
    page.goto(dashboard + "/")
    open_trigger_form(page, "approval", '{"userId": "approver"}')
    page.locator("#trigger-submit").click()
    run_id = run_id_from(page)
    expect_step(page, "wait-for-approval", "waiting")

    card = page.locator("#notify-card")
    expect(card).to_be_visible()
    expect(card).to_contain_text("waiting for an event")
    expect(page.locator("#notify-event")).to_have_value(f"approve-{run_id}")

    data = page.locator("#notify-data")
    data.fill("{approved: yes}")
    page.locator("#notify-send").click()
    expect(page.locator("#notify-error")).to_contain_text("not valid JSON")

    data.fill('{"approved": true, "by": "the dashboard"}')
    page.locator("#notify-send").click()
    expect(page.locator("#notify-result")).to_contain_text("delivered to 1 waiting step")
    expect_step(page, "wait-for-approval", "success")
    expect_step(page, "apply-decision", "success")
    expect_run_state(page, "RUN_SUCCESS")
    expect(page.locator("#run-result")).to_contain_text('"by": "the dashboard"')
    expect(card).to_be_hidden()
    log = httpx.get(f"{dashboard}/api/runs/{run_id}", timeout=10).json()
    assert log["workflowRunResponse"]["decision"] == {"approved": True, "by": "the dashboard"}
    expect_event_log(page, dashboard, run_id)


def test_the_run_page_follows_what_the_run_waits_for_without_polling(
    page: Page, dashboard: str
) -> None:
    """What a running run waits for (the event id Send event offers, the badge's status) comes
    from its log, which the page reads again as the run's events move on: with the page's
    clock stopped, no timer can do it for it."""
    assert httpx.post(f"{dashboard}/api/workflows/approval/pause", timeout=10).is_success
    run_id = trigger(dashboard, "approval")
    page.clock.install()
    page.goto(f"{dashboard}/#/runs/{run_id}")
    expect(page.locator("#run-state")).to_have_text("Queued", timeout=TIMEOUT_MS)
    page.clock.pause_at(time.time() + 1)  # from here on no setTimeout fires in the page
    assert httpx.post(f"{dashboard}/api/workflows/approval/resume", timeout=10).is_success
    expect_step(page, "wait-for-approval", "waiting")
    expect(page.locator("#notify-event")).to_have_value(f"approve-{run_id}", timeout=TIMEOUT_MS)
    expect(page.locator("#run-state")).to_have_text("Waiting", timeout=TIMEOUT_MS)
    expect(page.locator("#run-status-note")).to_have_text(f"Waiting for event “approve-{run_id}”")


def test_cancel_a_running_run_with_the_button(page: Page, dashboard: str) -> None:
    run_id = trigger(dashboard, "approval")
    page.goto(f"{dashboard}/#/runs/{run_id}")
    expect_step(page, "wait-for-approval", "waiting")
    asked: list[str] = []

    def answer(accept: bool) -> Callable[[Dialog], None]:
        def handle(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return handle

    page.once("dialog", answer(False))  # asked first; saying no changes nothing
    page.locator("#cancel-run").click()
    assert asked and run_id in asked[0]
    assert httpx.get(f"{dashboard}/api/runs/{run_id}").json()["workflowState"] == "RUN_STARTED"
    page.once("dialog", answer(True))
    page.locator("#cancel-run").click()
    expect_run_state(page, "RUN_CANCELED")
    expect(page.locator("#cancel-run")).to_be_hidden()
    expect(page.locator("#notify-card")).to_be_hidden()
    # Canceled is shown plainly, not as an error.
    expect(page.locator("#outcome-card")).not_to_have_class(re.compile(r"\bfailed\b"))
    expect(page.locator("#run-result")).to_have_text("The run was canceled.")
    assert wait_finished(dashboard, run_id)["workflowState"] == "RUN_CANCELED"


def test_runs_list_is_live_and_filters(page: Page, dashboard: str) -> None:
    page.goto(dashboard + "/")
    expect(page.locator("#runs-empty")).to_be_visible(timeout=TIMEOUT_MS)
    waiting = trigger(dashboard, "approval")
    failing = trigger(dashboard, "failing")

    # new runs appear without a reload; the running one has a ticking duration
    waiting_row = page.locator(f'.run-row[data-run-id="{waiting}"]')
    expect(waiting_row).to_have_attribute("data-state", "RUN_STARTED", timeout=TIMEOUT_MS)
    expect(waiting_row.locator(".step-now")).to_have_text(
        "waiting: wait-for-approval", timeout=TIMEOUT_MS
    )
    failing_row = page.locator(f'.run-row[data-run-id="{failing}"]')
    expect(failing_row).to_have_attribute("data-state", "RUN_FAILED", timeout=TIMEOUT_MS)
    expect(failing_row.locator(".badge")).to_have_text("Failed")
    expect(page.locator(".run-row")).to_have_count(2)
    expect(page.locator(".run-row").first).to_have_attribute("data-run-id", failing)  # newest

    # filters: by state, then by workflow; kept in the URL
    page.locator("#filter-state").select_option("RUN_FAILED")
    expect(page).to_have_url(f"{dashboard}/#/?state=RUN_FAILED")
    expect(page.locator(".run-row")).to_have_count(1, timeout=TIMEOUT_MS)
    expect(failing_row).to_be_visible()
    page.locator("#filter-state").select_option("")
    page.locator("#filter-workflow").select_option("approval")
    expect(page).to_have_url(f"{dashboard}/#/?workflow=approval")
    expect(page.locator(".run-row")).to_have_count(1, timeout=TIMEOUT_MS)
    expect(waiting_row).to_be_visible()
    page.reload()
    expect(page.locator("#filter-workflow")).to_have_value("approval", timeout=TIMEOUT_MS)
    expect(page.locator(".run-row")).to_have_count(1, timeout=TIMEOUT_MS)

    # a row opens its run page; the failed run shows its retries and error
    page.goto(f"{dashboard}/#/")
    failing_row.click()
    expect(page).to_have_url(f"{dashboard}/#/runs/{failing}")
    expect_run_state(page, "RUN_FAILED")
    upload = page.locator('.tl-row[data-step="upload-report"]')
    expect(upload).to_have_attribute("data-state", "failed")
    expect(upload.locator(".bar")).to_have_count(3)
    statuses = upload.locator(".bar").evaluate_all("bars => bars.map(b => b.dataset.status)")
    assert statuses == ["retry", "retry", "failed"]
    expect(page.locator("#outcome-title")).to_have_text("Error")
    expect(page.locator("#run-result")).to_contain_text("upstream storage answered 503")
    expect_event_log(page, dashboard, failing)


def _shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True, animations="disabled")


def _no_horizontal_overflow(page: Page, viewport: ViewportSize) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport["width"], f"the page is {width}px wide at {viewport['width']}px"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_dashboard_screenshots(
    browser: Browser, dashboard: str, scheme: Literal["light", "dark"]
) -> None:
    runs = {
        name: trigger(dashboard, name, {"userId": "user-123"})
        for name in ("basic", "failing", "parallel")
    }
    for run_id in runs.values():
        wait_finished(dashboard, run_id)
    runs["approval"] = trigger(dashboard, "approval", {"userId": "user-123"})

    problems: list[str] = []
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport, color_scheme=scheme)
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        try:
            page.goto(dashboard + "/")
            expect(page.locator(".run-row")).to_have_count(len(runs), timeout=TIMEOUT_MS)
            expect(
                page.locator(f'.run-row[data-run-id="{runs["approval"]}"] .step-now')
            ).to_have_text("waiting: wait-for-approval", timeout=TIMEOUT_MS)
            _no_horizontal_overflow(page, viewport)
            _shoot(page, f"dashboard-runs-{label}-{scheme}.png")

            for name, steps in (("failing", 3), ("parallel", 4), ("approval", 2)):
                page.goto(f"{dashboard}/#/runs/{runs[name]}")
                expect(page.locator(".tl-row")).to_have_count(steps, timeout=TIMEOUT_MS)
                expect(page.locator("#run-workflow")).to_have_text(name)
                expected = len(stored(dashboard, runs[name]))
                expect(page.locator("#events li")).to_have_count(expected, timeout=TIMEOUT_MS)
                if name == "approval":
                    expect(page.locator("#notify-card")).to_be_visible()
                _no_horizontal_overflow(page, viewport)
                _shoot(page, f"dashboard-run-{name}-{label}-{scheme}.png")

            page.locator("#new-run").click()
            page.locator("#trigger-payload").fill("{not json")
            page.locator("#trigger-submit").click()
            expect(page.locator("#trigger-error")).to_be_visible()
            page.screenshot(
                path=str(ARTIFACTS / f"dashboard-trigger-{label}-{scheme}.png"),
                animations="disabled",
            )
        finally:
            context.close()
    assert problems == []  # no uncaught exception in the page


def test_runs_list_follows_the_runs_feed(page: Page, dashboard: str) -> None:
    """Changes reach the list over the ``stepstream:runs`` feed, well before its fallback poll
    (15 s): a run started and finished elsewhere shows within 10 s of the page's first load."""
    page.goto(dashboard + "/")
    expect(page.locator("#runs-empty")).to_be_visible(timeout=TIMEOUT_MS)
    time.sleep(1)  # past the first load: only the feed or the 15 s poll can show a new run
    run_id = trigger(dashboard, "basic")
    row = page.locator(f'.run-row[data-run-id="{run_id}"]')
    expect(row).to_be_visible(timeout=10_000)
    expect(row).to_have_attribute("data-state", "RUN_SUCCESS", timeout=10_000)
