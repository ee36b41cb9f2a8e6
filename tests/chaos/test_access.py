"""Chaos scenario 7: access (issue 8, DESIGN §10 "nobody reads or writes what isn't theirs").

With a token configured, every way to read or change a run or channel without the right token:
no token, wrong and mangled API tokens, the API token where it is not accepted (query string,
cookie, ``X-API-Key``), a subscription token for channel A used on B or as the API token, expired,
tampered, signed by another secret, non-ASCII, random mutations of real tokens, guessed and real
run ids, path tricks — on every route of the app (read from its router, so a route added later
is attacked too), the history and SSE endpoints in each dialect, and the dashboard's shell; with
the app at ``/``, under ``Mount("/wf")``, behind ``root_path`` (in-process), and behind a real
uvicorn ``--root-path``. Every attempt must be a 401/403 JSON error with no stored data in it
(for SSE: not a stream), and the store must be unchanged at the end. The right credential must
get through each route, so the refusals are the rule's doing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from stepstream import Realtime, WorkflowContext, Workflows
from stepstream.auth import TokenSigner, _b64
from tests.chaos.conftest import scale
from tests.conftest import free_port
from tests.server.asgi import MOUNTINGS, Result, mounted, route_templates, snapshot

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

TOKEN = "chaos-api-" + "k" * 24
SECRET = "chaos-secret"
MARKER = "s3cr3t-payload-7f3a"  # in every stored payload and event: must never leak
GUESSES = scale(3, 60)  # random run ids and random token mutations, per route
PUBLIC = {"/", "/healthz", "/static/{path}"}  # the shell, liveness, assets: no data in them
CHANNEL_ROUTES = {"/api/realtime", "/api/realtime/history"}


@dataclass
class Store:
    app: Starlette
    workflows: Workflows
    realtime: Realtime
    done: str  # a finished run
    waiting: str  # a run waiting for its event
    channels: list[str] = field(default_factory=list)


async def settle(workflows: Workflows, run_id: str, check: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        run = await workflows.backend.get_run(run_id)
        if run is not None and check(run):
            return
        assert time.monotonic() < deadline, f"{run_id} never settled: {run}"
        await asyncio.sleep(0.05)  # waiting for the worker, not an assertion


@pytest.fixture
async def store(backend_url: str) -> AsyncIterator[Store]:
    realtime = Realtime(backend=backend_url, secret=SECRET)
    workflows = Workflows(realtime=realtime)

    @workflows.workflow("private")
    async def private(context: WorkflowContext) -> Any:
        await context.run("read", lambda: {"secret": MARKER})
        if context.request_payload.get("wait"):
            await context.wait_for_event("approve", f"approve-{context.workflow_run_id}")
        return MARKER

    app = workflows.asgi(workers=1, token=TOKEN)
    async with app.router.lifespan_context(app):
        client = workflows.client()
        done = await client.trigger("private", {"note": MARKER})
        waiting = await client.trigger("private", {"note": MARKER, "wait": True})
        await settle(workflows, done, lambda run: run.state.value == "RUN_SUCCESS")
        await settle(workflows, waiting, lambda run: run.steps and run.steps[-1].type == "Wait")
        await realtime.channel("private-feed").emit("workflow.update", {
            "type": "runStart", "workflowRunId": MARKER, "timestamp": 1,
        })  # fmt: skip
        yield Store(app, workflows, realtime, done, waiting, ["private-feed", "mine"])


def signer_token(channels: list[str], expiry: float, secret: str = SECRET) -> str:
    payload = _b64(json.dumps({"c": channels, "e": int(expiry)}).encode())
    return f"{payload}.{TokenSigner(secret)._sign(payload)}"


@dataclass
class Attempt:
    """One credential: headers and query parameters to add."""

    name: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    query: list[tuple[str, str]] = field(default_factory=list)


def bearer(value: bytes | str) -> list[tuple[bytes, bytes]]:
    raw = value if isinstance(value, bytes) else value.encode()
    return [(b"authorization", b"Bearer " + raw)]


def mutations(token: str, rng: random.Random, count: int) -> Iterator[str]:
    """Near misses of a real token: a character changed, dropped or added."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
    for _ in range(count):
        i = rng.randrange(len(token))
        kind = rng.randrange(3)
        if kind == 0:
            swapped = rng.choice(alphabet.replace(token[i], ""))
            yield token[:i] + swapped + token[i + 1 :]
        elif kind == 1:
            yield token[:i] + token[i + 1 :]
        else:
            yield token[:i] + rng.choice(alphabet) + token[i:]


