"""The QStash gateway's run-level features, end to end with the real SDK: ``context.invoke``
(``serveMany``), the DLQ (``client.dlq``), flow control, retry delays, ``delay`` and
``notBefore`` from the trigger.
Each step body runs once (``/_executions``)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.upstash.harness import serve_workflows
from tests.upstash.test_gateway import (
    AUTH,
    finished_run,
    sdk_client,
    sdk_env,
    stepstream_server,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("signing_key"),
]


async def test_invoke_runs_the_child_as_a_child_run(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "invoke.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/invoker", '{"n": 21}')
        parent = await finished_run(client, base, endpoint, answer["workflowRunId"])
        assert parent.log["workflowState"] == "RUN_SUCCESS", parent.log
        assert parent.log["workflowRunResponse"] == {
            "result": {"doubled": 42},
            "isFailed": False,
            "isCanceled": False,
        }
        assert [(s["stepName"], s["stepType"]) for s in parent.log["steps"]] == [
            ("invoke-child", "Invoke")
        ]
        assert parent.executions == []  # the invoker has no step body of its own
        (log,) = (await sdk_client(node, base, "logs", answer["workflowRunId"]))["runs"]
        step = log["steps"][1]["steps"][0]
        assert step["out"] == {"body": '{"doubled":42}', "isFailed": False, "isCanceled": False}

        child = await finished_run(client, base, endpoint, step["invokedWorkflowRunId"])
        assert child.log["workflowState"] == "RUN_SUCCESS", child.log
        assert child.log["invoker"] == answer["workflowRunId"]
        assert child.log["requestPayload"] == {"n": 21}
        assert child.log["workflowRunResponse"] == {"doubled": 42}
        assert child.executions == ["double"]
        (log,) = (await sdk_client(node, base, "logs", step["invokedWorkflowRunId"]))["runs"]
        assert log["invoker"]["workflowRunId"] == answer["workflowRunId"]
        assert log["invoker"]["workflowUrl"] == f"{endpoint}/invoker"


async def test_the_dlq_resumes_restarts_and_recalls_failed_runs(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "dlq.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{endpoint}/flaky"
        resumed, restarted = [
            (await sdk_client(node, base, "trigger", url, "{}", "", "0"))["workflowRunId"]
            for _ in range(2)
        ]
        for run_id in (resumed, restarted):
            run = await finished_run(client, base, endpoint, run_id)
            assert run.log["workflowState"] == "RUN_FAILED", run.log
            assert run.executions == ["first", "second", "failureFunction"]

        listed = await sdk_client(node, base, "dlq-list")
        assert sorted(m["dlqId"] for m in listed["messages"]) == sorted([resumed, restarted])
        entry = next(m for m in listed["messages"] if m["dlqId"] == resumed)
        assert entry["workflowUrl"] == url
        assert entry["responseStatus"] == 500
        assert "not healed yet" in entry["responseBody"]
        assert entry["failureCallbackInfo"]["state"] == "CALLBACK_SUCCESS"
        assert "cursor" not in listed or listed["cursor"] is None

        again = await sdk_client(node, base, "dlq-callback", restarted)
        assert again["workflowRunId"] == restarted and "error" not in again

        await client.get(f"{endpoint}/_heal")
        answer = await sdk_client(node, base, "dlq-resume", resumed)
        assert answer["workflowRunId"] == resumed
        run = await finished_run(client, base, endpoint, resumed)
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == "one-two"
        # The recorded first step was delivered again, not run again.
        assert run.executions == ["first", "second", "failureFunction", "second"]

        answer = await sdk_client(node, base, "dlq-restart", restarted)
        fresh = answer["workflowRunId"]
        assert fresh != restarted
        run = await finished_run(client, base, endpoint, fresh)
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.executions == ["first", "second"]
        old = await finished_run(client, base, endpoint, restarted)
        assert old.executions == ["first", "second", "failureFunction", "failureFunction"]
        assert old.log["workflowState"] == "RUN_FAILED"  # kept, but out of the DLQ
        assert (await sdk_client(node, base, "dlq-list"))["messages"] == []


async def test_a_dlq_resume_may_override_retries_and_flow_control(
    node: str, tmp_path: Path
) -> None:
    async with (
        stepstream_server(tmp_path / "dlq-retries.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        options = json.dumps({"retryDelay": "100"})
        url = f"{endpoint}/flaky"
        run_id = (await sdk_client(node, base, "trigger", url, "{}", "", "0", options))[
            "workflowRunId"
        ]
        run = await finished_run(client, base, endpoint, run_id)
        assert run.log["workflowState"] == "RUN_FAILED", run.log
        assert run.executions == ["first", "second", "failureFunction"]

        for headers, named in (
            (
                {"Upstash-Retries": "many"},
                "Upstash-Retries 'many' on a DLQ resume or restart is not a count",
            ),
            (
                {"Upstash-Flow-Control-Key": "k", "Upstash-Flow-Control-Value": "parallel=1"},
                "Upstash-Flow-Control-Value part 'parallel=1': use parallelism=<n>",
            ),
            ({"Upstash-Flow-Control-Value": "parallelism=1"}, "needs Upstash-Flow-Control-Key"),
            ({"Upstash-Retries": "²"}, "Upstash-Retries '²' on a DLQ resume"),
            (
                {"Upstash-Flow-Control-Key": "k", "Upstash-Flow-Control-Value": "parallelism=²"},
                "Upstash-Flow-Control-Value part 'parallelism=²'",
            ),
            (
                {"Upstash-Flow-Control-Key": "k", "Upstash-Flow-Control-Value": "parallelism=0"},
                "Upstash-Flow-Control-Value: FlowControl parallelism must be an integer from 1 to",
            ),
        ):
            for action in ("resume", "restart"):
                response = await client.post(
                    f"{base}/qstash/v2/workflows/dlq/{action}",
                    params={"dlqIds": run_id},
                    headers={**AUTH, **{n: v.encode("latin-1") for n, v in headers.items()}},
                )
                assert response.status_code == 400, response.text
                assert named in response.json()["error"], response.json()
        (entry,) = (await sdk_client(node, base, "dlq-list"))["messages"]
        assert (entry["dlqId"], entry["maxRetries"]) == (run_id, 0)  # refused: unchanged

        overrides = {"retries": 2, "flowControl": {"key": "dlq-resumed", "parallelism": 1}}
        answer = await sdk_client(node, base, "dlq-resume", run_id, json.dumps(overrides))
        assert answer["workflowRunId"] == run_id
        run = await finished_run(client, base, endpoint, run_id)
        assert run.log["workflowState"] == "RUN_FAILED", run.log
        assert run.log["flowControl"]["key"] == "dlq-resumed"
        # Two retries, as QStash counts them: the failing step is attempted three times more.
        again = ["second", "second", "second", "failureFunction"]
        assert run.executions == ["first", "second", "failureFunction", *again]
        (entry,) = (await sdk_client(node, base, "dlq-list"))["messages"]
        assert (entry["dlqId"], entry["maxRetries"]) == (run_id, 2)


async def test_a_dlq_restart_may_put_the_new_runs_under_flow_control(
    node: str, tmp_path: Path
) -> None:
    async with (
        stepstream_server(tmp_path / "dlq-flow.db", workers=4) as base,
        serve_workflows(node, "limited", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{endpoint}/limited"
        failed = []
        for _ in range(3):  # one after the other: no two deliveries at once so far
            payload = '{"pause": 300, "failUnhealed": true}'
            answer = await sdk_client(node, base, "trigger", url, payload, "", "0")
            run = await finished_run(client, base, endpoint, answer["workflowRunId"])
            assert run.log["workflowState"] == "RUN_FAILED", run.log
            failed.append(answer["workflowRunId"])
        assert (await client.get(f"{endpoint}/_concurrency")).json() == {"max": 1}

        await client.get(f"{endpoint}/_heal")
        overrides = {"flowControl": {"key": "dlq-restarted", "parallelism": 1}, "retries": 1}
        answer = await sdk_client(
            node, base, "dlq-restart", ",".join(failed), json.dumps(overrides)
        )
        fresh = [restarted["workflowRunId"] for restarted in answer]
        assert len(fresh) == 3 and not set(fresh) & set(failed)
        for run_id in fresh:
            run = await finished_run(client, base, endpoint, run_id)
            assert run.log["workflowState"] == "RUN_SUCCESS", run.log
            assert run.log["flowControl"]["key"] == "dlq-restarted"
            assert run.executions == ["slow", "fast"]
        # One key, parallelism 1: the restarted runs' deliveries never overlapped.
        assert (await client.get(f"{endpoint}/_concurrency")).json() == {"max": 1}


async def test_cancel_by_filter_and_all(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "cancel.db", workers=0) as base,
        httpx.AsyncClient(timeout=10) as client,
    ):
        urls = ["http://127.0.0.1:9/app/a", "http://127.0.0.1:9/app/b", "http://127.0.0.1:9/x"]
        ids = [
            (await sdk_client(node, base, "trigger", url, "{}"))["workflowRunId"] for url in urls
        ]
        prefix = {"workflowUrlStartingWith": "http://127.0.0.1:9/app/"}
        assert await sdk_client(node, base, "cancel-filter", json.dumps(prefix)) == {"cancelled": 2}
        exact = {"workflowUrl": "http://127.0.0.1:9/app"}
        assert await sdk_client(node, base, "cancel-filter", json.dumps(exact)) == {"cancelled": 0}
        states = [
            (await client.get(f"{base}/api/runs/{run_id}", headers=AUTH)).json()["workflowState"]
            for run_id in ids
        ]
        assert states == ["RUN_CANCELED", "RUN_CANCELED", "RUN_STARTED"]
        assert await sdk_client(node, base, "cancel-filter", "all") == {"cancelled": 1}
        unknown = await client.delete(
            f"{base}/qstash/v2/workflows/runs", params={"callerIp": "1.2.3.4"}, headers=AUTH
        )
        assert unknown.status_code == 400 and "callerIp" in unknown.json()["error"]


async def test_flow_control_limits_deliveries(node: str, tmp_path: Path) -> None:
    limited = {"flowControl": {"key": "user-1", "parallelism": 1}}
    async with (
        stepstream_server(tmp_path / "flow.db", workers=4) as base,
        serve_workflows(node, "limited", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{endpoint}/limited"
        options = json.dumps(limited)
        ids = [
            (await sdk_client(node, base, "trigger", url, '{"pause": 400}', "", "", options))[
                "workflowRunId"
            ]
            for _ in range(3)
        ]
        for run_id in ids:
            run = await finished_run(client, base, endpoint, run_id)
            assert run.log["workflowState"] == "RUN_SUCCESS", run.log
            assert run.log["flowControl"]["key"] == "user-1"
            assert run.executions == ["slow", "fast"]
        # One key, parallelism 1: the endpoint never had two deliveries at once.
        assert (await client.get(f"{endpoint}/_concurrency")).json() == {"max": 1}

        bad = {"Upstash-Flow-Control-Key": "k", "Upstash-Flow-Control-Value": "parallel=1"}
        response = await trigger_raw(client, base, bad)
        assert response.status_code == 400 and "parallel=1" in response.json()["error"]


async def trigger_raw(
    client: httpx.AsyncClient, base: str, headers: dict[str, str]
) -> httpx.Response:
    """A trigger (Init message) with ``headers``, through ``/v2/batch``."""
    init = {"Upstash-Workflow-Init": "true", "Upstash-Workflow-RunId": "wfr_raw", **headers}
    batch = [{"destination": "http://127.0.0.1:9/wf", "headers": init, "body": "{}"}]
    return await client.post(f"{base}/qstash/v2/batch", json=batch, headers=AUTH)


async def test_retry_delay_expression(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "delay.db") as base,
        serve_workflows(node, "failing", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        options = json.dumps({"retryDelay": "max(1500, pow(2, retried) * 1000)"})
        answer = await sdk_client(
            node, base, "trigger", f"{endpoint}/failing", "{}", "", "2", options
        )
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        assert run.log["workflowState"] == "RUN_FAILED", run.log
        assert run.executions == ["boom", "boom", "boom", "failureFunction"]
        (step,) = run.log["steps"]
        times = [error["at"] for error in step["errors"]]
        # retried=0: max(1500, 1000); retried=1: max(1500, 2000)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert len(gaps) == 2 and gaps[0] >= 1500 and gaps[1] >= 2000, gaps

        for expression, problem in (
            ("__import__('os')", "a call of anything but"),
            ("retried ** 2", "operator Pow"),
            ("1000 * tries", "the name 'tries'"),
            ("1000 *", "is not an expression"),
        ):
            response = await trigger_raw(client, base, {"Upstash-Retry-Delay": expression})
            assert response.status_code == 400, expression
            assert problem in response.json()["error"], response.json()


async def test_delay_and_not_before_start_the_run_later(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "later.db") as base,
        serve_workflows(node, "two-step", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{endpoint}/two-step"
        delayed = await sdk_client(
            node, base, "trigger", url, "{}", "", "", json.dumps({"delay": "2s"})
        )
        not_before = int(time.time()) + 3
        timed = await sdk_client(
            node, base, "trigger", url, "{}", "", "", json.dumps({"notBefore": not_before})
        )
        run = await finished_run(client, base, endpoint, delayed["workflowRunId"])
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        first = run.log["steps"][0]
        assert first["startedAt"] - run.log["workflowRunCreatedAt"] >= 1900
        run = await finished_run(client, base, endpoint, timed["workflowRunId"])
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["steps"][0]["startedAt"] >= not_before * 1000
        assert run.executions == ["first", "second"]


async def test_dlq_delete_takes_runs_out_of_the_dlq(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "dlq-delete.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/failing", "{}", "", "0")
        run_id = answer["workflowRunId"]
        run = await finished_run(client, base, endpoint, run_id)
        assert run.log["workflowState"] == "RUN_FAILED", run.log
        listed = await sdk_client(node, base, "dlq-list")
        assert [m["dlqId"] for m in listed["messages"]] == [run_id]

        assert (await sdk_client(node, base, "dlq-delete", run_id))["deleted"] == 1
        assert (await sdk_client(node, base, "dlq-list"))["messages"] == []
        log = (await client.get(f"{base}/api/runs/{run_id}", headers=AUTH)).json()
        assert log["workflowState"] == "RUN_FAILED"  # the run is kept
        assert (await sdk_client(node, base, "dlq-delete", run_id))["deleted"] == 0
