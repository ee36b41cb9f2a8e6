"""Shared helpers of the benchmarks: percentiles, free ports, a private redis-server, a private
durable PostgreSQL, machine facts, rewriting one marked section of BENCHMARKS.md in place, and
timing ways of doing one thing in alternating rounds."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return pct(values, 50)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[str]:
    """A private ``redis-server`` on a free port (no RDB snapshots; ``extra`` adds options,
    e.g. ``--appendonly yes --appendfsync everysec``). Yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not on PATH")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="wfbench-redis-")
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
    args += list(extra) if extra else ["--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Postgres:
    """A private PostgreSQL started by :func:`postgres_server`."""

    port: int
    directory: Path
    version: str  # server_version, e.g. "15.14 (Debian 15.14-0+deb12u1)"
    settings: dict[str, str]  # fsync, synchronous_commit, wal_sync_method, ...

    def url(self, database: str = "postgres", query: str = "") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def postmaster_pid(self) -> int:
        return int((self.directory / "data" / "postmaster.pid").read_text().split()[0])

    def sql(self, *statements: str, database: str = "postgres") -> list[list[tuple]]:
        """Run statements one by one (autocommit, so CREATE DATABASE works); their rows."""
        import asyncio

        import asyncpg

        async def run() -> list[list[tuple]]:
            conn = await asyncpg.connect(self.url(database))
            try:
                return [[tuple(row) for row in await conn.fetch(sql)] for sql in statements]
            finally:
                await conn.close()

        return asyncio.run(run())

    def recreate(self, database: str) -> str:
        """Drop ``database`` (if there) and create it empty; its URL."""
        self.sql(
            f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', f'CREATE DATABASE "{database}"'
        )
        return self.url(database)


DURABLE_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A private, durable PostgreSQL (``fsync=on``, ``synchronous_commit=on``: every commit
    waits for its WAL flush) on a free port of 127.0.0.1, from ``tests/postgres.py`` (Debian's
    binaries, initdb into a temp dir); never the machine's shared server."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.postgres import postgres_server as start

    with start(free_port(), durable=True) as server:
        pg = Postgres(server.port, server.directory, "", {})
        names = ", ".join(f"'{name}'" for name in DURABLE_SETTINGS)
        rows = pg.sql(
            "SHOW server_version",
            f"SELECT name, setting FROM pg_settings WHERE name IN ({names})",
        )
        settings = dict(rows[1])
        if settings.get("fsync") != "on" or settings.get("synchronous_commit") != "on":
            raise RuntimeError(f"PostgreSQL is not durable: {settings}")
        yield dataclasses.replace(pg, version=rows[0][0][0], settings=settings)


def pg_commit_floor(url: str, n: int = 1000) -> tuple[float, float]:
    """p50/p99 ms of a bare one-row INSERT commit (asyncpg, autocommit, one round trip) on the
    server at ``url``: the WAL flush every durable step write pays at least once."""
    import asyncio

    import asyncpg

    async def run() -> list[float]:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS commit_floor (a bigint, b text)")
            insert = await conn.prepare("INSERT INTO commit_floor VALUES ($1, $2)")
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                await insert.fetch(i, "x" * 300)
                times.append((time.perf_counter() - t0) * 1000)
            await conn.execute("DROP TABLE commit_floor")
            return times
        finally:
            await conn.close()

    times = asyncio.run(run())
    return median(times), pct(times, 99)


def _proc_stat(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def cpu_tree_s(pid: int) -> float:
    """CPU seconds of a process and its children, live or exited: its own utime + stime, the
    cutime + cstime of the children it reaped, and the same of each live child. For a server
    made of processes (PostgreSQL's postmaster and its backends); a plain process adds 0."""
    ticks = sum(int(x) for x in _proc_stat(pid)[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            child = _proc_stat(entry)
        except OSError:
            continue
        if child[1] == str(pid):
            ticks += sum(int(x) for x in child[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds summed over all CPUs, wall clock) from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.monotonic()


class OtherCpu:
    """CPU used on the machine by everything that is not the benchmark (this process, its
    children, and the ``servers``' process trees) between creation and :meth:`pct`, in % of
    one CPU: how much unrelated load (a test suite on the same box) disturbed a figure."""

    def __init__(self, servers: Sequence[int] = ()) -> None:
        self.servers = list(servers)
        self.busy0, self.t0 = machine_busy_s()
        self.own0 = self._own()

    def _own(self) -> float:
        total = 0.0
        for pid in [os.getpid(), *self.servers]:
            with contextlib.suppress(OSError):
                total += cpu_tree_s(pid)
        return total

    def pct(self) -> float:
        busy1, t1 = machine_busy_s()
        own = self._own() - self.own0
        return max(0.0, (busy1 - self.busy0 - own) / max(1e-6, t1 - self.t0) * 100)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=5
        ).stdout
        redis = out.split("v=", 1)[1].split()[0] if "v=" in out else out.strip()
    return (
        f"{os.cpu_count()} CPUs (`nproc` = {len(os.sched_getaffinity(0))}), {cpu}; "
        f"Linux {platform.release()}; Python {platform.python_version()}; redis-server {redis}"
    )


def python_of_venv() -> str:
    return sys.executable


def rewrite_section(tag: str, body: str, after: str | None = None) -> None:
    """Replace the text between ``<!-- tag:begin -->`` and ``<!-- tag:end -->`` in
    BENCHMARKS.md with ``body`` (markers kept). A missing section is inserted right after the
    section tagged ``after`` if there is one, else appended. The rest of the file is left byte
    for byte."""
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    anchor = text.find(f"<!-- {after}:end -->") if after else -1
    if i >= 0 and j >= 0:
        text = text[:i] + block + text[j + len(end) :]
    elif anchor >= 0:
        k = anchor + len(f"<!-- {after}:end -->")
        text = text[:k] + "\n\n" + block + text[k:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = BENCHMARKS.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(BENCHMARKS)


def ms(value: float, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"  # noqa: RUF001


async def alternate_p50s(
    ways: Mapping[str, Callable[[], Awaitable[object]]], calls: int, rounds: int
) -> dict[str, list[float]]:
    """Each way's p50 (µs per call) in each round, the ways taking turns round by round so
    load on a shared machine falls on all of them; 100 untimed calls warm each up first."""
    p50s: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, call in ways.items():
            for _ in range(100):
                await call()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                await call()
                times.append(time.perf_counter() - t0)
            p50s[name].append(median(times) * 1e6)
    return p50s
