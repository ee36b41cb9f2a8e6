"""Chaos scenario 5 (DESIGN §10 "bounded"): fan-out to many SSE connections, and slow consumers.

One real uvicorn process (``fanout_app.py``) holds ``CLIENTS`` SSE connections from
``bench/sse_clients.py`` (raw asyncio readers with uvloop, in their own process so the test is
not the bottleneck), while the test process emits a tick every 100 ms into the same store, as a
worker would: the latency covers emit → storage → the server's hub → every SSE stream → the
client, and a server that cannot keep up shows it (the emitter does not wait for it).

``STALLED`` more clients subscribe to the ticks and to ``firehose``, on which the test emits
large events so that a client that stops reading backs the server's writes up within seconds.
Three phases, so that what the stall costs the others is told apart from what the extra traffic
costs: (1) ticks only; (2) the firehose too, every client reading; (3) the ``STALLED`` clients
stop reading.

Asserted (behaviour, never timings): every reading client gets every tick and none is dropped;
server memory stays bounded while the stalled clients hang; the server drops them after its SSE
send timeout. Printed (``-s``): delivery latency p50/p99 per phase, server memory per
connection, CPU.
"""

from __future__ import annotations

import array
import asyncio
import os
import resource
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.realtime import Clients, cpu_s, rss_kb
from bench.sse_clients import raise_fd_limit, summarize_ns

from stepstream import Realtime
from tests.chaos.conftest import FULL, scale
from tests.chaos.fanout_app import SCHEMA
from tests.conftest import free_port
from tests.processes import serving

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]
CLIENTS = scale(200, 10_000)
STALLED = scale(10, 100)
INTERVAL = 0.1  # one broadcast every 100 ms
# Broadcasts per phase: ticks only, then with the firehose, then with the stalled clients; a
# few more at the end so that the readers are still there when the stall ends.
PHASES = {"ticks only": scale(30, 100), "firehose": scale(30, 50), "stalled": scale(60, 150)}
AFTER = 10
SEND_TIMEOUT = 2.0  # the server's SSE send timeout in this scenario
FIREHOSE = {"pad": "x" * 32_768}  # one large event, 10 a second
RCVBUF = 4096  # the stalling clients' receive buffer
MSS = 1460
# The fan-out (one store subscription per channel, every stream fed from the server's hub) and
# the slow-consumer handling are the server's, whatever the store: ``make test`` runs it on one
# backend, ``make chaos`` on every one.
BACKENDS = ["sqlite", "redis", "postgres"] if FULL else ["postgres"]
# What the stall may add to the server's RSS: a stalled client may hold about twice the hub's
# per-consumer queue bound (1 MiB of event data: queued, plus the frames being written).
MEMORY_BUDGET_MB = 32 + 2 * STALLED


class StalledClientsNotDropped(AssertionError):
    """The server still holds connections that stopped reading, past its send timeout."""


@contextmanager
def fanout_server(backend_url: str, log: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "tests.chaos.fanout_app:app", "--app-dir", str(ROOT),
        "--host", "127.0.0.1", "--port", str(port), "--http", "httptools", "--loop", "uvloop",
        "--log-level", "warning", "--no-access-log", "--backlog", "4096",
        "--timeout-graceful-shutdown", "2",
    ]  # fmt: skip
    env = {
        **os.environ,
        "STEPSTREAM_TEST_BACKEND": backend_url,
        "STEPSTREAM_TEST_SEND_TIMEOUT": str(SEND_TIMEOUT),
    }
    try:
        with serving(command, port=port, cwd=ROOT, env=env, log_path=log) as url:
            yield url, httpx.get(f"{url}/_chaos/pid").json()["pid"]
    finally:
        text = log.read_text()
        if text:
            print(f"server log (tail):\n{text[-2000:]}")
    assert "Traceback" not in text, "the server logged an exception"


class Stallable(asyncio.Protocol):
    """A raw SSE client that takes (and drops) everything until ``stall()``, then reads
    nothing more; ``closed_by_server()`` reads again and says if the server had hung up.

    Its receive buffer is small and fixed, and it advertises an Ethernet-sized MSS: the server
    then sizes its socket buffer for it as over a real network, not for loopback's 64 KiB
    segments, so a stall backs the server's writes up within seconds.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streaming = loop.create_future()  # the first frame arrived
        self.closed = loop.create_future()
        self._seen = b""

    @classmethod
    async def open(cls, port: int, channels: list[str]) -> Stallable:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        _, client = await loop.create_connection(cls, sock=sock)
        query = "&".join(f"channel={channel}" for channel in channels)
        assert client.transport is not None
        client.transport.write(
            f"GET /api/realtime?{query}&dialect=native HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await asyncio.wait_for(asyncio.shield(client.streaming), 30)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.streaming.done():
            self._seen += data
            if b"\n\n" in self._seen.partition(b"\r\n\r\n")[2]:
                self.streaming.set_result(None)

    def eof_received(self) -> None:
        self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.streaming, self.closed):
            if not future.done():
                future.set_result(None)

    def stall(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    async def closed_by_server(self, within: float) -> bool:
        assert self.transport is not None
        if not self.closed.done():
            self.transport.resume_reading()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), within)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def paced(count: int, interval: float, emit: Callable[[], Awaitable[Any]]) -> None:
    """``emit()`` ``count`` times, one every ``interval`` seconds (drift-free)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(count):
        await emit()
        await asyncio.sleep(max(0.0, start + (n + 1) * interval - loop.time()))


