"""Chaos scenario 6: hostile input (issue 8, DESIGN §5 and §10: "a client can never cause a 500").

Property-based fuzzing (hypothesis) of the HTTP API and every other route (paths, raw query
strings with invalid UTF-8, header bytes, bodies: any JSON, bad JSON, invalid UTF-8, deep
nesting), of the SSE endpoint's query parameters and cursors, of tokens, and of schema
validation; then, through a real uvicorn server on 127.0.0.1 served the way ``stepstream
dev``/``server`` serve it, the big and slow inputs: 10,000-deep JSON, 50 MB bodies (said and
chunked), invalid UTF-8 in the request line, headers and body, huge headers, slowloris clients
(headers and bodies a drip at a time, idle connections). Every request gets a 4xx (never a 5xx)
or is closed, within a bound; a refused request changes nothing stored, and the server answers
others all along.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from stepstream import Realtime, WorkflowContext, Workflows
from stepstream.auth import InvalidToken, TokenSigner, channel_refusal
from stepstream.errors import ValidationError
from stepstream.realtime.channel import Channel
from stepstream.server.app import Guard
from tests.chaos.conftest import scale
from tests.conftest import free_port
from tests.server.asgi import Result, call, route_templates, snapshot

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(900)]

TOKEN = "hostile-api-token-0123456789"
EXAMPLES = scale(100, 1000)
DEEP = 10_000
BIG = 50 * 1024 * 1024
WITHIN = 10.0  # seconds any one request may take to be answered or closed
SLOW_CLIENTS = scale(20, 200)
HEAD_TIMEOUT = BODY_TIMEOUT = 1.5  # the servers' bounds, shortened for the test


@dataclass
class Target:
    app: Starlette
    workflows: Workflows
    token: str | None


async def build(backend_url: str, token: str | None) -> Target:
    realtime = Realtime(backend=backend_url, secret="hostile-secret")
    workflows = Workflows(realtime=realtime)

    @workflows.workflow("echo")
    async def echo(context: WorkflowContext) -> Any:
        return await context.run("echo", lambda: context.request_payload)

    @workflows.workflow("approval")
    async def approval(context: WorkflowContext) -> Any:
        return await context.wait_for_event("approve", "approve")

    # No workers: nothing changes the store but the requests, so a snapshot is exact.
    return Target(workflows.asgi(workers=0, token=token), workflows, token)


@pytest.fixture(params=["open", "token"])
async def target(backend_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    target = await build(backend_url, TOKEN if request.param == "token" else None)
    async with target.app.router.lifespan_context(target.app):
        client = target.workflows.client()
        await client.trigger("echo", {"seed": 1}, workflow_run_id="seeded")
        await client.trigger("approval", None, workflow_run_id="waiting")
        await target.workflows.realtime.channel("feed").emit(  # type: ignore[union-attr]
            "workflow.update", {"type": "runStart", "workflowRunId": "x", "timestamp": 1}
        )
        yield target


# -- strategies -----------------------------------------------------------------------------------

WEIRD = [
    "", "%", "%%", "%ff%fe", "%c3%28", "%00", "%0d%0a", "..", "%2e%2e", "%2F", "é", "😀",
    "\u202e", "a" * 300, "-1", "0", "1e400", "nan", "9" * 40, "0-0", "1-1", "99999999999999999-0",
    "wfr_seeded", "seeded", "waiting", "echo", "approval", "feed", "true", "false",
]  # fmt: skip
RAW_PIECE = st.one_of(
    st.sampled_from(WEIRD),
    st.text(max_size=30).map(lambda t: quote(t, safe="")),
    st.binary(max_size=20).map(lambda b: quote_from_bytes(b, safe="")),
)
QUERY_KEYS = [
    "token", "channel", "channels", "history", "history_all", "history_length", "history_since",
    "connection_start", "events", "dialect", "reconnect", "last_ack_feed", "last_ack_", "limit",
    "after", "cursor", "count", "state", "workflow", "workflowRunId", "delay",
]  # fmt: skip
QUERY = st.lists(
    st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), RAW_PIECE), RAW_PIECE), max_size=6
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode())
RAW_QUERY = st.one_of(QUERY, st.binary(max_size=60).filter(lambda b: b"#" not in b))
HEADER_VALUE = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
HEADER_NAMES = [
    b"authorization", b"content-type", b"last-event-id", b"origin", b"cookie",
    b"content-length", b"transfer-encoding", b"x-api-key", b"accept", b"x-forwarded-for",
]  # fmt: skip
HEADER_VALUES = [
    b"application/json", b"text/plain", b"application/json; charset=latin-1",
    b"Bearer " + TOKEN.encode(), b"Bearer a.\xe9", b"Bearer ", b"null", b"http://evil.example",
    b"feed=0-0", b"-1", b"chunked", b"99999999999999999999",
]  # fmt: skip
HEADERS = st.lists(
    st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUE | st.sampled_from(HEADER_VALUES)),
    max_size=5,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
NESTED = [b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP]
HOSTILE_BODIES = [
    *NESTED, b"\xff\xfe\x00", b'{"channels": ["feed"], "ttl": 1e400}', b'{"channels": [1, null]}',
    b'"\xed\xa0\x80"', b'{"workflowType": {"x": 1}}', b"NaN",
    b'{"channels": ["' + b"x" * 600 + b'"]}',
]  # fmt: skip
BODY = st.one_of(
    st.just(b""),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from(HOSTILE_BODIES),
)
METHODS = st.sampled_from(["GET", "GET", "POST", "POST", "HEAD", "OPTIONS", "PUT", "DELETE"])


def fill(template: str, pieces: list[str]) -> str:
    """The template's ``{params}`` replaced by fuzzed pieces (percent-encoded or not)."""
    path, n = template, 0
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + pieces[n % len(pieces)] + path[end + 1 :]
        n += 1
    return path


