"""The SSE endpoint through a real uvicorn server, on every backend.

The server (``sse_app.py``) runs as a subprocess on the test's store; the test process emits
into the same store with its own ``Realtime``, so every live event crosses processes. Frames
are checked against ``docs/sse-protocol.md``: shapes per dialect, history then live with no gap
and no duplicate, resume by cursor, reconnect and ping timers, middleware refusals, clean-up
after abrupt disconnects, and rejection of bad input.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stepstream import HistoryPolicy, Realtime
from stepstream.records import parse_cursor
from stepstream.server.app import create_app
from tests.conftest import free_port
from tests.realtime.sse_client import Frame, SSEStream, asgi_get, connect, raw_close, raw_open

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]
EVENT = "workflow.update"
USER_KEYS = {
    "v0": {"data", "__event_path", "__stream_id", "__channel"},
    "v1": {"id", "event", "channel", "data"},
    "native": {"id", "event", "channel", "data"},
}


# -- the server ---------------------------------------------------------------------------------


# Python's start-up and imports are most of the half second a server takes to answer, and each
# test starts its own server (on its own store). So a spare process does them while the test
# before runs, then waits on stdin for its job: ``uvicorn``'s command line, run as ``python -m
# uvicorn`` would, in its environment and with its output going to its log.
WARM_UP = """
import json, os, sys
from uvicorn.main import main
import stepstream.server.app
line = sys.stdin.readline()
if not line:
    sys.exit(0)
job = json.loads(line)
log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
os.dup2(log, 1)
os.dup2(log, 2)
os.environ.update(job["env"])
main(job["args"])
"""


class Spare:
    """The warm server process for the next test (see ``WARM_UP``)."""

    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def take(cls, job: dict[str, object]) -> subprocess.Popen[bytes]:
        """The spare, given ``job``; a new spare warms up for the next test meanwhile."""
        process = cls.process if cls.process and cls.process.poll() is None else cls.spawn()
        assert process.stdin is not None
        process.stdin.write(json.dumps(job).encode() + b"\n")
        process.stdin.close()
        cls.process = cls.spawn()
        return process

    @classmethod
    def spawn(cls) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-c", WARM_UP]
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    @classmethod
    def close(cls) -> None:
        if cls.process is not None:
            cls.process.communicate(timeout=10)  # EOF on stdin: it exits
            cls.process = None


@pytest.fixture(scope="module", autouse=True)
def spare_server() -> Iterator[None]:
    yield
    Spare.close()


class Server:
    """``sse_app`` under uvicorn in a subprocess, on the test's store."""

    def __init__(self, backend_url: str, log: Path, settings: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sse = f"{self.url}/api/realtime"
        self.log = log
        self._env = {**os.environ, "STEPSTREAM_TEST_BACKEND": backend_url, **settings}
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        args = [
            "tests.realtime.sse_app:app", "--app-dir", str(ROOT),
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        self._process = Spare.take({"env": self._env, "args": args, "log": str(self.log)})
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=1) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"test server exited:\n{self.log.read_text()}")
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)  # polling for the port, not an assertion
        raise RuntimeError(f"test server did not start:\n{self.log.read_text()}")

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{self.url}/healthz")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve(backend_url: str, tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start a server on the test's store; keyword settings become its environment
    (``max_duration=3`` → ``STEPSTREAM_TEST_MAX_DURATION=3``). Its log must stay free of
    tracebacks: an exception inside the app is a bug even when the client saw nothing."""
    servers: list[Server] = []

    async def start(**options: object) -> Server:
        env = {f"STEPSTREAM_TEST_{k.upper()}": str(v) for k, v in options.items()}
        server = Server(backend_url, tmp_path / f"server-{len(servers)}.log", env)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        server.stop()
    for server in servers:
        log = server.log.read_text()
        if log:
            print(f"server log {server.log.name}:\n{log}")
        assert "Traceback" not in log, f"the server logged an exception:\n{log}"


@pytest.fixture
async def server(serve: StartServer) -> Server:
    return await serve()


@pytest.fixture
async def emitter(make_realtime: Callable[..., Realtime]) -> Realtime:
    """The test process's own ``Realtime`` on the server's store."""
    realtime = make_realtime()
    await realtime.open()
    return realtime


# -- helpers ------------------------------------------------------------------------------------


def update(n: int, tag: str = "s") -> dict[str, Any]:
    return {
        "type": "stepStart",
        "workflowRunId": "wfr_test",
        "timestamp": n,
        "stepName": f"{tag}{n}",
    }


async def emit(realtime: Realtime, channel: str, *numbers: int, tag: str = "s") -> list[str]:
    return [await realtime.channel(channel).emit(EVENT, update(n, tag)) for n in numbers]


def user_event(dialect: str, frame: Frame) -> tuple[str, str, dict[str, Any]]:
    """``(channel, id, data)`` of a user-event frame, checking its exact shape in ``dialect``."""
    body = frame.json
    assert set(body) == USER_KEYS[dialect], body
    assert frame.event is None, "events are sent as unnamed 'message' events"
    if dialect == "v0":
        assert body["__event_path"] == ["workflow", "update"]
        assert frame.id is None, "v0 frames are data: lines only"
        return body["__channel"], body["__stream_id"], body["data"]
    assert body["event"] == EVENT
    if dialect == "v1":
        assert frame.id is None, "v1 frames are data: lines only"
    else:
        assert frame.id is not None, "native user frames carry an id: line"
        assert dict(parse_qsl(frame.id, strict_parsing=True))[body["channel"]] == body["id"]
    return body["channel"], body["id"], body["data"]


def user_events(dialect: str, frames: list[Frame]) -> list[tuple[str, str, dict[str, Any]]]:
    """The user events among ``frames`` (pings dropped; any other system event fails)."""
    events = []
    for frame in frames:
        system = frame.system
        if system is None:
            events.append(user_event(dialect, frame))
        else:
            assert system["type"] == "ping", f"unexpected system event {system}"
    return events


def connected(frame: Frame, channel: str, dialect: str) -> str:
    """Check ``frame`` is ``connected`` for ``channel``; return its cursor."""
    assert frame.system is not None, f"expected connected, got {frame.data}"
    body = frame.json
    assert set(body) == {"type", "channel", "cursor"}, body
    assert body["type"] == "connected" and body["channel"] == channel, body
    parse_cursor(body["cursor"])
    if dialect == "native":
        assert frame.id is not None, "native connected frames carry an id: line"
        assert dict(parse_qsl(frame.id, strict_parsing=True))[channel] == body["cursor"]
    else:
        assert frame.id is None
    cursor: str = body["cursor"]
    return cursor


async def read_until_sentinels(
    stream: SSEStream, realtime: Realtime, dialect: str, channels: list[str]
) -> list[tuple[str, str, dict[str, Any]]]:
    """Emit a sentinel on each channel, then return every user event received up to the
    last sentinel (sentinels excluded). Anything sent twice shows up before them."""
    sentinels = {c: (await emit(realtime, c, 0, tag="sentinel"))[0] for c in channels}
    events: list[tuple[str, str, dict[str, Any]]] = []
    async with asyncio.timeout(20):
        while sentinels:
            frame = await stream.next()
            if frame.system is not None:
                assert frame.system["type"] == "ping", frame.data
                continue
            channel, event_id, data = user_event(dialect, frame)
            if sentinels.get(channel) == event_id:
                del sentinels[channel]
            else:
                assert data["stepName"] != "sentinel0", "a sentinel arrived twice"
                events.append((channel, event_id, data))
    return events


def expected(channel: str, ids: list[str], numbers: range | list[int]) -> list[Any]:
    return [(channel, i, update(n)) for i, n in zip(ids, numbers, strict=True)]


async def assert_refused(response: httpx.Response, status: int) -> dict[str, Any]:
    """A refusal: ``status``, a JSON ``{"error": {"code", "message"}}`` body, no SSE byte."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"], body
    return body


