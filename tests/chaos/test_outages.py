"""Chaos scenario 3: storage outages (issue 8, DESIGN §10).

Users trigger and read runs over HTTP at a steady pace while the storage goes away:

- **Redis restarted**: our own ``redis-server`` (AOF on, ``appendfsync everysec``) is killed
  mid-load (SIGKILL, a crash) and started again on its port a moment later.
- **PostgreSQL restarted**: our own PostgreSQL (``fsync`` on) is stopped mid-load with
  ``pg_ctl stop -m fast`` (sessions terminated, a clean shutdown) or ``-m immediate`` (every
  server process killed: a crash, recovered from the WAL at start) and started again on its port
  a moment later; at full scale also restarted at once (``pg_ctl restart -m fast|immediate``).
- **Redis / PostgreSQL unreachable**: between the storage and every stepstream process, a TCP
  proxy (``tcp_fault.py``) that blackholes every connection (a partition: requests hang) or
  refuses them (storage gone: errors at once) for a while.
- **SQLite locked**: another process holds ``BEGIN EXCLUSIVE`` on the database file, 1 s past
  SQLite's 10 s ``busy_timeout`` so the waits of the writers caught in it run out.
- **``stepstream dev`` killed**: the single process (API and worker) SIGKILLed mid-load and
  started again; the runs it held resume once its lease (the default, 15 s) expires.

Asserted: no acknowledged run lost, none failed by the outage, no completed step run again, no
step committed twice, every history equal to its log; every process still up afterwards and
taking triggers again (no hand needed); and what users saw meanwhile is a clear JSON error,
never a 500, never a traceback. Printed: what users saw, by phase.

Where a ``stepstream server`` serves the users (every case but ``dev`` killed), SSE subscribers
(``Live``: stepstream.js's reconnect logic on the native dialect, and the Upstash 0.3 and 1.x
clients') also follow channels that the test process emits into all through the load, straight
to the storage (so during a partition events are stored that the server cannot hear of):
afterwards each must have handed its application every stored event of its channels exactly
once, in order, with no hole at all (nothing is trimmed, so even a signalled gap is a loss).
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

from stepstream import BackendError, Realtime, RunNotFound
from stepstream.events import SCHEMA
from stepstream.records import CursorKey, parse_cursor
from tests.chaos.cluster import (
    Fleet,
    RedisServer,
    backend_url,
    observer,
    postgres_of_our_own,
    redis_of_our_own,
    summary,
)
from tests.chaos.conftest import FULL
from tests.chaos.invariants import (
    check_runs,
    percentiles,
    read_ledger,
    resume_delays,
    wait_finished,
)
from tests.chaos.subscribers import Score, Subscriber, judge, stepstream_js, upstash_v0, upstash_v1
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
FEEDS = 4  # channels the SSE subscribers follow
EMIT_EVERY = 0.05  # seconds between two events the test process emits into them
WARM_UP = 1.0  # seconds the subscribers get to receive a warm-up event before the next
CATCH_UP = 30.0  # seconds the subscribers get, after the load, to hold every stored event
# stepstream.js's way (native dialect) and the Upstash SDKs'. Not ``subscribe_remote``: it
# raises on the 503 a new stream gets while storage is down, where stepstream.js retries.
DIALECTS = {"native": stepstream_js, "v0": upstash_v0, "v1": upstash_v1}


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
            # The whole body: cut short, a long error message would no longer parse as JSON.
            outcome, body = str(response.status_code), response.text
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
                    problems.append(
                        f"{seen.what} {seen.outcome} with a traceback: {seen.body[:400]}"
                    )
                continue
            where = f"{seen.what} during '{seen.phase}' answered {seen.outcome}"
            if seen.outcome.startswith("5") and seen.outcome != "503":
                problems.append(f"{where}: {seen.body[:400]}")
            elif "Traceback" in seen.body:
                problems.append(f"{where} with a traceback: {seen.body[:400]}")
            else:
                try:
                    error = json.loads(seen.body)["error"]
                    assert error["code"] and error["message"]
                except (ValueError, KeyError, TypeError, AssertionError):
                    problems.append(f"{where} without a JSON error: {seen.body[:400]!r}")
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


class Live:
    """SSE subscribers through the outage. The test process emits ``workflow.update`` events
    round-robin on ``FEEDS`` channels every ``EMIT_EVERY`` s, straight into ``backend``,
    retrying each one storage refuses; two subscribers per dialect read them from the server at
    ``url`` (one follows every channel on one stream, one a single channel), each resuming as
    its client does. What counts is storage's history: an append whose answer was lost may
    have been stored, and a subscriber must see it too."""

    def __init__(self, backend: str, url: str) -> None:
        self.channels = [f"feed-{n}" for n in range(FEEDS)]
        self.subscribers = [
            Subscriber(f"{dialect}-{n}", dialect, mine, f"{url}/api/realtime")
            for d, dialect in enumerate(DIALECTS)
            for n, mine in enumerate([self.channels, [self.channels[d % FEEDS]]])
        ]
        self.emitter = Realtime(backend=backend, schema=SCHEMA)
        self.emits = 0
        self.refused: Counter[str] = Counter()  # emits storage refused, by error
        self.unexpected: list[str] = []  # emits that raised what is not a stepstream error
        self.tasks: list[asyncio.Task[None]] = []
        self.baseline: dict[str, CursorKey] = {}  # the last warm-up event of each channel

    async def start(self) -> None:
        """Start the subscribers and emit one event per channel every ``WARM_UP`` s until each
        subscriber holds the last one of each of its channels: from there on (``baseline``)
        they must see everything (an Upstash 1.x client asks for nothing older than its first
        connection)."""
        await self.emitter.open()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(DIALECTS[sub.dialect](sub)) for sub in self.subscribers]
        deadline = time.monotonic() + CATCH_UP
        while True:
            for channel in self.channels:
                await self._emit(channel)
            stored = await self._histories()
            if await self._caught_up(stored, WARM_UP):
                self.baseline = {c: parse_cursor(ids[-1]) for c, ids in stored.items()}
                return
            if time.monotonic() > deadline or any(task.done() for task in self.tasks):
                raise RuntimeError(f"the SSE subscribers did not start: {self._problems(stored)}")

    async def emit_until(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            await self._emit(self.channels[n % FEEDS])
            n += 1
            await asyncio.sleep(EMIT_EVERY)

    async def _emit(self, channel: str) -> None:
        while True:
            data = {
                "type": "stepStart",
                "workflowRunId": "wfr_feed",
                "timestamp": self.emits,
                "stepName": "feed",
            }
            try:
                await self.emitter.channel(channel).emit("workflow.update", data)
                self.emits += 1
                return
            except BackendError as exc:
                self.refused[type(exc).__name__] += 1
            except Exception as exc:  # not a stepstream error: reported, and retried all the same
                self.unexpected.append(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
            await asyncio.sleep(0.1)

    async def _histories(self) -> dict[str, list[str]]:
        return {
            channel: [m.id for m in await self.emitter.channel(channel).history(limit=None)]
            for channel in self.channels
        }

    async def _caught_up(self, stored: dict[str, list[str]], within: float) -> bool:
        """Whether, within ``within`` s, every subscriber holds each of its channels' last
        stored event (or one of them gave up)."""
        deadline = time.monotonic() + within
        while any(
            sub.last.get(c) != stored[c][-1] for sub in self.subscribers for c in sub.channels
        ):
            if time.monotonic() > deadline or any(task.done() for task in self.tasks):
                return False
            await asyncio.sleep(0.1)  # polling, not an assertion
        return True

    async def finish(self) -> tuple[dict[str, object], list[str]]:
        """Wait for the subscribers to catch up, stop them and judge what each saw against
        storage's history: figures, and problems (each a sentence)."""
        stored = await self._histories()
        began = time.monotonic()
        caught_up = await self._caught_up(stored, CATCH_UP)
        took = time.monotonic() - began
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        problems = self._problems(stored)
        if self.unexpected:
            problems.append(
                f"Realtime.emit raised {len(self.unexpected)} errors that are not stepstream's "
                f"(BackendUnavailable): {sorted(set(self.unexpected))}"
            )
        if not caught_up and not problems:
            problems.append(f"the SSE subscribers did not catch up within {CATCH_UP:g} s")
        since = {
            c: [i for i in ids if parse_cursor(i) >= self.baseline[c]] for c, ids in stored.items()
        }
        scores = {dialect: Score() for dialect in DIALECTS}
        for sub in self.subscribers:
            log = [
                (kind, c, value)
                for kind, c, value in sub.log
                if kind != "m" or parse_cursor(value) >= self.baseline[c]
            ]
            scores[sub.dialect].add(judge(log, since, sub.channels))
        for dialect, score in scores.items():
            lost = score.unsignalled + score.signalled  # nothing is trimmed: any hole is a loss
            if score.unknown or score.duplicates or lost or score.behind:
                problems.append(
                    f"SSE {dialect}: {lost} events lost ({score.signalled} after a signal), "
                    f"{score.duplicates} duplicates, {score.behind} never arrived, "
                    f"{score.unknown} never stored"
                )
        figures: dict[str, object] = {
            "events stored": sum(map(len, since.values())),
            "emits refused and retried": dict(self.refused) or 0,
            "SSE received / duplicates / lost / never arrived": {
                d: f"{s.events} / {s.duplicates} / {s.unsignalled + s.signalled} / {s.behind}"
                for d, s in scores.items()
            },
            "SSE error events or replays seen (no loss by themselves)": {
                d: s.signals for d, s in scores.items()
            },
            "SSE caught up after the load in": f"{took:.1f} s",
        }
        return figures, problems

    def _problems(self, stored: dict[str, list[str]]) -> list[str]:
        gave_up = [
            f"SSE {sub.name} gave up: {task.exception()!r}"
            for sub, task in zip(self.subscribers, self.tasks, strict=True)
            if task.done() and not task.cancelled() and task.exception() is not None
        ]
        behind = [
            f"SSE {sub.name} last {c} {sub.last.get(c)} (stored {stored[c][-1]})"
            for sub in self.subscribers
            for c in sub.channels
            if stored and sub.last.get(c) != stored[c][-1]
        ]
        return gave_up + behind[:8]

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.emitter.aclose()


