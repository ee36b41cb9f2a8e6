"""The processes of a chaos scenario: workers, servers, a Redis or a PostgreSQL of its own.

Everything listens on 127.0.0.1, logs to a file under the scenario's directory, and is SIGKILLed
when the ``Fleet`` closes (a ``with`` block), whatever happened. Workers and servers run from the
repository root, so ``tests.chaos.chaos_app`` imports in them as it does here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import TracebackType

import httpx
import pytest
import redis

from stepstream import Client, Realtime
from tests.chaos.chaos_app import LEDGER_ENV, build
from tests.conftest import IN_CI, free_port
from tests.postgres import PostgresMissing, server_binaries

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.chaos.chaos_app:workflows"


def backend_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh store of ``kind``: a new SQLite file, a new key prefix on the test Redis, or a
    new schema on the test PostgreSQL (the session's ``postgres_url``)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'chaos.db'}"
    if kind == "postgres":
        postgres: str = request.getfixturevalue("postgres_url")
        return f"{postgres}?schema=chaos_{uuid.uuid4().hex[:12]}"
    redis_url: str = request.getfixturevalue("redis_server")
    return f"{redis_url}?prefix=chaos-{uuid.uuid4().hex[:12]}:"


class Proc:
    """A subprocess of the scenario and its log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.pid = self.popen.pid
        self.killed_ns: int | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL (no goodbye: leases stay held until they expire) and reap."""
        if self.alive():
            self.killed_ns = time.clock_gettime_ns(time.CLOCK_REALTIME)
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)


class Fleet:
    """Start and kill the processes of one scenario on one backend; their step bodies write
    the ledger in ``directory/ledger``."""

    def __init__(self, directory: Path, backend: str) -> None:
        self.directory = directory
        self.backend = backend
        self.ledger = directory / "ledger"
        self.ledger.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.closed_ns = 1 << 63  # when close() killed what was left
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"STEPSTREAM_TOKEN", "STEPSTREAM_URL"}
        }
        self.env.update({"STEPSTREAM_BACKEND": backend, LEDGER_ENV: str(self.ledger)})

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, name: str, args: list[str], backend: str | None = None) -> Proc:
        env = self.env if backend is None else {**self.env, "STEPSTREAM_BACKEND": backend}
        proc = Proc(name, [sys.executable, *args], env, self.directory / f"{name}.log")
        self.procs.append(proc)
        return proc

    def worker(
        self,
        name: str,
        *,
        lease: float,
        concurrency: int,
        skew: float = 0.0,
        wall_skew: bool = False,
        backend: str | None = None,
    ) -> Proc:
        """``stepstream worker`` on the chaos app; with ``skew``, the chaos worker script (its
        ``Worker(clock=)`` ``skew`` seconds ahead; ``wall_skew``: the whole process's too)."""
        if skew:
            args = ["-m", "tests.chaos.chaos_app", "--skew", str(skew)]
            args += ["--wall-skew"] if wall_skew else []
        else:
            args = ["-m", "stepstream.cli", "worker", APP]
        args += ["--lease", str(lease), "--concurrency", str(concurrency)]
        return self.start(name, args, backend)

    def server(
        self, name: str, port: int, *, dev: bool = False, backend: str | None = None
    ) -> Proc:
        """``stepstream server`` (API only, no workers) or ``stepstream dev`` (one process with
        its own worker) on the chaos app."""
        command = "dev" if dev else "server"
        args = ["-m", "stepstream.cli", command, APP, "--port", str(port)]
        return self.start(name, [*args, "--log-level", "warning"], backend)

    async def started(self, proc: Proc, within: float = 30) -> None:
        """Wait until a worker says it claims (both worker kinds print ``worker <owner>``)."""
        deadline = time.monotonic() + within
        while "worker " not in proc.output():
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not start:\n{proc.output()}")
            await asyncio.sleep(0.05)  # waiting for start-up, not an assertion

    async def healthy(self, proc: Proc, port: int, within: float = 30) -> str:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name} did not start:\n{proc.output()}")
                await asyncio.sleep(0.05)

    def alive(self, prefix: str = "") -> list[Proc]:
        return [p for p in self.procs if p.alive() and p.name.startswith(prefix)]

    def close(self) -> None:
        if any(proc.alive() for proc in self.procs):
            self.closed_ns = min(self.closed_ns, time.clock_gettime_ns(time.CLOCK_REALTIME))
        for proc in self.procs:
            proc.kill()

    def tracebacks(self) -> dict[str, int]:
        """Python tracebacks each process logged (an unexpected error somewhere: reported)."""
        counts = {p.name: p.output().count("Traceback") for p in self.procs}
        return {name: count for name, count in counts.items() if count}