# -- 1. dialects: history, then live, exactly once, in each dialect's shape ---------------------

DIALECTS = {
    "v0": [("channels", "run-a"), ("channels", "run-b"), ("history_all", "true")],
    # 1.x has no history flag: a cursor replays. A time ("0") and an id ("0-0") both mean all.
    "v1": [
        ("channel", "run-a"),
        ("channel", "run-b"),
        ("last_ack_run-a", "0"),
        ("last_ack_run-b", "0-0"),
    ],
    "native": [
        ("channel", "run-a"),
        ("channel", "run-b"),
        ("dialect", "native"),
        ("history", "true"),
    ],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_history_then_live_exactly_once(
    dialect: str, server: Server, emitter: Realtime
) -> None:
    old_a = await emit(emitter, "run-a", 1, 2, 3)
    old_b = await emit(emitter, "run-b", 1, 2)
    async with connect(server.sse, DIALECTS[dialect]) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        frames = await stream.take(7)
        connected(frames[0], "run-a", dialect)
        assert user_events(dialect, frames[1:4]) == expected("run-a", old_a, [1, 2, 3])
        connected(frames[4], "run-b", dialect)
        assert user_events(dialect, frames[5:7]) == expected("run-b", old_b, [1, 2])

        new_b = await emit(emitter, "run-b", 3, 4)
        new_a = await emit(emitter, "run-a", 4)
        live = await read_until_sentinels(stream, emitter, dialect, ["run-a", "run-b"])
        assert live == expected("run-b", new_b, [3, 4]) + expected("run-a", new_a, [4])
        if dialect == "native":
            # The id: line is the whole connection's cursor map.
            last = (await emit(emitter, "run-a", 5))[0]
            frame = await stream.next()
            assert dict(parse_qsl(frame.id or "")) == {
                "run-a": last,
                "run-b": (await emitter.channel("run-b").history(limit=1))[0].id,
            }


@pytest.mark.timeout(60)
async def test_v0_connection_start_replays_what_the_page_could_miss(
    server: Server, emitter: Realtime
) -> None:
    """v0 without history flags replays events since ``connection_start``."""
    old = await emit(emitter, "run-a", 1)
    await asyncio.sleep(0.01)  # lets the clock move on: the next events get a later time
    ids = await emit(emitter, "run-a", 2, 3)
    start = parse_cursor(ids[0])[0]
    assert parse_cursor(old[0])[0] < start
    params = [("channels", "run-a"), ("connection_start", str(start))]
    async with connect(server.sse, params) as stream:
        frames = await stream.take(3)
        connected(frames[0], "run-a", "v0")
        assert user_events("v0", frames[1:]) == expected("run-a", ids, [2, 3])
        assert await read_until_sentinels(stream, emitter, "v0", ["run-a"]) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", ["v0", "v1", "native"])
async def test_live_only_connected_cursor(dialect: str, server: Server, emitter: Realtime) -> None:
    """Without history, ``connected`` names the channel's latest id (``0-0`` when empty) and
    only live events follow."""
    key = "channels" if dialect == "v0" else "channel"
    ids = await emit(emitter, "run-a", 1, 2)
    params = [(key, "run-a"), (key, "run-empty"), ("dialect", dialect)]
    async with connect(server.sse, params) as stream:
        first = await stream.take(2)
        assert connected(first[0], "run-a", dialect) == ids[-1]
        assert connected(first[1], "run-empty", dialect) == "0-0"
        new = await emit(emitter, "run-empty", 1)
        live = await read_until_sentinels(stream, emitter, dialect, ["run-a", "run-empty"])
        assert live == expected("run-empty", new, [1])


@pytest.mark.timeout(60)
async def test_no_channel_means_default(server: Server, emitter: Realtime) -> None:
    async with connect(server.sse, [("dialect", "v1")]) as stream:
        connected(await stream.next(), "default", "v1")
        ids = [await emitter.emit(EVENT, update(1))]
        frame = await stream.until(lambda frame: frame.system is None)
    assert user_events("v1", frame) == expected("default", ids, [1])


@pytest.mark.timeout(60)
async def test_connected_cursor_is_the_position_before_the_replay(
    server: Server, emitter: Realtime
) -> None:
    """A client that drops right after ``connected`` and resumes from its cursor must still get
    the whole replay: the cursor is where the replay starts, not where it ends."""
    ids = await emit(emitter, "run-a", 1, 2, 3)
    async with connect(server.sse, [("channel", "run-a"), ("history", "true")]) as stream:
        assert connected(await stream.next(), "run-a", "native") == "0-0"
    resume = [("channel", "run-a"), ("dialect", "native"), ("last_ack_run-a", ids[0])]
    async with connect(server.sse, resume) as stream:
        assert connected(await stream.next(), "run-a", "native") == ids[0]
    async with connect(server.sse, [("channel", "run-a"), ("dialect", "native")]) as stream:
        assert connected(await stream.next(), "run-a", "native") == ids[-1]


# -- 2. resume: read part, drop, emit more, come back with the cursor ---------------------------


async def read_part(server: Server, params: list[tuple[str, str]], count: int) -> list[Frame]:
    """Connect, read ``count`` frames, and drop the connection."""
    async with connect(server.sse, params) as stream:
        assert stream.response.status_code == 200
        return await stream.take(count)


RESUME = {
    # dialect: (first connection's params, resume params without the cursor)
    "v0": (
        [("channels", "run-a"), ("history_all", "true")],
        # the 0.3 client keeps its history flags on reconnect: the cursor must win
        [("channels", "run-a"), ("history_all", "true"), ("reconnect", "true")],
    ),
    "v1": ([("channel", "run-a"), ("last_ack_run-a", "0-0")], [("channel", "run-a")]),
    "native": (
        [("channel", "run-a"), ("history", "true")],
        [("channel", "run-a"), ("history", "true")],
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", RESUME)
async def test_resume_by_last_ack(dialect: str, server: Server, emitter: Realtime) -> None:
    first, again = RESUME[dialect]
    ids = await emit(emitter, "run-a", 1, 2, 3, 4, 5)
    frames = await read_part(server, first, 4)
    connected(frames[0], "run-a", dialect)
    seen = user_events(dialect, frames[1:])
    assert seen == expected("run-a", ids[:3], [1, 2, 3])

    ids += await emit(emitter, "run-a", 6, 7, 8)
    async with connect(server.sse, [*again, ("last_ack_run-a", seen[-1][1])]) as stream:
        assert stream.response.status_code == 200
        connected(await stream.next(), "run-a", dialect)
        rest = await read_until_sentinels(stream, emitter, dialect, ["run-a"])
    assert rest == expected("run-a", ids[3:], [4, 5, 6, 7, 8])


@pytest.mark.timeout(60)
async def test_resume_by_last_event_id_covers_every_channel(
    server: Server, emitter: Realtime
) -> None:
    a = await emit(emitter, "run-a", 1, 2, 3)
    b = await emit(emitter, "run b/&=", 1, 2, 3)  # a name the cursor map must escape
    channels = [("channel", "run-a"), ("channel", "run b/&=")]
    frames = await read_part(server, [*channels, ("history", "true")], 6)
    assert user_events("native", [frames[1], frames[2], frames[3], frames[5]]) == (
        expected("run-a", a, [1, 2, 3]) + expected("run b/&=", b[:1], [1])
    )
    last_event_id = frames[5].id
    assert last_event_id is not None

    a += await emit(emitter, "run-a", 4)
    b += await emit(emitter, "run b/&=", 4)
    headers = {"last-event-id": last_event_id}
    async with connect(server.sse, [*channels, ("dialect", "native")], headers) as stream:
        assert stream.response.status_code == 200
        frames = await stream.take(4)
        connected(frames[0], "run-a", "native")
        assert user_events("native", frames[1:2]) == expected("run-a", a[3:], [4])
        connected(frames[2], "run b/&=", "native")
        rest = user_events("native", frames[3:])
        rest += await read_until_sentinels(stream, emitter, "native", ["run-a", "run b/&="])
    assert rest == expected("run b/&=", b[1:], [2, 3, 4])


@pytest.mark.timeout(60)
async def test_last_ack_wins_over_last_event_id(server: Server, emitter: Realtime) -> None:
    ids = await emit(emitter, "run-a", 1, 2, 3)
    headers = {"last-event-id": f"run-a={ids[0]}"}
    params = [("channel", "run-a"), ("dialect", "native"), ("last_ack_run-a", ids[1])]
    async with connect(server.sse, params, headers) as stream:
        connected(await stream.next(), "run-a", "native")
        rest = await read_until_sentinels(stream, emitter, "native", ["run-a"])
    assert rest == expected("run-a", ids[2:], [3])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stored", [False, True])
async def test_a_time_cursor_ahead_of_the_servers_clock_loses_no_live_event(
    stored: bool, server: Server, emitter: Realtime
) -> None:
    """@upstash/realtime sends ``last_ack_<channel>=Date.now()``, the browser's clock: 5 s
    ahead of the server's, the events stored in those 5 s must still arrive live (ids below
    the time asked for), on an empty channel or one with older events."""
    ahead = int(time.time() * 1000) + 5_000
    if stored:
        await emit(emitter, "run-a", 1)
    params = [("channel", "run-a"), ("dialect", "v1"), ("last_ack_run-a", str(ahead))]
    async with connect(server.sse, params) as stream:
        connected(await stream.next(), "run-a", "v1")
        ids = await emit(emitter, "run-a", 2, 3)
        rest = await read_until_sentinels(stream, emitter, "v1", ["run-a"])
    assert rest == expected("run-a", ids, [2, 3])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", ["v0", "v1", "native"])
@pytest.mark.parametrize("form", ["id", "time"])
async def test_trimmed_cursor_reports_a_gap_then_what_remains(
    dialect: str, form: str, server: Server, make_realtime: Callable[..., Realtime]
) -> None:
    """native says ``gap``; the Upstash dialects, which have no such event, say ``error``.
    Also for a time (``last_ack_<channel>=<ms>``, what @upstash/realtime sends before it has
    an event id): every event from then on was asked for, and trimmed ones are a gap too."""
    emitter = make_realtime(history=HistoryPolicy(max_length=3))
    ids = await emit(emitter, "run-a", 1, 2, 3, 4, 5, 6)  # 1-3 are trimmed away
    key = "channels" if dialect == "v0" else "channel"
    ack = ids[1] if form == "id" else ids[1].split("-")[0]
    params = [(key, "run-a"), ("dialect", dialect), ("last_ack_run-a", ack)]
    async with connect(server.sse, params) as stream:
        frames = await stream.take(5)
        rest = await read_until_sentinels(stream, emitter, dialect, ["run-a"])
    systems = {frame.json["type"]: frame for frame in frames[:2]}
    connected(systems.pop("connected"), "run-a", dialect)
    (problem,) = systems.values()
    if dialect == "native":
        assert problem.json.keys() == {"type", "channel", "cursor", "message"}
        assert problem.json["type"] == "gap" and problem.json["channel"] == "run-a"
        assert problem.json["cursor"] == ids[1] or form == "time"
    else:
        assert problem.json.keys() == {"type", "error"} and problem.json["type"] == "error"
    assert user_events(dialect, frames[2:]) == expected("run-a", ids[3:], [4, 5, 6])
    assert rest == []


# -- 3. timers: reconnect before max_duration, pings --------------------------------------------


# Timer periods are not round binary fractions on purpose: a timer that fires a hair early
# (uvloop, float rounding) must still lead to the next ping or the reconnect.


# The timers are the server's, whatever the store: one backend is enough.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("max_duration", [3.2, 3.3, 3.4])  # reconnect 1.2-1.4 s after connect
async def test_reconnect_event_then_the_stream_ends(
    max_duration: float, serve: StartServer
) -> None:
    """Every idle connection, of every dialect, gets ``reconnect`` and is then closed."""
    server = await serve(max_duration=max_duration)

    async def one(n: int) -> list[Frame]:
        dialect = ["v0", "v1", "native"][n % 3]
        key = "channels" if dialect == "v0" else "channel"
        async with connect(server.sse, [(key, f"run-{n}"), ("dialect", dialect)]) as stream:
            connected(await stream.next(), f"run-{n}", dialect)
            return await stream.ended(within=20)

    for frames in await asyncio.gather(*(one(n) for n in range(12))):
        assert len(frames) == 1, [frame.data for frame in frames]
        reconnect = frames[0].json
        assert reconnect.keys() == {"type", "timestamp"} and reconnect["type"] == "reconnect"
        assert isinstance(reconnect["timestamp"], int) and frames[0].id is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("ping_interval", [0.1, 0.2, 0.3])
async def test_pings_keep_coming(
    ping_interval: float, serve: StartServer, emitter: Realtime
) -> None:
    """Pings on every connection, again and again, with events in between."""
    server = await serve(ping_interval=ping_interval)

    async def one(n: int) -> None:
        async with connect(server.sse, [("channel", f"run-{n}")]) as stream:
            connected(await stream.next(), f"run-{n}", "v1")
            pings = await stream.take(5)
            ids = await emit(emitter, f"run-{n}", 1)
            *more, event = await stream.until(lambda frame: frame.system is None)
            more += await stream.take(2)
        for ping in [*pings, *more]:
            assert ping.json.keys() == {"type", "timestamp"} and ping.json["type"] == "ping"
            assert isinstance(ping.json["timestamp"], int) and ping.id is None
        assert user_events("v1", [event]) == expected(f"run-{n}", ids, [1])

    await asyncio.gather(*(one(n) for n in range(10)))


# -- 4. middleware refusals ---------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_middleware_refuses_before_any_sse_byte(
    serve: StartServer, emitter: Realtime
) -> None:
    server = await serve(token="s3cret")
    refusals = [
        ([("channel", "run-a")], 401),
        ([("channel", "run-a"), ("token", "wrong")], 401),
        ([("channel", "admin-x"), ("token", "s3cret")], 403),
        ([("channels", "run-a"), ("channels", "admin-x"), ("token", "s3cret")], 403),
        ([("channel", "run-a"), ("channel", "admin-x"), ("history", "true"), ("token", "s3cret")],
         403),
    ]  # fmt: skip
    await emit(emitter, "admin-x", 1)
    async with httpx.AsyncClient(timeout=10) as client:
        for params, status in refusals:
            response = await client.get(server.sse, params=params)
            body = await assert_refused(response, status)
            assert body["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[status]
            assert b"data:" not in response.content
    # A refused request leaves no subscription behind; the token opens the stream.
    assert (await server.health())["live_channels"] == 0
    async with connect(server.sse, [("channel", "run-a"), ("token", "s3cret")]) as stream:
        assert stream.response.status_code == 200
        connected(await stream.next(), "run-a", "v1")


# -- 5. many clients vanish; the server keeps serving and frees everything ----------------------


async def wait_for_idle(server: Server, within: float = 30) -> dict[str, Any]:
    """Poll /healthz until no SSE response is open and the hub watches no channel."""
    deadline = time.monotonic() + within
    while True:
        health = await server.health()
        if health["sse_connections"] == 0 and health["live_channels"] == 0:
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not free its streams: {health}")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(180)
async def test_survives_500_vanishing_clients(server: Server, emitter: Realtime) -> None:
    gate = asyncio.Semaphore(100)

    async def vanish(n: int) -> None:
        dialect = ["v0", "v1", "native"][n % 3]
        key = "channels" if dialect == "v0" else "channel"
        async with gate:
            reader, writer = await raw_open(
                server.port, f"/api/realtime?{key}=load-{n}&dialect={dialect}"
            )
            await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)  # the first frame
            raw_close(writer, reset=n % 2 == 0)

    await asyncio.gather(*(vanish(n) for n in range(500)))
    await wait_for_idle(server)

    ids = await emit(emitter, "run-a", 1, 2)
    params = [("channel", "run-a"), ("history", "true")]
    async with connect(server.sse, params) as stream:
        frames = await stream.take(3)
        connected(frames[0], "run-a", "native")
        assert user_events("native", frames[1:]) == expected("run-a", ids, [1, 2])
        new = await emit(emitter, "run-a", 3)
        assert await read_until_sentinels(stream, emitter, "native", ["run-a"]) == (
            expected("run-a", new, [3])
        )
        health = await server.health()
        assert (health["sse_connections"], health["live_channels"]) == (1, 1)
    await wait_for_idle(server)


@pytest.mark.timeout(60)
async def test_clients_that_leave_mid_stream_are_freed(server: Server, emitter: Realtime) -> None:
    """Clients that vanish while events flow (a write to a dead socket) are freed too."""
    writers = []
    for _ in range(20):
        reader, writer = await raw_open(server.port, "/api/realtime?channel=busy")
        await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        writers.append(writer)
    for n, writer in enumerate(writers):
        raw_close(writer, reset=n % 2 == 0)
    await emit(emitter, "busy", *range(50))
    await wait_for_idle(server)


# -- 6. bad input: 4xx JSON, never a 500, a hang, or a change to history ------------------------

LONG = "x" * 10_000
BAD_REQUESTS: dict[str, tuple[list[tuple[str, str]], dict[str, str]]] = {
    "channels-and-channel": ([("channels", "a"), ("channel", "b")], {}),
    "dialect-v9": ([("channel", "a"), ("dialect", "v9")], {}),
    "explicit-dialect-and-both": ([("channels", "a"), ("channel", "b"), ("dialect", "v1")], {}),
    "last-ack-abc": ([("channel", "a"), ("last_ack_a", "abc")], {}),
    "last-ack-1-2-3": ([("channel", "a"), ("last_ack_a", "1-2-3")], {}),
    "last-ack-10k-digits": ([("channel", "a"), ("last_ack_a", "1" * 10_000)], {}),
    "last-ack-10k-seq": ([("channel", "a"), ("last_ack_a", "1-" + "2" * 10_000)], {}),
    "last-ack-10k-chars": ([("channel", "a"), ("last_ack_a", LONG)], {}),
    "last-ack-negative": ([("channel", "a"), ("last_ack_a", "-1")], {}),
    "last-ack-v0": ([("channels", "a"), ("reconnect", "true"), ("last_ack_a", "x-1")], {}),
    "last-ack-unsubscribed": ([("channel", "a"), ("last_ack_b", "1-0")], {}),
    "last-ack-empty-name": ([("channel", "a"), ("last_ack_", "1-0")], {}),
    "last-event-id-%%%": ([("channel", "a"), ("dialect", "native")], {"last-event-id": "%%%"}),
    "last-event-id-not-cursor": (
        [("channel", "a"), ("dialect", "native")],
        {"last-event-id": "a=notacursor"},
    ),
    "last-event-id-no-pairs": ([("channel", "a"), ("history", "true")], {"last-event-id": "abc"}),
    "empty-channel": ([("channel", "")], {}),
    "empty-channels-v0": ([("channels", "")], {}),
    "10k-channel-name": ([("channel", LONG)], {}),
    "control-char-channel": ([("channel", "a\x00b")], {}),
    "1000-channels": ([("channel", f"c{n}") for n in range(1000)], {}),
    "101-channels-v0": ([("channels", f"c{n}") for n in range(101)], {}),
    "history-negative": ([("channel", "a"), ("history", "-1")], {}),
    "history-abc": ([("channel", "a"), ("history", "abc")], {}),
    "history-huge": ([("channel", "a"), ("history", "9" * 30)], {}),
    "history-length-0": ([("channels", "a"), ("history_length", "0")], {}),
    "history-since-abc": ([("channels", "a"), ("history_since", "abc")], {}),
    "connection-start-negative": ([("channels", "a"), ("connection_start", "-5")], {}),
    "unknown-event": ([("channel", "a"), ("events", "no.such.event")], {}),
    "unknown-event-in-list": ([("channel", "a"), ("events", f"{EVENT},nope")], {}),
}


async def stored(realtime: Realtime, channels: list[str]) -> dict[str, list[tuple[str, str]]]:
    return {
        c: [(m.id, m.raw) for m in await realtime.channel(c).history(limit=None)] for c in channels
    }


@pytest.mark.timeout(120)
async def test_bad_requests_are_4xx_json(server: Server, emitter: Realtime) -> None:
    await emit(emitter, "a", 1, 2)
    await emit(emitter, "b", 1)
    before = await stored(emitter, ["a", "b"])
    failures = []
    async with httpx.AsyncClient(timeout=10) as client:
        for name, (params, headers) in BAD_REQUESTS.items():
            response = await client.get(server.sse, params=params, headers=headers)
            try:
                body = await assert_refused(response, 400)
                assert body["error"]["code"] == "bad_request"
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
    assert await stored(emitter, ["a", "b"]) == before
    await wait_for_idle(server)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405_json(method: str, server: Server) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        # A JSON body, so the app's guard on writes (415 otherwise) lets it reach the endpoint.
        response = await client.request(
            method,
            server.sse,
            params={"channel": "a"},
            content=b"{}",
            headers={"content-type": "application/json"},
        )
    body = await assert_refused(response, 405)
    assert body["error"]["code"] == "method_not_allowed"
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "OPTIONS"}


@pytest.mark.timeout(60)
async def test_cursor_beyond_the_end_is_live_only(server: Server, emitter: Realtime) -> None:
    """A well-formed cursor past the latest event (or the largest one) is accepted: live only."""
    await emit(emitter, "a", 1)
    for cursor in ["9999999999999999-9999999999999999", "9999999999999999", "0-0", "0"]:
        params = [("channel", "a"), ("dialect", "native"), ("last_ack_a", cursor)]
        async with connect(server.sse, params) as stream:
            assert stream.response.status_code == 200
            frame = await stream.next()
            connected(frame, "a", "native")


# -- the fuzz: random query strings against the app in-process -----------------------------------

KEYS = st.sampled_from(
    [
        "channel", "channels", "dialect", "history", "history_all", "history_length",
        "history_since", "connection_start", "reconnect", "events", "last_ack_a", "last_ack_b",
        "last_ack_", "last_ack_a%00", "token", "", "channel%5B%5D",
    ]
) | st.text(max_size=12)  # fmt: skip
VALUES = st.sampled_from(
    [
        "a", "b", "", "true", "false", "0", "1", "-1", "0-0", "1-0", "1-2-3", "abc", "v0", "v1",
        "native", "v9", EVENT, f"{EVENT},x", "no.such", "9" * 17, "9999999999999999",
        "9999999999999999-9999999999999999", "%", "%%%", "%00", "%ff%fe", "a%0ab", "x" * 300,
    ]
) | st.text(max_size=20)  # fmt: skip
LAST_EVENT_IDS = (
    st.none()
    | st.sampled_from(["a=1-0", "a=0-0&b=5", "%%%", "a=x", "=", "&&"])
    | (st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30))
)