@dataclass
class Stall:
    start: float = 0.0  # loop time
    rss_start: int = 0  # KB
    rss_peak: int = 0
    connections: list[int] = field(default_factory=list)  # SSE connections, every 250 ms
    all_dropped: float | None = None  # seconds from the stall until the server held no stalled
    closed: int = 0  # stalled clients whose connection the server ended


async def connections(http: httpx.AsyncClient, url: str) -> int:
    count: int = (await http.get(f"{url}/healthz")).json()["sse_connections"]
    return count


async def watch_stall(
    http: httpx.AsyncClient, url: str, pid: int, clients: list[Stallable]
) -> Stall:
    """Stop ``clients`` reading; sample the server's memory and connections for the phase."""
    loop = asyncio.get_running_loop()
    stall = Stall(loop.time(), rss_kb(pid), rss_kb(pid))
    for client in clients:
        client.stall()
    while loop.time() < stall.start + PHASES["stalled"] * INTERVAL:
        stall.rss_peak = max(stall.rss_peak, rss_kb(pid))
        stall.connections.append(await connections(http, url))
        if stall.connections[-1] == CLIENTS and stall.all_dropped is None:
            stall.all_dropped = loop.time() - stall.start
        await asyncio.sleep(0.25)  # sampling, not an assertion
    return stall


