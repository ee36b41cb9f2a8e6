"""Access control: the API bearer token and signed, channel-scoped subscription tokens."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from stepstream import Realtime, Workflows
from stepstream.auth import TokenSigner, _b64
from tests.realtime.sse_client import asgi_get

pytestmark = pytest.mark.anyio

API_TOKEN = "s3cret-api-token"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    realtime = Realtime(backend=f"sqlite:///{tmp_path / 'auth.db'}", secret="test-secret")
    workflows = Workflows(realtime=realtime)

    @workflows.workflow("hello")
    async def hello(context: object) -> str:
        return "hi"

    app = workflows.asgi(workers=0, token=API_TOKEN)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            http.realtime = realtime  # type: ignore[attr-defined]
            http.app = app  # type: ignore[attr-defined]
            yield http


AUTH = {"authorization": f"Bearer {API_TOKEN}"}


async def test_api_needs_the_token(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/runs"),
        ("GET", "/api/workflows"),
        ("POST", "/api/workflows/hello"),
        ("GET", "/api/realtime/history?channel=x"),
        ("POST", "/api/realtime/token"),
    ]:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": API_TOKEN}):
            response = await client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["code"] == "unauthorized"
    assert (await client.get("/api/runs")).status_code == 401
    assert (await client.get("/api/runs", headers=AUTH)).status_code == 200
    triggered = await client.post("/api/workflows/hello", json={}, headers=AUTH)
    assert triggered.status_code == 202
    assert (await client.get("/healthz")).status_code == 200  # liveness stays open


async def test_rejected_calls_store_nothing(client: httpx.AsyncClient) -> None:
    await client.post("/api/workflows/hello", json={})
    runs = (await client.get("/api/runs", headers=AUTH)).json()["runs"]
    assert runs == []


async def sse_status(
    client: httpx.AsyncClient, params: dict[str, str] | list[tuple[str, str]]
) -> tuple[int, str, bytes]:
    """Status, content type and first bytes of an SSE request, hanging up once it streams."""
    app = client.app  # type: ignore[attr-defined]
    result = await asgi_get(app, urlencode(params).encode())
    return result.status, result.headers["content-type"], result.body


async def test_sse_refuses_without_a_valid_token_before_any_event(
    client: httpx.AsyncClient,
) -> None:
    realtime: Realtime = client.realtime  # type: ignore[attr-defined]
    await realtime.channel("run-1").emit("workflow.update", {
        "type": "runStart", "workflowRunId": "run-1", "timestamp": 1,
    })  # fmt: skip
    good = realtime.token(["run-1"], ttl=60)
    other = realtime.token(["run-2"], ttl=60)
    signer = TokenSigner("test-secret")
    lapsed = _b64(json.dumps({"c": ["run-1"], "e": int(time.time()) - 10}).encode())
    expired = f"{lapsed}.{signer._sign(lapsed)}"
    payload, _, signature = good.partition(".")
    tampered = f"{payload[:-2]}xx.{signature}"
    foreign = TokenSigner("another-secret").mint(["run-1"], ttl=60)
    base = {"channel": "run-1", "dialect": "native", "history": "true"}
    cases = {
        "missing": ({}, 401),
        "expired": ({"token": expired}, 401),
        "other channel": ({"token": other}, 403),
        "tampered": ({"token": tampered}, 401),
        "other secret": ({"token": foreign}, 401),
        "garbage": ({"token": "not-a-token"}, 401),
    }
    for name, (extra, status) in cases.items():
        code, content_type, body = await sse_status(client, {**base, **extra})
        assert code == status, name
        assert content_type.startswith("application/json"), name
        assert b"runStart" not in body, name
    code, content_type, _ = await sse_status(client, {**base, "token": good})
    assert code == 200 and content_type.startswith("text/event-stream")
    assert (await sse_status(client, {**base, "token": API_TOKEN}))[0] == 200


async def test_a_token_for_one_channel_does_not_open_two(client: httpx.AsyncClient) -> None:
    realtime: Realtime = client.realtime  # type: ignore[attr-defined]
    token = realtime.token(["a"], ttl=60)
    params = [("channel", "a"), ("channel", "b"), ("token", token)]
    status, _, body = await sse_status(client, params)
    assert status == 403
    assert "channel(s) b" in body.decode()


async def test_minting_endpoint(client: httpx.AsyncClient) -> None:
    reply = await client.post(
        "/api/realtime/token", json={"channels": ["run-9"], "ttl": 30}, headers=AUTH
    )
    assert reply.status_code == 200
    token = reply.json()["token"]
    assert (await sse_status(client, {"channel": "run-9", "token": token}))[0] == 200
    bad = await client.post("/api/realtime/token", json={"channels": "x"}, headers=AUTH)
    assert bad.status_code == 400
    long = await client.post("/api/realtime/token", json={"channels": ["x" * 500]}, headers=AUTH)
    assert long.status_code == 422