def query_string(pairs: list[tuple[str, str, bool]]) -> bytes:
    """Join pairs; each is percent-encoded, or sent raw (the server must cope with both)."""
    parts = []
    for key, value, encode in pairs:
        if encode:
            parts.append(urlencode([(key, value)]))
        else:
            parts.append(f"{key}={value}")
    return "&".join(parts).encode()


@pytest.mark.timeout(300)
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pairs=st.lists(st.tuples(KEYS, VALUES, st.booleans()), max_size=8),
    last_event_id=LAST_EVENT_IDS,
    method=st.sampled_from(["GET", "GET", "GET", "HEAD", "OPTIONS"]),
)
async def test_fuzzed_queries_never_500(
    emitter: Realtime,
    pairs: list[tuple[str, str, bool]],
    last_event_id: str | None,
    method: str,
) -> None:
    """The app in-process (hypothesis reruns the body, sharing the fixtures' ``Realtime``)."""
    realtime = emitter
    if not await realtime.channel("a").history(limit=None):
        await emit(realtime, "a", 1, 2)
        await emit(realtime, "b", 1)
    before = await stored(realtime, ["a", "b"])
    headers = [] if last_event_id is None else [(b"last-event-id", last_event_id.encode())]
    query = query_string(pairs)
    result = await asgi_get(create_app(realtime), query, method=method, headers=headers)
    event(f"{method} {result.status}")
    assert 200 <= result.status < 500, (query, result.status, result.body[:300])
    if result.status >= 400:
        body = json.loads(result.body)
        assert set(body["error"]) == {"code", "message"}, body
    elif result.headers.get("content-type", "").startswith("text/event-stream") and method == "GET":
        assert result.body.startswith((b"data: ", b"id: ")), result.body[:300]
    assert await stored(realtime, ["a", "b"]) == before
    assert (await realtime.hub()).watched == 0, "a finished request left a subscription"


