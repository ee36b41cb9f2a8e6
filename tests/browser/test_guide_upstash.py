"""The guide's page following a run of the real ``@upstash/workflow`` SDK on stepstream.

``tests/upstash/node/guide.mjs`` plays the guide's Next.js app: the guide's ``basic`` workflow
with its emit calls removed, served by the SDK's ``serve``; the guide's trigger route (the SDK's
``Client``, with ``QSTASH_URL`` at stepstream's ``/qstash``); its realtime route, a proxy to
stepstream's SSE endpoint; and the guide's own page and hook (``examples/guide/``, verbatim).
The page can only show progress from stepstream's built-in ``workflow.update`` events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import expect

import stepstream.upstash
from stepstream import Realtime, Workflows
from tests.browser.test_guide import guide_bundle  # noqa: F401 (a fixture)
from tests.conftest import free_port
from tests.processes import serving
from tests.upstash.conftest import node  # noqa: F401 (a fixture)
from tests.upstash.harness import NODE_DIR, node_env

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("validate-data", "process-data", "send-notification")
TOKEN = "guide-token"
CURRENT_KEY = "sig_guide_current_key_of_32_bytes_"
NEXT_KEY = "sig_guide_next_key_of_32_bytes_too"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def stepstream_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """stepstream with the QStash gateway and a token, signing every delivery, under uvicorn in
    a thread (this one belongs to Playwright's sync API)."""
    monkeypatch.setenv("QSTASH_CURRENT_SIGNING_KEY", CURRENT_KEY)
    monkeypatch.setenv("QSTASH_NEXT_SIGNING_KEY", NEXT_KEY)
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{tmp_path / 'guide.db'}"))
    stepstream.upstash.enable(workflows)
    port = free_port()
    config = uvicorn.Config(
        workflows.asgi(token=TOKEN, lease=1.0),
        host="127.0.0.1",
        port=port,
        log_level="error",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="stepstream", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "stepstream did not start"
        time.sleep(0.01)  # waiting for the socket, not an assertion
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def guide_app(
    node: str,  # noqa: F811 (the fixture imported above)
    guide_bundle: Path,  # noqa: F811
    stepstream_url: str,
    tmp_path: Path,
) -> Iterator[str]:
    port = free_port()
    env = node_env(
        {
            "QSTASH_URL": f"{stepstream_url}/qstash",
            "QSTASH_TOKEN": TOKEN,
            "QSTASH_CURRENT_SIGNING_KEY": CURRENT_KEY,
            "QSTASH_NEXT_SIGNING_KEY": NEXT_KEY,
            "STEPSTREAM_URL": stepstream_url,
        }
    )
    log_path = tmp_path / "guide-app.log"
    command = [node, "guide.mjs", str(port)]
    try:
        with serving(command, port=port, cwd=NODE_DIR, env=env, log_path=log_path) as url:
            yield url
    finally:
        if log_path.stat().st_size:
            print(f"guide.mjs log:\n{log_path.read_text()}")


def test_guide_page_follows_an_upstash_sdk_run(
    page: Any, guide_app: str, stepstream_url: str
) -> None:
    page.goto(guide_app + "/")
    with page.expect_response("**/api/trigger") as triggered:
        page.get_by_role("button", name="Click to Trigger Workflow").click()
    run_id = triggered.value.json()["workflowRunId"]
    page.wait_for_function(
        "document.body.innerText.includes('send-notification: completed')", timeout=20_000
    )
    page.wait_for_function(
        "document.body.innerText.split('Run Status:')[1].trim().startsWith('success')",
        timeout=10_000,
    )
    text = page.inner_text("body")
    for step in STEPS:
        assert f"{step}: completed" in text
    assert text.count(": completed") == len(STEPS)  # each step once
    assert "failed" not in text
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artifacts / "guide-upstash.png"))

    # An SDK run through the gateway, and its log has the steps the page showed.
    log = httpx.get(f"{stepstream_url}/api/runs/{run_id}", headers=AUTH, timeout=10).json()
    assert log["workflowName"] == stepstream.upstash.WORKFLOW
    assert log["workflowState"] == "RUN_SUCCESS", log
    assert log["requestPayload"] == {"userId": "user-123", "action": "process-data"}
    assert log["workflowRunResponse"] == {"success": True, "workflowRunId": run_id}
    assert [(s["stepName"], s["state"]) for s in log["steps"]] == [
        (step, "STEP_SUCCESS") for step in STEPS
    ]

    # The dashboard names the run after its endpoint, and its label finds it.
    page.on("dialog", lambda dialog: dialog.accept(TOKEN))  # the dashboard asks for the token
    page.goto(f"{stepstream_url}/")
    page.evaluate("location.hash = '#/?label=/api/workflow/basic'")
    row = page.locator(f'.run-row[data-run-id="{run_id}"]')
    expect(row.locator(".wf-name")).to_have_text("upstash /api/workflow/basic", timeout=10_000)
    row.click()
    expect(page.locator("#run-workflow")).to_have_text("upstash /api/workflow/basic")
