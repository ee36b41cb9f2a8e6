"""One idea of a run's state: the browser's reducer (``server/static/run-state.js``, used by the
dashboard and ``react.js``) and the terminal follower's (``stepstream.console.RunProgress``) are
fed the same ``workflow.update`` sequences and must agree after every event.

The JS reducer runs under ``node`` (skipped without it, failed in CI); each sequence also has
its expected outcome spelled out, so that the two cannot agree on something wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stepstream.console import RunProgress

STATIC = Path(__file__).resolve().parents[1] / "src" / "stepstream" / "server" / "static"
RUN = "wfr_state"

# Folds every scenario with run-state.js; prints, per scenario, the state after each message.
NODE_SCRIPT = """
import { readFileSync } from "node:fs";
import { foldWorkflowUpdate, initialRunState } from "./run-state.js";

const scenarios = JSON.parse(readFileSync(0, "utf8"));
const out = {};
for (const [name, messages] of Object.entries(scenarios)) {
  let state = initialRunState("wfr_state");
  out[name] = messages.map((message) => {
    state = foldWorkflowUpdate(state, message);
    const { runId, events, ...rest } = state;
    return { ...rest, eventCount: events.length };
  });
}
process.stdout.write(JSON.stringify(out));
"""


def update(kind: str, at: int, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "workflowRunId": RUN, "timestamp": at, **fields}


def start(name: str, at: int, attempt: int = 1, kind: str = "Run") -> dict[str, Any]:
    return update("stepStart", at, stepName=name, stepType=kind, attempt=attempt)


def finish(name: str, at: int, result: Any = None, attempt: int = 1) -> dict[str, Any]:
    fields = {"stepName": name, "stepType": "Run", "attempt": attempt, "result": result}
    return update("stepFinish", at, **fields)


def fail(name: str, at: int, error: str, attempt: int, retry: bool) -> dict[str, Any]:
    fields = {"stepName": name, "stepType": "Run", "attempt": attempt, "willRetry": retry}
    return update("stepFail", at, error=error, **fields)


def run_finish(at: int, status: str, error: str | None = None) -> dict[str, Any]:
    return update("runFinish", at, status=status, **({"error": error} if error else {}))


def numbered(*updates: Any, first: int = 1) -> list[dict[str, Any]]:
    """Messages with increasing ids, as a channel delivers them."""
    return [{"id": f"{1000 + i}-0", "data": data} for i, data in enumerate(updates, first)]


ERROR = "ConnectionError: upstream storage answered 503"
SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "success": numbered(
        update("runStart", 10),
        start("validate-data", 11),
        finish("validate-data", 12, {"valid": True}),
        start("cool-down", 13, kind="SleepFor"),
        finish("cool-down", 14),
        run_finish(15, "success"),
    ),
    "retries-then-failure": numbered(
        update("runStart", 10),
        start("fetch-data", 11),
        finish("fetch-data", 12, {"rows": 3}),
        start("upload-report", 13),
        fail("upload-report", 14, ERROR, 1, retry=True),
        start("upload-report", 20, attempt=2),
        fail("upload-report", 21, ERROR, 2, retry=True),
        start("upload-report", 30, attempt=3),
        fail("upload-report", 31, ERROR, 3, retry=False),
        {**start("record-failure", 32), "failureFunction": True},
        {**finish("record-failure", 33, {"recorded": ERROR}), "failureFunction": True},
        run_finish(34, "failed", ERROR),
    ),
    "retry-then-success": numbered(
        update("runStart", 10),
        start("charge", 11),
        fail("charge", 12, "TimeoutError", 1, retry=True),
        start("charge", 20, attempt=2),
        finish("charge", 21, "ok", attempt=2),
        run_finish(22, "success"),
    ),
    "cancel-while-waiting": numbered(
        update("runStart", 10),
        start("prepare-request", 11),
        finish("prepare-request", 12, {"amount": 420}),
        start("wait-for-approval", 13, kind="Wait"),
        run_finish(20, "canceled", "canceled"),
    ),
    "cancel-while-retrying": numbered(
        update("runStart", 10),
        start("charge", 11),
        fail("charge", 12, "TimeoutError", 1, retry=True),
        run_finish(20, "canceled", "canceled"),
    ),
    "duplicates-and-out-of-order": [
        *numbered(update("runStart", 10), start("a", 11)),
        {"id": "1002-0", "data": start("a", 11)},  # the same message again
        *numbered(finish("a", 12, 1), first=3),
        {"id": "1002-0", "data": fail("a", 12, "late", 1, retry=False)},  # older than the last
        {"id": "1003-0", "data": finish("a", 12, 2)},  # a repeat of the last id
        {"id": "not-a-cursor", "data": run_finish(13, "failed", "bogus")},
        {"id": "1003-1", "data": run_finish(13, "success")},
    ],
    "trimmed-history": numbered(  # the run's first events were trimmed from history
        finish("validate-data", 12, {"valid": True}),
        fail("process-data", 14, "ValueError: bad row", 2, retry=True),
        start("process-data", 20, attempt=3),
        finish("process-data", 21, {"processed": True}, attempt=3),
        run_finish(22, "success"),
    ),
    "a-name-used-again": numbered(
        update("runStart", 10),
        start("poll", 11),
        finish("poll", 12, {"ready": False}),
        start("poll", 13),
        fail("poll", 14, "no", 1, retry=False),
        start("poll", 15),
        finish("poll", 16, {"ready": True}),
        run_finish(17, "success"),
    ),
    "worker-lost-mid-step": numbered(  # the step ran again on another worker
        update("runStart", 10),
        start("resize", 11),
        start("resize", 30, attempt=2),
        finish("resize", 31, "thumb.png", attempt=2),
        run_finish(32, "success"),
    ),
    "parallel": numbered(
        update("runStart", 10),
        start("resize-image", 11),
        start("scan-virus", 11),
        finish("scan-virus", 12, "clean"),
        start("transcribe-audio", 11),
        finish("resize-image", 13, "thumb.png"),
        fail("transcribe-audio", 14, "boom", 1, retry=False),
        run_finish(15, "failed", "boom"),
    ),
    "resumed-after-failure": numbered(
        update("runStart", 10),
        start("fetch", 11),
        finish("fetch", 12, {"rows": 3}),
        start("load", 13),
        fail("load", 14, ERROR, 1, retry=False),
        run_finish(15, "failed", ERROR),
        update("runStart", 40, resumed=True),
        start("load", 41),
        finish("load", 42, {"loaded": 3}),
        run_finish(43, "success"),
    ),
    "other-payloads": numbered(
        update("runStart", 10),
        {"type": "custom", "timestamp": 11},
        "not an object",
        None,
        [1, 2],
        start("a", 12),
        run_finish(13, "success"),
    ),
}


def python_states(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``RunProgress`` after each message, in the JS reducer's shape."""
    progress = RunProgress(RUN)
    applied = 0
    states = []
    for message in messages:
        applied += progress.apply(message["id"], message["data"])
        run = None
        if progress.status is not None:
            run = {
                "status": progress.status,
                "startedAt": progress.started_at,
                "finishedAt": progress.finished_at,
                "error": progress.error,
            }
        steps = [
            {
                "stepName": step.step_name,
                "stepType": step.step_type,
                "failureFunction": step.failure_function,
                "status": step.status,
                "timestamp": step.timestamp,
                "finishedAt": step.finished_at,
                "attempts": len(step.tries),
                "tries": [
                    {
                        "attempt": t.attempt,
                        "status": t.status,
                        "startedAt": t.started_at,
                        "finishedAt": t.finished_at,
                        "error": t.error,
                    }
                    for t in step.tries
                ],
                "result": step.result,
                "error": step.error,
            }
            for step in progress.steps
        ]
        states.append({"lastId": progress.last_id, "run": run, "steps": steps})
        states[-1]["eventCount"] = applied
    return states