# -- 7. faults: trimmed before delivery, stalled clients, long histories ------------------------


def user_id(dialect: str, frame: Frame) -> str | None:
    return None if frame.system is not None else user_event(dialect, frame)[1]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dialect", ["native", "v1"])
async def test_events_trimmed_before_the_server_saw_them_are_a_gap(
    dialect: str, serve: StartServer, backend_url: str, make_realtime: Callable[..., Realtime]
) -> None:
    """Two processes: the server looks for the other's commits only every 3 s (SQLite), and
    the test process appends 10 events to a ``max_length=2`` channel meanwhile. The client gets
    every event, or ``gap`` (native) / ``error`` (Upstash dialects) and then what remains —
    never a quiet hole."""
    sqlite = backend_url.startswith("sqlite:")
    server = await serve(**({"backend": f"{backend_url}?poll_interval=3"} if sqlite else {}))
    emitter = make_realtime(history=HistoryPolicy(max_length=2))
    async with connect(server.sse, [("channel", "run-a"), ("dialect", dialect)]) as stream:
        connected(await stream.next(), "run-a", dialect)
        ids = await emit(emitter, "run-a", *range(1, 11))
        frames = await stream.until(lambda frame: user_id(dialect, frame) == ids[-1], within=20)
    problems = [f.json for f in frames if f.system is not None and f.json["type"] != "ping"]
    got = [event_id for _, event_id, _ in user_events(dialect, [f for f in frames if not f.system])]
    if got == ids:
        assert problems == []
    else:
        assert [p["type"] for p in problems] == ["gap" if dialect == "native" else "error"]
        assert frames[0].system is not None, "the gap comes before the events after the hole"
        assert got == ids[-2:]
    if sqlite:
        assert got != ids, "the scenario did not trim anything before the server looked"