async def under_load(
    fleet: Fleet,
    url: str,
    backend: str,
    fault: Callable[[], None],
    heal: Callable[[], None],
    outage: float,
    scenario: str,
    drain: float,
    live: bool = True,
) -> None:
    """Users at work for ``LOAD`` s, then ``fault()`` for ``outage`` s, then ``heal()`` and
    ``LOAD`` s more; then every acknowledged run (and every unanswered trigger that did create
    one) must finish. Checked on ``backend`` directly, every process gone. With ``live``, SSE
    subscribers all along (``Live``)."""
    feeds = Live(backend, url) if live else None
    try:
        await _under_load(fleet, url, backend, fault, heal, outage, scenario, drain, feeds)
    finally:
        if feeds is not None:
            await feeds.aclose()


async def _under_load(
    fleet: Fleet,
    url: str,
    backend: str,
    fault: Callable[[], None],
    heal: Callable[[], None],
    outage: float,
    scenario: str,
    drain: float,
    feeds: Live | None,
) -> None:
    users = Users(url)
    stop = asyncio.Event()
    began = time.monotonic()
    if feeds is not None:
        await feeds.start()
    working = asyncio.create_task(users.run(stop))
    emitting = asyncio.create_task(feeds.emit_until(stop)) if feeds else None
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
        if emitting is not None:
            await emitting
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
        live_figures, live_problems = await feeds.finish() if feeds else ({}, [])
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
            **live_figures,
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
    assert not live_problems, f"{scenario}: " + "\n".join(live_problems)


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


