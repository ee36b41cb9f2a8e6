"""Webhooks end to end with the real SDK: ``context.createWebhook`` makes a hook URL under
stepstream's ``/qstash``; anyone may call it without the API token, and that call is what the
run's ``context.waitForWebhook`` gets. The app's ``QSTASH_TOKEN`` is a QStash-style token
(base64 JSON with a ``UserID``) whose ``Password`` is the API token."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from stepstream.upstash.hooks import qstash_token
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

QSTASH_TOKEN = qstash_token(TOKEN)


async def hook_of(client: httpx.AsyncClient, base: str, run_id: str) -> dict[str, Any]:
    """The run's ``createWebhook`` result once the run waits for the hook."""
    with anyio.fail_after(15):
        while True:
            log = (await client.get(f"{base}/api/runs/{run_id}", headers=AUTH)).json()
            if [s["stepName"] for s in log.get("steps", [])] == ["hook", "hooked"]:
                made: dict[str, Any] = log["steps"][0]["out"]
                return made
            await anyio.sleep(0.05)  # polling the run, not an assertion


async def test_a_webhook_call_reaches_wait_for_webhook(node: str, tmp_path: Path) -> None:
    env = sdk_env("", QSTASH_TOKEN)
    async with (
        stepstream_server(tmp_path / "hooks.db") as base,
        serve_workflows(
            node, "all", {**env, "QSTASH_URL": f"{base}/qstash"}, tmp_path / "s.log"
        ) as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{endpoint}/webhook"
        # The SDK's Client with the QStash-style token: accepted on /qstash.
        answer = await sdk_client(node, base, "trigger", url, "{}", token=QSTASH_TOKEN)
        run_id = answer["workflowRunId"]
        made = await hook_of(client, base, run_id)
        hook = made["webhookUrl"]
        assert hook == f"{base}/qstash/v2/workflows/hooks/stepstream/{run_id}/{made['eventId']}"

        # Nobody reaches another run's hook, a hook the run did not create, or the rest of
        # /qstash without the token.
        other = hook.replace(run_id, "wfr_" + "x" * 21)
        wrong = hook.replace(made["eventId"], "evt_notmadebyrun")
        for refused in (other, wrong):
            assert (await client.post(refused, content=b"x")).status_code == 404
        assert (await client.get(f"{base}/qstash/v2/waiters/{made['eventId']}")).status_code == 401
        # The QStash-style token is the API token on /qstash only.
        response = await client.get(
            f"{base}/api/runs", headers={"authorization": f"Bearer {QSTASH_TOKEN}"}
        )
        assert response.status_code == 401
        forged = qstash_token("not-the-token")
        response = await client.get(
            f"{base}/qstash/v2/waiters/x", headers={"authorization": f"Bearer {forged}"}
        )
        assert response.status_code == 401

        called = await client.post(hook + "?a=1", content=b"hello", headers={"x-hook": "yes"})
        assert called.status_code == 200, called.text
        run = await finished_run(client, base, endpoint, run_id)
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == {
            "timeout": False,
            "method": "POST",
            "body": "hello",
            "header": "yes",
        }
        assert [(s["stepName"], s["stepType"]) for s in run.log["steps"]] == [
            ("hook", "Run"),
            ("hooked", "Wait"),
        ]
        (log,) = (await sdk_client(node, base, "logs", run_id))["runs"]
        assert [g["steps"][0]["stepType"] for g in log["steps"]] == [
            "Initial",
            "CreateWebhook",
            "WaitForWebhook",
        ]
        assert (await client.post(hook, content=b"again")).status_code == 410  # run ended


async def test_a_webhook_never_called_times_out(node: str, tmp_path: Path) -> None:
    env = sdk_env("", QSTASH_TOKEN)
    async with (
        stepstream_server(tmp_path / "hooks.db") as base,
        serve_workflows(
            node, "all", {**env, "QSTASH_URL": f"{base}/qstash"}, tmp_path / "s.log"
        ) as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        payload = json.dumps({"timeout": "1s"})
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/webhook", payload)
        run = await finished_run(client, base, endpoint, answer["workflowRunId"])
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == {
            "timeout": True,
            "method": None,
            "body": None,
            "header": None,
        }


def test_qstash_tokens_decode_to_the_api_token() -> None:
    decoded = json.loads(base64.b64decode(QSTASH_TOKEN))
    assert decoded == {"UserID": "stepstream", "Password": TOKEN}


async def test_other_notifies_reach_a_webhook_wait_as_a_post_body(
    node: str, tmp_path: Path
) -> None:
    """``POST /api/events/{id}`` (or ``stepstream notify``) to a hook's event id: the SDK gets
    a POST whose body is the data, not a request it cannot rebuild."""
    env = sdk_env("", QSTASH_TOKEN)
    async with (
        stepstream_server(tmp_path / "hooks.db") as base,
        serve_workflows(
            node, "all", {**env, "QSTASH_URL": f"{base}/qstash"}, tmp_path / "s.log"
        ) as endpoint,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await sdk_client(node, base, "trigger", f"{endpoint}/webhook", "{}")
        run_id = answer["workflowRunId"]
        made = await hook_of(client, base, run_id)
        sent = await client.post(
            f"{base}/api/events/{made['eventId']}", json={"x": 1}, headers=AUTH
        )
        assert sent.status_code == 200, sent.text
        run = await finished_run(client, base, endpoint, run_id)
        assert run.log["workflowState"] == "RUN_SUCCESS", run.log
        assert run.log["workflowRunResponse"] == {
            "timeout": False,
            "method": "POST",
            "body": '{"x":1}',
            "header": None,
        }
