"""The dashboard's recovery actions (DESIGN §14) on user workflows (``browser_app.workflows``
under ``stepstream dev``): resume a failed run and watch it finish on the same page, fork a run
from a step, restart and delete, cancel every run with a label from the list, the Send event
form filled with the id a user workflow waits for, and a 5 ms step next to a long sleep on the
timeline. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Dialog, Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from browser_harness import HERE, _free_port

from tests.browser.test_dashboard import (
    ARTIFACTS,
    TIMEOUT_MS,
    expect_event_log,
    expect_run_state,
    expect_step,
    run_id_from,
    stored,
    wait_finished,
)
from tests.processes import serving

pytestmark = pytest.mark.browser


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    """``stepstream dev browser_app:workflows`` (API, dashboard, one worker) on a free port."""
    port = _free_port()
    log_path = tmp_path / "dev.log"
    command = [
        sys.executable, "-m", "stepstream.cli", "dev", "browser_app:workflows",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend", f"sqlite:///{tmp_path / 'recovery.db'}", "--log-level", "warning",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "STEPSTREAM_BACKEND"}
    try:
        with serving(command, port=port, cwd=HERE, env=env, log_path=log_path) as url:
            yield url
    finally:
        if log_path.stat().st_size:
            print(f"stepstream dev log:\n{log_path.read_text()}")


def trigger(url: str, workflow: str, payload: Any = None, labels: tuple[str, ...] = ()) -> str:
    params = [("label", label) for label in labels]
    reply = httpx.post(f"{url}/api/workflows/{workflow}", params=params, json=payload, timeout=10)
    assert reply.status_code == 202, reply.text
    run_id: str = reply.json()["workflowRunId"]
    return run_id


def run_log(url: str, run_id: str) -> dict[str, Any]:
    log: dict[str, Any] = httpx.get(f"{url}/api/runs/{run_id}", timeout=10).json()
    return log


def accept_next_dialog(page: Page) -> list[str]:
    """Accept the next confirm(); the list gets its message."""
    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    return asked


def new_run_from(page: Page, url: str, run_id: str) -> str:
    """The id of the run page the dashboard went to from run ``run_id``'s page."""
    expect(page).not_to_have_url(f"{url}/#/runs/{run_id}", timeout=TIMEOUT_MS)
    return run_id_from(page)


def bar_statuses(page: Page, step: str) -> list[str]:
    bars = page.locator(f'.tl-row[data-step="{step}"] .bar')
    statuses: list[str] = bars.evaluate_all("bars => bars.map(b => b.dataset.status)")
    return statuses


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True, animations="disabled")


def test_resume_a_failed_run_and_watch_it_finish_live(
    page: Page, app_url: str, tmp_path: Path
) -> None:
    warehouse_up = tmp_path / "warehouse-up"
    run_id = trigger(app_url, "import-orders", {"flag": str(warehouse_up)}, ("nightly", "eu"))
    page.goto(f"{app_url}/#/runs/{run_id}")
    expect_run_state(page, "RUN_FAILED")
    expect_step(page, "load", "failed")
    expect(page.locator("#run-tags .chip")).to_have_text(["nightly", "eu"])
    expect(page.locator("#run-tags .chip").first).to_have_attribute("href", "#/?label=nightly")
    for button in ("#resume-run", "#restart-run", "#fork-run", "#delete-run"):
        expect(page.locator(button)).to_be_visible()
    expect(page.locator("#cancel-run")).to_be_hidden()
    expect(page.locator("#run-result")).to_contain_text("the warehouse refused the connection")

    warehouse_up.touch()  # fixed: the step that failed succeeds when it runs again
    page.evaluate("window.notReloaded = true")
    page.locator("#resume-run").click()
    expect_step(page, "load", "success")
    expect_step(page, "notify-team", "success")
    expect_run_state(page, "RUN_SUCCESS")
    expect(page.locator("#run-result")).to_contain_text('"loaded": 3')
    expect(page.locator("#outcome-title")).to_have_text("Result")
    expect(page.locator("#resume-run")).to_be_hidden()
    expect(page.locator("#restart-run")).to_be_visible()
    assert page.evaluate("window.notReloaded") is True  # followed live, on the same page
    # The step that failed continues its own row; the completed one did not run again.
    assert bar_statuses(page, "load") == ["retry", "success"]
    assert bar_statuses(page, "fetch-orders") == ["success"]
    expect(page.locator(".tl-row")).to_have_count(3)
    events = expect_event_log(page, app_url, run_id)
    runs = [(e["data"]["type"], e["data"].get("resumed"), e["data"].get("status")) for e in events]
    runs = [entry for entry in runs if entry[0] in ("runStart", "runFinish")]
    assert runs == [
        ("runStart", None, None),
        ("runFinish", None, "failed"),
        ("runStart", True, None),
        ("runFinish", None, "success"),
    ]
    expect(page.locator('#events li[data-type="runStart"]').nth(1)).to_contain_text("resumed")
    assert run_log(app_url, run_id)["workflowState"] == "RUN_SUCCESS"
    shoot(page, "run-resumed.png")
    page.emulate_media(color_scheme="dark")
    shoot(page, "run-resumed-dark.png")


