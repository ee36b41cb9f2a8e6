"""What every request passes before a route (``server/app.py`` ``Guard``): the Host rule without a
token (DNS rebinding), Origin on writes (cross-site requests), a JSON body on writes, and bounds on
every body the app reads: its size and the time it takes to arrive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from stepstream import Realtime, WorkflowContext, Workflows
from stepstream.errors import BackendUnavailable
from stepstream.server.app import Guard, create_app
from stepstream.upstash.hooks import qstash_token
from tests.conftest import free_port
from tests.server.asgi import call

pytestmark = pytest.mark.anyio

LIMIT = 1_000_000
SAME_ORIGIN = "http://127.0.0.1:8000"


def build(tmp_path: Path, **options: Any) -> Starlette:
    workflows = Workflows(realtime=Realtime(backend=f"sqlite:///{tmp_path / 'guard.db'}"))

    @workflows.workflow("nap")
    async def nap(context: WorkflowContext) -> None:
        await context.sleep("nap", 3600)

    return workflows.asgi(workers=0, **options)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Starlette]:
    app = build(tmp_path)
    async with app.router.lifespan_context(app):
        yield app


def client(app: Starlette, host: str = "127.0.0.1:8000") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


async def stored_runs(app: Starlette) -> list[str]:
    page = await app.state.workflows.backend.list_runs(
        state=None, workflow=None, cursor=None, count=100
    )
    return [run.id for run in page.runs]


# -- Host: DNS rebinding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.evil.example",
        "localhost.evil.example:8000",
        "127.0.0.1:8000@evil.example",
        "[::2]:8000",
        "10.0.0.5:8000",
        "",
        "127.0.0.1:http",
    ],
)
async def test_without_a_token_only_loopback_host_names_are_served(
    app: Starlette, host: str
) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: it gets a 403, no data."""
    for method, path in [
        ("GET", "/api/runs"),
        ("GET", "/api/workflows"),
        ("GET", "/"),
        ("GET", "/api/realtime/history"),
        ("GET", "/api/realtime"),
        ("POST", "/api/workflows/nap"),
    ]:
        result = await call(app, method, path, headers=[(b"host", host.encode())])
        assert result.status == 403, (host, method, path, result.body)
        assert b"forbidden_host" in result.body and b"STEPSTREAM_TOKEN" in result.body
    assert await stored_runs(app) == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST:3000", "[::1]", "[::1]:9"]
)
async def test_loopback_host_names_are_served(app: Starlette, host: str) -> None:
    async with client(app, host) as http:
        assert (await http.get("/api/runs")).status_code == 200
        assert (await http.post("/api/workflows/nap", json={})).status_code == 202


async def test_with_a_token_any_host_is_served(tmp_path: Path) -> None:
    app = build(tmp_path, token="t0ken")
    async with app.router.lifespan_context(app), client(app, "stepstream.example.com") as http:
        assert (await http.get("/api/runs")).status_code == 401
        assert (await http.get("/api/runs", headers={"authorization": "Bearer t0ken"})).is_success


async def test_allowed_hosts_names_the_hosts_served(tmp_path: Path) -> None:
    app = build(tmp_path, allowed_hosts=["wf.internal"])
    async with app.router.lifespan_context(app):
        async with client(app, "wf.internal:8000") as http:
            assert (await http.get("/api/runs")).status_code == 200
        async with client(app, "127.0.0.1:8000") as http:
            assert (await http.get("/api/runs")).status_code == 403


# -- Origin: cross-site writes ------------------------------------------------------------------

WRITES = [
    ("/api/workflows/nap", b"{}"),
    ("/api/runs/wfr_x/cancel", b""),
    ("/api/events/approve", b"{}"),
    ("/api/realtime/token", b'{"channels": ["a"]}'),
]


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999"])
async def test_cross_origin_writes_are_refused(app: Starlette, origin: str) -> None:
    async with client(app) as http:
        for path, body in WRITES:
            headers = {"origin": origin, "content-type": "application/json"}
            response = await http.post(path, content=body, headers=headers)
            assert response.status_code == 403, (origin, path, response.text)
            assert response.json()["error"]["code"] == "cross_origin"
        # Reading is not a write (and without CORS headers the page cannot read the answer).
        assert (await http.get("/api/runs", headers={"origin": origin})).status_code == 200
    assert await stored_runs(app) == []


async def test_same_origin_and_configured_origins_may_write(tmp_path: Path) -> None:
    app = build(tmp_path, cors_origins=["https://app.example"])
    async with app.router.lifespan_context(app), client(app) as http:
        for origin in (SAME_ORIGIN, "https://app.example", None):
            headers = {"origin": origin} if origin else {}
            response = await http.post("/api/workflows/nap", json={}, headers=headers)
            assert response.status_code == 202, (origin, response.text)
        assert len(await stored_runs(app)) == 3