@asynccontextmanager
async def observer(backend: str) -> AsyncIterator[tuple[Client, Realtime]]:
    """How the test sees the store: the public ``Client`` (in-process, running no worker) and
    a ``Realtime`` for channel histories."""
    workflows = build(backend)
    realtime = workflows.realtime
    assert realtime is not None
    client = workflows.client()
    try:
        yield client, realtime
    finally:
        await client.aclose()
        await workflows.engine.aclose()
        await workflows.aclose()


class RedisServer:
    """A redis-server of the scenario's own, append-only file on (``appendfsync everysec``,
    as a deployment should run it), that can be stopped and started again on its port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server not installed (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        args += ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        self.popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                # PING answers LOADING while the AOF replays: wait for PONG.
                with redis.Redis(port=self.port, socket_timeout=1) as probe:
                    if probe.ping():
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline or self.popen.poll() is not None:
                raise RuntimeError(f"redis-server did not start on {self.port}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown (the AOF is flushed); SIGKILL: a crash."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None


@contextmanager
def redis_of_our_own(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


class PostgresServer:
    """A PostgreSQL of the scenario's own, that can be stopped and started again on its port
    (restarting the session's would disturb the other tests). Like ``tests/postgres.py``:
    Debian's binaries, ``initdb`` into a directory of its own under the system's temporary
    directory (the ``postgres`` user, which the server runs as when we are root, cannot enter
    pytest's), listening on 127.0.0.1 only, trust auth; unlike it, with PostgreSQL's durable
    defaults (``fsync`` on), as a deployment runs it, since a crash is part of the scenario."""

    def __init__(self) -> None:
        try:
            self.binaries = server_binaries()
        except PostgresMissing as exc:
            if IN_CI:
                pytest.fail(f"{exc}: `make test` installs Debian's postgresql")
            pytest.skip(str(exc))
        self.directory = Path(tempfile.mkdtemp(prefix="stepstream-chaos-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")

    def init(self) -> None:
        self._pg(["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust"])

    def _pg(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        args = [str(self.binaries / command[0]), *command[1:]]
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                f"server log:\n{self.server_log()[-3000:]}"
            )
        return done

    def _ctl(self, action: str, *options: str, check: bool = True) -> None:
        self._pg(["pg_ctl", "-D", str(self.data), "-l", str(self.log), *options, action], check)

    def start(self) -> None:
        """``pg_ctl start``, returning once it accepts connections (after crash recovery)."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory}"
        self._ctl("start", "-w", "-t", "60", "-o", options)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (sessions ended, a clean shutdown) or ``-m immediate`` (every
        server process killed at once, no shutdown checkpoint: a crash, recovered at start)."""
        self._ctl("stop", "-w", "-t", "60", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory}"
        self._ctl("restart", "-w", "-t", "60", "-m", mode, "-o", options)

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def remove(self, keep: Path | None = None) -> None:
        """Stop it (``immediate``) and delete its files, its log copied to ``keep`` first."""
        self._ctl("stop", "-m", "immediate", check=False)
        if keep is not None:
            keep.write_text(self.server_log())
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def postgres_of_our_own(keep_log: Path | None = None) -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove(keep_log)


def summary(scenario: str, figures: dict[str, object]) -> None:
    """One line of figures per scenario run (``make chaos`` shows them; RELIABILITY.md keeps
    the last full run's)."""
    text = ", ".join(f"{key}: {value}" for key, value in figures.items())
    print(f"\nCHAOS {scenario}: {text}", flush=True)