def test_fork_a_run_from_its_second_step(page: Page, app_url: str) -> None:
    original = trigger(app_url, "pipeline", labels=("etl",))
    wait_finished(app_url, original)
    page.goto(f"{app_url}/#/runs/{original}")
    expect_run_state(page, "RUN_SUCCESS")

    # "Fork from step…" offers every step; "Fork from here" in a step's details picks it.
    page.locator("#fork-run").click()
    dialog = page.locator("#fork-dialog")
    expect(dialog).to_be_visible()
    options = page.locator("#fork-step option")
    expect(options).to_have_text(["extract", "transform", "load"])
    page.locator("#fork-cancel").click()
    expect(dialog).to_be_hidden()
    page.locator('.tl-row[data-step="transform"]').click()
    page.locator('.tl-row[data-step="transform"] .fork-here').click()
    expect(dialog).to_be_visible()
    expect(page.locator("#fork-step")).to_have_value("transform")
    plan = page.locator("#fork-plan li")
    expect(plan).to_have_text(["extractcopied", "transformruns", "loadruns"])
    page.locator("#fork-submit").click()

    forked = new_run_from(page, app_url, original)
    expect(dialog).to_be_hidden()
    lineage = page.locator("#run-tags .lineage")
    expect(lineage).to_have_text(f"forked from {original}", timeout=TIMEOUT_MS)
    expect(lineage.locator("a")).to_have_attribute("href", f"#/runs/{original}")
    expect(page.locator("#run-tags .chip")).to_have_text(["etl"])
    copied = page.locator('.tl-row[data-step="extract"]')
    expect(copied).to_have_attribute("data-state", "success", timeout=TIMEOUT_MS)
    expect(copied).to_have_class(re.compile(r"\bcopied\b"))
    expect(copied.locator(".copied-tag")).to_be_visible()
    expect_step(page, "transform", "success")
    expect_step(page, "load", "success")
    expect_run_state(page, "RUN_SUCCESS")
    for step in ("transform", "load"):
        expect(page.locator(f'.tl-row[data-step="{step}"]')).not_to_have_class(
            re.compile(r"\bcopied\b")
        )
    log = run_log(app_url, forked)
    assert log["forkedFrom"] == original
    assert [s["stepName"] for s in log["steps"]] == ["extract", "transform", "load"]
    assert log["steps"][0]["finishedAt"] < log["workflowRunCreatedAt"]  # copied, not executed
    expect_event_log(page, app_url, forked)
    shoot(page, "run-forked.png")

    # Its lineage link leads back to the original.
    lineage.locator("a").click()
    expect(page).to_have_url(f"{app_url}/#/runs/{original}")
    expect_run_state(page, "RUN_SUCCESS")


def test_restart_then_delete_a_run(page: Page, app_url: str) -> None:
    original = trigger(app_url, "pipeline", labels=("etl",))
    wait_finished(app_url, original)
    page.goto(f"{app_url}/#/runs/{original}")
    expect_run_state(page, "RUN_SUCCESS")
    expect(page.locator("#resume-run")).to_be_hidden()  # only failed or canceled runs resume

    asked = accept_next_dialog(page)
    page.locator("#restart-run").click()
    restarted = new_run_from(page, app_url, original)
    assert "same payload" in asked[0]
    lineage = page.locator("#run-tags .lineage")
    expect(lineage).to_have_text(f"restarted from {original}", timeout=TIMEOUT_MS)
    expect_run_state(page, "RUN_SUCCESS")
    expect(page.locator(".tl-row.copied")).to_have_count(0)
    assert run_log(app_url, restarted)["restartedFrom"] == original

    page.goto(f"{app_url}/#/runs/{original}")
    expect(page.locator("#delete-run")).to_be_visible(timeout=TIMEOUT_MS)
    page.once("dialog", lambda dialog: dialog.dismiss())  # asked first: no keeps it
    page.locator("#delete-run").click()
    assert httpx.get(f"{app_url}/api/runs/{original}", timeout=10).status_code == 200
    asked = accept_next_dialog(page)
    page.locator("#delete-run").click()
    expect(page).to_have_url(f"{app_url}/#/")
    assert original in asked[0]
    expect(page.locator(f'.run-row[data-run-id="{restarted}"]')).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator(f'.run-row[data-run-id="{original}"]')).to_have_count(0)
    assert httpx.get(f"{app_url}/api/runs/{original}", timeout=10).status_code == 404
    assert stored(app_url, original) == []  # its channel history went with it


