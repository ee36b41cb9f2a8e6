"""Access control: the API bearer token and signed, channel-scoped subscription tokens."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from stepstream import Realtime, Workflows
from stepstream.auth import InvalidToken, TokenSigner, _b64
from stepstream.events import SCHEMA
from stepstream.realtime.sse import error_response
from stepstream.server.app import create_app
from tests.server.asgi import call

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
AUTH_BYTES = AUTH["authorization"].encode()


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
    client: httpx.AsyncClient,
    params: dict[str, str] | list[tuple[str, str]],
    headers: list[tuple[bytes, bytes]] | None = None,
    path: str = "/api/realtime",
) -> tuple[int, str, bytes]:
    """Status, content type and first bytes of an SSE request, hanging up once it streams."""
    app = client.app  # type: ignore[attr-defined]
    result = await call(app, path=path, query=urlencode(params).encode(), headers=headers or [])
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
    assert (await sse_status(client, base, [(b"authorization", AUTH_BYTES)]))[0] == 200


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


# -- regressions: issue 8, items 8, 9, 11 and 14 -------------------------------------------------

# Every route of the API (the history endpoint answers to its own rule, below).
API_CALLS = [
    ("GET", "/api/workflows"),
    ("POST", "/api/workflows/hello"),
    ("GET", "/api/runs"),
    ("GET", "/api/runs/wfr_x"),
    ("POST", "/api/runs/wfr_x/cancel"),
    ("POST", "/api/events/some-event"),
    ("POST", "/api/realtime/token"),
    ("GET", "/openapi.json"),
    ("GET", "/api/no-such-route"),
]


def mounted(app: Starlette, how: str) -> tuple[httpx.AsyncClient, str]:
    """A client for ``app`` served at ``/``, under ``Mount("/wf")``, or behind
    ``root_path="/wf"`` the way uvicorn's ``--root-path`` does it (the path keeps the prefix),
    and the prefix its URLs need."""
    if how == "root":
        transport, prefix = httpx.ASGITransport(app=app), ""
    elif how == "mount":
        transport, prefix = httpx.ASGITransport(app=Starlette(routes=[Mount("/wf", app)])), "/wf"
    else:
        transport, prefix = httpx.ASGITransport(app=app, root_path="/wf"), "/wf"
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000"), prefix


@pytest.mark.parametrize("how", ["root", "mount", "root_path"])
async def test_every_api_route_needs_the_token_however_the_app_is_mounted(
    client: httpx.AsyncClient, how: str
) -> None:
    app: Starlette = client.app  # type: ignore[attr-defined]
    http, prefix = mounted(app, how)
    async with http:
        for method, path in API_CALLS:
            for headers in ({}, {"authorization": "Bearer wrong"}):
                response = await http.request(method, prefix + path, headers=headers, json={})
                assert response.status_code == 401, (how, method, path, response.text)
            response = await http.request(method, prefix + path, headers=AUTH, json={})
            assert response.status_code != 401, (how, method, path)
        for path in ("/", "/healthz", "/static/stepstream.js"):  # public, and no data in them
            assert (await http.get(prefix + path)).status_code == 200, (how, path)
        runs = await http.get(f"{prefix}/api/runs", headers=AUTH)
        assert [run["workflowName"] for run in runs.json()["runs"]] == ["hello"]  # one: ours


async def test_history_applies_the_sse_endpoints_token_rule(client: httpx.AsyncClient) -> None:
    realtime: Realtime = client.realtime  # type: ignore[attr-defined]
    await realtime.channel("run-1").emit("workflow.update", {
        "type": "runStart", "workflowRunId": "run-1", "timestamp": 1,
    })  # fmt: skip
    good = realtime.token(["run-1"], ttl=60)
    for params, headers, status in [
        ({"channel": "run-1", "token": good}, {}, 200),
        ({"channel": "run-1"}, AUTH, 200),
        ({"channel": "run-2", "token": good}, {}, 403),
        ({"channel": "run-1"}, {}, 401),
        ({"channel": "run-1", "token": API_TOKEN}, {}, 401),  # never in a URL
        ({"channel": "run-1", "token": good + "x"}, {}, 401),
    ]:
        response = await client.get("/api/realtime/history", params=params, headers=headers)
        assert response.status_code == status, (params, headers, response.text)
        assert ("runStart" in response.text) == (status == 200)


def refuse_secret(request: Request, channels: list[str]) -> Response | None:
    if any(channel.startswith("secret") for channel in channels):
        return error_response(403, "forbidden", "not yours")
    return None


async def test_history_applies_the_sse_middleware(tmp_path: Path) -> None:
    realtime = Realtime(backend=f"sqlite:///{tmp_path / 'mw.db'}", schema=SCHEMA)
    app = create_app(realtime, middleware=refuse_secret)
    async with app.router.lifespan_context(app):
        for channel in ("secret-1", "public"):
            await realtime.channel(channel).emit("workflow.update", {
                "type": "runStart", "workflowRunId": "payroll", "timestamp": 1,
            })  # fmt: skip
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            refused = await http.get("/api/realtime/history", params={"channel": "secret-1"})
            assert refused.status_code == 403 and "payroll" not in refused.text
            sse = await call(app, path="/api/realtime", query=b"channel=secret-1&history=true")
            assert sse.status == 403 and b"not yours" in sse.body
            allowed = await http.get("/api/realtime/history", params={"channel": "public"})
            assert allowed.status_code == 200 and allowed.json()["messages"]


NON_ASCII = "a.\xe9"


async def test_a_non_ascii_token_is_a_401_never_a_500(client: httpx.AsyncClient) -> None:
    with pytest.raises(InvalidToken):
        TokenSigner("k").verify(NON_ASCII)
    app = client.app  # type: ignore[attr-defined]
    header = [(b"authorization", b"Bearer " + NON_ASCII.encode("latin-1"))]
    for path in ("/api/realtime", "/api/realtime/history"):
        for query, headers in [(b"channel=run-1&token=a.%C3%A9", []), (b"channel=run-1", header)]:
            result = await call(app, path=path, query=query, headers=headers)
            assert result.status == 401, (path, query, headers, result.body)
    for method, path in API_CALLS:
        response = await client.request(method, path, headers={"authorization": header[0][1]})
        assert response.status_code == 401, (method, path)


async def test_the_api_token_is_refused_in_a_query_string(client: httpx.AsyncClient) -> None:
    for path in ("/api/realtime", "/api/realtime/history"):
        status, _, body = await sse_status(client, {"channel": "c", "token": API_TOKEN}, path=path)
        assert status == 401 and b"never in a URL" in body, (path, body)
        bearer = [(b"authorization", AUTH_BYTES)]
        assert (await sse_status(client, {"channel": "c"}, bearer, path=path))[0] == 200, path
