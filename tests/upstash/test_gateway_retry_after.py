"""``WorkflowRetryAfterError`` end to end with the real SDK: the 429 and its ``Retry-After``
delay the retry; a failed delivery that named no step (the error was outside every step) is a
``delivery`` attempt, and once the run ends it does not stay ``STEP_RETRY``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.upstash.harness import serve_workflows
from tests.upstash.test_gateway import (
    finished_run,
    sdk_client,
    sdk_env,
    stepstream_server,
    timeline,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("signing_key"),
]


async def test_retry_after_delays_the_retry_and_the_run_ends_clean(
    node: str, tmp_path: Path
) -> None:
    async with (
        stepstream_server(tmp_path / "later.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/retry-after", "{}")
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        log = run.log
        assert log["workflowState"] == "RUN_SUCCESS", log
        assert log["workflowRunResponse"] == "retried"
        assert run.executions == ["ok"]
        ok, delivery = log["steps"]
        assert (ok["stepName"], ok["state"]) == ("ok", "STEP_SUCCESS")
        # The delivery after "ok" was answered 429 (Retry-After: 2) and retried 2 s later.
        assert (delivery["stepName"], delivery["attempts"]) == ("delivery", 2)
        assert delivery["state"] == "STEP_SUCCESS"  # the run ended: no retry is pending
        assert "429" in delivery["errors"][0]["error"]
        assert delivery["finishedAt"] - delivery["errors"][0]["at"] >= 1900
        assert timeline(run.events)[-3:] == [
            ("stepFail", "delivery"),
            ("stepFinish", "delivery"),
            ("runFinish", None),
        ]