def test_cancel_every_run_with_a_label_from_the_list(page: Page, app_url: str) -> None:
    batch = [trigger(app_url, "await-release", labels=("batch-7",)) for _ in range(3)]
    other = trigger(app_url, "await-release", labels=("batch-8",))
    plain = trigger(app_url, "await-release")
    page.goto(f"{app_url}/")
    expect(page.locator(".run-row")).to_have_count(5, timeout=TIMEOUT_MS)
    expect(page.locator(f'.run-row[data-run-id="{other}"] .chip')).to_have_text("batch-8")
    expect(page.locator("#bulk-bar")).to_be_hidden()  # no filter, nothing selected

    page.locator("#filter-label").fill("batch-7")
    page.locator("#filter-label").press("Enter")
    expect(page).to_have_url(f"{app_url}/#/?label=batch-7")
    rows = page.locator(".run-row")
    expect(rows).to_have_count(3, timeout=TIMEOUT_MS)
    for run_id in batch:
        row = page.locator(f'.run-row[data-run-id="{run_id}"]')
        expect(row.locator(".step-now")).to_have_text(
            "waiting: wait-for-release", timeout=TIMEOUT_MS
        )
    expect(page.locator("#bulk-matching")).to_be_visible()
    expect(page.locator("#filters-clear")).to_be_visible()
    shoot(page, "runs-filtered-by-label.png")

    asked = accept_next_dialog(page)
    page.locator("#bulk-cancel-matching").click()
    expect(page.locator("#bulk-result")).to_have_text(
        "Canceled 3 runs matching label “batch-7”.", timeout=TIMEOUT_MS
    )
    assert "label “batch-7”" in asked[0] and "At most 1000 runs" in asked[0]
    for run_id in batch:
        row = page.locator(f'.run-row[data-run-id="{run_id}"]')
        expect(row).to_have_attribute("data-state", "RUN_CANCELED", timeout=TIMEOUT_MS)
        assert run_log(app_url, run_id)["workflowState"] == "RUN_CANCELED"
    for run_id in (other, plain):  # without the label: untouched
        assert run_log(app_url, run_id)["workflowState"] == "RUN_STARTED"
    page.emulate_media(color_scheme="dark")
    shoot(page, "runs-filtered-by-label-dark.png")
    page.emulate_media(color_scheme="light")

    # A filter nothing matches says so, and clears in one click.
    page.locator("#filter-state").select_option("RUN_STARTED")
    expect(page.locator("#runs-empty-title")).to_have_text(
        "No runs match these filters", timeout=TIMEOUT_MS
    )
    expect(page.locator("#empty-new-run")).to_be_hidden()
    page.locator("#empty-clear-filters").click()
    expect(page).to_have_url(f"{app_url}/#/")
    expect(rows).to_have_count(5, timeout=TIMEOUT_MS)
    expect(page.locator("#filter-label")).to_have_value("")

    # Ticked rows: cancel just those.
    page.locator(f'.run-item[data-run-id="{other}"] .run-select').check()
    expect(page.locator("#bulk-count")).to_have_text("1 selected")
    asked = accept_next_dialog(page)
    page.locator("#bulk-cancel").click()
    expect(page.locator("#bulk-result")).to_have_text("Canceled 1 run.", timeout=TIMEOUT_MS)
    expect(page.locator(f'.run-row[data-run-id="{other}"]')).to_have_attribute(
        "data-state", "RUN_CANCELED", timeout=TIMEOUT_MS
    )
    assert run_log(app_url, plain)["workflowState"] == "RUN_STARTED"
    expect(page.locator("#bulk-bar")).to_be_hidden()  # the selection was cleared

    # A time range: nothing was created after an hour from now.
    in_an_hour = page.evaluate("Date.now() + 3600000")
    page.goto(f"{app_url}/#/?createdAfter={in_an_hour}")
    expect(page.locator("#runs-empty-title")).to_have_text(
        "No runs match these filters", timeout=TIMEOUT_MS
    )
    expect(page.locator("#filter-after")).not_to_have_value("")