# -- writes carry JSON --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_write_with_a_body_that_is_not_said_to_be_json_is_a_415(
    app: Starlette, content_type: str | None
) -> None:
    """The "simple" requests any page can send cross-site without a preflight."""
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    for path, body in WRITES:
        body = body or b"{}"
        result = await call(
            app,
            "POST",
            path,
            headers=[*headers, (b"content-length", str(len(body)).encode())],
            body=body,
        )
        assert result.status == 415, (content_type, path, result.body)
        assert b"application/json" in result.body
    assert await stored_runs(app) == []


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON", "a/b+json"],
)
async def test_json_content_types_are_accepted(app: Starlette, content_type: str) -> None:
    async with client(app) as http:
        response = await http.post(
            "/api/workflows/nap", content=b"{}", headers={"content-type": content_type}
        )
        assert response.status_code == 202, response.text
        # No body, no content type needed (cancel).
        run_id = response.json()["workflowRunId"]
        assert (await http.post(f"/api/runs/{run_id}/cancel")).status_code == 200


# -- bounded bodies -----------------------------------------------------------------------------

JSON = (b"content-type", b"application/json")


def chunked(total: int, size: int = 64 * 1024) -> list[bytes]:
    """At least ``total`` bytes in chunks, as a body without a Content-Length arrives."""
    return [b" " * size] * (total // size + 1)


@pytest.fixture
def guide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Starlette]:
    monkeypatch.chdir(tmp_path)  # its default store is relative to the working directory
    from examples.guide_app import app as guide_app

    yield guide_app


async def test_every_body_the_app_reads_is_bounded(app: Starlette, guide: Starlette) -> None:
    over = b" " * LIMIT + b"1"
    for target, path in [
        (app, "/api/realtime/token"),
        (app, "/api/workflows/nap"),
        (app, "/api/events/approve"),
        (guide, "/api/trigger"),
    ]:
        length = (b"content-length", str(len(over)).encode())
        said = await call(target, "POST", path, headers=[JSON, length], body=over)
        streamed = await call(
            target, "POST", path, headers=[JSON, (b"transfer-encoding", b"chunked")],
            body=chunked(len(over)),
        )  # fmt: skip
        for result in (said, streamed):
            assert result.status == 413, (path, result.body[:200])
            assert f"{LIMIT}-byte limit".encode() in result.body
    assert await stored_runs(app) == []


async def test_max_body_is_configurable(tmp_path: Path) -> None:
    app = build(tmp_path, max_body=100)
    async with app.router.lifespan_context(app), client(app) as http:
        assert (await http.post("/api/workflows/nap", json="x" * 98)).status_code == 202
        refused = await http.post("/api/workflows/nap", json="x" * 99)
        assert refused.status_code == 413 and "100-byte limit" in refused.text


