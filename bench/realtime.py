# ruff: noqa: RUF001
"""Realtime benchmarks: stepstream's SSE endpoint next to floors measured in the same run.

    python bench/realtime.py            # full run (~5-8 min), rewrites a section of BENCHMARKS.md
    python bench/realtime.py --quick    # smoke run (< 1 min), prints only (add --write to record)
    python bench/realtime.py --scenario 'lat-*' --scenario redis-floor
    python bench/realtime.py --scenario pg-floor --scenario 'lat-postgres*'

Scenarios (``--scenario`` takes names or fnmatch patterns; repeatable or comma separated):

(a) emit -> SSE client latency, one client, ``--lat-events`` ticks one every ``--lat-interval``:
    ``redis-floor``       redis-py XADD on one connection -> XREAD BLOCK on another (the floor)
    ``lat-raw``           minimal raw-ASGI SSE broadcaster, emitter in the server (SSE floor)
    ``lat-sqlite``        stepstream, SQLite, emitter in the server process
    ``lat-sqlite-xproc``  stepstream, SQLite, emitter in another process (same file)
    ``lat-redis``         stepstream, Redis, emitter in another process
    ``lat-redis-inproc``  stepstream, Redis, emitter in the server process
    ``pg-floor``          asyncpg INSERT + NOTIFY on one connection -> LISTEN on another (the
                          PostgreSQL floor, bench/pg_floor.py)
    ``lat-postgres``      stepstream, PostgreSQL, emitter in another process
    ``lat-postgres-inproc`` stepstream, PostgreSQL, emitter in the server process
(b)+(c) broadcast to N connected clients (``--clients``, default 1000,5000) and server RSS per
    idle connection (measured once all N are connected, before the first event):
    ``bc-raw-<N>``, ``bc-sqlite-<N>``, ``bc-redis-<N>``, ``bc-postgres-<N>`` (emitter in the
    server process), and ``bc-sse-starlette-<N>`` (reference, only with --with-sse-starlette or
    asked by name).

Every server runs under uvicorn (``--http httptools --loop uvloop``, one worker, access log off)
in its own process; clients run in one (``--client-procs``) separate process(es) using
bench/sse_clients.py; events carry ``time.time_ns()`` taken right before emit, latency is
receive time - that. Redis scenarios start a private ``redis-server`` on a free port;
PostgreSQL scenarios a private, durable PostgreSQL (``tests/postgres.py``, ``durable=True``:
``fsync=on``, ``synchronous_commit=on``) on a free port, with a new empty database per scenario.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import datetime as dt
import fnmatch
import json
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from sse_clients import raise_fd_limit, summarize_ns  # noqa: E402
from wf_common import cpu_tree_s, machine_busy_s  # noqa: E402

SECTION_START = "<!-- bench/realtime.py:start -->"
SECTION_END = "<!-- bench/realtime.py:end -->"

SERVER_MODULES = {
    "raw": "raw_broadcaster:app",
    "sqlite": "stepstream_app:app",
    "redis": "stepstream_app:app",
    "postgres": "stepstream_app:app",
    "sse-starlette": "sse_starlette_broadcaster:app",
}
UVICORN_FLAGS = [
    "--http",
    "httptools",
    "--loop",
    "uvloop",
    "--log-level",
    "warning",
    "--no-access-log",
    "--backlog",
    "4096",
    "--timeout-graceful-shutdown",
    "2",
    "--lifespan",
    "on",
    "--workers",
    "1",
]

TARGET_LAT_P50_MS = 2.0
TARGET_LAT_P99_MS = 10.0
TARGET_PG_LAT_P50_MS = 3.0  # issue 10: emit -> SSE client on PostgreSQL
TARGET_PG_LAT_P99_MS = 15.0
STORE = {"sqlite": "SQLite", "redis": "Redis", "postgres": "PostgreSQL"}
TARGET_BC_RATIO = 1.5
TARGET_MEM_KB = 20.0
NOISY_PCT = 30.0  # other processes' CPU (% of one CPU) above which a figure is flagged


# --------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(BENCH)]
    # use the installed package if there is one, else the source tree
    try:
        import importlib.util

        if importlib.util.find_spec("stepstream") is None:
            paths.append(str(ROOT / "src"))
    except (ImportError, ValueError):
        paths.append(str(ROOT / "src"))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Proc:
    """A child process whose stdout lines are collected by a thread; stderr goes to a file."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], logdir: Path, stdin: bool = False
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.err_path = logdir / f"{name}.stderr"
        self._err = open(self.err_path, "wb")  # noqa: SIM115 (closed in stop())
        self.p = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._err,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=env,
            cwd=str(BENCH),
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.all_lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.p.pid

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.all_lines.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.name}: no {prefix!r} line within {timeout:.0f}s{self.stderr_tail()}"
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(
                    f"{self.name} exited (rc={self.p.wait()}) before {prefix!r}{self.stderr_tail()}"
                )
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def send(self, text: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def stderr_tail(self, n: int = 15) -> str:
        try:
            lines = self.err_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return ("\n  stderr: " + "\n  stderr: ".join(lines[-n:])) if lines else ""

    def stop(self, sig: int = signal.SIGINT, grace: float = 5.0) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.p.pid, sig)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self._err.close()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU used on the whole machine vs by the benchmark's own processes during a phase, so
    a run disturbed by unrelated load (a test suite on the same box) says so."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.busy0, self.t0 = machine_busy_s()
        self.own0 = sum(self._cpu(p) for p in pids)

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            return cpu_tree_s(pid)
        except OSError:
            return 0.0

    def foreign_pct(self, extra_own_s: float = 0.0) -> float:
        """Average CPU used by everything else, in % of one CPU."""
        busy1, t1 = machine_busy_s()
        own = sum(self._cpu(p) for p in self.pids) - self.own0 + extra_own_s
        return max(0.0, (busy1 - self.busy0 - own) / max(1e-6, t1 - self.t0) * 100)