def attempts(store: Store, rng: random.Random) -> list[Attempt]:
    """Every credential an outsider might hold or forge; none grants what is attacked (the
    subscription tokens grant the channel ``mine`` only)."""
    mine = store.realtime.token(["mine"], ttl=600)
    payload, _, signature = mine.partition(".")
    forged = _b64(json.dumps({"c": ["mine", store.done, store.waiting, "private-feed"],
                              "e": int(time.time()) + 600}).encode())  # fmt: skip
    every = [store.done, store.waiting, "private-feed"]
    found = [
        Attempt("none"),
        Attempt("wrong bearer", bearer("wrong")),
        Attempt("empty bearer", [(b"authorization", b"Bearer ")]),
        Attempt("token without scheme", [(b"authorization", TOKEN.encode())]),
        Attempt("token scheme", [(b"authorization", b"Token " + TOKEN.encode())]),
        Attempt("basic", [(b"authorization", b"Basic " + base64.b64encode(TOKEN.encode()))]),
        Attempt("prefix", bearer(TOKEN[:-1])),
        Attempt("suffix", bearer(TOKEN + "x")),
        Attempt("upper", bearer(TOKEN.upper())),
        Attempt("api token in query", query=[("token", TOKEN)]),
        Attempt("api token in query, quoted", query=[("token", f" {TOKEN}")]),
        Attempt("cookie", [(b"cookie", f"token={TOKEN}".encode())]),
        Attempt("x-api-key", [(b"x-api-key", TOKEN.encode())]),
        Attempt("subscription as bearer", bearer(mine)),
        Attempt("subscription in query", query=[("token", mine)]),
        Attempt("expired", query=[("token", signer_token(every, time.time() - 5))]),
        Attempt("other secret", query=[("token", signer_token(every, time.time() + 600, "x"))]),
        Attempt("tampered payload", query=[("token", f"{forged}.{signature}")]),
        Attempt("tampered signature", query=[("token", f"{payload}.{signature[:-2]}AA")]),
        Attempt("no signature", query=[("token", payload)]),
        Attempt("non-ascii query", query=[("token", "a.\xe9")]),
        Attempt("non-ascii bearer", bearer(b"a.\xe9\xff")),
        Attempt("nul in token", query=[("token", f"{payload}\x00.{signature}")]),
        Attempt("two tokens", bearer("wrong"), [("token", mine), ("token", TOKEN)]),
    ]
    found += [Attempt(f"mutated api token {n}", bearer(t))
              for n, t in enumerate(mutations(TOKEN, rng, GUESSES))]  # fmt: skip
    found += [Attempt(f"mutated subscription {n}", query=[("token", t)])
              for n, t in enumerate(mutations(mine, rng, GUESSES))]  # fmt: skip
    return found


def concrete(template: str, store: Store, rng: random.Random) -> list[str]:
    """The paths to attack for a route template: real ids and guessed ones."""
    guessed = [f"wfr_{secrets.token_urlsafe(16)}" for _ in range(GUESSES)]
    values = {
        "name": ["private", "nope"],
        "run_id": [store.done, store.waiting, *guessed],
        "event_id": [f"approve-{store.waiting}", "approve"],
        "path": ["stepstream.js", "dashboard.html"],
    }
    paths = [template]
    while "{" in paths[0]:
        start, end = paths[0].index("{"), paths[0].index("}")
        name = paths[0][start + 1 : end].split(":")[0]
        choices = values.get(name, ["x"])
        paths = [p[:start] + quote(v, safe="") + p[end + 1 :] for p in paths for v in choices]
    return paths


def channel_queries(route: str, store: Store) -> list[list[tuple[str, str]]]:
    """Query strings reading the stored channels, in every dialect, alone and next to ``mine``."""
    if route == "/api/realtime/history":
        return [[("channel", c)] for c in (store.done, store.waiting, "private-feed")] + [
            [("channel", store.done), ("after", "0-0")]
        ]
    queries = []
    for channel in (store.done, "private-feed"):
        queries += [
            [("channels", channel), ("history_all", "true")],  # @upstash/realtime 0.3
            [("channel", channel)],  # 1.x
            [("channel", channel), ("history", "true")],  # native
            [("channel", "mine"), ("channel", channel), ("history", "true")],
            [("channel", channel), ("dialect", "native"), (f"last_ack_{channel}", "0-0")],
        ]
    return queries


def assert_refused(result: Result, what: str) -> None:
    assert result.status in {401, 403}, (what, result.status, result.body[:300])
    assert result.headers.get("content-type", "").startswith("application/json"), what
    assert not result.streamed, what
    assert set(json.loads(result.body)) == {"error"}, (what, result.body[:300])
    assert MARKER.encode() not in result.body, (what, result.body[:300])


