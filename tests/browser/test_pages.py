"""Real pages in headless Chromium against a real server: history, then live, exactly once.

Each test emits a run's first events before the page opens (history), waits until the page
shows them and is connected, emits the rest (live), and checks the page shows every stored
event once, in order. The clients: the seed guide's hook on @upstash/realtime 0.3.0, the
1.1.0 ``RealtimeProvider`` (history fetched from a JSON route first, as its docs recommend),
and stepstream's own ``stepstream.js`` and ``react.js``.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from browser_harness import Emitter, Server
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

TIMEOUT_MS = 20_000


def run_events(run_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The guide's ``workflow.update`` payloads for a three-step run: (history, live)."""
    now = int(time.time() * 1000)

    def update(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "workflowRunId": run_id, "timestamp": now, **fields}

    history = [
        update("runStart"),
        update("stepStart", stepName="validate-data"),
        update("stepFinish", stepName="validate-data", result={"valid": True}),
    ]
    live = [
        update("stepStart", stepName="process-data"),
        update("stepFinish", stepName="process-data", result={"processed": 3}),
        update("stepStart", stepName="notify"),
        update("stepFinish", stepName="notify", result=None),
        update("runFinish", status="success"),
    ]
    return history, live


def shown(page: Page) -> list[dict[str, Any]]:
    """What the page logged: one entry per event it handed to the app."""
    entries: list[dict[str, Any]] = page.locator("#log li").evaluate_all(
        "items => items.map(i => ({channel: i.dataset.channel, data: JSON.parse(i.dataset.json)}))"
    )
    return entries


def expect_exactly(page: Page, emitter: Emitter, channel: str) -> None:
    """The page shows every stored event of ``channel`` once, in order."""
    stored = emitter.stored(channel)
    expect(page.locator("#log li")).to_have_count(len(stored), timeout=TIMEOUT_MS)
    assert shown(page) == [{"channel": channel, "data": m["data"]} for m in stored]


def emit_all(emitter: Emitter, channel: str, updates: list[dict[str, Any]]) -> None:
    for update in updates:
        emitter.emit(channel, update)


def history_then_live(
    page: Page, server: Server, emitter: Emitter, path: str, channel: str
) -> None:
    history, live = run_events(channel)
    emit_all(emitter, channel, history)
    page.goto(f"{server.url}{path}")
    expect(page.locator("#log li")).to_have_count(len(history), timeout=TIMEOUT_MS)
    expect(page.locator("#connection")).to_have_text("connected", timeout=TIMEOUT_MS)
    emit_all(emitter, channel, live)
    expect_exactly(page, emitter, channel)


def expect_guide_view(page: Page) -> None:
    """The guide's page: every step completed, the run succeeded."""
    expect(page.locator("#run-status")).to_have_text("success", timeout=TIMEOUT_MS)
    expect(page.locator("#steps .step")).to_have_text(
        ["validate-data: completed", "process-data: completed", "notify: completed"]
    )


def new_run_id() -> str:
    return f"wfr_{uuid.uuid4().hex}"


def test_guide_hook_on_upstash_realtime_0_3(page: Page, server: Server, emitter: Emitter) -> None:
    run_id = new_run_id()
    history_then_live(page, server, emitter, f"/pages/guide-v03.html?run={run_id}", run_id)
    expect_guide_view(page)


def test_provider_on_upstash_realtime_1_1(page: Page, server: Server, emitter: Emitter) -> None:
    channel = new_run_id()
    history, live = run_events(channel)
    emit_all(emitter, channel, history)
    # 1.x subscribes with `last_ack_<channel>=<Date.now()>` (replay from that millisecond on),
    # so let the clock leave the millisecond of the last history event before the page opens.
    last_ms = int(emitter.stored(channel)[-1]["id"].split("-")[0])
    while int(time.time() * 1000) <= last_ms:
        time.sleep(0.001)
    page.goto(f"{server.url}/pages/provider-v11.html?channel={channel}")
    expect(page.locator("#log li")).to_have_count(len(history), timeout=TIMEOUT_MS)
    expect(page.locator("#connection")).to_have_text("connected", timeout=TIMEOUT_MS)
    emit_all(emitter, channel, live)
    expect_exactly(page, emitter, channel)
    events = page.locator("#log li").evaluate_all("items => items.map(i => i.dataset.event)")
    assert events == ["workflow.update"] * (len(history) + len(live))


