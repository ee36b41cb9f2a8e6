"""``status`` and ``waitingFor`` in a run's log: what the run is doing now, told apart."""

from __future__ import annotations

from typing import Any

import pytest

from stepstream.records import RunRecord, RunState, StepRecord, StepState, StepType
from stepstream.server.wire import run_log, run_status

NOW = 1_795_500_000_000


def run(*steps: StepRecord, **fields: Any) -> RunRecord:
    fields.setdefault("state", RunState.STARTED)
    return RunRecord(id="wfr_x", workflow="wf", created_at=NOW - 5000, steps=list(steps), **fields)


def step(type: StepType = StepType.RUN, state: StepState = StepState.PROGRESS, **kw: Any) -> Any:
    return StepRecord(0, "s", type, state, **kw)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (run(due_at=NOW - 1), ("queued", None)),
        (run(due_at=NOW + 60_000), ("scheduled", None)),
        # Without its steps (a list entry): a run claimed before and not due waits for
        # something (a sleep, an event's timeout, a retry), it is not a delayed start.
        (run(due_at=NOW + 60_000, epoch=1), ("waiting", None)),
        (run(due_at=NOW, lease_owner="w", lease_until=NOW + 10_000), ("running", None)),
        # A lease that ran out is no longer running: the run waits to be claimed again.
        (run(due_at=NOW - 1, lease_owner="w", lease_until=NOW - 1), ("queued", None)),
        (run(step(state=StepState.RETRY, wake_at=NOW + 500), due_at=NOW + 500), ("retrying", None)),
        (run(step(StepType.SLEEP, wake_at=NOW + 9), due_at=NOW + 9), ("waiting", "sleep")),
        (run(step(StepType.WAIT, event_id="e"), due_at=NOW + 99), ("waiting", "event")),
        (run(step(StepType.INVOKE, child="wfr_c"), due_at=None), ("waiting", "childRun")),
        (run(step(waiting_for="flowControl"), due_at=NOW + 9), ("waiting", "flowControl")),
        # Notified (resolved) and due: next in line for a worker.
        (run(step(StepType.WAIT, event_id="e", resolved=True), due_at=NOW), ("queued", None)),
        (run(state=RunState.SUCCESS), ("succeeded", None)),
        (run(state=RunState.FAILED), ("failed", None)),
        (run(state=RunState.CANCELED), ("canceled", None)),
    ],
)
def test_status(record: RunRecord, expected: tuple[str, str | None]) -> None:
    assert run_status(record, NOW) == expected
    log = run_log(record, NOW)
    assert (log["status"], log["waitingFor"]) == expected