def check_answer(result: Result, method: str, what: object) -> None:
    assert result.status < 500, (what, result.status, result.body[:300])
    if result.status >= 400 and method != "HEAD":
        body = json.loads(result.body)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, what


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


# -- in process: every route, fuzzed --------------------------------------------------------------


@FUZZ
@given(
    route=st.integers(min_value=0),
    pieces=st.lists(RAW_PIECE, min_size=1, max_size=3),
    method=METHODS,
    query=RAW_QUERY,
    headers=HEADERS,
    body=BODY,
    chunks=st.integers(min_value=1, max_value=3),
)
async def test_fuzzed_requests_never_5xx_and_refusals_change_nothing(
    target: Target,
    route: int,
    pieces: list[str],
    method: str,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    chunks: int,
) -> None:
    templates = [path for _, path in route_templates(target.app)] + ["/api/{x}", "/{x}"]
    path = fill(templates[route % len(templates)], pieces)
    size = max(1, len(body) // chunks)
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    before = await snapshot(target.workflows, ["feed"])
    result = await call(
        target.app, method, path, query=query, headers=headers, body=parts, within=WITHIN
    )
    event(f"{method} {result.status}")
    check_answer(result, method, (method, path, query, headers, body[:100]))
    if result.status >= 400:
        assert await snapshot(target.workflows, ["feed"]) == before, (method, path, result.body)


@FUZZ
@given(query=QUERY, last_event_id=st.one_of(st.none(), HEADER_VALUE), use_token=st.booleans())
async def test_fuzzed_sse_queries_and_cursors(
    target: Target, query: bytes, last_event_id: bytes | None, use_token: bool
) -> None:
    headers = [] if last_event_id is None else [(b"last-event-id", last_event_id)]
    if use_token and target.token:
        headers.append((b"authorization", f"Bearer {target.token}".encode()))
    for path in ("/api/realtime", "/api/realtime/history"):
        result = await call(target.app, "GET", path, query=query, headers=headers, within=WITHIN)
        event(f"{path} {result.status}")
        check_answer(result, "GET", (path, query, headers))
        if result.streamed:
            assert result.body.startswith((b"data: ", b"id: ")), result.body[:200]
        elif target.token and not use_token and b"token=" not in query:
            assert result.status in {400, 401}, (path, query, result.status)


TOKENS = st.text(max_size=80) | st.binary(max_size=80).map(lambda b: b.decode("latin-1"))


@FUZZ
@given(token=TOKENS, channels=st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3))
def test_fuzzed_tokens_are_refused_cleanly(token: str, channels: list[str]) -> None:
    signer = TokenSigner("k")
    with contextlib.suppress(InvalidToken):  # any other exception fails the test
        signer.verify(token)
    for query, header in ((token, None), (None, token)):
        refusal = channel_refusal(
            channels, signer=signer, api_token=TOKEN, query_token=query, bearer_token=header
        )
        assert refusal is not None and refusal.status in {401, 403}


