"""The progress-event builders (``stepstream.events``) against the contract payloads (DESIGN §4)."""

from __future__ import annotations

import json
from typing import Any


def test_the_builders_make_exactly_the_guide_payloads() -> None:
    from pydantic import TypeAdapter

    from stepstream import events
    from stepstream.records import RunState, StepRecord, StepState, StepType

    step = StepRecord(
        3, "charge", StepType.RUN, StepState.SUCCESS, attempts=2, started_at=10, finished_at=25
    )
    step.out = '{"id":"ch_1","amount":[1,2]}'
    step.error = "ValueError: card declined"
    built = [
        events.run_start("wfr_1", 5),
        events.step_start("wfr_1", step),
        events.step_finish("wfr_1", step),
        events.step_fail("wfr_1", step, will_retry=True),
        events.run_finish("wfr_1", 30, RunState.FAILED, "boom"),
        events.run_finish("wfr_1", 31, RunState.SUCCESS),
    ]
    assert {(emit.channel, emit.event) for emit in built} == {("wfr_1", "workflow.update")}
    payloads = [json.loads(emit.raw) for emit in built]
    adapter: TypeAdapter[Any] = TypeAdapter(events.WorkflowUpdate)
    for payload in payloads:
        adapter.validate_python(payload)  # every one is a valid schema leaf
    assert payloads[0] == {"type": "runStart", "workflowRunId": "wfr_1", "timestamp": 5}
    assert payloads[1]["timestamp"] == 10 and payloads[1]["stepName"] == "charge"
    assert payloads[2]["timestamp"] == 25
    assert payloads[2]["result"] == {"id": "ch_1", "amount": [1, 2]}  # spliced, not re-encoded
    assert payloads[3]["error"] == "ValueError: card declined" and payloads[3]["willRetry"]
    assert payloads[4]["status"] == "failed" and payloads[4]["error"] == "boom"
    assert payloads[5] == {
        "type": "runFinish",
        "workflowRunId": "wfr_1",
        "timestamp": 31,
        "status": "success",
    }