async def wait_for_drops(
    http: httpx.AsyncClient, url: str, stall: Stall, clients: list[Stallable]
) -> None:
    """After the readers have gone: wait (at most 30 s) for the server to hold no connection,
    then check that it closed every stalled one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while stall.all_dropped is None and loop.time() < deadline:
        if await connections(http, url) == 0:
            stall.all_dropped = loop.time() - stall.start
        await asyncio.sleep(0.25)  # polling, not an assertion
    if stall.all_dropped is not None:
        closed = await asyncio.gather(*(client.closed_by_server(10) for client in clients))
        stall.closed = sum(closed)


async def three_phases(
    http: httpx.AsyncClient, url: str, pid: int, emitter: Realtime, stallable: list[Stallable]
) -> tuple[list[int], Stall]:
    """Ticks only, then the firehose too, then the stall; returns when the phases and the
    emitters are done: the ``time.time_ns()`` each phase began at, and what the stall did."""
    loop = asyncio.get_running_loop()
    bench, firehose = emitter.channel("bench"), emitter.channel("firehose")
    ticks = sum(PHASES.values()) + AFTER
    ticking = loop.create_task(
        paced(ticks, INTERVAL, lambda: bench.emit("bench.tick", {"t": time.time_ns()}))
    )
    starts = [time.time_ns()]
    await asyncio.sleep(PHASES["ticks only"] * INTERVAL)
    starts.append(time.time_ns())
    blobs = PHASES["firehose"] + PHASES["stalled"]
    emitting = loop.create_task(
        paced(blobs, INTERVAL, lambda: firehose.emit("bench.blob", FIREHOSE))
    )
    await asyncio.sleep(PHASES["firehose"] * INTERVAL)
    starts.append(time.time_ns())
    stall = await watch_stall(http, url, pid, stallable)
    await emitting
    await ticking
    return starts, stall


@pytest.mark.timeout(scale(150, 400))
@pytest.mark.parametrize("backend_url", BACKENDS, indirect=True)
async def test_fanout_and_slow_consumers(
    backend_url: str, tmp_path: Path, make_realtime: Callable[..., Realtime]
) -> None:
    needed = CLIENTS + STALLED + 500
    if raise_fd_limit() < needed:  # the server process inherits the raised limit
        pytest.skip(f"RLIMIT_NOFILE is below {needed} and cannot be raised")
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed
    emitter = make_realtime(schema=SCHEMA)
    await emitter.open()
    ticks = sum(PHASES.values()) + AFTER
    stallable: list[Stallable] = []
    with fanout_server(backend_url, tmp_path / "server.log") as (url, pid):
        port = int(url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(timeout=30) as http:
            # Warm the code paths up, then take the baseline of the server's memory.
            for client in [await Stallable.open(port, ["bench"]) for _ in range(10)]:
                client.close()
            await asyncio.sleep(0.5)
            rss = [rss_kb(pid)]
            readers = await asyncio.to_thread(
                Clients, "fanout", f"{url}/api/realtime?channel=bench&dialect=native", CLIENTS,
                ticks, 0, ticks * INTERVAL + 120, scale(1, 2), tmp_path,
                ready_timeout=max(60, CLIENTS / 50),
            )  # fmt: skip
            try:
                assert readers.ready_count == CLIENTS, readers.errors()
                await asyncio.sleep(1)
                rss.append(rss_kb(pid))
                stallable = await asyncio.gather(
                    *(Stallable.open(port, ["bench", "firehose"]) for _ in range(STALLED))
                )
                server_cpu, wall = cpu_s(pid), time.monotonic()
                starts, stall = await three_phases(http, url, pid, emitter, stallable)
                latencies, done = await asyncio.to_thread(readers.finish, 120)
                wall = time.monotonic() - wall
                server_cpu = cpu_s(pid) - server_cpu
                cpu = {"server": server_cpu, "clients": sum(d["cpu_s"] for d in done)}
                await wait_for_drops(http, url, stall, stallable)  # the readers are gone
            finally:
                readers.kill()
                for client in stallable:
                    client.close()

    assert readers.stamps is not None
    phases = [array.array("q") for _ in PHASES]
    for latency, stamp in zip(latencies, readers.stamps, strict=True):
        phases[sum(stamp >= start for start in starts) - 1].append(latency)
    received = sum(d["received"] for d in done)
    report(backend_url, readers, (rss[1] - rss[0]) / CLIENTS, phases,
           {who: seconds / wall for who, seconds in cpu.items()}, stall, received)  # fmt: skip
    assert received == CLIENTS * ticks, "a reading client missed ticks"
    assert sum(d["closed_early"] for d in done) == 0, "the server dropped a reading client"
    assert min(stall.connections) >= CLIENTS, "reading clients left during the stall"
    grown = (stall.rss_peak - stall.rss_start) / 1024
    assert grown < MEMORY_BUDGET_MB, f"the server grew by {grown:.0f} MB during the stall"
    if stall.all_dropped is None or stall.closed < STALLED:
        raise StalledClientsNotDropped(
            f"{STALLED - stall.closed} of {STALLED} stalled clients were not closed by the server "
            f"within {PHASES['stalled'] * INTERVAL + 30:g} s (send timeout {SEND_TIMEOUT:g} s); "
            f"during the stall it counted {stall.connections[-1]} SSE connections for {CLIENTS} "
            "reading clients"
        )


def report(
    backend_url: str,
    readers: Clients,
    kb_per_connection: float,
    phases: list[array.array[int]],
    cpu: dict[str, float],
    stall: Stall,
    received: int,
) -> None:
    assert readers.stamps is not None
    emitted = sorted(set(readers.stamps))
    figures = [summarize_ns(phase) for phase in phases]
    dropped = "never" if stall.all_dropped is None else f"{stall.all_dropped:.1f}"
    rows = {
        f"connect {CLIENTS} clients (s)": f"{readers.connect_s:.1f}",
        "memory per connection (KB, server RSS delta / connections)": f"{kb_per_connection:.1f}",
        "broadcast interval achieved (ms)": (
            f"{(emitted[-1] - emitted[0]) / (len(emitted) - 1) / 1e6:.0f}"
        ),
        **{
            f"delivery ms p50 / p99 / max: {phase} ({count} broadcasts)": (
                f"{f['p50']:.0f} / {f['p99']:.0f} / {f['max']:.0f}"
            )
            for (phase, count), f in zip(PHASES.items(), figures, strict=True)
        },
        "p99 stalled / firehose (what the stall costs the others)": (
            f"{figures[2]['p99'] / figures[1]['p99']:.2f}x"
        ),
        "p99 firehose / ticks only (what the extra traffic costs)": (
            f"{figures[1]['p99'] / figures[0]['p99']:.2f}x"
        ),
        "CPU, % of one core: server / client harness": (
            f"{cpu['server'] * 100:.0f} / {cpu['clients'] * 100:.0f}"
        ),
        "server RSS MB at the stall's start / peak": (
            f"{stall.rss_start / 1024:.0f} / {stall.rss_peak / 1024:.0f}"
        ),
        "SSE connections during the stall (max, last)": (
            f"{max(stall.connections)}, {stall.connections[-1]}"
        ),
        "all stalled clients dropped after (s)": dropped,
        "stalled clients closed by the server": f"{stall.closed} / {STALLED}",
        "deliveries": str(received),
    }
    print(
        f"\nfan-out, {backend_url.split(':')[0]}, {'full' if FULL else 'quick'} scale: "
        f"{CLIENTS} reading clients, {STALLED} stalling, a broadcast every "
        f"{INTERVAL * 1000:.0f} ms, send timeout {SEND_TIMEOUT:g} s\n"
        "| figure | value |\n|---|---:|\n"
        + "\n".join(f"| {name} | {value} |" for name, value in rows.items())
    )
