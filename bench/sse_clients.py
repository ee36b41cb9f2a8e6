"""Many-connection SSE client harness for the realtime benchmarks.

Opens N HTTP/1.1 connections to an SSE endpoint with plain asyncio protocols (no httpx, no
per-connection task, no per-frame JSON parse), waits until every connection has received its first
SSE frame (stepstream's ``connected`` system event, or the raw floor's equivalent), then records,
for every event whose payload carries ``"t": <time.time_ns() at emit>``, ``receive - t`` in
nanoseconds. The receive time is taken once per ``data_received`` call, i.e. when the bytes reach
the client's event loop; client-side queueing is therefore included in the figure (as it would be
in a browser).

Standalone use (prints p50/p99/max when done)::

    python bench/sse_clients.py --url 'http://127.0.0.1:8000/?channel=bench&dialect=native' \
        -n 1000 --expect 50 --deadline 60

Protocol with the orchestrator (bench/realtime.py): once every connection is ready the harness
prints one line ``READY {json}`` on stdout; when all clients received ``--expect`` ticks, or
``--deadline`` seconds after READY, it writes the latencies (array('q') of ns, native byte order)
to ``--out`` (and the matching emit stamps, which identify the events, to ``--out``.t) and
prints ``DONE {json}``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from urllib.parse import urlsplit

_T_KEY = b'"t":'


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[k])


def summarize_ns(values) -> dict[str, float | int]:
    """p50/p90/p99/max in milliseconds of a sequence of nanosecond latencies."""
    s = sorted(values)
    if not s:
        return {
            "n": 0,
            "p50": float("nan"),
            "p90": float("nan"),
            "p99": float("nan"),
            "max": float("nan"),
        }
    return {
        "n": len(s),
        "p50": percentile(s, 50) / 1e6,
        "p90": percentile(s, 90) / 1e6,
        "p99": percentile(s, 99) / 1e6,
        "max": s[-1] / 1e6,
    }


class Harness:
    def __init__(self, n: int, expect: int, warmup: int) -> None:
        self.n = n
        self.expect = expect
        self.warmup = warmup
        self.latencies = array.array("q")
        self.stamps = array.array("q")  # the emit stamp of each sample: identifies the event
        self.ready_count = 0
        self.complete_count = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.all_ready = asyncio.Event()
        self.all_complete = asyncio.Event()
        self.received_total = 0
        self.closed_early = 0
        self.retried = 0
        self.cpu_at_ready = 0.0
        self.cpu_measured = 0.0  # client CPU seconds from READY to the end of the run

    def note_error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class SSEClientProtocol(asyncio.Protocol):
    """One SSE connection: HTTP/1.1 response head, chunked or identity body, SSE blocks."""

    __slots__ = (
        "cbuf",
        "chunk_left",
        "chunked",
        "done",
        "h",
        "head_buf",
        "head_done",
        "pending_cr",
        "ready",
        "ready_fut",
        "request",
        "sse_buf",
        "status",
        "ticks",
        "transport",
    )

    def __init__(self, harness: Harness, request: bytes) -> None:
        self.h = harness
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.ready = False
        self.head_done = False
        self.head_buf = b""
        self.chunked = False
        self.cbuf = b""
        self.chunk_left = 0  # bytes of chunk data still expected; -1 = expect CRLF after data
        self.sse_buf = b""
        self.pending_cr = False
        self.ticks = 0
        self.done = False
        self.status = 0
        self.ready_fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        if not self.ready_fut.done():
            self.ready_fut.set_result(False)
        if self.ready and not self.done:
            self.h.closed_early += 1

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.head_done:
            self.head_buf += data
            end = self.head_buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.head_buf[:end].decode("latin-1")
            rest = self.head_buf[end + 4 :]
            self.head_buf = b""
            self.head_done = True
            lines = head.split("\r\n")
            try:
                self.status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                    self.chunked = True
            if self.status != 200:
                snippet = rest[:160].decode("utf-8", "replace").replace("\r\n", " ").strip()
                self.h.note_error(f"http {self.status} {snippet}".strip())
                if not self.ready_fut.done():
                    self.ready_fut.set_result(False)
                if self.transport is not None:
                    self.transport.close()
                return
            data = rest
            if not data:
                return
        if self.chunked:
            self._dechunk(data, now)
        else:
            self._feed(data, now)

    # -- body decoding ----------------------------------------------------------------------
    def _dechunk(self, data: bytes, now: int) -> None:
        buf = self.cbuf + data if self.cbuf else data
        self.cbuf = b""
        pos = 0
        n = len(buf)
        out = []
        while pos < n:
            if self.chunk_left > 0:
                take = min(self.chunk_left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_left = -1
            elif self.chunk_left == -1:  # CRLF after chunk data
                if n - pos < 2:
                    break
                pos += 2
                self.chunk_left = 0
            else:  # chunk-size line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size_text = buf[pos:eol].split(b";", 1)[0].strip()
                pos = eol + 2
                size = int(size_text, 16) if size_text else 0
                if size == 0:  # last chunk: the server closed the stream
                    pos = n
                    break
                self.chunk_left = size
        if pos < n:
            self.cbuf = buf[pos:]
        if out:
            self._feed(b"".join(out) if len(out) > 1 else out[0], now)

    def _feed(self, data: bytes, now: int) -> None:
        if self.pending_cr:
            data = b"\r" + data
            self.pending_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self.pending_cr = True
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        buf = self.sse_buf + data if self.sse_buf else data
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            self._block(buf, start, end, now)
            start = end + 2
        self.sse_buf = buf[start:] if start < len(buf) else b""

    def _block(self, buf: bytes, start: int, end: int, now: int) -> None:
        h = self.h
        if not self.ready:
            self.ready = True
            if not self.ready_fut.done():
                self.ready_fut.set_result(True)
        i = buf.find(_T_KEY, start, end)
        if i < 0:
            return  # system event (connected, ping...) or comment
        i += 4
        while buf[i] == 32:  # tolerate '"t": 123'
            i += 1
        j = i
        while 48 <= buf[j] <= 57:
            j += 1
        t = int(buf[i:j])
        self.ticks += 1
        h.received_total += 1
        if self.ticks > h.warmup:
            h.latencies.append(now - t)
            h.stamps.append(t)
        if self.ticks == h.expect + h.warmup and not self.done:
            self.done = True
            h.complete_count += 1
            if h.complete_count >= h.ready_count and h.all_ready.is_set():
                h.all_complete.set()


def build_request(url: str, extra_headers: dict[str, str] | None = None) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    host = u.hostname or "127.0.0.1"
    port = u.port or 80
    target = (u.path or "/") + (("?" + u.query) if u.query else "")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
        "User-Agent: stepstream-bench",
    ]
    for k, v in (extra_headers or {}).items():
        lines.append(f"{k}: {v}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def run(
    url: str,
    n: int,
    expect: int,
    warmup: int = 0,
    deadline: float = 60.0,
    connect_concurrency: int = 200,
    connect_timeout: float = 60.0,
    on_ready=None,
    retries: int = 5,
) -> Harness:
    host, port, request = build_request(url)
    h = Harness(n, expect, warmup)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(connect_concurrency)
    protocols: list[SSEClientProtocol] = []

    async def one() -> None:
        for attempt in range(retries + 1):
            if attempt:
                h.retried += 1
                await asyncio.sleep(min(1.0, 0.05 * 2 ** (attempt - 1)))
            async with sem:
                proto = SSEClientProtocol(h, request)
                try:
                    await loop.create_connection(lambda p=proto: p, host, port)
                except OSError as exc:
                    h.note_error(type(exc).__name__)
                    continue
                ok = False
                try:
                    ok = await asyncio.wait_for(asyncio.shield(proto.ready_fut), connect_timeout)
                except TimeoutError:
                    h.note_error("no first frame")
                if ok:
                    protocols.append(proto)
                    h.ready_count += 1
                    return
                if proto.transport is not None:
                    proto.transport.close()
        h.failed += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    connect_s = time.perf_counter() - t0
    h.all_ready.set()
    if expect == 0 or (h.ready_count and h.complete_count >= h.ready_count):
        h.all_complete.set()
    h.cpu_at_ready = time.process_time()
    if on_ready is not None:
        on_ready(
            {
                "ready": h.ready_count,
                "failed": h.failed,
                "retried": h.retried,
                "errors": h.errors,
                "connect_s": round(connect_s, 3),
                "pid": os.getpid(),
            }
        )
    if h.ready_count == 0:
        return h
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(h.all_complete.wait(), deadline)
    h.cpu_measured = time.process_time() - h.cpu_at_ready
    for p in protocols:
        if p.transport is not None:
            p.transport.abort()
    return h


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("-n", "--clients", type=int, default=1)
    ap.add_argument("--expect", type=int, default=10, help="measured ticks per client")
    ap.add_argument("--warmup", type=int, default=0, help="leading ticks per client not measured")
    ap.add_argument(
        "--deadline", type=float, default=60.0, help="seconds after READY to wait for all ticks"
    )
    ap.add_argument(
        "--connect-concurrency", type=int, default=200, help="connections being opened at once"
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=5,
        help="reconnect attempts per client when a connect is refused (like an "
        "EventSource would); refusals are counted in 'errors'",
    )
    ap.add_argument("--out", help="write latencies (array('q'), ns) here")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    raise_fd_limit()
    if not args.no_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass

    def on_ready(info: dict) -> None:
        print("READY " + json.dumps(info), flush=True)

    h = asyncio.run(
        run(
            args.url,
            args.clients,
            args.expect,
            args.warmup,
            args.deadline,
            args.connect_concurrency,
            on_ready=on_ready,
            retries=args.retries,
        )
    )
    if args.out:
        with open(args.out, "wb") as f:
            h.latencies.tofile(f)
        with open(args.out + ".t", "wb") as f:
            h.stamps.tofile(f)
    info = {
        "ready": h.ready_count,
        "failed": h.failed,
        "complete": h.complete_count,
        "received": h.received_total,
        "expected": h.ready_count * (args.expect + args.warmup),
        "closed_early": h.closed_early,
        "cpu_s": round(h.cpu_measured, 3),
        "errors": h.errors,
        "summary_ms": summarize_ns(h.latencies),
    }
    print("DONE " + json.dumps(info), flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip tearing down thousands of transports one by one


if __name__ == "__main__":
    sys.exit(main())