def test_runs_not_from_today_show_their_date_and_time(page: Page, app_url: str) -> None:
    page.goto(f"{app_url}/")
    shown: dict[str, str] = page.evaluate(
        """async () => {
            const { formatRelative } = await import("./static/dashboard/format.js");
            return {
              now: formatRelative(Date.now() - 1000),
              minutes: formatRelative(Date.now() - 5 * 60000),
              twoDaysAgo: formatRelative(Date.now() - 2 * 86400000),
            };
        }"""
    )
    assert shown["now"] == "just now"
    assert shown["minutes"] == "5m ago"
    assert re.fullmatch(r"\w+ \d+, \d\d:\d\d", shown["twoDaysAgo"]), shown


def test_send_event_is_filled_with_what_a_user_workflow_waits_for(page: Page, app_url: str) -> None:
    run_id = trigger(app_url, "await-release")
    page.goto(f"{app_url}/#/runs/{run_id}")
    expect_step(page, "wait-for-release", "waiting")
    expect(page.locator("#notify-card")).to_be_visible()
    expect(page.locator("#notify-event")).to_have_value(f"release-{run_id}")
    page.locator("#notify-data").fill('{"by": "ops"}')
    page.locator("#notify-send").click()
    expect(page.locator("#notify-result")).to_contain_text("delivered to 1 waiting step")
    expect_run_state(page, "RUN_SUCCESS")
    expect(page.locator("#run-result")).to_contain_text('"by": "ops"')


def test_the_failure_functions_steps_are_marked(page: Page, app_url: str) -> None:
    """A step the failure function ran says so on the timeline (it looked like one more step
    of the run), as `stepstream logs` says "failure fn"."""
    run_id = trigger(app_url, "charge-or-refund")
    wait_finished(app_url, run_id)
    page.goto(f"{app_url}/#/runs/{run_id}")
    expect_run_state(page, "RUN_FAILED")
    expect(page.locator('.tl-row[data-step="refund"] .failure-tag')).to_be_visible()
    expect(page.locator('.tl-row[data-step="charge"] .failure-tag')).to_be_hidden()


def test_a_sleeping_run_is_offered_no_event_to_send(page: Page, app_url: str) -> None:
    """A sleep waits, as the runs list says, but for no event: its page offers no "Send
    event" card (a review found one, highlighted, saying the sleep waited for an event)."""
    run_id = trigger(app_url, "napper")  # sleeps 60 s after its first step
    page.goto(f"{app_url}/#/runs/{run_id}")
    expect(page.locator("#run-status-note")).to_contain_text("Sleeping", timeout=5000)
    row = page.locator('.tl-row[data-step="nap"]')
    expect(row).to_have_attribute("data-state", re.compile("wait"), timeout=5000)
    page.wait_for_timeout(1000)  # the page's later renders (live events, the log) have come
    expect(page.locator("#notify-card")).to_be_hidden()
    expect(page.locator("#notify-hint")).not_to_contain_text("nap")
    httpx.post(f"{app_url}/api/runs/{run_id}/cancel")


def test_a_5_ms_step_next_to_a_long_sleep_stays_visible(page: Page, app_url: str) -> None:
    run_id = trigger(app_url, "quick-and-slow")
    wait_finished(app_url, run_id)
    page.goto(f"{app_url}/#/runs/{run_id}")
    expect_run_state(page, "RUN_SUCCESS")
    expect(page.locator(".tl-row")).to_have_count(3)
    track = page.locator('.tl-row[data-step="cool-down"] .tl-track').bounding_box()
    assert track is not None
    for step in ("check", "ping"):
        bar = page.locator(f'.tl-row[data-step="{step}"] .bar')
        box = bar.bounding_box()
        assert box is not None and box["width"] >= 6, (step, box)
        assert track["x"] <= box["x"] and box["x"] + box["width"] <= track["x"] + track["width"]
        # Hovering says exactly how long it took.
        expect(bar).to_have_attribute(
            "title", re.compile(rf"^{step} · attempt 1 · success · \d+ ms$")
        )
    log = run_log(app_url, run_id)
    check = next(s for s in log["steps"] if s["stepName"] == "check")
    expect(page.locator('.tl-row[data-step="check"] .d')).to_have_text(
        f"{check['finishedAt'] - check['startedAt']} ms"
    )
    shoot(page, "timeline-short-and-long.png")