@pytest.fixture
def channel(make_realtime: Callable[..., Realtime]) -> Channel:
    return make_realtime().channel("fuzzed")


@FUZZ
@given(data=JSON, kind=st.sampled_from(["runStart", "stepStart", "stepFinish", "runFinish", "x"]))
async def test_fuzzed_events_are_valid_or_a_validation_error(
    channel: Channel, data: Any, kind: str
) -> None:
    """Schema validation: anything is accepted as valid or refused with ``ValidationError``,
    never another exception, and a refused event is not stored."""
    payload = {"type": kind, "workflowRunId": "x", "timestamp": 1, "stepName": "s", "status": "x"}
    for value in (data, {**payload, "result": data}, {**payload, "timestamp": data}):
        before = await channel.history(limit=1)
        try:
            await channel.emit("workflow.update", value)
        except ValidationError:
            assert await channel.history(limit=1) == before


# -- a real uvicorn server: big and slow inputs ---------------------------------------------------


@dataclass
class Served:
    port: int
    target: Target

    async def exchange(
        self, head: bytes, body: bytes | list[bytes] = b"", pause: float = 0.0
    ) -> tuple[int | None, float]:
        """Send a request (``body`` a chunk at a time, ``pause`` seconds apart) while reading:
        the answer's status (``None``: closed without one) and how long it took."""
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        chunks = [body] if isinstance(body, bytes) else body

        async def write() -> None:
            try:
                writer.write(head)
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                    if pause:
                        await asyncio.sleep(pause)
            except (ConnectionError, OSError):
                pass  # the server answered and closed before the whole body: expected

        sender = asyncio.create_task(write())
        try:
            line = await asyncio.wait_for(reader.readline(), WITHIN)
        except (ConnectionError, OSError):
            line = b""
        finally:
            sender.cancel()
            writer.close()
        took = time.monotonic() - start
        assert took < WITHIN, (head[:80], took)
        return (int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None), took