def schema_on(url: str) -> str:
    return f"{url}?schema=chaos_{uuid.uuid4().hex[:8]}"


# ``pg_ctl stop -m <mode>``, then ``pg_ctl start`` RESTART_DOWN s later; at full scale also
# ``pg_ctl restart -m <mode>``, down only as long as the restart takes. ``make test`` keeps one
# PostgreSQL outage, ``stop -m fast`` (terminated sessions: the case that found an unmapped
# asyncpg error); the crash, the restarts and the partitions run in ``make chaos``.
RESTARTS = ["fast", "immediate", "restart-fast", "restart-immediate"] if FULL else ["fast"]
FULL_ONLY = pytest.mark.skipif(not FULL, reason="make chaos only (STEPSTREAM_CHAOS=full)")


@pytest.mark.parametrize("how", RESTARTS)
async def test_postgres_restarted(tmp_path: Path, how: str) -> None:
    mode = how.removeprefix("restart-")
    with (
        postgres_of_our_own(tmp_path / "postgres.log") as postgres,
        Fleet(tmp_path, schema_on(postgres.url)) as fleet,
    ):
        url = await start_api(fleet, fleet.backend)
        if how.startswith("restart-"):
            fault, heal, outage = (lambda: postgres.restart(mode)), (lambda: None), 0.0
        else:
            fault, heal, outage = (lambda: postgres.stop(mode)), postgres.start, RESTART_DOWN
        await under_load(
            fleet,
            url,
            fleet.backend,
            fault=fault,
            heal=heal,
            outage=outage,
            scenario=f"postgres-restarted[{how}]",
            drain=LEASE * 4 + 30,
        )


@FULL_ONLY
@pytest.mark.parametrize("mode", ["blackhole", "refuse"])
async def test_postgres_unreachable(tmp_path: Path, mode: str) -> None:
    with (
        postgres_of_our_own(tmp_path / "postgres.log") as postgres,
        TcpFault(postgres.port) as proxy,
    ):
        direct = schema_on(postgres.url)
        through = direct.replace(f":{postgres.port}/", f":{proxy.port}/")
        with Fleet(tmp_path, through) as fleet:
            url = await start_api(fleet, through)
            await under_load(
                fleet,
                url,
                direct,
                fault=proxy.blackhole if mode == "blackhole" else proxy.refuse,
                heal=proxy.heal,
                outage=UNREACHABLE,
                scenario=f"postgres-unreachable[{mode}]",
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


DEV_BACKENDS = ["sqlite", "redis", "postgres"] if FULL else ["sqlite"]


@pytest.mark.parametrize("backend", DEV_BACKENDS)
async def test_dev_process_killed(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    with (
        dev_backend(tmp_path, backend, request) as url_of_backend,
        Fleet(tmp_path, url_of_backend) as fleet,
    ):
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
            live=False,
        )


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def dev_backend(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The store of ``stepstream dev``: a SQLite file, a Redis of the scenario's own, or a new
    schema on the session's PostgreSQL (nothing is done to the storage here)."""
    if backend in ("sqlite", "postgres"):
        yield backend_url(backend, tmp_path, request)
        return
    with redis_of_our_own(tmp_path / "redis") as redis:
        yield prefixed(redis)
