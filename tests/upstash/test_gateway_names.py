"""Telling SDK runs apart by endpoint: every SDK run is a run of the built-in workflow
``upstash``, labelled with its endpoint's path and named ``upstash <path>`` in lists
(``GET /api/runs``, the dashboard, ``stepstream runs``), while ``client.logs`` shows the SDK's
own labels only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from stepstream.records import RunRecord, RunState
from stepstream.upstash.names import endpoint_label, run_name
from tests.upstash.harness import serve_workflows
from tests.upstash.test_gateway import (
    AUTH,
    TOKEN,
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


def test_the_endpoint_label_is_the_path_kept_within_the_label_limits() -> None:
    assert endpoint_label("https://app.example/api/onboarding?user=1#x") == "/api/onboarding"
    assert endpoint_label("http://127.0.0.1:3000") == "/"
    assert endpoint_label("http://app/a\x07b\x7fc") == "/abc"
    long = "http://app/" + "segment/" * 20 + "serve-many-route"
    label = endpoint_label(long)
    assert len(label) == 100 and label.startswith("…") and label.endswith("/serve-many-route")


def test_only_gateway_runs_get_an_endpoint_in_their_name() -> None:
    def run(workflow: str, headers: dict[str, str]) -> RunRecord:
        return RunRecord("wfr_x", workflow, RunState.STARTED, 0, headers=headers)

    assert (
        run_name(run("upstash", {"upstash-workflow-url": "http://a/api/wf"})) == "upstash /api/wf"
    )
    assert run_name(run("upstash-message", {"upstash-destination": "http://a/h"})) == (
        "upstash-message /h"
    )
    assert run_name(run("upstash", {})) == "upstash"  # no URL: nothing to add
    assert run_name(run("billing", {"upstash-workflow-url": "http://a/x"})) == "billing"


async def runs_labelled(client: httpx.AsyncClient, base: str, label: str) -> list[dict[str, str]]:
    response = await client.get(f"{base}/api/runs", params={"label": label}, headers=AUTH)
    assert response.status_code == 200, response.text
    runs: list[dict[str, str]] = response.json()["runs"]
    return runs


async def test_sdk_runs_are_named_and_found_by_their_endpoint(node: str, tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "names.db") as base,
        serve_workflows(node, "all", sdk_env(base), tmp_path / "serve.log") as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        two = await sdk_client(node, base, "trigger", f"{endpoint}/two-step?x=1", "{}", "batch-7")
        par = await sdk_client(node, base, "trigger", f"{endpoint}/parallel", "{}")
        for answer in (two, par):
            run = await finished_run(client, base, endpoint, answer["workflowRunId"])
            assert run.log["workflowState"] == "RUN_SUCCESS", run.log  # signed deliveries

        listed = await runs_labelled(client, base, "/two-step")
        assert [(r["workflowRunId"], r["displayName"]) for r in listed] == [
            (two["workflowRunId"], "upstash /two-step")
        ]
        assert listed[0]["workflowName"] == "upstash"  # still what workers claim it by
        assert listed[0]["labels"] == ["/two-step", "batch-7"]
        listed = await runs_labelled(client, base, "/parallel")
        assert [(r["workflowRunId"], r["displayName"]) for r in listed] == [
            (par["workflowRunId"], "upstash /parallel")
        ]
        log = (await client.get(f"{base}/api/runs/{par['workflowRunId']}", headers=AUTH)).json()
        assert log["displayName"] == "upstash /parallel"

        # The SDK's logs show its own labels only.
        logs = await sdk_client(node, base, "logs", two["workflowRunId"])
        assert logs["runs"][0]["labels"] == ["batch-7"]

        # stepstream runs: the name in the table, the label as its filter.
        result = await anyio.run_process(
            [sys.executable, "-m", "stepstream.cli", "runs", "--label", "/two-step"],
            env={**os.environ, "STEPSTREAM_URL": base, "STEPSTREAM_TOKEN": TOKEN},
            check=False,
        )
        table = result.stdout.decode()
        assert result.returncode == 0, result.stderr.decode()
        assert two["workflowRunId"] in table and "upstash /two-step" in table
        assert par["workflowRunId"] not in table


def init(run_id: str, url: str, labels: list[str]) -> dict[str, object]:
    return {
        "destination": url,
        "headers": {
            "Upstash-Workflow-Init": "true",
            "Upstash-Workflow-RunId": run_id,
            "Upstash-Label": ",".join(labels),
        },
        "body": "{}",
    }


async def test_labels_leave_room_for_the_endpoint_label(tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "labels.db", workers=0) as base,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = "http://127.0.0.1:9/api/" + "very-long-segment/" * 10 + "wf"
        labels = [f"l{i}" for i in range(19)]
        batch = f"{base}/qstash/v2/batch"
        taken = await client.post(batch, json=[init("wfr_ok", url, labels)], headers=AUTH)
        assert taken.status_code == 200, taken.text
        (run,) = await runs_labelled(client, base, endpoint_label(url))
        assert run["labels"] == [endpoint_label(url), *labels]
        assert run["displayName"] == f"upstash {endpoint_label(url)}"

        refused = await client.post(
            batch, json=[init("wfr_no", url, [*labels, "l19"])], headers=AUTH
        )
        assert refused.status_code == 400
        assert "Upstash-Label has 20 labels: give at most 19" in refused.json()["error"]


async def test_plain_messages_are_named_after_their_destination(tmp_path: Path) -> None:
    async with (
        stepstream_server(tmp_path / "plain.db", workers=0) as base,
        httpx.AsyncClient(timeout=10) as client,
    ):
        published = await client.post(
            f"{base}/qstash/v2/publish/http://127.0.0.1:9/api/hook",
            content=json.dumps({"user": "u1"}),
            headers={**AUTH, "content-type": "application/json"},
        )
        assert published.status_code == 200, published.text
        (run,) = await runs_labelled(client, base, "/api/hook")
        assert run["workflowRunId"] == published.json()["messageId"]
        assert run["displayName"] == "upstash-message /api/hook"