def request(method: str, path: str, *headers: str, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@pytest.fixture
async def served(
    backend_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Served]:
    """The app as ``stepstream dev`` serves it (its uvicorn protocol), with short bounds."""
    from stepstream.server import protocol

    monkeypatch.setattr(protocol, "HEADER_TIMEOUT", HEAD_TIMEOUT)
    monkeypatch.setattr(Guard, "body_timeout", BODY_TIMEOUT)
    target = await build(backend_url, None)
    port = free_port()
    config = uvicorn.Config(
        target.app, host="127.0.0.1", port=port, http=protocol.BoundedHttp, log_level="error"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)  # waiting for the port, not an assertion
    try:
        await target.workflows.client().trigger("echo", {"seed": 1}, workflow_run_id="seeded")
        yield Served(port, target)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


WRITES = ["/api/workflows/echo", "/api/events/approve", "/api/realtime/token"]
JSON_TYPE = "Content-Type: application/json"


async def test_big_and_malformed_inputs_through_uvicorn(served: Served) -> None:
    before = await snapshot(served.target.workflows, ["feed"])
    for path in WRITES:
        for body in NESTED:
            assert (await served.exchange(request("POST", path, body=body)))[0] == 400, path
        big = request("POST", path, JSON_TYPE, f"Content-Length: {BIG}")
        assert (await served.exchange(big, [b" " * 1_000_000] * 50))[0] == 413, path
        chunked = request("POST", path, JSON_TYPE, "Transfer-Encoding: chunked")
        chunk = b"%x\r\n%s\r\n" % (1_000_000, b" " * 1_000_000)
        assert (await served.exchange(chunked, [chunk] * 50))[0] == 413, path
        assert (await served.exchange(request("POST", path, body=b"\xff\xfe\xfd")))[0] == 400
    for raw in [
        b"GET /api/runs/\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/runs?state=\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: \x00\r\n\r\n",
        b"GET /api/runs/%ff%fe%00 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /api/realtime?channel=%ff&last_ack_%ff=%ff HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\n\r\n",
        b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Origin: \xff\r\nConnection: close\r\n\r\n",
        b"POST /api/workflows/echo HTTP/1.1\r\nHost: \xff\r\nContent-Length: 2\r\n\r\n{}",
        b"NONSENSE\r\n\r\n",
    ]:
        status, _ = await served.exchange(raw)
        assert status is None or status < 500, (raw[:80], status)
    for huge in [
        b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
        b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-N: 1\r\n" * 10_000 + b"\r\n",
        b"GET " + b"/api/runs/" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ]:
        assert (await served.exchange(huge))[0] == 431, huge[:80]
    assert await snapshot(served.target.workflows, ["feed"]) == before


async def test_slowloris_clients_are_cut_off_and_others_served(served: Served) -> None:
    """Clients that drip their headers or body, or connect and say nothing, are closed within
    the server's bounds, while a normal client is answered promptly all along."""
    before = await snapshot(served.target.workflows, ["feed"])
    drip = [b"X-Drip: 1\r\n"] * 1000
    head = b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    slow_body = request("POST", "/api/workflows/echo", JSON_TYPE, "Content-Length: 1000")
    slow = [served.exchange(head, drip, pause=0.2) for _ in range(SLOW_CLIENTS)]
    slow += [served.exchange(b"", [b""] * 100, pause=0.2) for _ in range(SLOW_CLIENTS)]  # idle
    slow += [served.exchange(slow_body, [b" "] * 1000, pause=0.2) for _ in range(SLOW_CLIENTS)]
    attack = asyncio.gather(*slow)
    latencies = []
    while not attack.done():
        status, took = await served.exchange(request("GET", "/api/runs"))
        assert status == 200
        latencies.append(took)
        await asyncio.sleep(0.1)  # pacing the normal client, not an assertion
    results = await attack
    heads, idle, bodies = (results[i * SLOW_CLIENTS : (i + 1) * SLOW_CLIENTS] for i in range(3))
    bound = HEAD_TIMEOUT + 2
    assert all(status in {408, None} and took < bound for status, took in heads), heads
    assert all(status is None and took < bound for status, took in idle), idle
    assert all(status == 408 and took < BODY_TIMEOUT + 2 for status, took in bodies), bodies
    assert max(latencies) < 2, latencies
    assert await snapshot(served.target.workflows, ["feed"]) == before
    held = [max(took for _, took in kind) for kind in (heads, idle, bodies)]
    print(
        f"\nslowloris: {SLOW_CLIENTS} x (dripping headers, idle, dripping body) closed after "
        f"at most {held[0]:.2f} / {held[1]:.2f} / {held[2]:.2f} s (bounds {HEAD_TIMEOUT:g} / "
        f"{HEAD_TIMEOUT:g} / {BODY_TIMEOUT:g} s); {len(latencies)} normal requests meanwhile, "
        f"slowest {max(latencies):.3f} s"
    )