@pytest.mark.parametrize("how", MOUNTINGS)
async def test_nothing_is_read_or_changed_without_the_right_token(store: Store, how: str) -> None:
    rng = random.Random(7)
    served = mounted(store.app, how)
    before = await snapshot(store.workflows, store.channels)
    routes = route_templates(store.app)
    assert {path for _, path in routes} >= {"/api/runs", "/api/realtime", "/api/workflows/{name}"}
    credentials = attempts(store, rng)
    tried = 0
    for method, template in routes:
        for path in concrete(template, store, rng):
            if template in PUBLIC:
                result = await served.call(method, path)
                assert result.status in {200, 404}, (how, method, path, result.status)
                for secret in (MARKER, store.done, store.waiting, TOKEN, SECRET):
                    assert secret.encode() not in result.body, (how, path, secret)
                continue
            queries = channel_queries(template, store) if template in CHANNEL_ROUTES else [[]]
            headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
            body = b"{}" if method == "POST" else b""
            for query in queries:
                for attempt in credentials:
                    result = await served.call(
                        method,
                        path,
                        query=urlencode(query + attempt.query).encode(),
                        headers=[*attempt.headers, *(headers if body else [])],
                        body=body,
                    )
                    assert_refused(result, f"{how} {method} {path} {query} {attempt.name}")
                    tried += 1
            # The right credential gets through: the refusals above were the rule's doing. (On
            # the last path: a guessed id or name, so a write changes nothing.)
            query = queries[0]
            right = []
            if template in CHANNEL_ROUTES:
                channels = [value for key, value in query if key in {"channel", "channels"}]
                right = [("token", store.realtime.token(channels, ttl=60))]
            result = await served.call(
                method,
                concrete(template, store, rng)[-1],
                query=urlencode(query + right).encode(),
                headers=[] if right else [(b"authorization", f"Bearer {TOKEN}".encode())],
            )
            assert result.status not in {401, 403}, (how, method, path, result.body[:200])
    assert await snapshot(store.workflows, store.channels) == before
    print(f"\naccess [{how}]: {tried} attempts on {len(routes)} routes, all refused")


PATH_TRICKS = [
    "/api/runs/", "//api/runs", "/api//runs", "/API/runs", "/api/runs%2F", "/api/./runs",
    "/static/../api/runs", "/healthz/../api/runs", "/api/realtime/../runs",
    "/api/realtime/history/../../runs", "/api/realtime/token/", "/api/%72uns",
]  # fmt: skip


@pytest.mark.parametrize("how", MOUNTINGS)
async def test_path_tricks_reach_no_data(store: Store, how: str) -> None:
    served = mounted(store.app, how)
    for path in PATH_TRICKS:
        for method in ("GET", "POST"):
            result = await served.call(method, path)
            assert result.status in {401, 403, 404, 405, 307}, (how, method, path, result.status)
            assert MARKER.encode() not in result.body and store.done.encode() not in result.body
    # Outside the mount's prefix, or a root_path the path does not start with.
    for path in ("/api/runs", "/wfapi/runs", "/wf"):
        result = await mounted(store.app, how).call("GET", path.removeprefix(served.prefix))
        assert result.status in {401, 404, 307}, (how, path, result.status)


async def test_behind_a_real_uvicorn_root_path(store: Store) -> None:
    """uvicorn ``--root-path /wf``: the prefixed path reaches the app, the Guard strips it."""
    port = free_port()
    config = uvicorn.Config(
        store.app, host="127.0.0.1", port=port, root_path="/wf", lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.02)  # waiting for the port, not an assertion
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for method, template in route_templates(store.app):
                if template in PUBLIC or method == "HEAD":
                    continue
                path = concrete(template, store, random.Random(1))[0]
                query = {"channel": store.done} if template in CHANNEL_ROUTES else {}
                for headers, extra in [
                    ({}, {}),
                    ({"authorization": "Bearer wrong"}, {}),
                    ({}, {"token": TOKEN}),
                    ({"authorization": b"Bearer a.\xe9"}, {}),
                ]:
                    response = await http.request(
                        method, f"/wf{path}", params={**query, **extra}, headers=headers
                    )
                    assert response.status_code in {401, 403}, (method, path, headers, extra)
                    assert MARKER not in response.text
                auth = {"authorization": f"Bearer {TOKEN}"}
                if template == "/api/realtime":
                    continue  # a stream: its refusals are what this test is about
                response = await http.request(method, f"/wf{path}", params=query, headers=auth)
                assert response.status_code not in {401, 403}, (method, path)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
