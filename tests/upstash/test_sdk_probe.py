"""The real ``@upstash/workflow`` SDK, driven the way QStash drives it: the facts in
``docs/upstash-protocol.md`` checked against the pinned npm package, not against our reading of it.

The test plays QStash twice over. Toward the workflow endpoint (``node/serve.mjs`` serving the
``two-step`` workflow with the SDK's own ``serve``) it sends signed deliveries in QStash's
format; as QStash's ``/v2`` API it runs a small capture server (``QSTASH_URL`` points at it) that
records every call the SDK makes and answers the way QStash does. Nothing here is stepstream yet:
this is the groundwork the ``/qstash`` gateway will be tested against.

Needs ``node`` (20 or later) and ``npm``; ``npm ci`` installs the exact versions of
``node/package-lock.json`` if ``node/node_modules`` is missing or stale. Without them the test is
skipped, saying which is missing (it fails in CI).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.upstash.harness import serve_uvicorn, serve_workflows

pytestmark = pytest.mark.anyio

TOKEN = "probe-token"
CURRENT_KEY = "sig_probe_current"
NEXT_KEY = "sig_probe_next"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# --- QStash's /v2 API, recorded -----------------------------------------------------------


@dataclass
class Call:
    method: str
    path: str
    query: str
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeQStash:
    """Records the SDK's calls and answers like QStash: message ids for publishes, the run's
    raw steps for the lazy fetch (``steps``, set by the test), an empty 200 for deletes."""

    calls: list[Call] = field(default_factory=list)
    steps: list[dict[str, str]] = field(default_factory=list)
    next_id: int = 0

    def message_id(self) -> dict[str, str]:
        self.next_id += 1
        return {"messageId": f"msg_{self.next_id}"}

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = httpx.Headers([(k.decode(), v.decode()) for k, v in scope["headers"]])
        call = Call(scope["method"], scope["path"], scope["query_string"].decode(), headers, body)
        self.calls.append(call)
        status, answer = self.answer(call)
        payload = b"" if answer is None else json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def answer(self, call: Call) -> tuple[int, Any]:
        if call.method == "POST" and call.path == "/v2/batch":
            return 200, [self.message_id() for _ in call.json()]
        if call.method == "POST" and call.path.startswith("/v2/publish/"):
            return 200, self.message_id()
        if call.method == "GET" and call.path.startswith("/v2/workflows/runs/"):
            return 200, self.steps
        if call.method == "DELETE" and call.path.startswith("/v2/workflows/runs/"):
            return 200, None
        return 404, {"error": f"the probe does not fake {call.method} {call.path}"}


@asynccontextmanager
async def fake_qstash(port: int) -> AsyncIterator[FakeQStash]:
    qstash = FakeQStash()
    async with serve_uvicorn(qstash, port, lifespan="off"):
        yield qstash


# --- the workflow endpoint ----------------------------------------------------------------


def workflow_endpoint(
    node: str, workflow: str, qstash_url: str, log: Path
) -> AbstractAsyncContextManager[str]:
    """``serve.mjs`` serving ``workflow`` with the probe's token and signing keys."""
    env = {
        "QSTASH_URL": qstash_url,
        "QSTASH_TOKEN": TOKEN,
        "QSTASH_CURRENT_SIGNING_KEY": CURRENT_KEY,
        "QSTASH_NEXT_SIGNING_KEY": NEXT_KEY,
    }
    return serve_workflows(node, workflow, env, log)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signature(url: str, body: bytes, key: str = CURRENT_KEY) -> str:
    """``Upstash-Signature`` as QStash makes it: an HS256 JWT over the destination URL
    (``sub``) and the body's SHA-256 (``body``), issued by ``Upstash``."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "iss": "Upstash",
        "sub": url,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": f"jwt_{now}",
        "body": b64url(hashlib.sha256(body).digest()),
    }
    signing_input = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))
    mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def raw_step(message_id: str, body: bytes, call_type: str = "step") -> dict[str, str]:
    return {"messageId": message_id, "body": base64.b64encode(body).decode(), "callType": call_type}


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    run_id: str,
    steps: list[dict[str, str]] | None,
    message_id: str,
    *,
    signed: bool = True,
) -> httpx.Response:
    """POST one QStash delivery of the run to the endpoint: the step array (or, with ``None``,
    the empty body that sends the SDK to fetch the steps itself) with QStash's headers."""
    body = b"" if steps is None else json.dumps(steps).encode()
    headers = {
        "content-type": "application/json",
        "upstash-workflow-sdk-version": "1",  # was Upstash-Forward-Upstash-Workflow-Sdk-Version
        "upstash-workflow-runid": run_id,
        "upstash-workflow-url": url,
        "upstash-message-id": message_id,
        "upstash-retried": "0",
        "x-app-header": "kept",  # a user header QStash forwards
    }
    if signed:
        headers["upstash-signature"] = signature(url, body)
    return await client.post(url, content=body, headers=headers)


def published(call: Call) -> dict[str, Any]:
    """The one message of a ``/v2/batch`` call."""
    assert (call.method, call.path) == ("POST", "/v2/batch")
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    [message] = call.json()
    return message  # type: ignore[no-any-return]


