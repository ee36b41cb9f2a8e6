"""A dashboard served with ``STEPSTREAM_TOKEN`` asks for the token once per page load, however
many of its first requests were refused, and not again right after a dismissed question."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Dialog, Page, expect

from tests.browser.test_dashboard import TIMEOUT_MS, dev_server

pytestmark = pytest.mark.browser
TOKEN = "a-long-dashboard-secret"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    """``stepstream dev`` on a free port, its API behind ``STEPSTREAM_TOKEN``."""
    with dev_server(tmp_path, STEPSTREAM_TOKEN=TOKEN) as url:
        yield url


def test_the_token_is_asked_once_per_load(page: Page, guarded: str) -> None:
    asked: list[str] = []
    answer: list[str | None] = [None]  # None: dismiss

    def on_dialog(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss() if answer[0] is None else dialog.accept(answer[0])

    page.on("dialog", on_dialog)
    page.clock.install()
    page.goto(f"{guarded}/")
    expect(page.locator("#api-error")).to_contain_text("STEPSTREAM_TOKEN", timeout=TIMEOUT_MS)
    expect(page.locator("#api-error")).to_contain_text("reload the page to enter it")
    assert asked == ["This stepstream server needs its API token (STEPSTREAM_TOKEN):"]
    for _ in range(3):  # the page's polling (workers every 10 s) asks nothing more
        page.clock.run_for(11_000)
        page.wait_for_timeout(500)  # its requests' answers (a negative: nothing may come)
    expect(page.locator("#api-error")).to_contain_text("STEPSTREAM_TOKEN")
    assert len(asked) == 1, asked

    answer[0] = TOKEN
    reply = httpx.post(
        f"{guarded}/api/workflows/basic",
        json={"userId": "token-test"},
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    run_id = reply.json()["workflowRunId"]
    page.reload()
    expect(page.locator(f'.run-row[data-run-id="{run_id}"]')).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#api-error")).to_be_hidden()
    assert len(asked) == 2  # one question for the reload's several requests

    page.reload()  # the token is kept: not asked again
    expect(page.locator(f'.run-row[data-run-id="{run_id}"]')).to_be_visible(timeout=TIMEOUT_MS)
    assert len(asked) == 2
