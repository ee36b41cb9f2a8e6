"""Chaos scenario 3: storage outages (issue 8, DESIGN §10).

Users trigger and read runs over HTTP at a steady pace while the storage goes away:

- **Redis restarted**: our own ``redis-server`` (AOF on, ``appendfsync everysec``) is killed
  mid-load (SIGKILL, a crash) and started again on its port a moment later.
- **Redis unreachable**: between Redis and every stepstream process, a TCP proxy
  (``tcp_fault.py``) that blackholes every connection (a partition: requests hang) or refuses
  them (Redis gone: errors at once) for a while.
- **SQLite locked**: another process holds ``BEGIN EXCLUSIVE`` on the database file, 1 s past
  SQLite's 10 s ``busy_timeout`` so the waits of the writers caught in it run out.
- **``stepstream dev`` killed**: the single process (API and worker) SIGKILLed mid-load and
  started again; the runs it held resume once its lease (the default, 15 s) expires.

Asserted: no acknowledged run lost, none failed by the outage, no completed step run again, no
step committed twice, every history equal to its log; every process still up afterwards and
taking triggers again (no hand needed); and what users saw meanwhile is a clear JSON error,
never a 500, never a traceback. Printed: what users saw, by phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from stepstream import RunNotFound
from tests.chaos.cluster import Fleet, RedisServer, observer, redis_of_our_own, summary
from tests.chaos.conftest import FULL
from tests.chaos.invariants import (
    check_runs,
    percentiles,
    read_ledger,
    resume_delays,
    wait_finished,
)
from tests.chaos.tcp_fault import TcpFault
from tests.conftest import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

UNREACHABLE = 10.0 if FULL else 3.0  # seconds Redis cannot be reached
RESTART_DOWN = 2.0  # seconds Redis is down while it restarts
LOCKED = 11.0  # seconds the SQLite file is held: past busy_timeout (10 s)
LOAD = 4.0 if FULL else 1.0  # seconds of load before the fault and again after it
TRIGGER_EVERY = 0.1
READ_EVERY = 0.25
REQUEST_TIMEOUT = 15.0
STEP_MS = 50
LEASE = 3.0  # for the stepstream worker processes
DEV_LEASE = 15.0  # stepstream dev's worker: the default lease, not configurable


@dataclass
class Seen:
    """One request a user made and what came back."""

    phase: str
    what: str
    outcome: str  # the status code, or the transport error's name
    body: str
    at: float  # time.monotonic() when it was sent
    seconds: float


@dataclass
class Users:
    """Users of the HTTP API: a trigger every ``TRIGGER_EVERY`` s (with our own run ids, so a
    trigger that got no answer can be looked up later) and a read every ``READ_EVERY`` s (a
    run's log, the run list, a channel's history), each request on its own so a hung one does
    not hold the next. Everything seen is kept by phase."""

    url: str
    phase: str = "before"
    seen: list[Seen] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)

    async def run(self, until: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(base_url=self.url, timeout=REQUEST_TIMEOUT) as http:
            next_read = loop.time()
            while not until.is_set():
                tasks.add(asyncio.create_task(self._trigger(http)))
                if loop.time() >= next_read:
                    tasks.add(asyncio.create_task(self._read(http)))
                    next_read += READ_EVERY
                tasks = {t for t in tasks if not t.done()}
                await asyncio.sleep(TRIGGER_EVERY)
            await asyncio.gather(*tasks)

    async def _trigger(self, http: httpx.AsyncClient) -> None:
        run_id = f"wfr_chaos-{uuid.uuid4().hex[:16]}"
        seen = await self._request(
            http, "trigger", "POST", "/api/workflows/ten-steps", json={"ms": STEP_MS},
            params={"workflowRunId": run_id},
        )  # fmt: skip
        if seen.outcome == "202":
            self.accepted.append(run_id)
        elif not seen.outcome.isdigit() or seen.outcome.startswith("5"):
            self.unanswered.append(run_id)  # it may exist: looked up at the end

    async def _read(self, http: httpx.AsyncClient) -> None:
        run_id = random.choice(self.accepted) if self.accepted else "wfr_none"
        await self._request(http, "run log", "GET", f"/api/runs/{run_id}")
        await self._request(http, "run list", "GET", "/api/runs", params={"count": 5})
        params = {"channel": run_id, "limit": 50}
        await self._request(http, "history", "GET", "/api/realtime/history", params=params)

    async def _request(
        self, http: httpx.AsyncClient, what: str, method: str, path: str, **kwargs: object
    ) -> Seen:
        phase, began = self.phase, time.monotonic()
        try:
            response = await http.request(method, path, **kwargs)  # type: ignore[arg-type]
            outcome, body = str(response.status_code), response.text[:400]
        except httpx.HTTPError as exc:
            outcome, body = type(exc).__name__, str(exc)[:200]
        seen = Seen(phase, what, outcome, body, began, time.monotonic() - began)
        self.seen.append(seen)
        return seen

    def unclear(self) -> list[str]:
        """Answers that are not a clear error: a 500 (or any 5xx but 503), a non-JSON error
        body or one without ``{"error": {"code", "message"}}``, a traceback."""
        problems = []
        for seen in self.seen:
            if not seen.outcome.isdigit() or int(seen.outcome) < 400:
                if "Traceback" in seen.body:
                    problems.append(f"{seen.what} {seen.outcome} with a traceback: {seen.body}")
                continue
            where = f"{seen.what} during '{seen.phase}' answered {seen.outcome}"
            if seen.outcome.startswith("5") and seen.outcome != "503":
                problems.append(f"{where}: {seen.body}")
            elif "Traceback" in seen.body:
                problems.append(f"{where} with a traceback: {seen.body}")
            else:
                try:
                    error = json.loads(seen.body)["error"]
                    assert error["code"] and error["message"]
                except (ValueError, KeyError, TypeError, AssertionError):
                    problems.append(f"{where} without a JSON error: {seen.body!r}")
        return problems

    def outcomes(self, phase: str) -> dict[str, int]:
        counts = Counter(f"{s.what} {s.outcome}" for s in self.seen if s.phase == phase)
        return dict(sorted(counts.items()))

    def samples(self, phase: str) -> dict[str, str]:
        """One body per kind of failure seen in ``phase``."""
        found: dict[str, str] = {}
        for s in self.seen:
            key = f"{s.what} {s.outcome}"
            if s.phase == phase and not s.outcome.startswith("2") and key not in found:
                found[key] = s.body[:200]
        return found

    def slowest(self, phase: str) -> float:
        return max((s.seconds for s in self.seen if s.phase == phase), default=0.0)

    def first_accepted(self, since: float) -> float | None:
        """Seconds from ``since`` (monotonic) until a trigger sent then was acknowledged."""
        sent = [s.at for s in self.seen if s.at >= since and s.outcome == "202"]
        return min(sent) - since if sent else None


async def under_load(
    fleet: Fleet,
    url: str,
    backend: str,
    fault: Callable[[], None],
    heal: Callable[[], None],
    outage: float,
    scenario: str,
    drain: float,
) -> None:
    """Users at work for ``LOAD`` s, then ``fault()`` for ``outage`` s, then ``heal()`` and
    ``LOAD`` s more; then every acknowledged run (and every unanswered trigger that did create
    one) must finish. Checked on ``backend`` directly, every process gone."""
    users = Users(url)
    stop = asyncio.Event()
    began = time.monotonic()
    working = asyncio.create_task(users.run(stop))
    try:
        await asyncio.sleep(LOAD)
        users.phase = "outage"
        faulted = time.monotonic()
        await asyncio.to_thread(fault)
        await asyncio.sleep(max(0.0, outage - (time.monotonic() - faulted)))
        await asyncio.to_thread(heal)
        healed = time.monotonic()
        users.phase = "after"
        await asyncio.sleep(LOAD)
    finally:
        stop.set()
        await working
    async with observer(backend) as (client, realtime):
        created = []
        for run_id in users.unanswered:
            with contextlib.suppress(RunNotFound):
                await client.logs(run_id)
                created.append(run_id)
        run_ids = users.accepted + created
        drain_began = time.monotonic()
        unfinished = await wait_finished(client, run_ids, within=drain)
        drained = time.monotonic() - drain_began
        exited = [p for p in fleet.procs if not p.alive() and p.killed_ns is None]
        fleet.close()
        findings = await check_runs(client, realtime, run_ids, fleet.ledger)

    recovered = users.first_accepted(healed)
    executions = read_ledger(fleet.ledger)
    delays = [
        delay
        for proc in fleet.procs
        if proc.killed_ns is not None and proc.killed_ns < fleet.closed_ns
        for delay in resume_delays(executions, proc.pid, proc.killed_ns)
    ]
    summary(
        scenario,
        {
            **findings.figures(),
            "fault": f"{outage:g} s",
            "triggers acknowledged": len(users.accepted),
            "unanswered triggers that created a run": f"{len(created)}/{len(users.unanswered)}",
            "users saw during the outage": users.outcomes("outage"),
            "error bodies": users.samples("outage"),
            "slowest request during the outage": f"{users.slowest('outage'):.1f} s",
            "users saw after it": users.outcomes("after"),
            "first trigger acknowledged after healing": "never"
            if recovered is None
            else f"{recovered:.1f} s",
            "drain": f"{drained:.1f} s",
            **({"killed process's runs resumed": percentiles(delays)} if delays else {}),
            "unfinished at the deadline": len(unfinished),
            "wall time": f"{time.monotonic() - began:.0f} s",
            "tracebacks in process logs": fleet.tracebacks() or 0,
        },
    )
    assert recovered is not None, f"{scenario}: no trigger was acknowledged after the fault healed"
    assert not exited, f"{scenario}: processes exited: " + "; ".join(
        f"{p.name}: {p.output()[-2000:]}" for p in exited
    )
    findings.assert_ok(scenario)
    unclear = users.unclear()
    assert not unclear, f"{scenario}: users saw {len(unclear)} unclear answers:\n" + "\n".join(
        unclear[:20]
    )


async def start_api(fleet: Fleet, backend: str, workers: int = 2) -> str:
    """``stepstream server`` (API only) and ``workers`` ``stepstream worker`` processes."""
    port = free_port()
    server = fleet.server("server", port, backend=backend)
    for n in range(workers):
        fleet.worker(f"worker-{n}", lease=LEASE, concurrency=20, backend=backend)
    for proc in fleet.procs:
        if proc.name.startswith("worker"):
            await fleet.started(proc)
    return await fleet.healthy(server, port)


def prefixed(redis: RedisServer, port: int | None = None) -> str:
    return f"redis://127.0.0.1:{port or redis.port}/0?prefix=chaos-{uuid.uuid4().hex[:8]}:"


async def test_redis_restarted(tmp_path: Path) -> None:
    with redis_of_our_own(tmp_path / "redis") as redis, Fleet(tmp_path, prefixed(redis)) as fleet:
        url = await start_api(fleet, fleet.backend)
        await under_load(
            fleet,
            url,
            fleet.backend,
            fault=lambda: redis.stop(signal.SIGKILL),
            heal=redis.start,
            outage=RESTART_DOWN,
            scenario="redis-restarted",
            drain=LEASE * 4 + 30,
        )


@pytest.mark.parametrize("mode", ["blackhole", "refuse"])
async def test_redis_unreachable(tmp_path: Path, mode: str) -> None:
    with (
        redis_of_our_own(tmp_path / "redis") as redis,
        TcpFault(redis.port) as proxy,
    ):
        direct = prefixed(redis)
        through = direct.replace(f":{redis.port}/", f":{proxy.port}/")
        with Fleet(tmp_path, through) as fleet:
            url = await start_api(fleet, through)
            await under_load(
                fleet,
                url,
                direct,
                fault=proxy.blackhole if mode == "blackhole" else proxy.refuse,
                heal=proxy.heal,
                outage=UNREACHABLE,
                scenario=f"redis-unreachable[{mode}]",
                drain=LEASE * 4 + 30,
            )


@contextmanager
def sqlite_locker(path: Path, seconds: float) -> Iterator[Callable[[], None]]:
    """A function that starts a process holding ``BEGIN EXCLUSIVE`` on ``path`` for ``seconds``
    and returns once it holds it; the process is killed on exit whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    script = (
        "import sqlite3, sys, time\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
        "conn.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "conn.execute('COMMIT')\n"
    )

    def lock() -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(path), str(seconds)], stdout=subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"locked", "the locker did not get the lock"

    try:
        yield lock
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_sqlite_locked(tmp_path: Path) -> None:
    path = tmp_path / "chaos.db"
    with Fleet(tmp_path, f"sqlite:///{path}") as fleet, sqlite_locker(path, LOCKED) as lock:
        url = await start_api(fleet, fleet.backend)
        await under_load(
            fleet,
            url,
            fleet.backend,
            fault=lock,
            heal=lambda: None,  # the locker commits after LOCKED seconds by itself
            outage=LOCKED,
            scenario="sqlite-locked",
            drain=LEASE * 4 + 30,
        )


DEV_BACKENDS = ["sqlite", "redis"] if FULL else ["sqlite"]


@pytest.mark.parametrize("backend", DEV_BACKENDS)
async def test_dev_process_killed(tmp_path: Path, backend: str) -> None:
    with dev_backend(tmp_path, backend) as url_of_backend, Fleet(tmp_path, url_of_backend) as fleet:
        port = free_port()
        dev = fleet.server("dev-1", port, dev=True)
        url = await fleet.healthy(dev, port)

        def restart() -> None:
            again = fleet.server("dev-2", port, dev=True)
            deadline = time.monotonic() + 30
            while not healthy(url):
                assert again.alive() and time.monotonic() < deadline, again.output()
                time.sleep(0.05)

        await under_load(
            fleet,
            url,
            url_of_backend,
            fault=dev.kill,
            heal=restart,
            outage=1.0,
            scenario=f"dev-killed[{backend}]",
            drain=DEV_LEASE * 2 + 30,
        )


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def dev_backend(tmp_path: Path, backend: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'chaos.db'}"
        return
    with redis_of_our_own(tmp_path / "redis") as redis:
        yield prefixed(redis)