@pytest.fixture(scope="module")
def js_states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is missing in CI: `make test` installs npm, which brings it")
        pytest.skip("node is not installed")
    # The static files as served, in a directory node reads as ES modules.
    here = tmp_path_factory.mktemp("run-state")
    for name in ("run-state.js", "stepstream.js"):
        shutil.copy(STATIC / name, here / name)
    (here / "package.json").write_text('{"type": "module"}')
    (here / "fold.js").write_text(NODE_SCRIPT)
    done = subprocess.run(
        [node, "fold.js"],
        cwd=here,
        input=json.dumps(SCENARIOS),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    states: dict[str, list[dict[str, Any]]] = json.loads(done.stdout)
    return states


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_python_and_js_agree_after_every_event(
    scenario: str, js_states: dict[str, list[dict[str, Any]]]
) -> None:
    expected = python_states(SCENARIOS[scenario])
    for i, (js, py) in enumerate(zip(js_states[scenario], expected, strict=True)):
        assert py == js, f"{scenario}: they differ after message {i}"


def final(scenario: str) -> dict[str, Any]:
    return python_states(SCENARIOS[scenario])[-1]


def summary(scenario: str) -> list[tuple[str, str, list[str]]]:
    """(name, status, each attempt's status) per step, once the sequence is applied."""
    steps = final(scenario)["steps"]
    return [(s["stepName"], s["status"], [t["status"] for t in s["tries"]]) for s in steps]


def test_success() -> None:
    sleeping = python_states(SCENARIOS["success"])[3]  # after the sleep's stepStart
    assert sleeping["steps"][1]["status"] == "waiting"  # a sleep waits, as the log says
    assert final("success")["run"] == {
        "status": "success",
        "startedAt": 10,
        "finishedAt": 15,
        "error": None,
    }
    assert summary("success") == [
        ("validate-data", "completed", ["completed"]),
        ("cool-down", "completed", ["completed"]),
    ]
    assert final("success")["steps"][0]["result"] == {"valid": True}


def test_retries_then_failure() -> None:
    states = python_states(SCENARIOS["retries-then-failure"])
    assert states[4]["steps"][1]["status"] == "retrying"  # between the first two attempts
    assert states[4]["run"]["status"] == "running"
    assert summary("retries-then-failure") == [
        ("fetch-data", "completed", ["completed"]),
        ("upload-report", "failed", ["retrying", "retrying", "failed"]),
        ("record-failure", "completed", ["completed"]),
    ]
    upload = final("retries-then-failure")["steps"][1]
    assert [t["attempt"] for t in upload["tries"]] == [1, 2, 3]
    assert upload["error"] == ERROR
    assert final("retries-then-failure")["run"]["status"] == "failed"
    failure_fn = [s["failureFunction"] for s in final("retries-then-failure")["steps"]]
    assert failure_fn == [False, False, True]  # record-failure ran in the failure function
    assert final("retries-then-failure")["run"]["error"] == ERROR


def test_a_retry_that_succeeds_clears_the_error() -> None:
    (charge,) = final("retry-then-success")["steps"]
    assert (charge["status"], charge["error"], charge["result"]) == ("completed", None, "ok")
    assert [t["status"] for t in charge["tries"]] == ["retrying", "completed"]
    assert charge["tries"][0]["error"] == "TimeoutError"


def test_cancel_closes_open_steps() -> None:
    states = python_states(SCENARIOS["cancel-while-waiting"])
    assert states[-2]["steps"][1]["status"] == "waiting"
    assert summary("cancel-while-waiting") == [
        ("prepare-request", "completed", ["completed"]),
        ("wait-for-approval", "canceled", ["canceled"]),
    ]
    assert final("cancel-while-waiting")["run"]["status"] == "canceled"
    assert summary("cancel-while-retrying") == [("charge", "canceled", ["retrying"])]


def test_duplicates_and_older_events_change_nothing() -> None:
    states = python_states(SCENARIOS["duplicates-and-out-of-order"])
    assert [s["eventCount"] for s in states] == [1, 2, 2, 3, 3, 3, 3, 4]
    assert summary("duplicates-and-out-of-order") == [("a", "completed", ["completed"])]
    assert final("duplicates-and-out-of-order")["steps"][0]["result"] == 1
    assert final("duplicates-and-out-of-order")["run"]["status"] == "success"


def test_steps_whose_start_was_trimmed_still_show() -> None:
    assert summary("trimmed-history") == [
        ("validate-data", "completed", ["completed"]),
        ("process-data", "completed", ["retrying", "completed"]),
    ]
    process = final("trimmed-history")["steps"][1]
    assert [t["attempt"] for t in process["tries"]] == [2, 3]
    assert final("trimmed-history")["run"]["startedAt"] == 12  # the first event seen


def test_a_name_used_again_after_it_ended_is_a_new_step() -> None:
    assert summary("a-name-used-again") == [
        ("poll", "completed", ["completed"]),
        ("poll", "failed", ["failed"]),
        ("poll", "completed", ["completed"]),
    ]


def test_a_step_started_again_ends_its_cut_short_attempt() -> None:
    assert summary("worker-lost-mid-step") == [("resize", "completed", ["retrying", "completed"])]
    assert final("worker-lost-mid-step")["steps"][0]["tries"][0]["finishedAt"] == 30


def test_parallel_steps_each_keep_their_own_state() -> None:
    assert summary("parallel") == [
        ("resize-image", "completed", ["completed"]),
        ("scan-virus", "completed", ["completed"]),
        ("transcribe-audio", "failed", ["failed"]),
    ]


def test_other_payloads_are_counted_but_change_nothing() -> None:
    assert final("other-payloads")["eventCount"] == 7
    assert summary("other-payloads") == [("a", "canceled", ["canceled"])]


def test_a_resumed_run_runs_its_failed_step_again() -> None:
    states = python_states(SCENARIOS["resumed-after-failure"])
    assert states[5]["run"]["status"] == "failed"
    reopened = states[6]
    assert reopened["run"] == {
        "status": "running",
        "startedAt": 10,
        "finishedAt": None,
        "error": None,
    }
    assert [s["status"] for s in reopened["steps"]] == ["completed", "retrying"]
    assert final("resumed-after-failure")["run"]["status"] == "success"
    assert summary("resumed-after-failure") == [
        ("fetch", "completed", ["completed"]),
        ("load", "completed", ["retrying", "completed"]),
    ]