def wait_idle(max_wait: float, threshold_pct: float = 15.0) -> float:
    """Wait (up to ``max_wait`` s) for a 1-second window in which the machine is < threshold
    busy (in % of the whole machine). Returns the busy % of the last window."""
    deadline = time.monotonic() + max_wait
    ncpu = os.cpu_count() or 1
    while True:
        b0, t0 = machine_busy_s()
        time.sleep(1.0)
        b1, t1 = machine_busy_s()
        pct = (b1 - b0) / (t1 - t0) / ncpu * 100
        if pct < threshold_pct or time.monotonic() >= deadline:
            return pct


def http(method: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Redis:
    def __init__(self, logdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found on PATH")
        self.port = free_port()
        self.proc = Proc(
            "redis-server",
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "20000",
            ],
            child_env(),
            logdir,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start" + self.proc.stderr_tail())
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(64)

    def version(self) -> str:
        out = subprocess.run(
            [shutil.which("redis-server") or "redis-server", "--version"],
            capture_output=True,
            text=True,
        ).stdout
        for part in out.split():
            if part.startswith("v="):
                return part[2:]
        return "?"

    def stop(self) -> None:
        self.proc.stop(signal.SIGTERM)


class Postgres:
    """A private durable PostgreSQL for the run (``wf_common.postgres_server``); one new empty
    database per scenario."""

    def __init__(self) -> None:
        from wf_common import postgres_server

        self._stack = contextlib.ExitStack()
        self.pg = self._stack.enter_context(postgres_server())
        self.pid = self.pg.postmaster_pid()

    def database(self, name: str) -> str:
        """A new empty database ``name`` (dashes become underscores); its URL."""
        return self.pg.recreate(re.sub(r"[^a-z0-9_]", "_", name.lower()))

    def version(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(self.pg.settings.items()))
        return f"{self.pg.version.split()[0]} ({settings})"

    def stop(self) -> None:
        self._stack.close()


class Server:
    gc_mode = ""  # set from --gc (diagnostic)

    def __init__(self, kind: str, name: str, logdir: Path, backend: str | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        extra = {"BENCH_BACKEND": backend} if backend else {}
        if Server.gc_mode:
            extra["BENCH_GC"] = Server.gc_mode
        env = child_env(extra)
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            SERVER_MODULES[kind],
            "--app-dir",
            str(BENCH),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *UVICORN_FLAGS,
        ]
        self.proc = Proc(f"{name}.server", cmd, env, logdir)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.p.poll() is not None:
                raise RuntimeError(
                    f"server {kind} exited rc={self.proc.p.returncode}" + self.proc.stderr_tail()
                )
            try:
                status, _ = http("GET", self.base + "/_bench/health", timeout=1)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {kind} not healthy" + self.proc.stderr_tail())
            time.sleep(0.05)

    @property
    def sse_url(self) -> str:
        if self.kind in ("sqlite", "redis", "postgres"):
            return f"{self.base}/?channel=bench&dialect=native"
        return f"{self.base}/?channel=bench"

    def emit(self, count: int, interval: float, warmup: int) -> None:
        status, body = http(
            "POST", f"{self.base}/_bench/emit?count={count}&interval={interval}&warmup={warmup}"
        )
        if status != 202:
            raise RuntimeError(f"emit trigger failed: {status} {body!r}")

    def health_errors(self) -> list[str]:
        with contextlib.suppress(Exception):
            _, body = http("GET", self.base + "/_bench/health", timeout=2)
            return list(json.loads(body).get("errors", []))
        return []

    def gc_note(self) -> str:
        """Full (gen2) collections during the measured run, from bench/gcstats.py."""
        with contextlib.suppress(Exception):
            status, body = http("GET", self.base + "/_bench/stats", timeout=2)
            if status == 200:
                g2 = json.loads(body).get("gc", {}).get("gen2")
                if g2:
                    return f"gen2 GC: {g2['count']}× (max {g2['max_ms']:.0f} ms);"
                return "gen2 GC: 0×;"
        return ""

    def stop(self) -> None:
        self.proc.stop(signal.SIGINT, grace=6)


class Clients:
    """``procs`` client-harness processes sharing ``n`` connections."""

    def __init__(
        self,
        name: str,
        url: str,
        n: int,
        expect: int,
        warmup: int,
        deadline: float,
        procs: int,
        logdir: Path,
        ready_timeout: float,
    ) -> None:
        self.n = n
        self.outs: list[Path] = []
        self.procs: list[Proc] = []
        self.ready: list[dict] = []
        sizes = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        for i, size in enumerate(s for s in sizes if s > 0):
            out = logdir / f"{name}.clients{i}.lat"
            self.outs.append(out)
            cmd = [
                sys.executable,
                str(BENCH / "sse_clients.py"),
                "--url",
                url,
                "-n",
                str(size),
                "--expect",
                str(expect),
                "--warmup",
                str(warmup),
                "--deadline",
                str(deadline),
                "--out",
                str(out),
            ]
            self.procs.append(Proc(f"{name}.clients{i}", cmd, child_env(), logdir))
        for p in self.procs:
            self.ready.append(json.loads(p.wait_line("READY", ready_timeout)))

    @property
    def ready_count(self) -> int:
        return sum(r["ready"] for r in self.ready)

    @property
    def connect_s(self) -> float:
        return max(r["connect_s"] for r in self.ready)

    def errors(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for r in self.ready:
            c.update(r.get("errors", {}))
        return dict(c)

    def finish(self, timeout: float) -> tuple[array.array, list[dict]]:
        done = [json.loads(p.wait_line("DONE", timeout)) for p in self.procs]
        lat = array.array("q")
        stamps = array.array("q")
        for out in self.outs:
            lat.frombytes(out.read_bytes())
            t_path = Path(str(out) + ".t")
            if t_path.exists():
                stamps.frombytes(t_path.read_bytes())
        for p in self.procs:
            p.stop()
        self.stamps = stamps if len(stamps) == len(lat) else None
        return lat, done

    def kill(self) -> None:
        for p in self.procs:
            p.stop(signal.SIGKILL, grace=2)


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    group: str  # latency | broadcast
    label: str
    clients: int = 1
    summary: dict = field(default_factory=dict)
    received: int = 0
    expected: int = 0
    mem_kb_per_conn: float | None = None
    rss_before_kb: int | None = None
    rss_after_kb: int | None = None
    connect_s: float | None = None
    note: str = ""
    error: str | None = None
    profile: str | None = None
    foreign_cpu_pct: float | None = None  # other processes' CPU during the measured phase
    server_us: float | None = None  # server CPU per delivered (event, client), microseconds
    client_us: float | None = None  # client-harness CPU per delivered (event, client)


@dataclass
class Config:
    quick: bool
    lat_events: int
    lat_interval: float
    lat_warmup: int
    clients: list[int]
    bc_events: int | None  # None: 100 at <= 1,000 clients, 40 at 5,000 (see events_for)
    bc_warmup: int
    client_procs: int
    logdir: Path
    profile_dir: Path | None
    sqlite_query: str = ""
    wait_idle: float = 0.0
    redis: Redis | None = None
    postgres: Postgres | None = None

    def own_pids(self) -> list[int]:
        """The storage servers' processes: their CPU is the benchmark's, not other load's."""
        pids = [self.redis.proc.pid] if self.redis is not None else []
        return pids + ([self.postgres.pid] if self.postgres is not None else [])

    def events_for(self, n: int) -> int:
        """Measured broadcasts at N clients: p99 over (event, client) pairs is decided by the
        worst ~1 % of events, so more events where they are cheap (the run stays < 10 min)."""
        if self.bc_events is not None:
            return self.bc_events
        return max(40, min(100, 100_000 // n))

    def bc_interval(self, n: int) -> float:
        # leave the server time to drain one broadcast before the next (no pile-up)
        return max(0.1, round(n * 0.00015, 3))


def _short_error(key: str) -> str:
    """'http 503 {"error":{"code":..,"message":..}}' -> 'http 503 <code>: <message>'."""
    head, _, body = key.partition(" {")
    if body:
        with contextlib.suppress(ValueError, AttributeError):
            err = json.loads("{" + body)["error"]
            msg = re.sub(r"\S+://\S+", "<url>", str(err.get("message", "")))
            return f"{head} {err.get('code', '')}: {msg}"[:120]
    return key[:120]


def event_stats(lat: array.array, stamps: array.array | None) -> str:
    """Per-event view of a broadcast: the slowest client of each event, so one stalled event
    (GC pause, storage hiccup) is told apart from a uniformly slower fan-out."""
    if not stamps:
        return ""
    worst: dict[int, int] = {}
    for t, v in zip(stamps, lat, strict=True):
        if v > worst.get(t, -1):
            worst[t] = v
    order = sorted(worst)
    maxes = sorted(worst.values())
    med = maxes[len(maxes) // 2] / 1e6
    top = max(order, key=lambda t: worst[t])
    return (
        f"per-event max: median {med:.0f} ms, worst {worst[top] / 1e6:.0f} ms "
        f"(event {order.index(top) + 1}/{len(order)});"
    )


def stamp(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def scenario_redis_floor(cfg: Config) -> Result:
    assert cfg.redis is not None
    r = Result("redis-floor", "latency", "raw Redis: XADD -> XREAD BLOCK (redis-py, hiredis)")
    out = cfg.logdir / "redis-floor.lat"
    p = Proc(
        "redis-floor",
        [
            sys.executable,
            str(BENCH / "redis_floor.py"),
            "--port",
            str(cfg.redis.port),
            "--count",
            str(cfg.lat_events),
            "--warmup",
            str(cfg.lat_warmup),
            "--interval",
            str(cfg.lat_interval),
            "--out",
            str(out),
        ],
        child_env(),
        cfg.logdir,
    )
    watch = CpuWatch([p.pid, *cfg.own_pids()])
    info = json.loads(p.wait_line("DONE", cfg.lat_events * cfg.lat_interval + 30))
    r.foreign_cpu_pct = watch.foreign_pct()
    p.stop()
    lat = array.array("q")
    lat.frombytes(out.read_bytes())
    r.summary = summarize_ns(lat)
    r.received, r.expected = info["received"], info["expected"]
    return r


def scenario_pg_floor(cfg: Config) -> Result:
    assert cfg.postgres is not None
    r = Result("pg-floor", "latency", "raw PostgreSQL: INSERT + NOTIFY -> LISTEN (asyncpg)")
    out = cfg.logdir / "pg-floor.lat"
    p = Proc(
        "pg-floor",
        [
            sys.executable,
            str(BENCH / "pg_floor.py"),
            "--url",
            cfg.postgres.database("bench_pg_floor"),
            "--count",
            str(cfg.lat_events),
            "--warmup",
            str(cfg.lat_warmup),
            "--interval",
            str(cfg.lat_interval),
            "--out",
            str(out),
        ],
        child_env(),
        cfg.logdir,
    )
    watch = CpuWatch([p.pid, *cfg.own_pids()])
    info = json.loads(p.wait_line("DONE", cfg.lat_events * cfg.lat_interval + 30))
    r.foreign_cpu_pct = watch.foreign_pct()
    p.stop()
    lat = array.array("q")
    lat.frombytes(out.read_bytes())
    r.summary = summarize_ns(lat)
    r.received, r.expected = info["received"], info["expected"]
    return r


def storage_url(cfg: Config, kind: str, name: str, tmp: Path) -> str | None:
    """The backend URL of a scenario's server: a new SQLite file, the flushed Redis, or a new
    PostgreSQL database."""
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench.db'}" + cfg.sqlite_query
    if kind == "redis":
        assert cfg.redis is not None
        cfg.redis.flush()
        return cfg.redis.url
    if kind == "postgres":
        assert cfg.postgres is not None
        return cfg.postgres.database(f"bench_{name}")
    return None


def _profile_start(cfg: Config, name: str, pid: int, seconds: float) -> Proc | None:
    if cfg.profile_dir is None:
        return None
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        stamp("py-spy not found; not profiling")
        return None
    out = cfg.profile_dir / f"{name}.collapsed"
    return Proc(
        f"{name}.py-spy",
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--gil",
            "--duration",
            str(max(1, int(seconds))),
            "--nonblocking",
            "-o",
            str(out),
        ],
        child_env(),
        cfg.logdir,
    )


def _profile_finish(cfg: Config, prof: Proc | None, name: str) -> str | None:
    if prof is None or cfg.profile_dir is None:
        return None
    try:
        prof.p.wait(30)
    except subprocess.TimeoutExpired:
        prof.stop()
    path = cfg.profile_dir / f"{name}.collapsed"
    if not path.exists():
        return None
    report = summarize_profile(path)
    (cfg.profile_dir / f"{name}.top.txt").write_text(report)
    return str(cfg.profile_dir / f"{name}.top.txt")


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed-stack output."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    lines = [f"{path.name}: {total} samples", "", "self %  function"]
    for f, c in self_c.most_common(top):
        lines.append(f"{100 * c / total:6.1f}  {f}")
    lines += ["", "incl %  function (stepstream frames and the event loop)"]
    shown = 0
    for f, c in incl.most_common():
        if "stepstream" in f or "bench/" in f or "uvicorn" in f or "asyncio" in f:
            lines.append(f"{100 * c / total:6.1f}  {f}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(lines) + "\n"


def scenario_latency(cfg: Config, name: str, kind: str, emitter: str) -> Result:
    labels = {
        "raw": "raw-ASGI SSE broadcaster (floor), emitter in server",
        "sqlite": "stepstream SSE, SQLite, emitter in server process",
        "redis": "stepstream SSE, Redis, emitter in server process",
        "postgres": "stepstream SSE, PostgreSQL, emitter in server process",
    }
    label = labels[kind]
    if emitter == "xproc":
        label = f"stepstream SSE, {STORE[kind]}, emitter in another process"
    r = Result(name, "latency", label)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=cfg.logdir))
    backend = storage_url(cfg, kind, name, tmp)
    server = Server(kind, name, cfg.logdir, backend)
    clients = emit_proc = prof = None
    try:
        run_s = (cfg.lat_events + cfg.lat_warmup) * cfg.lat_interval
        clients = Clients(
            name,
            server.sse_url,
            1,
            cfg.lat_events,
            cfg.lat_warmup,
            run_s + 20,
            1,
            cfg.logdir,
            ready_timeout=20,
        )
        if clients.ready_count != 1:
            raise RuntimeError(f"client not connected: {clients.errors()}")
        prof = _profile_start(cfg, name, server.proc.pid, run_s)
        watch = CpuWatch([server.proc.pid, *cfg.own_pids()])
        if emitter == "xproc":
            assert backend is not None
            emit_proc = Proc(
                f"{name}.emitter",
                [
                    sys.executable,
                    str(BENCH / "emitter.py"),
                    "--backend",
                    backend,
                    "--count",
                    str(cfg.lat_events),
                    "--warmup",
                    str(cfg.lat_warmup),
                    "--interval",
                    str(cfg.lat_interval),
                ],
                child_env(),
                cfg.logdir,
                stdin=True,
            )
            emit_proc.wait_line("READY", 20)
            emit_proc.send("go\n")
        else:
            server.emit(cfg.lat_events, cfg.lat_interval, cfg.lat_warmup)
        if emit_proc is not None:
            watch.pids.append(emit_proc.pid)
            watch.own0 += watch._cpu(emit_proc.pid)
        lat, done = clients.finish(run_s + 40)
        r.foreign_cpu_pct = watch.foreign_pct(sum(d.get("cpu_s", 0.0) for d in done))
        r.summary = summarize_ns(lat)
        r.received = sum(d["received"] for d in done)
        r.expected = sum(d["expected"] for d in done)
        if emit_proc is not None:
            info = json.loads(emit_proc.wait_line("DONE", 30))
            em = info.get("emit_call_ms", {})
            r.note = (
                f"emit() call p50 {em.get('p50', float('nan')):.2f} ms, "
                f"max {em.get('max', float('nan')):.1f} ms"
            )
        elif kind != "raw":
            errs = server.health_errors()
            if errs:
                r.note = "server emit errors: " + "; ".join(errs[:2])
        r.profile = _profile_finish(cfg, prof, name)
    finally:
        if clients is not None:
            clients.kill()
        if emit_proc is not None:
            emit_proc.stop()
        server.stop()
    return r


def scenario_broadcast(cfg: Config, name: str, kind: str, n: int) -> Result:
    labels = {
        "raw": "raw-ASGI broadcaster under uvicorn (floor)",
        "sqlite": "stepstream SSE, SQLite, emitter in server process",
        "redis": "stepstream SSE, Redis, emitter in server process",
        "postgres": "stepstream SSE, PostgreSQL, emitter in server process",
        "sse-starlette": "Starlette + sse-starlette (reference)",
    }
    r = Result(name, "broadcast", labels[kind], clients=n)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=cfg.logdir))
    backend = storage_url(cfg, kind, name, tmp)
    server = Server(kind, name, cfg.logdir, backend)
    clients = prof = None
    try:
        # warm up the code paths (and lazily created backend state) with a few connections
        warm = Clients(f"{name}.warm", server.sse_url, 10, 2, 0, 10, 1, cfg.logdir, 20)
        server.emit(2, 0.05, 0)
        warm.finish(20)
        time.sleep(0.5)
        r.rss_before_kb = rss_kb(server.proc.pid)
        interval = cfg.bc_interval(n)
        events = cfg.events_for(n)
        run_s = (events + cfg.bc_warmup) * interval
        clients = Clients(
            name,
            server.sse_url,
            n,
            events,
            cfg.bc_warmup,
            run_s + 30,
            cfg.client_procs,
            cfg.logdir,
            ready_timeout=max(60, n / 50),
        )
        r.connect_s = clients.connect_s
        errors = clients.errors()
        if errors:
            r.note = (
                f"{sum(errors.values())} connect attempts refused, retried: "
                + "; ".join(f"{v}× {_short_error(k)}" for k, v in errors.items())
                + ";"
            )
        if clients.ready_count != n:
            r.note += f" only {clients.ready_count}/{n} connected;"
        if clients.ready_count == 0:
            raise RuntimeError(r.note)
        time.sleep(1.0)
        r.rss_after_kb = rss_kb(server.proc.pid)
        r.mem_kb_per_conn = (r.rss_after_kb - r.rss_before_kb) / max(1, clients.ready_count)
        prof = _profile_start(cfg, name, server.proc.pid, run_s)
        cpu0 = cpu_s(server.proc.pid)
        watch = CpuWatch([server.proc.pid, *cfg.own_pids()])
        server.emit(events, interval, cfg.bc_warmup)
        lat, done = clients.finish(run_s + 60)
        r.foreign_cpu_pct = watch.foreign_pct(sum(d.get("cpu_s", 0.0) for d in done))
        deliveries = sum(d["received"] for d in done)
        if deliveries:
            r.server_us = (cpu_s(server.proc.pid) - cpu0) / deliveries * 1e6
            r.client_us = sum(d.get("cpu_s", 0.0) for d in done) / deliveries * 1e6
        r.summary = summarize_ns(lat)
        r.received = sum(d["received"] for d in done)
        r.expected = sum(d["expected"] for d in done)
        r.note = (
            r.note
            + " "
            + event_stats(lat, clients.stamps)
            + " "
            + server.gc_note()
            + f" interval {interval * 1000:.0f} ms"
        ).strip()
        if kind in STORE:
            errs = server.health_errors()
            if errs:
                r.note += "; server emit errors: " + "; ".join(errs[:2])
        r.profile = _profile_finish(cfg, prof, name)
    finally:
        if clients is not None:
            clients.kill()
        server.stop()
    return r


def build_plan(cfg: Config, with_sse_starlette: bool) -> list[tuple[str, object]]:
    plan: list[tuple[str, object]] = [
        ("redis-floor", lambda: scenario_redis_floor(cfg)),
        ("lat-raw", lambda: scenario_latency(cfg, "lat-raw", "raw", "inproc")),
        ("lat-sqlite", lambda: scenario_latency(cfg, "lat-sqlite", "sqlite", "inproc")),
        ("lat-sqlite-xproc", lambda: scenario_latency(cfg, "lat-sqlite-xproc", "sqlite", "xproc")),
        ("lat-redis", lambda: scenario_latency(cfg, "lat-redis", "redis", "xproc")),
        ("lat-redis-inproc", lambda: scenario_latency(cfg, "lat-redis-inproc", "redis", "inproc")),
        ("pg-floor", lambda: scenario_pg_floor(cfg)),
        ("lat-postgres", lambda: scenario_latency(cfg, "lat-postgres", "postgres", "xproc")),
        (
            "lat-postgres-inproc",
            lambda: scenario_latency(cfg, "lat-postgres-inproc", "postgres", "inproc"),
        ),
    ]
    kinds = ["raw", "sqlite", "redis", "postgres"]
    kinds += ["sse-starlette"] if with_sse_starlette else []
    for n in cfg.clients:
        for kind in kinds:
            nm = f"bc-{kind}-{n}"
            plan.append((nm, lambda kind=kind, n=n, nm=nm: scenario_broadcast(cfg, nm, kind, n)))
    return plan


def all_names(cfg: Config) -> list[str]:
    return [n for n, _ in build_plan(cfg, True)]


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 2) -> str:
    if x is None or x != x:
        return "—"
    return f"{x:.{digits}f}"


def _noisy(r: Result | None) -> str:
    if r is not None and r.foreign_cpu_pct is not None and r.foreign_cpu_pct > NOISY_PCT:
        return f" (noisy: other processes used {r.foreign_cpu_pct:.0f}% CPU)"
    return ""


def verdicts(results: list[Result]) -> list[str]:
    by = {r.name: r for r in results}
    out = []
    targets = {
        "lat-redis": (TARGET_LAT_P50_MS, TARGET_LAT_P99_MS, "redis-floor"),
        "lat-redis-inproc": (TARGET_LAT_P50_MS, TARGET_LAT_P99_MS, "redis-floor"),
        "lat-postgres": (TARGET_PG_LAT_P50_MS, TARGET_PG_LAT_P99_MS, "pg-floor"),
        "lat-postgres-inproc": (TARGET_PG_LAT_P50_MS, TARGET_PG_LAT_P99_MS, "pg-floor"),
    }
    for nm, (p50, p99, floor_name) in targets.items():
        r = by.get(nm)
        if r and r.summary and not r.error:
            ok = r.summary["p50"] <= p50 and r.summary["p99"] <= p99
            floor = by.get(floor_name)
            beside = ""
            if floor and floor.summary and not floor.error and nm.startswith("lat-postgres"):
                beside = (
                    f" (floor `{floor_name}`: p50 {_f(floor.summary['p50'])}, "
                    f"p99 {_f(floor.summary['p99'])} ms)"
                )
            out.append(
                f"(a) {nm}: p50 {_f(r.summary['p50'])} ms (target ≤ {p50:g}), "
                f"p99 {_f(r.summary['p99'])} ms (target ≤ {p99:g}){beside} → "
                f"{'MET' if ok else 'MISSED'}{_noisy(r)}"
            )
    for r in results:
        if r.group != "broadcast" or r.error or not r.summary:
            continue
        kind = r.name.split("-")[1]
        if kind in STORE:
            floor = by.get(f"bc-raw-{r.clients}")
            if floor and floor.summary and not floor.error:
                ratio = r.summary["p99"] / floor.summary["p99"]
                out.append(
                    f"(b) {r.name}: p99 {_f(r.summary['p99'], 1)} ms = {ratio:.2f}× floor "
                    f"{_f(floor.summary['p99'], 1)} ms (target ≤ {TARGET_BC_RATIO}×) → "
                    f"{'MET' if ratio <= TARGET_BC_RATIO else 'MISSED'}"
                    f"{_noisy(r) or _noisy(floor)}"
                )
            if r.mem_kb_per_conn is not None:
                out.append(
                    f"(c) {r.name}: {_f(r.mem_kb_per_conn, 1)} KB per idle connection "
                    f"(target ≤ {TARGET_MEM_KB:.0f}) → "
                    f"{'MET' if r.mem_kb_per_conn <= TARGET_MEM_KB else 'MISSED'}"
                )
        if r.expected and r.received < r.expected:
            out.append(f"!! {r.name}: received {r.received}/{r.expected} events")
    for r in results:
        if r.group == "latency" and r.expected and r.received < r.expected:
            out.append(f"!! {r.name}: received {r.received}/{r.expected} events")
    return out


def markdown(results: list[Result], cfg: Config, meta: dict) -> str:
    L: list[str] = []
    L.append(f"_Generated by `bench/realtime.py` on {meta['date']}; do not edit by hand._")
    L.append("")
    L.append(f"- Command: `{meta['command']}`")
    L.append(
        f"- Machine: {meta['nproc']} CPUs ({meta['cpu']}), {meta['mem']}, Linux "
        f"{meta['kernel']}; Python {meta['python']}; uvicorn {meta['uvicorn']} "
        f"(`{' '.join(UVICORN_FLAGS[:4])}`), redis-server {meta['redis']}, "
        f"PostgreSQL {meta['postgres']}"
    )
    L.append(
        f"- Mode: {'quick (smoke)' if cfg.quick else 'full'}; client harness "
        f"`bench/sse_clients.py` in {cfg.client_procs} separate process(es); latency = "
        "client receive time − `time.time_ns()` taken right before emit."
    )
    L.append("")
    lat = [r for r in results if r.group == "latency"]
    if lat:
        L.append("### (a) emit → SSE client latency, one client")
        L.append("")
        L.append(
            f"{cfg.lat_events} events, one every {cfg.lat_interval * 1000:.0f} ms, after "
            f"{cfg.lat_warmup} unmeasured warm-up events. Target on Redis: p50 ≤ "
            f"{TARGET_LAT_P50_MS:g} ms, p99 ≤ {TARGET_LAT_P99_MS:g} ms; on PostgreSQL: p50 ≤ "
            f"{TARGET_PG_LAT_P50_MS:g} ms, p99 ≤ {TARGET_PG_LAT_P99_MS:g} ms. PostgreSQL is a "
            "private durable server (`fsync=on`, `synchronous_commit=on`: an event is "
            "delivered after its commit's WAL flush, for the floor too), a new database per "
            "scenario."
        )
        L.append("")
        L.append(
            "| scenario | what | p50 ms | p90 ms | p99 ms | max ms | received | "
            "other CPU % | note |"
        )
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for r in lat:
            if r.error:
                L.append(f"| `{r.name}` | {r.label} | — | — | — | — | — | — | error: {r.error} |")
                continue
            s = r.summary
            L.append(
                f"| `{r.name}` | {r.label} | {_f(s['p50'])} | {_f(s['p90'])} | "
                f"{_f(s['p99'])} | {_f(s['max'])} | {r.received}/{r.expected} | "
                f"{_f(r.foreign_cpu_pct, 0)} | {r.note} |"
            )
        L.append("")
    bc = [r for r in results if r.group == "broadcast"]
    if bc:
        L.append(
            "### (b) broadcast latency to N connected clients, (c) server memory per idle "
            "connection"
        )
        L.append("")
        L.append(
            f"{', '.join(f'{cfg.events_for(n)} events at N = {n:,}' for n in cfg.clients)}, "
            f"after {cfg.bc_warmup} warm-up events, emitted inside the "
            "server process; the interval grows with N so one broadcast drains before the "
            "next. Latency covers every (event, client) pair, clients included. Memory = "
            "(server RSS with N idle connections − RSS after a 10-connection warm-up) / N. "
            f"Targets: p99 ≤ {TARGET_BC_RATIO}× the raw floor's p99 at the same N; "
            f"≤ {TARGET_MEM_KB:g} KB per connection."
        )
        L.append("")
        L.append(
            "| scenario | what | N | p50 ms | p90 ms | p99 ms | max ms | p99 / floor | "
            "KB/conn | server CPU µs/delivery | client CPU µs/delivery | other CPU % | "
            "connect s | received | note |"
        )
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        by = {r.name: r for r in results}
        for r in bc:
            if r.error:
                L.append(
                    f"| `{r.name}` | {r.label} | {r.clients} | — | — | — | — | — | — | — | — "
                    f"| — | — | — | error: {r.error} |"
                )
                continue
            s = r.summary
            floor = by.get(f"bc-raw-{r.clients}")
            ratio = (
                (s["p99"] / floor.summary["p99"])
                if (floor and floor.summary and not floor.error)
                else None
            )
            L.append(
                f"| `{r.name}` | {r.label} | {r.clients} | {_f(s['p50'], 1)} | "
                f"{_f(s['p90'], 1)} | {_f(s['p99'], 1)} | {_f(s['max'], 1)} | "
                f"{_f(ratio)}{'×' if ratio is not None else ''} | "
                f"{_f(r.mem_kb_per_conn, 1)} | {_f(r.server_us, 1)} | {_f(r.client_us, 1)} | "
                f"{_f(r.foreign_cpu_pct, 0)} | "
                f"{_f(r.connect_s, 1)} | "
                f"{r.received}/{r.expected} | {r.note} |"
            )
        L.append("")
    v = verdicts(results)
    if v:
        L.append("### Targets")
        L.append("")
        for line in v:
            L.append(f"- {line}")
        L.append("")
    return "\n".join(L)


def write_benchmarks(md: str) -> Path:
    path = ROOT / "BENCHMARKS.md"
    section = f"{SECTION_START}\n{md.rstrip()}\n{SECTION_END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if SECTION_START in text and SECTION_END in text:
        head, _, rest = text.partition(SECTION_START)
        _, _, tail = rest.partition(SECTION_END)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n## Realtime (SSE) — figures\n\n" + section + "\n"
    # other benchmark scripts rewrite their own sections of the same file: replace atomically
    tmp = path.with_name(f".{path.name}.realtime.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def print_table(results: list[Result]) -> None:
    hdr = (
        f"{'scenario':<22} {'N':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'KB/conn':>8} {'srv µs':>7} {'cli µs':>7} {'oth%':>5} {'recv':>13}  note"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        if r.error:
            print(f"{r.name:<22} {r.clients:>5} ERROR {r.error}")
            continue
        s = r.summary
        print(
            f"{r.name:<22} {r.clients:>5} {_f(s.get('p50')):>8} {_f(s.get('p90')):>8} "
            f"{_f(s.get('p99')):>8} {_f(s.get('max')):>8} {_f(r.mem_kb_per_conn, 1):>8} "
            f"{_f(r.server_us, 1):>7} {_f(r.client_us, 1):>7} {_f(r.foreign_cpu_pct, 0):>5} "
            f"{f'{r.received}/{r.expected}':>13}  {r.note}"
        )
    for line in verdicts(results):
        print(line)


def machine_meta(cfg: Config, argv: list[str]) -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GB RAM"
                break
    try:
        import uvicorn

        uv = uvicorn.__version__
    except ImportError:
        uv = "?"
    try:
        rel = Path(sys.executable)
        exe = str(rel)
    except Exception:
        exe = "python"
    cmd = " ".join(
        shlex.quote(a) for a in [exe.replace(str(ROOT) + "/", ""), "bench/realtime.py", *argv]
    )
    return {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": cmd,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvicorn": uv,
        "redis": cfg.redis.version() if cfg.redis else "not used",
        "postgres": cfg.postgres.version() if cfg.postgres else "not used",
    }


def run_one(cfg: Config, nm: str, fn, wait: bool = True) -> Result:
    if wait and cfg.wait_idle > 0:
        busy = wait_idle(cfg.wait_idle)
        if busy >= 15.0:
            stamp(f"machine still {busy:.0f}% busy after waiting {cfg.wait_idle:.0f} s")
    stamp(f"{nm} ...")
    try:
        r = fn()
    except Exception as exc:
        group = "latency" if not nm.startswith("bc-") else "broadcast"
        n = int(nm.rsplit("-", 1)[1]) if group == "broadcast" else 1
        r = Result(nm, group, nm, clients=n, error=f"{type(exc).__name__}: {exc}"[:300])
        stamp(f"{nm} FAILED: {r.error}")
        return r
    s = r.summary
    stamp(
        f"{nm}: p50 {_f(s.get('p50'))} ms, p99 {_f(s.get('p99'))} ms, "
        f"max {_f(s.get('max'))} ms, {r.received}/{r.expected} received"
        + (f", {r.mem_kb_per_conn:.1f} KB/conn" if r.mem_kb_per_conn else "")
        + (f", other CPU {r.foreign_cpu_pct:.0f}%" if r.foreign_cpu_pct is not None else "")
        + (f" [{r.note}]" if r.note else "")
    )
    return r


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run, < 1 minute")
    ap.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="names or fnmatch patterns, repeatable or comma separated "
        "(default: all but sse-starlette)",
    )
    ap.add_argument("--list", action="store_true", help="list scenario names and exit")
    ap.add_argument(
        "--clients", help="broadcast sizes, comma separated (default 1000,5000; quick: 300)"
    )
    ap.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="client harness processes for broadcast scenarios",
    )
    ap.add_argument("--lat-events", type=int)
    ap.add_argument("--lat-interval", type=float, default=0.01, help="seconds between events (a)")
    ap.add_argument("--bc-events", type=int)
    ap.add_argument("--with-sse-starlette", action="store_true")
    ap.add_argument(
        "--sqlite-options",
        default="",
        help="query string appended to the SQLite backend URL, e.g. poll_interval=0.05",
    )
    ap.add_argument(
        "--profile",
        nargs="?",
        const="/tmp/stepstream-bench-profiles",
        help="py-spy the server of every scenario (default dir %(const)s)",
    )
    ap.add_argument(
        "--write",
        dest="write",
        action="store_true",
        default=None,
        help="rewrite the BENCHMARKS.md section (default: yes unless --quick)",
    )
    ap.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument(
        "--gc",
        choices=["off", "freeze"],
        help="diagnostic: disable the garbage collector in the servers, or gc.freeze() them "
        "after import (shows how much of the tail is GC pauses); never written to BENCHMARKS.md",
    )
    ap.add_argument(
        "--max-other-cpu",
        type=float,
        default=30.0,
        help="rerun a scenario once when other processes used more than this %% of "
        "one CPU during it (default %(default)s)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        help="seconds after which no scenario is rerun or waited for (default 360, quick: 0)",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        help="before each scenario, wait up to this many seconds for the machine to "
        "be < 15%% busy (default 15, quick: 0)",
    )
    args = ap.parse_args(argv)
    if args.budget is None:
        args.budget = 0.0 if args.quick else 360.0

    raise_fd_limit()
    Server.gc_mode = args.gc or ""
    if args.gc:
        args.write = False
    logdir = Path(tempfile.mkdtemp(prefix="stepstream-bench-"))
    clients = [int(x) for x in (args.clients or ("300" if args.quick else "1000,5000")).split(",")]
    cfg = Config(
        quick=args.quick,
        lat_events=args.lat_events or (150 if args.quick else 1000),
        lat_interval=args.lat_interval,
        lat_warmup=5 if args.quick else 20,
        clients=clients,
        bc_events=args.bc_events or (10 if args.quick else None),
        bc_warmup=2,
        client_procs=args.client_procs,
        logdir=logdir,
        profile_dir=Path(args.profile) if args.profile else None,
        sqlite_query=("?" + args.sqlite_options.lstrip("?")) if args.sqlite_options else "",
        wait_idle=args.wait_idle if args.wait_idle is not None else (0.0 if args.quick else 15.0),
    )
    if cfg.profile_dir:
        cfg.profile_dir.mkdir(parents=True, exist_ok=True)
    patterns = [p.strip() for s in args.scenario for p in s.split(",") if p.strip()]
    plan = build_plan(cfg, True)
    if args.list:
        for nm, _ in plan:
            print(nm)
        return 0
    if patterns:
        chosen = [(nm, fn) for nm, fn in plan if any(fnmatch.fnmatch(nm, p) for p in patterns)]
    else:
        chosen = [
            (nm, fn) for nm, fn in plan if args.with_sse_starlette or "sse-starlette" not in nm
        ]
    if not chosen:
        print("no scenario matches; --list shows them", file=sys.stderr)
        return 2
    needs_redis = any("redis" in nm for nm, _ in chosen)
    needs_postgres = any("postgres" in nm or nm == "pg-floor" for nm, _ in chosen)
    results: list[Result] = []
    t0 = time.monotonic()
    try:
        if needs_redis:
            cfg.redis = Redis(logdir)
        if needs_postgres:
            cfg.postgres = Postgres()
        for nm, fn in chosen:
            r = run_one(cfg, nm, fn, wait=time.monotonic() - t0 < args.budget)
            # Unrelated load (a test suite on the same box) makes a figure meaningless: run the
            # scenario again, once, while the time budget allows, and keep the quieter run.
            if (
                r.error is None
                and r.foreign_cpu_pct is not None
                and r.foreign_cpu_pct > args.max_other_cpu
                and time.monotonic() - t0 < args.budget
            ):
                stamp(f"{nm}: other processes used {r.foreign_cpu_pct:.0f}% CPU; running it again")
                again = run_one(cfg, nm, fn)
                if again.error is None and (again.foreign_cpu_pct or 0) < r.foreign_cpu_pct:
                    r = again
            results.append(r)
        meta = machine_meta(cfg, argv)
    finally:
        if cfg.redis is not None:
            cfg.redis.stop()
        if cfg.postgres is not None:
            cfg.postgres.stop()
    print()
    print_table(results)
    md = markdown(results, cfg, meta)
    write = args.write if args.write is not None else not args.quick
    if write:
        print(f"wrote {write_benchmarks(md)}")
    keep = args.keep_logs or any(r.error for r in results)
    if not keep:
        shutil.rmtree(logdir, ignore_errors=True)
    print(f"\ntotal {time.monotonic() - t0:.0f} s" + (f"; logs in {logdir}" if keep else ""))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