def open_stalled(port: int, target: str) -> socket.socket:
    """A client with a tiny receive buffer that reads the response head, then nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def reaches_eof(sock: socket.socket, within: float) -> bool:
    """Read what the server still had buffered; ``True`` if it then closed the connection."""
    sock.settimeout(within)
    try:
        while sock.recv(65_536):
            pass
    except TimeoutError:
        return False
    finally:
        sock.close()
    return True


@pytest.mark.timeout(120)
async def test_stalled_clients_are_dropped_and_others_unaffected(
    serve: StartServer, emitter: Realtime
) -> None:
    """Five clients stop reading while 3 MB of events go out: after ``send_timeout`` the server
    gives them up (their feeds freed, their sockets closed once drained); a client that reads
    gets every event, in order."""
    server = await serve(send_timeout=1)
    target = "/api/realtime?channel=busy&dialect=native"
    stalled = [await asyncio.to_thread(open_stalled, server.port, target) for _ in range(5)]
    try:
        async with connect(server.sse, [("channel", "busy"), ("dialect", "native")]) as healthy:
            connected(await healthy.next(), "busy", "native")
            assert (await server.health())["sse_connections"] == 6
            ids = await emit(emitter, "busy", *range(400), tag="x" * 8_000)
            frames = await healthy.until(lambda frame: user_id("native", frame) == ids[-1], 60)
            got = [i for _, i, _ in user_events("native", frames)]
            assert got == ids
            deadline = time.monotonic() + 15
            while (await server.health())["sse_connections"] > 1:
                assert time.monotonic() < deadline, "stalled clients were never dropped"
                await asyncio.sleep(0.1)
            more = await emit(emitter, "busy", 400)
            assert await read_until_sentinels(healthy, emitter, "native", ["busy"]) == [
                ("busy", more[0], update(400))
            ]
        for sock in stalled:
            assert await asyncio.to_thread(reaches_eof, sock, 10), "a dropped client stayed open"
    finally:
        for sock in stalled:
            sock.close()
    await wait_for_idle(server)
    # Each drop is stepstream's warning, and not also uvicorn's ERROR about a response the app
    # left unfinished (which is how ASGI lets an app give a client up).
    logged = server.log.read_text()
    assert logged.count("dropped an SSE client that accepted nothing") == 5, logged
    assert "ASGI callable returned without completing response" not in logged, logged


@pytest.mark.timeout(120)
async def test_a_long_history_streams_in_pages_then_live(server: Server, emitter: Realtime) -> None:
    """1,200 stored events (several replay pages) then live ones sent during the replay: every
    event once, in order."""
    ids = sorted(
        await asyncio.gather(
            *(emitter.channel("big").emit(EVENT, update(n)) for n in range(1_200))
        ),
        key=parse_cursor,
    )
    params = [("channel", "big"), ("history", "true")]
    async with connect(server.sse, params) as stream:
        assert connected(await stream.next(), "big", "native") == "0-0"
        live = await emit(emitter, "big", 1_200, 1_201)
        events = await read_until_sentinels(stream, emitter, "native", ["big"])
    assert [event_id for _, event_id, _ in events] == ids + live