async def test_a_body_that_does_not_arrive_in_time_is_a_408(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends its headers, then its body a byte at a time (slowloris on the body)."""
    monkeypatch.setattr(Guard, "body_timeout", 0.2)
    sent: list[dict[str, Any]] = []
    chunks = [b"["]

    async def receive() -> dict[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(), "more_body": True}
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/api/workflows/nap", "raw_path": b"",
        "root_path": "", "query_string": b"", "scheme": "http", "http_version": "1.1",
        "headers": [(b"host", b"127.0.0.1"), JSON, (b"content-length", b"10")],
        "asgi": {"version": "3.0"}, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), 5)
    assert sent[0]["status"] == 408
    assert b"did not arrive within 0.2 s" in sent[1]["body"]
    assert await stored_runs(app) == []


# -- found by the hostile-input chaos scenario --------------------------------------------------


async def test_a_query_string_that_is_not_utf8_is_a_400_never_a_500(app: Starlette) -> None:
    """Starlette builds a URL from the raw query string (redirects, 404 pages) and decodes it as
    UTF-8; uvicorn refuses such bytes, other servers may pass them through."""
    for path in ("/api/nothing", "/api/runs/", "/static/", "/api/runs"):
        result = await call(app, "GET", path, query=b"a=\x80\xff")
        assert result.status == 400, (path, result.body)
        assert b"not UTF-8" in result.body


async def test_the_public_health_check_does_not_leak_the_backend_url() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    result = await call(create_app(Realtime(backend=url)), "GET", "/healthz")
    assert result.status == 503, result.body
    assert b"hunter2" not in result.body and b"127.0.0.1" not in result.body
    assert json.loads(result.body) == {  # the API's error shape, beside the status
        "status": "unavailable",
        "error": {"code": "backend_unavailable", "message": "the backend does not answer"},
    }


async def test_the_prefix_without_its_slash_redirects_to_the_dashboard_with_a_token(
    tmp_path: Path,
) -> None:
    # Served under uvicorn --root-path /wf, "/wf" routes as the empty path: like "/", it must
    # reach Starlette's redirect to "/wf/" rather than be refused for want of a token.
    app = build(tmp_path, token="s3cret")
    async with app.router.lifespan_context(app):
        answer = await call(app, "GET", "/wf", root_path="/wf")
        refused = await call(app, "GET", "/wf/api/runs", root_path="/wf")
    assert answer.status in {307, 308}, answer
    assert refused.status == 401


# -- the QStash gateway: webhook URLs, QStash-style tokens --------------------------------------


async def test_only_exact_webhook_urls_pass_without_the_token(tmp_path: Path) -> None:
    """``/qstash/v2/workflows/hooks/{user}/{wfr_run}/{evt_id}`` is called by third parties; the
    route checks the run made that hook. Any other shape under ``/qstash`` needs the token."""
    app = build(tmp_path, token="s3cret")
    hooks = "/qstash/v2/workflows/hooks"
    async with app.router.lifespan_context(app), client(app) as http:
        hook = await http.post(f"{hooks}/u/wfr_abc/evt_abcdefgh", content=b"x")
        assert hook.status_code == 404  # past the Guard: the gateway is off here
        for path in (
            f"{hooks}/u/wfr_abc/evt_abcdefgh/more",
            f"{hooks}/u/wfr_abc/approve-wfr_abc",  # not a webhook's event id
            f"{hooks}/u/other/evt_abcdefgh",
            "/qstash/v2/waiters/evt_abcdefgh",
        ):
            assert (await http.post(path, content=b"x")).status_code == 401, path

        # A QStash-style token (base64 JSON, Password = the API token): on /qstash only.
        bearer = {"authorization": f"Bearer {qstash_token('s3cret')}"}
        assert (await http.get("/qstash/v2/waiters/e", headers=bearer)).status_code == 404
        assert (await http.get("/api/runs", headers=bearer)).status_code == 401
        wrong = {"authorization": f"Bearer {qstash_token('guess')}"}
        assert (await http.get("/qstash/v2/waiters/e", headers=wrong)).status_code == 401


async def test_a_configured_origin_may_call_the_api_from_a_page(tmp_path: Path) -> None:
    """CORS for the whole API, not only the SSE endpoint: a page of a configured origin gets
    its preflight answered (before the token check: a browser sends none with it) and can read
    the answers; any other origin gets no CORS headers."""
    app = build(tmp_path, cors_origins=["https://app.example"], token="s3cret")
    async with app.router.lifespan_context(app), client(app, "api.example") as http:
        preflight = await http.options(
            "/api/workflows/nap",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        auth = {"authorization": "Bearer s3cret", "origin": "https://app.example"}
        started = await http.post("/api/workflows/nap", json={}, headers=auth)
        assert started.status_code == 202, started.text
        assert started.headers["access-control-allow-origin"] == "https://app.example"
        listed = await http.get("/api/runs", headers=auth)
        assert listed.headers["access-control-allow-origin"] == "https://app.example"
        refused = await http.get("/api/runs", headers={"origin": "https://app.example"})
        assert refused.status_code == 401  # readable by the page: it says why
        assert refused.headers["access-control-allow-origin"] == "https://app.example"
        other = await http.get("/api/runs", headers={**auth, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_a_storage_outage_is_logged_once_not_per_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's 503s were its only trace of a storage outage (the access log): it warns,
    at most once every ten seconds."""
    app = build(tmp_path)
    async with app.router.lifespan_context(app), client(app) as http:
        backend = app.state.workflows.backend

        async def down(*_: Any, **__: Any) -> None:
            raise BackendUnavailable("PostgreSQL at postgresql://db/app: connection refused")

        monkeypatch.setattr(backend, "find_runs", down)
        for _ in range(3):
            assert (await http.get("/api/runs")).status_code == 503
    warned = [r.getMessage() for r in caplog.records if "storage unavailable" in r.getMessage()]
    assert len(warned) == 1 and "connection refused" in warned[0], warned


async def test_any_origin_opens_the_api_only_behind_a_token(tmp_path: Path) -> None:
    """``cors_origins=["*"]`` without a token: the API answers no preflight and carries no
    CORS header (any site a developer visits could otherwise read and start runs), while the
    SSE endpoint keeps its own CORS; with a token, any page holding it may call the API."""
    preflight = {
        "origin": "https://evil.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    app = build(tmp_path / "open", cors_origins=["*"])
    async with app.router.lifespan_context(app), client(app) as http:
        answered = await http.options("/api/workflows/nap", headers=preflight)
        assert "access-control-allow-origin" not in answered.headers
        listed = await http.get("/api/runs", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in listed.headers
        sse = await http.options(
            "/api/realtime?channel=a",
            headers={**preflight, "access-control-request-method": "GET",
                     "access-control-request-headers": "x-custom"},
        )  # fmt: skip
        assert sse.headers.get("access-control-allow-origin") == "*", sse.headers
    guarded = build(tmp_path / "guarded", cors_origins=["*"], token="s3cret")
    async with guarded.router.lifespan_context(guarded), client(guarded, "api.example") as http:
        answered = await http.options("/api/workflows/nap", headers=preflight)
        assert answered.headers["access-control-allow-origin"] == "*"