def test_native_client(page: Page, server: Server, emitter: Emitter) -> None:
    channel = new_run_id()
    history_then_live(page, server, emitter, f"/pages/native.html?channel={channel}", channel)
    ids = page.locator("#log li").evaluate_all("items => items.map(i => i.dataset.id)")
    assert ids == [m["id"] for m in emitter.stored(channel)]


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_native_client_resumes_after_server_restart(
    page: Page, server: Server, emitter: Emitter, crash: bool
) -> None:
    """Events emitted while the server is down arrive once it is back, none twice."""
    channel = new_run_id()
    history, live = run_events(channel)
    emit_all(emitter, channel, history)
    page.goto(f"{server.url}/pages/native.html?channel={channel}")
    expect(page.locator("#log li")).to_have_count(len(history), timeout=TIMEOUT_MS)
    expect(page.locator("#connection")).to_have_attribute("data-connects", "1")

    server.stop(crash=crash)
    expect(page.locator("#connection")).not_to_have_text("connected", timeout=TIMEOUT_MS)
    emit_all(emitter, channel, live[:3])
    server.start()
    expect(page.locator("#connection")).to_have_attribute("data-connects", "2", timeout=TIMEOUT_MS)
    emit_all(emitter, channel, live[3:])
    expect_exactly(page, emitter, channel)


def test_native_client_watchdog_replaces_a_silent_connection(
    page: Page, server: Server, emitter: Emitter
) -> None:
    """No frame (not even a ping) for 45 s: the client gives up on the connection and resumes
    on a new one. The page's clock is fast-forwarded; the server is frozen meanwhile."""
    channel = new_run_id()
    history, live = run_events(channel)
    emit_all(emitter, channel, history)
    page.clock.install()
    page.goto(f"{server.url}/pages/native.html?channel={channel}")
    expect(page.locator("#log li")).to_have_count(len(history), timeout=TIMEOUT_MS)
    expect(page.locator("#connection")).to_have_text("connected", timeout=TIMEOUT_MS)

    server.freeze()
    try:
        emit_all(emitter, channel, live)
        page.clock.run_for(46_000)  # the watchdog fires, then the first retry
        expect(page.locator("#connection")).to_have_text("connecting")
    finally:
        server.thaw()
    expect(page.locator("#connection")).to_have_attribute("data-connects", "2", timeout=TIMEOUT_MS)
    expect_exactly(page, emitter, channel)


def test_native_client_with_two_channels(page: Page, server: Server, emitter: Emitter) -> None:
    first, second = new_run_id(), new_run_id()
    (first_history, first_live), (second_history, second_live) = map(run_events, (first, second))
    emit_all(emitter, first, first_history)
    emit_all(emitter, second, second_history)
    page.goto(f"{server.url}/pages/native.html?channel={first}&channel={second}")
    expect(page.locator("#log li")).to_have_count(
        len(first_history) + len(second_history), timeout=TIMEOUT_MS
    )
    expect(page.locator("#connection")).to_have_text("connected", timeout=TIMEOUT_MS)
    for second_update, first_update in zip(second_live, first_live, strict=True):
        emitter.emit(second, second_update)  # interleaved across the channels
        emitter.emit(first, first_update)
    stored = {ch: emitter.stored(ch) for ch in (first, second)}
    expect(page.locator("#log li")).to_have_count(
        sum(len(events) for events in stored.values()), timeout=TIMEOUT_MS
    )
    for ch, events in stored.items():
        mine = [entry["data"] for entry in shown(page) if entry["channel"] == ch]
        assert mine == [m["data"] for m in events]


def test_react_hook_use_workflow_run(page: Page, server: Server, emitter: Emitter) -> None:
    run_id = new_run_id()
    history_then_live(page, server, emitter, f"/pages/react-hook.html?run={run_id}", run_id)
    expect_guide_view(page)


@pytest.mark.parametrize(
    "server_settings", [{"STEPSTREAM_TEST_MAX_DURATION": "3"}], ids=["max_duration=3s"]
)
def test_native_client_follows_server_reconnects(
    page: Page, server: Server, emitter: Emitter
) -> None:
    """The server ends each stream after ~1 s (max_duration 3 s) while events keep coming."""
    channel = new_run_id()
    page.goto(f"{server.url}/pages/native.html?channel={channel}")
    expect(page.locator("#connection")).to_have_text("connected", timeout=TIMEOUT_MS)
    stop = threading.Event()

    def emit_steadily() -> None:
        step = 0
        while not stop.is_set():
            emitter.emit(channel, {"type": "stepStart", "workflowRunId": channel,
                                   "timestamp": step, "stepName": f"step-{step}"})  # fmt: skip
            step += 1
            stop.wait(0.02)  # pacing the emitter, not an assertion

    emitting = threading.Thread(target=emit_steadily)
    emitting.start()
    try:
        page.wait_for_function(
            "document.getElementById('connection').dataset.connects >= 4", timeout=TIMEOUT_MS
        )
    finally:
        stop.set()
        emitting.join()
    expect_exactly(page, emitter, channel)