async def test_two_step_workflow_over_the_qstash_protocol(node: str, tmp_path: Path) -> None:
    qstash_port = free_port()
    qstash_url = f"http://127.0.0.1:{qstash_port}"
    async with (
        fake_qstash(qstash_port) as qstash,
        workflow_endpoint(node, "two-step", qstash_url, tmp_path / "serve.log") as base,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{base}/two-step"
        payload = b'{"user": "u1"}'

        # 1. Trigger: a request without Upstash-Workflow-Sdk-Version is a first invocation. The
        #    SDK names the run and publishes the payload back to its own URL as an Init message.
        trigger_headers = {
            "content-type": "application/json",
            "x-app-header": "kept",
            "upstash-signature": signature(url, payload),
        }
        response = await client.post(url, content=payload, headers=trigger_headers)
        assert response.status_code == 200, response.text
        assert response.headers["upstash-workflow-sdk-version"] == "1"
        run_id = response.json()["workflowRunId"]
        assert run_id.startswith("wfr_")
        assert response.json()["finishCondition"] == "success"
        [trigger] = qstash.take()
        init = published(trigger)
        assert init["destination"] == url
        # The payload, not yet wrapped in a step array: parsed and re-serialized by the SDK.
        assert init["body"] == '{"user":"u1"}'
        headers = httpx.Headers(init["headers"])
        assert headers["upstash-workflow-init"] == "true"
        assert headers["upstash-workflow-runid"] == run_id
        assert headers["upstash-workflow-url"] == url
        assert headers["upstash-method"] == "POST"
        assert headers["upstash-forward-upstash-workflow-sdk-version"] == "1"
        assert headers["upstash-forward-x-app-header"] == "kept"
        # Every header of the trigger request is forwarded, hop-by-hop ones and the signature
        # included: whoever delivers the run must drop those (see the protocol doc).
        assert headers["upstash-forward-content-length"] == str(len(payload))
        assert set(headers["upstash-feature-set"].split(",")) >= {"LazyFetch", "InitialBody"}
        assert "upstash-failure-callback" not in headers  # serve() alone sets no failure URL
        assert "upstash-retries" not in headers  # 3, the default, is left unsaid

        # 2. First delivery: [initial payload]. The SDK runs step 1 and publishes its result.
        initial = raw_step("msg_init", payload)
        response = await deliver(client, url, run_id, [initial], "msg_init")
        assert response.status_code == 200, response.text
        assert response.json() == {"workflowRunId": run_id, "finishCondition": "success"}
        [first_call] = qstash.take()
        first = published(first_call)
        assert first["destination"] == url
        step1 = json.loads(first["body"])
        assert step1 == {
            "stepId": 1,
            "stepName": "first",
            "stepType": "Run",
            "out": json.dumps({"user": "u1", "n": 1}, separators=(",", ":")),
            "concurrent": 1,
        }
        headers = httpx.Headers(first["headers"])
        assert headers["upstash-workflow-init"] == "false"
        assert headers["upstash-workflow-runid"] == run_id
        assert headers["upstash-forward-upstash-workflow-sdk-version"] == "1"
        # Step messages carry no user headers: QStash keeps the run's headers from its Init
        # message and sends them with every delivery (the test's deliveries do the same).
        assert "upstash-forward-x-app-header" not in headers
        assert "upstash-delay" not in headers

        # 3. Second delivery: [initial, step 1]. Step 1 replays from history; step 2 runs.
        history = [initial, raw_step("msg_1", first["body"].encode())]
        response = await deliver(client, url, run_id, history, "msg_1")
        assert response.status_code == 200, response.text
        [second_call] = qstash.take()
        step2 = json.loads(published(second_call)["body"])
        assert (step2["stepId"], step2["stepName"], step2["out"]) == (2, "second", '"u1-2"')

        # 4. A redelivered step 1 (QStash is at-least-once) is recognised and does nothing.
        response = await deliver(client, url, run_id, [*history, history[1]], "msg_1b")
        assert response.json()["finishCondition"] == "duplicate-step"
        assert qstash.take() == []

        # 5. Last delivery with an empty body: the SDK fetches the run's steps itself (LazyFetch)
        #    and keeps those up to the delivered message id; a later step is ignored.
        history.append(raw_step("msg_2", json.dumps(step2).encode()))
        qstash.steps = [*history, raw_step("msg_later", b'{"stepId": 9}')]
        response = await deliver(client, url, run_id, None, "msg_2")
        assert response.status_code == 200, response.text
        fetch, delete = qstash.take()
        assert (fetch.method, fetch.path) == ("GET", f"/v2/workflows/runs/{run_id}")
        # The route function returned: the SDK ends the run, its result as the body.
        assert (delete.method, delete.path, delete.query) == (
            "DELETE",
            f"/v2/workflows/runs/{run_id}",
            "cancel=false",
        )
        assert delete.json() == {"first": {"user": "u1", "n": 1}, "second": "u1-2"}

        # Each step body ran exactly once across all deliveries.
        executions = (await client.get(f"{base}/_executions")).json()
        assert [e["step"] for e in executions] == ["first", "second"]

        # 6. Signatures: the SDK refuses a delivery without one or signed for another body,
        #    and accepts one signed with the next key (key rotation).
        response = await deliver(client, url, run_id, [initial], "msg_x", signed=False)
        assert response.status_code == 500
        assert "Failed to verify" in response.json()["message"]
        body = json.dumps([initial]).encode()
        forged = {
            "upstash-signature": signature(url, b"other"),
            "upstash-workflow-sdk-version": "1",
        }
        response = await client.post(url, content=body, headers=forged)
        assert response.status_code == 500
        rotated = {
            "upstash-signature": signature(url, body, NEXT_KEY),
            "upstash-workflow-sdk-version": "1",
            "upstash-workflow-runid": run_id,
            "content-type": "application/json",
        }
        response = await client.post(url, content=body, headers=rotated)
        assert response.status_code == 200, response.text
        assert published(qstash.take()[0])["body"] == first["body"]  # same step, same result
