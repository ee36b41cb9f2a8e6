"""What ``trigger --follow`` draws (``RunProgress.render``): times that keep counting while a
step runs, the attempt number of a retried step, and what a waiting run waits for."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from stepstream import console
from stepstream.console import RunProgress


def drawn(progress: RunProgress, doing: str = "") -> str:
    out = Console(width=120, color_system=None, record=True, file=io.StringIO())
    out.print(progress.render(doing))
    return out.export_text()


def at(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    monkeypatch.setattr(console, "system_ms", lambda: ms)


def step(kind: str, name: str, ms: int, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "workflowRunId": "wfr_1", "stepName": name, "timestamp": ms, **fields}


def test_a_running_step_s_time_counts_up_between_events(monkeypatch: pytest.MonkeyPatch) -> None:
    progress = RunProgress("wfr_1")
    progress.apply("1-0", {"type": "runStart", "timestamp": 1_000})
    progress.apply("2-0", step("stepStart", "charge", 1_000, attempt=1, stepType="Run"))
    at(monkeypatch, 1_500)
    assert "charge  500ms" in drawn(progress)
    at(monkeypatch, 4_200)  # no event since: the same state drawn later
    text = drawn(progress)
    assert "charge  3.2s" in text and "run wfr_1  3.2s" in text


def test_retried_steps_show_their_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    at(monkeypatch, 10_000)
    progress = RunProgress("wfr_1")
    progress.apply("1-0", {"type": "runStart", "timestamp": 1_000})
    progress.apply("2-0", step("stepStart", "charge", 1_000, attempt=1))
    progress.apply("3-0", step("stepFail", "charge", 1_100, attempt=1, error="503", willRetry=True))
    text = drawn(progress)
    assert "↻ charge  100ms  503  (will retry)" in text and "attempt" not in text
    progress.apply("4-0", step("stepStart", "charge", 2_000, attempt=2))
    assert "charge  8.0s  attempt 2" in drawn(progress)
    progress.apply("5-0", step("stepFinish", "charge", 2_300, attempt=2))
    assert "✓ charge  300ms  attempt 2" in drawn(progress)


def test_what_a_waiting_run_waits_for_shows_until_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    at(monkeypatch, 2_000)
    progress = RunProgress("wfr_1")
    progress.apply("1-0", {"type": "runStart", "timestamp": 1_000})
    progress.apply("2-0", step("stepStart", "approve", 1_000, attempt=1, stepType="Wait"))
    assert "waiting for event 'go'" in drawn(progress, "waiting for event 'go'")
    progress.apply("3-0", {"type": "runFinish", "timestamp": 1_500, "status": "canceled"})
    assert "waiting for" not in drawn(progress, "waiting for event 'go'")


def test_doing_reads_the_log() -> None:
    log: dict[str, Any] = {
        "workflowState": "RUN_STARTED",
        "status": "waiting",
        "waitingFor": "event",
        "steps": [{"waitEventId": "approve-1", "waitDeadline": None}],
    }
    assert console._doing(log) == "waiting for event 'approve-1'"
    log["steps"][0]["waitDeadline"] = 1_800_000_000_000
    assert console._doing(log).startswith("waiting for event 'approve-1' (until 20")
    assert console._doing({**log, "workflowState": "RUN_SUCCESS"}) == ""
