# ruff: noqa: RUF001, RUF002  (the report uses typographic dashes and multiplication signs)
"""asyncpg vs psycopg 3 on the work the stepstream Postgres backend does, side by side in one run.

    .venv/bin/python bench/pg_drivers.py            # full run (~2 min), prints only
    .venv/bin/python bench/pg_drivers.py --write    # same, and rewrites the "Postgres drivers"
                                                    # section of BENCHMARKS.md
    .venv/bin/python bench/pg_drivers.py --quick    # ~30 s smoke run

Needs, in the Python running it: ``asyncpg``, ``psycopg[binary]``, ``psycopg_pool`` (and
``uvloop`` unless ``--loop asyncio``); and Debian's PostgreSQL server binaries. The script starts
its own throwaway PostgreSQL (``tests/postgres.py``: initdb + pg_ctl into a temp dir, a free port
on 127.0.0.1, ``fsync=off``) and never touches any other server. Each driver variant gets its own
connections; the two drivers get their own schema (same tables), and the measurements of the
variants are interleaved (blocks of iterations, rounds) so that a burst of unrelated load on the
machine hits them all alike.

What it measures, per driver, and per variant of a driver: asyncpg's pool with and without its
reset query on release; psycopg without / with server-side prepared statements, and in pipeline
mode (explicit BEGIN/COMMIT, or ``conn.transaction()``). Reference rows, kept out of the
per-driver "best": the transaction without pg_notify, and the same writes as one statement
(data-modifying CTEs, 1 round trip) on each driver.

1. schema: runs / steps / channels / events tables shaped like the backend's migration;
2. save-step latency, concurrency 1: the backend's hot transaction, one at a time —
   BEGIN; SELECT state, lease_owner, epoch FROM runs WHERE id = $1 FOR UPDATE (the fence, checked
   by the client); INSERT INTO steps … ON CONFLICT DO UPDATE; INSERT INTO channels … ON CONFLICT
   DO UPDATE … RETURNING last_ms, last_seq (the event id); INSERT INTO events; SELECT
   pg_notify(…, ~200-byte payload); COMMIT. p50 / p99 over ``--iterations`` transactions;
3. throughput of that transaction: 32 concurrent tasks over a pool of 10 connections, each task
   on its own run; transactions/s over a ~3 s window, median of 3 rounds;
4. claim: UPDATE runs SET lease … WHERE id IN (SELECT … WHERE state = 'RUN_STARTED' AND due_at
   <= now AND lease free ORDER BY due_at LIMIT 10 FOR UPDATE SKIP LOCKED) RETURNING *, with 10,000
   runs present (200 of the oldest held by another worker's lease); p50 / p99;
5. NOTIFY → LISTEN latency: one connection listens (asyncpg ``add_listener``; psycopg
   ``conn.notifies()``), another runs BEGIN; INSERT INTO events; pg_notify(payload carrying
   ``time.perf_counter_ns()`` taken before BEGIN); COMMIT — one at a time, the next one sent when
   the previous arrived; p50 / p99 of arrival − stamp;
6. (unless ``--no-errors``) the exception classes each driver raises on connection refused, a
   backend killed (SIGKILL) or terminated mid-query, an immediate server shutdown mid-query, a
   pool used after the server went away, a serialization failure and a deadlock — on a second
   throwaway server, which the probe crashes and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import re
import signal
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import psycopg_pool

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "pg-drivers"
sys.path.insert(0, str(ROOT))

from tests.postgres import postgres_server, server_binaries  # noqa: E402

WORKER = "worker-1"
EPOCH = 1
CONCURRENCY = 32
POOL_SIZE = 10
STEPS_PER_RUN = 20
NOTIFY_CHANNEL = "stepstream"
STEP_DATA = json.dumps({"name": "charge-card", "state": "done", "out": {"v": "x" * 200}})
EVENT_DATA = json.dumps({"step": "charge-card", "out": {"v": "y" * 150}})

# --------------------------------------------------------------------------------------------
# SQL ($n placeholders; psycopg gets them rewritten to %s by Query)

SCHEMA = """
CREATE TABLE runs (
    id text PRIMARY KEY,
    workflow text NOT NULL,
    state text NOT NULL,
    due_at bigint,
    lease_owner text,
    lease_until bigint,
    epoch bigint NOT NULL DEFAULT 0,
    payload text NOT NULL,
    meta text
);
CREATE INDEX runs_due ON runs (due_at) WHERE state = 'RUN_STARTED';
CREATE TABLE steps (
    run_id text NOT NULL,
    position integer NOT NULL,
    state text NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE channels (
    name text PRIMARY KEY,
    last_ms bigint NOT NULL,
    last_seq bigint NOT NULL,
    length bigint NOT NULL DEFAULT 0
);
CREATE TABLE events (
    channel text NOT NULL,
    ms bigint NOT NULL,
    seq bigint NOT NULL,
    event text NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (channel, ms, seq)
);
CREATE TABLE probe (id integer PRIMARY KEY, v integer NOT NULL)
"""

SEED_RUNS = """
INSERT INTO runs (id, workflow, state, due_at, lease_owner, lease_until, epoch, payload, meta)
SELECT id, 'checkout', 'RUN_STARTED', 0, $2, $3, $4, '{}', '{}' FROM unnest($1::text[]) AS id
ON CONFLICT (id) DO NOTHING
"""

FENCE = "SELECT state, lease_owner, epoch FROM runs WHERE id = $1 FOR UPDATE"
SAVE_STEP = (
    "INSERT INTO steps (run_id, position, state, data) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (run_id, position) DO UPDATE SET state = excluded.state, data = excluded.data"
)
NEXT_EVENT_ID = """
INSERT INTO channels AS c (name, last_ms, last_seq, length)
VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 0, 1)
ON CONFLICT (name) DO UPDATE SET
    last_seq = CASE WHEN excluded.last_ms > c.last_ms THEN 0 ELSE c.last_seq + 1 END,
    last_ms = greatest(c.last_ms, excluded.last_ms),
    length = c.length + 1
RETURNING last_ms, last_seq
"""
APPEND_EVENT = "INSERT INTO events (channel, ms, seq, event, data) VALUES ($1, $2, $3, $4, $5)"
NOTIFY = "SELECT pg_notify($1, $2)"

# The same work as one statement (data-modifying CTEs, implicit transaction: 1 round trip). The
# fence gates every write; no row back = fenced. A reference for what the round trips cost.
SAVE_STEP_ONE_STATEMENT = """
WITH fence AS (
    SELECT id FROM runs WHERE id = $1 AND lease_owner = $2 AND epoch = $3 FOR UPDATE
), step AS (
    INSERT INTO steps (run_id, position, state, data)
    SELECT id, $4, 'done', $5 FROM fence
    ON CONFLICT (run_id, position) DO UPDATE SET state = excluded.state, data = excluded.data
), event_id AS (
    INSERT INTO channels AS c (name, last_ms, last_seq, length)
    SELECT $6, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 0, 1 FROM fence
    ON CONFLICT (name) DO UPDATE SET
        last_seq = CASE WHEN excluded.last_ms > c.last_ms THEN 0 ELSE c.last_seq + 1 END,
        last_ms = greatest(c.last_ms, excluded.last_ms),
        length = c.length + 1
    RETURNING last_ms, last_seq
), event AS (
    INSERT INTO events (channel, ms, seq, event, data)
    SELECT $6, last_ms, last_seq, 'stepFinish', $7 FROM event_id
    RETURNING ms, seq
)
SELECT ms, seq, pg_notify($8::text, json_build_object(
    't', 0, 'channel', $6::text, 'id', ms || '-' || seq, 'event', 'stepFinish', 'pad', $9::text
)::text)
FROM event
"""
PAD = "z" * 90  # brings the one statement's payload to ~200 bytes like notify_payload's

CLAIM = """
UPDATE runs SET lease_owner = $1, lease_until = $2, epoch = epoch + 1
WHERE id IN (
    SELECT id FROM runs
    WHERE state = 'RUN_STARTED' AND due_at <= $3 AND (lease_until IS NULL OR lease_until < $3)
    ORDER BY due_at LIMIT 10
    FOR UPDATE SKIP LOCKED
)
RETURNING *
"""
CLAIM_ROWS = 10_000
CLAIM_HELD = 200  # the oldest due runs, leased by another worker: every claim skips them
SEED_CLAIMS = """
INSERT INTO runs (id, workflow, state, due_at, lease_owner, lease_until, epoch, payload, meta)
SELECT 'claim-' || i, 'checkout', 'RUN_STARTED',
       CASE WHEN i < $1::integer * 9 / 10 THEN $2::bigint - 3600000 + i
            ELSE $2::bigint + 1000000000000 + i END,
       CASE WHEN i < $3::integer THEN 'worker-other' END,
       CASE WHEN i < $3::integer THEN $2::bigint + 1000000000000 END,
       1, repeat('p', 200), '{"tags": ["a", "b"], "priority": 0}'
FROM generate_series(0, $1::integer - 1) AS i
"""

NOTIFY_TX_EVENT = "INSERT INTO events (channel, ms, seq, event, data) VALUES ($1, $2, $3, $4, $5)"


class Fenced(Exception):
    """The run's lease moved on: this worker must not write."""


@dataclass(frozen=True)
class Query:
    """One statement in both placeholder styles."""

    native: str
    pyformat: str
    order: tuple[int, ...] | None  # argument positions for %s, None when 1..n in order

    @classmethod
    def of(cls, sql: str) -> Query:
        positions: list[int] = []

        def to_percent(match: re.Match[str]) -> str:
            positions.append(int(match.group(1)) - 1)
            return "%s"

        converted = re.sub(r"\$(\d+)", to_percent, sql)
        identity = positions == list(range(len(positions)))
        return cls(sql, converted, None if identity else tuple(positions))

    def args(self, args: Sequence[Any]) -> Sequence[Any]:
        return args if self.order is None else [args[i] for i in self.order]


Q = {
    name: Query.of(sql)
    for name, sql in {
        "fence": FENCE,
        "step": SAVE_STEP,
        "one": SAVE_STEP_ONE_STATEMENT,
        "event_id": NEXT_EVENT_ID,
        "event": APPEND_EVENT,
        "notify": NOTIFY,
        "claim": CLAIM,
        "seed_runs": SEED_RUNS,
        "seed_claims": SEED_CLAIMS,
        "notify_event": NOTIFY_TX_EVENT,
    }.items()
}


def notify_payload(channel: str, ms: int, seq: int, stamp: int = 0) -> str:
    body = {"t": stamp, "channel": channel, "id": f"{ms}-{seq}", "event": "stepFinish"}
    text = json.dumps(body)
    return json.dumps({**body, "pad": "z" * max(0, 186 - len(text))})


# --------------------------------------------------------------------------------------------
# The variants: one class per driver, flags for the ways of using it


@dataclass
class Variant:
    key: str
    label: str
    driver: str
    url: str
    schema: str
    notify: bool = True
    one_statement: bool = False  # the whole transaction as one statement (reference)
    reference: bool = False  # not a way to run the backend's transaction as specified
    latency: bool = True
    throughput: bool = True
    claim: bool = True
    notify_latency: bool = True
    save_latencies: list[float] = field(default_factory=list)
    claim_latencies: list[float] = field(default_factory=list)
    notify_latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    client_us: list[float] = field(default_factory=list)  # client CPU per transaction
    server_us: list[float] = field(default_factory=list)  # Postgres CPU per transaction

    async def connect(self) -> Any:
        raise NotImplementedError

    async def close(self, conn: Any) -> None:
        raise NotImplementedError

    async def execute(self, conn: Any, query: Query, *args: Any) -> None:
        raise NotImplementedError

    async def save_step(self, conn: Any, run_id: str, position: int) -> None:
        raise NotImplementedError

    async def claim_runs(self, conn: Any, owner: str, lease_until: int, now: int) -> int:
        raise NotImplementedError

    async def open_pool(self) -> Any:
        raise NotImplementedError

    def acquire(self, pool: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def close_pool(self, pool: Any) -> None:
        raise NotImplementedError

    async def listen(self, conn: Any, on_payload: Callable[[str], None]) -> Callable[[], Any]:
        """Start delivering NOTIFY payloads of NOTIFY_CHANNEL to ``on_payload``; returns stop."""
        raise NotImplementedError

    async def send_notify(self, conn: Any, seq: int) -> None:
        raise NotImplementedError


def check_fence(row: Sequence[Any] | None) -> None:
    if row is None or row[1] != WORKER or row[2] != EPOCH:
        raise Fenced(repr(row))


@dataclass
class Asyncpg(Variant):
    reset_on_release: bool = True

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, server_settings={"search_path": self.schema})

    async def close(self, conn: asyncpg.Connection) -> None:
        await conn.close()

    async def execute(self, conn: asyncpg.Connection, query: Query, *args: Any) -> None:
        await conn.execute(query.native, *args)

    async def save_step(self, conn: asyncpg.Connection, run_id: str, position: int) -> None:
        channel = f"run:{run_id}"
        if self.one_statement:
            args = (run_id, WORKER, EPOCH, position, STEP_DATA, channel, EVENT_DATA)
            row = await conn.fetchrow(SAVE_STEP_ONE_STATEMENT, *args, NOTIFY_CHANNEL, PAD)
            if row is None:
                raise Fenced(run_id)
            return
        async with conn.transaction():
            check_fence(await conn.fetchrow(FENCE, run_id))
            await conn.execute(SAVE_STEP, run_id, position, "done", STEP_DATA)
            ms, seq = await conn.fetchrow(NEXT_EVENT_ID, channel)
            await conn.execute(APPEND_EVENT, channel, ms, seq, "stepFinish", EVENT_DATA)
            if self.notify:
                await conn.execute(NOTIFY, NOTIFY_CHANNEL, notify_payload(channel, ms, seq))

    async def claim_runs(
        self, conn: asyncpg.Connection, owner: str, lease_until: int, now: int
    ) -> int:
        return len(await conn.fetch(CLAIM, owner, lease_until, now))

    async def open_pool(self) -> asyncpg.Pool:
        async def keep(_conn: asyncpg.Connection) -> None:
            return None  # replaces the reset query (an open transaction is still rolled back)

        return await asyncpg.create_pool(
            self.url,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            server_settings={"search_path": self.schema},
            reset=None if self.reset_on_release else keep,
        )

    def acquire(self, pool: asyncpg.Pool) -> contextlib.AbstractAsyncContextManager[Any]:
        return pool.acquire()  # type: ignore[no-any-return]

    async def close_pool(self, pool: asyncpg.Pool) -> None:
        await pool.close()

    async def listen(
        self, conn: asyncpg.Connection, on_payload: Callable[[str], None]
    ) -> Callable[[], Any]:
        def callback(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            on_payload(payload)

        await conn.add_listener(NOTIFY_CHANNEL, callback)
        return lambda: conn.remove_listener(NOTIFY_CHANNEL, callback)

    async def send_notify(self, conn: asyncpg.Connection, seq: int) -> None:
        stamp = time.perf_counter_ns()
        async with conn.transaction():
            await conn.execute(NOTIFY_TX_EVENT, "notify-bench", stamp, seq, "tick", EVENT_DATA)
            payload = notify_payload("notify-bench", stamp, seq, stamp)
            await conn.execute(NOTIFY, NOTIFY_CHANNEL, payload)


@dataclass
class Psycopg(Variant):
    prepare_threshold: int | None = 0
    pipeline: bool = False
    pipeline_transaction: bool = False  # conn.transaction() inside conn.pipeline()

    def _kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "prepare_threshold": self.prepare_threshold,
            "options": f"-c search_path={self.schema}",
        }

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.url, **self._kwargs())

    async def close(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.close()

    async def execute(self, conn: psycopg.AsyncConnection[Any], query: Query, *args: Any) -> None:
        await conn.execute(query.pyformat, query.args(args))

    async def save_step(self, conn: psycopg.AsyncConnection[Any], run_id: str, pos: int) -> None:
        channel = f"run:{run_id}"
        if self.one_statement:
            query = Q["one"]
            args = (run_id, WORKER, EPOCH, pos, STEP_DATA, channel, EVENT_DATA, NOTIFY_CHANNEL, PAD)
            cur = await conn.execute(query.pyformat, query.args(args))
            if await cur.fetchone() is None:
                raise Fenced(run_id)
            return
        if self.pipeline and self.pipeline_transaction:
            await self._save_step_pipelined_transaction(conn, run_id, pos)
            return
        if self.pipeline:
            await self._save_step_pipelined(conn, run_id, pos)
            return
        async with conn.transaction():
            cur = await conn.execute(Q["fence"].pyformat, (run_id,))
            check_fence(await cur.fetchone())
            await conn.execute(Q["step"].pyformat, (run_id, pos, "done", STEP_DATA))
            cur = await conn.execute(Q["event_id"].pyformat, (channel,))
            row = await cur.fetchone()
            assert row is not None
            ms, seq = row
            await conn.execute(Q["event"].pyformat, (channel, ms, seq, "stepFinish", EVENT_DATA))
            if self.notify:
                payload = notify_payload(channel, ms, seq)
                await conn.execute(Q["notify"].pyformat, (NOTIFY_CHANNEL, payload))

    async def _save_step_pipelined(
        self, conn: psycopg.AsyncConnection[Any], run_id: str, pos: int
    ) -> None:
        """Two round trips: BEGIN + fence + step + event id (flushed, the event id is needed),
        then event + notify + COMMIT (synced). The fence is checked before COMMIT is sent; a
        failed fence sends ROLLBACK instead. Explicit BEGIN/COMMIT rather than
        ``conn.transaction()``, whose COMMIT adds a sync of its own (a third round trip)."""
        channel = f"run:{run_id}"
        try:
            async with conn.pipeline():
                await conn.execute("BEGIN")
                fence = await conn.execute(Q["fence"].pyformat, (run_id,))
                await conn.execute(Q["step"].pyformat, (run_id, pos, "done", STEP_DATA))
                cur = await conn.execute(Q["event_id"].pyformat, (channel,))
                row = await cur.fetchone()
                assert row is not None
                ms, seq = row
                try:
                    check_fence(await fence.fetchone())
                except Fenced:
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute(
                    Q["event"].pyformat, (channel, ms, seq, "stepFinish", EVENT_DATA)
                )
                if self.notify:
                    payload = notify_payload(channel, ms, seq)
                    await conn.execute(Q["notify"].pyformat, (NOTIFY_CHANNEL, payload))
                await conn.execute("COMMIT")
        except BaseException:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.rollback()
            raise

    async def _save_step_pipelined_transaction(
        self, conn: psycopg.AsyncConnection[Any], run_id: str, pos: int
    ) -> None:
        """The documented way: ``conn.transaction()`` in ``conn.pipeline()``. Its COMMIT syncs,
        and leaving the pipeline syncs again: three round trips."""
        channel = f"run:{run_id}"
        async with conn.pipeline(), conn.transaction():
            fence = await conn.execute(Q["fence"].pyformat, (run_id,))
            await conn.execute(Q["step"].pyformat, (run_id, pos, "done", STEP_DATA))
            cur = await conn.execute(Q["event_id"].pyformat, (channel,))
            row = await cur.fetchone()
            assert row is not None
            ms, seq = row
            check_fence(await fence.fetchone())
            await conn.execute(Q["event"].pyformat, (channel, ms, seq, "stepFinish", EVENT_DATA))
            payload = notify_payload(channel, ms, seq)
            await conn.execute(Q["notify"].pyformat, (NOTIFY_CHANNEL, payload))

    async def claim_runs(
        self, conn: psycopg.AsyncConnection[Any], owner: str, lease_until: int, now: int
    ) -> int:
        query = Q["claim"]
        cur = await conn.execute(query.pyformat, query.args((owner, lease_until, now)))
        return len(await cur.fetchall())

    async def open_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            self.url, min_size=POOL_SIZE, max_size=POOL_SIZE, kwargs=self._kwargs(), open=False
        )
        await pool.open(wait=True)
        return pool

    def acquire(
        self, pool: psycopg_pool.AsyncConnectionPool[Any]
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        return pool.connection()

    async def close_pool(self, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        await pool.close()

    async def listen(
        self, conn: psycopg.AsyncConnection[Any], on_payload: Callable[[str], None]
    ) -> Callable[[], Any]:
        await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")

        async def consume() -> None:
            # notifies() holds the connection's lock while it runs: nothing else can use this
            # connection (another LISTEN included) until the generator is left.
            async for notify in conn.notifies():
                on_payload(notify.payload)

        task = asyncio.create_task(consume())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return stop

    async def send_notify(self, conn: psycopg.AsyncConnection[Any], seq: int) -> None:
        stamp = time.perf_counter_ns()
        payload = notify_payload("notify-bench", stamp, seq, stamp)
        event = (Q["notify_event"].pyformat, ("notify-bench", stamp, seq, "tick", EVENT_DATA))
        notify = (Q["notify"].pyformat, (NOTIFY_CHANNEL, payload))
        if self.pipeline:  # one round trip
            async with conn.pipeline():
                await conn.execute("BEGIN")
                await conn.execute(*event)
                await conn.execute(*notify)
                await conn.execute("COMMIT")
            return
        async with conn.transaction():
            await conn.execute(*event)
            await conn.execute(*notify)


# --------------------------------------------------------------------------------------------
# Measurements


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, p in 0..100."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


async def seed_runs(variant: Variant, conn: Any, ids: list[str]) -> None:
    await variant.execute(conn, Q["seed_runs"], ids, WORKER, 2**62, EPOCH)


async def measure_save_latency(
    variants: list[Variant], conns: dict[str, Any], iterations: int, blocks: int
) -> None:
    warmup = 100
    block = -(-iterations // blocks)
    runs_needed = -(-(iterations + warmup) // STEPS_PER_RUN)
    counters: dict[str, int] = {}
    for v in variants:
        ids = [f"lat-{v.key}-{j}" for j in range(runs_needed)]
        await seed_runs(v, conns[v.key], ids)
        counters[v.key] = 0

    async def one(v: Variant) -> int:
        i = counters[v.key]
        counters[v.key] = i + 1
        run_id = f"lat-{v.key}-{i // STEPS_PER_RUN}"
        start = time.perf_counter_ns()
        await v.save_step(conns[v.key], run_id, i % STEPS_PER_RUN)
        return time.perf_counter_ns() - start

    for v in variants:
        for _ in range(warmup):
            await one(v)
    for _ in range(blocks):
        for v in variants:
            for _ in range(block):
                v.save_latencies.append(await one(v) / 1e6)


def children_cpu(parent: int) -> float:
    """CPU seconds (user + system) used so far by the live child processes of ``parent``."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat")) as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def measure_throughput(
    variants: list[Variant], pools: dict[str, Any], rounds: int, seconds: float, master: int
) -> None:
    positions: dict[str, list[int]] = {v.key: [0] * CONCURRENCY for v in variants}
    for v in variants:
        async with v.acquire(pools[v.key]) as conn:
            await seed_runs(v, conn, [f"tp-{v.key}-{k}" for k in range(CONCURRENCY)])

    async def one_round(v: Variant) -> float:
        pool = pools[v.key]
        done = 0
        running = True

        async def task(k: int) -> None:
            nonlocal done
            run_id = f"tp-{v.key}-{k}"
            while running:
                position = positions[v.key][k]
                positions[v.key][k] = position + 1
                async with v.acquire(pool) as conn:
                    await v.save_step(conn, run_id, position)
                done += 1

        tasks = [asyncio.create_task(task(k)) for k in range(CONCURRENCY)]
        try:
            await asyncio.sleep(0.3)  # every connection busy, caches warm
            first, start = done, time.perf_counter()
            client, server = time.process_time(), children_cpu(master)
            await asyncio.sleep(seconds)
            last, end = done, time.perf_counter()
            client, server = time.process_time() - client, children_cpu(master) - server
        finally:
            running = False
            await asyncio.gather(*tasks)
        count = max(1, last - first)
        v.client_us.append(client / count * 1e6)
        v.server_us.append(server / count * 1e6)
        return (last - first) / (end - start)

    for _ in range(rounds):
        for v in variants:
            v.rates.append(await one_round(v))


async def measure_claims(
    variants: list[Variant], conns: dict[str, Any], iterations: int, blocks: int
) -> None:
    base = int(time.time() * 1000)
    for v in variants:
        await v.execute(conns[v.key], Q["seed_claims"], CLAIM_ROWS, base, CLAIM_HELD)
        await v.execute(conns[v.key], Query.of("ANALYZE runs"))
    # A logical clock: claim i runs at base + i s and leases for 0.5 s, so the runs it took are
    # free again for the next claim; the 200 runs held by "worker-other" stay in the way.
    clock = {v.key: 0 for v in variants}
    warmup = 50
    block = -(-iterations // blocks)

    async def one(v: Variant) -> float:
        i = clock[v.key]
        clock[v.key] = i + 1
        now = base + i * 1000
        start = time.perf_counter_ns()
        got = await v.claim_runs(conns[v.key], WORKER, now + 500, now)
        elapsed = (time.perf_counter_ns() - start) / 1e6
        if got != 10:
            raise RuntimeError(f"{v.key}: claim returned {got} rows, expected 10")
        return elapsed

    for v in variants:
        for _ in range(warmup):
            await one(v)
    for _ in range(blocks):
        for v in variants:
            for _ in range(block):
                v.claim_latencies.append(await one(v))


async def measure_notify(variants: list[Variant], count: int) -> None:
    loop = asyncio.get_running_loop()
    warmup = 50
    for v in variants:
        listener, sender = await v.connect(), await v.connect()
        latencies: list[float] = []
        pending: list[asyncio.Future[None]] = []  # the notification awaited, if any

        def on_payload(
            payload: str,
            latencies: list[float] = latencies,
            pending: list[asyncio.Future[None]] = pending,
        ) -> None:
            received = time.perf_counter_ns()
            latencies.append((received - json.loads(payload)["t"]) / 1e6)
            if pending and not pending[0].done():
                pending[0].set_result(None)

        stop = await v.listen(listener, on_payload)
        try:
            for seq in range(warmup + count):
                arrived = loop.create_future()
                pending[:] = [arrived]
                await v.send_notify(sender, seq)
                await asyncio.wait_for(arrived, 10)
        finally:
            result = stop()
            if asyncio.iscoroutine(result):
                await result
            await v.close(listener)
            await v.close(sender)
        v.notify_latencies = latencies[warmup:]


# --------------------------------------------------------------------------------------------
# Error probe: which exception classes the backend will have to handle


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no exception"
    cls = type(exc)
    name = f"{cls.__module__}.{cls.__qualname__}"
    name = name.replace("asyncpg.exceptions._base.", "asyncpg.").replace(
        "asyncpg.exceptions.", "asyncpg."
    )
    name = name.replace("builtins.", "")
    state = getattr(exc, "sqlstate", None)
    message = " ".join(str(exc).split())
    message = re.sub(r'connection to server at "[^"]*", port \d+ failed: ', "", message)
    message = message if len(message) <= 90 else message[:87] + "..."
    return f"`{name}`" + (f" ({state})" if state else "") + (f": “{message}”" if message else "")


def lineage(exc: BaseException) -> str:
    names = []
    for cls in type(exc).__mro__[1:]:
        if cls in (BaseException, object):
            break
        names.append(cls.__qualname__)
        if cls is Exception:
            break
    return " → ".join(names)


async def caught(awaitable: Awaitable[Any], limit: float = 15) -> BaseException | None:
    try:
        await asyncio.wait_for(awaitable, limit)
    except Exception as exc:  # TimeoutError included
        return exc
    return None


async def timed(awaitable: Awaitable[Any]) -> tuple[BaseException | None, str]:
    start = time.monotonic()
    exc = await caught(awaitable)
    return exc, f"after {time.monotonic() - start:.2f} s"


def postmaster_pid(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split()[0])


def wait_gone(pid: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return -1


async def probe_errors(url_for: Callable[[int], str], port: int, data: Path) -> dict[str, Any]:
    """Provoke each failure on the probe server; {case: (asyncpg exc, psycopg exc)} plus the
    class lineages seen."""
    logged: dict[str, list[logging.LogRecord]] = {"asyncpg": [], "psycopg": []}
    handlers = []
    for name in logged:
        handler = logging.Handler()
        handler.emit = logged[name].append  # type: ignore[method-assign]
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
        handlers.append((logger, handler))
    try:
        return await _probe(url_for, port, data, logged)
    finally:
        for logger, handler in handlers:
            logger.removeHandler(handler)
            logger.propagate = True


async def _probe(
    url_for: Callable[[int], str],
    port: int,
    data: Path,
    logged: dict[str, list[logging.LogRecord]],
) -> dict[str, Any]:
    url = url_for(port)
    results: dict[str, list[str]] = {}
    lineages: dict[str, str] = {}

    def record(case: str, exc: BaseException | None, note: str = "") -> None:
        text = note if exc is None and note else describe(exc) + (f" — {note}" if note else "")
        results.setdefault(case, []).append(text)
        if exc is not None:
            lineages[describe(exc).split(":", 1)[0].split(" (")[0]] = lineage(exc)

    a_kw: dict[str, Any] = {}
    p_kw: dict[str, Any] = {"autocommit": True}

    async def a_connect() -> asyncpg.Connection:
        return await asyncpg.connect(url, **a_kw)

    async def p_connect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(url, **p_kw)

    async def a_query(conn: asyncpg.Connection, sql: str) -> None:
        await conn.execute(sql)

    async def p_query(conn: psycopg.AsyncConnection[Any], sql: str) -> None:
        await conn.execute(sql)

    drivers = [("asyncpg", a_connect, a_query), ("psycopg", p_connect, p_query)]

    # 1. nothing listening
    dead = free_port()
    record("connect, nothing listening (refused)", await caught(asyncpg.connect(url_for(dead))))
    record(
        "connect, nothing listening (refused)",
        await caught(psycopg.AsyncConnection.connect(url_for(dead))),
    )
    record(
        "pool open, nothing listening",
        *await timed(asyncpg.create_pool(url_for(dead), min_size=1, max_size=2)),
    )
    pool_p: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        url_for(dead), min_size=1, max_size=2, open=False
    )
    exc, took = await timed(pool_p.open(wait=True, timeout=1.5))
    record("pool open, nothing listening", exc, f"{took} (`open(wait=True, timeout=1.5)`)")
    await pool_p.close(timeout=1)

    admin = await a_connect()
    await admin.execute("CREATE TABLE probe (id integer PRIMARY KEY, v integer NOT NULL)")
    await admin.execute("INSERT INTO probe VALUES (1, 0), (2, 0)")

    # 2. serialization failure and deadlock
    for _name, connect, query in drivers:
        first, second = await connect(), await connect()
        await query(first, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        await query(first, "SELECT v FROM probe WHERE id = 1")
        await query(second, "UPDATE probe SET v = v + 1 WHERE id = 1")
        record(
            "serialization failure (REPEATABLE READ, row updated meanwhile)",
            await caught(query(first, "UPDATE probe SET v = v + 1 WHERE id = 1")),
        )
        await query(first, "ROLLBACK")
        for conn in (first, second):
            await query(conn, "SET deadlock_timeout = '50ms'")
            await query(conn, "BEGIN")
        await query(first, "UPDATE probe SET v = v + 1 WHERE id = 1")
        await query(second, "UPDATE probe SET v = v + 1 WHERE id = 2")
        blocked = asyncio.create_task(query(first, "UPDATE probe SET v = v + 1 WHERE id = 2"))
        await asyncio.sleep(0.1)
        loser = await caught(query(second, "UPDATE probe SET v = v + 1 WHERE id = 1"))
        loser = loser or await caught(blocked)
        record("deadlock", loser)
        with contextlib.suppress(Exception):
            await blocked
        for conn in (first, second):
            with contextlib.suppress(Exception):
                await query(conn, "ROLLBACK")
            await conn.close()

    # 3. pg_terminate_backend mid-query, then the next query on that connection
    for _name, connect, query in drivers:
        conn = await connect()
        pid = await admin.fetchval("SELECT pg_backend_pid()")
        sleeping = asyncio.create_task(query(conn, "SELECT pg_sleep(30)"))
        await asyncio.sleep(0.2)
        pids = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND pid <> $1",
            pid,
        )
        for row in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", row["pid"])
        record("mid-query, backend terminated (`pg_terminate_backend`)", await caught(sleeping))
        record("next query on that connection", await caught(query(conn, "SELECT 1")))
        with contextlib.suppress(Exception):
            await conn.close()
    await admin.close()

    # 4. SIGKILL of the backend serving a query (the peer vanishes without a word); the
    # postmaster then restarts every backend (crash recovery): idle connections and listeners
    # of the same driver lose theirs too.
    master = postmaster_pid(data)
    for name, connect, query in drivers:
        conn, idle, listener = await connect(), await connect(), await connect()
        listener_outcome: list[str] = []
        if name == "asyncpg":
            listener.add_termination_listener(
                lambda _c, out=listener_outcome: out.append("termination listener called")
            )
            await listener.add_listener(NOTIFY_CHANNEL, lambda *_: None)
            waiter = None
        else:
            await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

            async def drain(listener: Any = listener) -> None:
                async for _ in listener.notifies():
                    pass

            waiter = asyncio.create_task(drain())
        if name == "asyncpg":
            backend = await conn.fetchval("SELECT pg_backend_pid()")
        else:
            backend = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]
        if parent_of(backend) != master:
            raise RuntimeError(f"backend {backend} is not a child of our postmaster {master}")
        sleeping = asyncio.create_task(query(conn, "SELECT pg_sleep(30)"))
        await asyncio.sleep(0.2)
        os.kill(backend, signal.SIGKILL)
        record("mid-query, backend killed (SIGKILL)", await caught(sleeping))
        seen: list[BaseException] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                fresh = await connect()
            except Exception as exc:
                seen.append(exc)
                await asyncio.sleep(0.02)
                continue
            await fresh.close()
            break
        kinds = sorted({type(exc).__name__ for exc in seen})
        record(
            "connect right after, during crash recovery",
            seen[-1] if seen else None,
            f"{len(seen)} failed attempt(s) 20 ms apart ({', '.join(kinds)}); last shown"
            if seen
            else "server already back",
        )
        record(
            "idle connection (of the same server), next query after the crash restart",
            await caught(query(idle, "SELECT 1")),
        )
        if waiter is not None:
            record("LISTEN connection, after the crash restart", await caught(waiter, 5))
        else:
            closed = listener.is_closed()
            record(
                "LISTEN connection, after the crash restart",
                None,
                "no exception; "
                + ", ".join(listener_outcome or ["no callback"])
                + f"; is_closed()={closed}",
            )
        for c in (conn, idle, listener):
            with contextlib.suppress(Exception):
                await c.close()

    # 5. immediate shutdown (SIGQUIT to the postmaster) mid-query, then the pools
    conns = {name: await connect() for name, connect, _ in drivers}
    apool = await asyncpg.create_pool(url, min_size=2, max_size=2)
    ppool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        url, min_size=2, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await ppool.open(wait=True)
    sleepers = [
        asyncio.create_task(query(conns[name], "SELECT pg_sleep(30)"))
        for name, _connect, query in drivers
    ]
    await asyncio.sleep(0.2)
    os.kill(master, signal.SIGQUIT)
    for task in sleepers:
        record("mid-query, immediate shutdown (`pg_ctl stop -m immediate`)", await caught(task))
    await asyncio.to_thread(wait_gone, master, 10)

    async def use_apool() -> None:
        async with apool.acquire() as c:
            await c.execute("SELECT 1")

    async def use_ppool() -> None:
        async with ppool.connection(timeout=1.5) as c:  # default timeout: 30 s
            await c.execute("SELECT 1")

    for case in (
        "pool of 2, 1st use after the server went away",
        "pool of 2, 2nd use (server still down)",
        "pool of 2, 3rd use (server still down)",
    ):
        record(case, *await timed(use_apool()))
        record(case, *await timed(use_ppool()))
    apool.terminate()
    await ppool.close(timeout=1)
    for name in ("asyncpg", "psycopg"):
        records = logged[name]
        first = records[0].getMessage().splitlines()[0] if records else ""
        record(
            "pools' own log records over the whole probe (logger `asyncpg.pool` / `psycopg.pool`)",
            None,
            f"{len(records)} record(s)" + (f", e.g. “{first[:80]}”" if first else ""),
        )
    for conn in conns.values():
        with contextlib.suppress(Exception):
            await conn.close()
    return {"cases": results, "lineages": lineages}


# --------------------------------------------------------------------------------------------
# Running and reporting


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({cpu}), shared with other work and noisy; "
        f"Linux {platform.release()}; Python {platform.python_version()}"
    )


def ms(value: float, digits: int = 3) -> str:
    return "–" if value != value else f"{value:.{digits}f}"


def make_variants(url: str) -> list[Variant]:
    a, p = "bench_asyncpg", "bench_psycopg"
    return [
        Asyncpg("asyncpg", "asyncpg: statement cache; pool resets on release", "asyncpg", url, a),
        Asyncpg(
            "asyncpg-noreset",
            "asyncpg: pool `reset=` no-op (no reset query on release)",
            "asyncpg",
            url,
            a,
            latency=False,
            claim=False,
            notify_latency=False,
            reset_on_release=False,
        ),
        Psycopg(
            "psycopg-unprepared",
            "psycopg: `prepare_threshold=None` (never prepared)",
            "psycopg",
            url,
            p,
            throughput=False,
            claim=False,
            notify_latency=False,
            prepare_threshold=None,
        ),
        Psycopg("psycopg", "psycopg: `prepare_threshold=0` (prepared at once)", "psycopg", url, p),
        Psycopg(
            "psycopg-pipeline",
            "psycopg: prepared + pipeline mode, explicit BEGIN/COMMIT (2 round trips)",
            "psycopg",
            url,
            p,
            claim=False,
            pipeline=True,
        ),
        Psycopg(
            "psycopg-pipeline-tx",
            "psycopg: prepared + pipeline mode with `conn.transaction()` (3 round trips)",
            "psycopg",
            url,
            p,
            throughput=False,
            claim=False,
            notify_latency=False,
            pipeline=True,
            pipeline_transaction=True,
        ),
        Asyncpg(
            "asyncpg-nonotify",
            "reference: asyncpg, transaction without `pg_notify`",
            "asyncpg",
            url,
            a,
            notify=False,
            reference=True,
            claim=False,
            notify_latency=False,
        ),
        Asyncpg(
            "asyncpg-1stmt",
            "reference: asyncpg, the transaction as one statement (CTEs; 1 round trip)",
            "asyncpg",
            url,
            a,
            one_statement=True,
            reference=True,
            claim=False,
            notify_latency=False,
        ),
        Psycopg(
            "psycopg-1stmt",
            "reference: psycopg (prepared), the transaction as one statement (1 round trip)",
            "psycopg",
            url,
            p,
            one_statement=True,
            reference=True,
            claim=False,
            notify_latency=False,
        ),
    ]


async def bench(args: argparse.Namespace, url: str, master: int) -> list[Variant]:
    variants = make_variants(url)
    for driver in ("asyncpg", "psycopg"):
        v = next(v for v in variants if v.driver == driver)
        conn = await v.connect()
        await v.execute(conn, Query.of(f"CREATE SCHEMA {v.schema}"))
        for statement in SCHEMA.split(";"):
            await v.execute(conn, Query.of(statement))
        await v.close(conn)

    conns = {v.key: await v.connect() for v in variants}
    try:
        step = time.monotonic()
        await measure_save_latency(
            [v for v in variants if v.latency], conns, args.iterations, blocks=4
        )
        log(f"save-step latency: {time.monotonic() - step:.1f}s")
        step = time.monotonic()
        await measure_claims([v for v in variants if v.claim], conns, args.claims, blocks=4)
        log(f"claims: {time.monotonic() - step:.1f}s")
    finally:
        for v in variants:
            await v.close(conns[v.key])

    step = time.monotonic()
    await measure_notify([v for v in variants if v.notify_latency], args.notifies)
    log(f"notify: {time.monotonic() - step:.1f}s")

    step = time.monotonic()
    pools = {v.key: await v.open_pool() for v in variants if v.throughput}
    try:
        await measure_throughput(
            [v for v in variants if v.throughput], pools, args.rounds, args.seconds, master
        )
    finally:
        for v in variants:
            if v.key in pools:
                await v.close_pool(pools[v.key])
    log(f"throughput: {time.monotonic() - step:.1f}s")
    return variants


def log(text: str) -> None:
    print(f"[pg_drivers] {text}", file=sys.stderr, flush=True)


def best(variants: list[Variant], driver: str, metric: Callable[[Variant], float]) -> Variant:
    """The variant of ``driver`` with the lowest ``metric`` (NaN = not measured), reference
    variants (no pg_notify, one statement) excluded."""
    candidates = [
        v for v in variants if v.driver == driver and not v.reference and metric(v) == metric(v)
    ]
    return min(candidates, key=metric)


def render(variants: list[Variant], probe: dict[str, Any] | None, meta: dict[str, str]) -> str:
    def p50(values: list[float]) -> float:
        return pct(values, 50)

    def rate(v: Variant) -> float:
        return statistics.median(v.rates) if v.rates else float("nan")

    metrics: list[tuple[str, Callable[[Variant], float], bool]] = [
        ("save-step p50", lambda v: p50(v.save_latencies), False),
        ("tx/s at 32", lambda v: -rate(v), True),
        ("claim p50", lambda v: p50(v.claim_latencies), False),
        ("notify p50", lambda v: p50(v.notify_latencies), False),
    ]
    lines = [
        "## Postgres drivers",
        "",
        f"_Generated by `bench/pg_drivers.py` on {meta['when']}; do not edit by hand._",
        "",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['machine']}; load average {meta['load']} (before → after)",
        f"- PostgreSQL {meta['postgres']} (throwaway `initdb`, `fsync=off`, TCP on 127.0.0.1, "
        "same machine); event loop "
        f"{meta['loop']}",
        f"- Drivers: {meta['packages']}",
        f"- Mode: {meta['mode']}",
        "",
        "Best variant of each driver per column (which one: see the table below it). "
        "Latencies in ms.",
        "",
        "| driver | save-step p50 / p99 | tx/s at 32 tasks, pool 10 | claim p50 / p99 "
        "| notify p50 / p99 |",
        "|---|---:|---:|---:|---:|",
    ]
    chosen: dict[str, dict[str, Variant]] = {}
    for driver in ("asyncpg", "psycopg"):
        picks = {name: best(variants, driver, fn) for name, fn, _ in metrics}
        chosen[driver] = picks
        s, t = picks["save-step p50"], picks["tx/s at 32"]
        c, n = picks["claim p50"], picks["notify p50"]
        lines.append(
            f"| {driver} {meta[driver]} "
            f"| {ms(p50(s.save_latencies))} / {ms(pct(s.save_latencies, 99))} ({s.key}) "
            f"| {rate(t):,.0f} ({t.key}) "
            f"| {ms(p50(c.claim_latencies))} / {ms(pct(c.claim_latencies, 99))} ({c.key}) "
            f"| {ms(p50(n.notify_latencies))} / {ms(pct(n.notify_latencies, 99))} ({n.key}) |"
        )
    by_key = {v.key: v for v in variants}
    lines += [
        "",
        "Ratios, psycopg ÷ asyncpg (> 1 = asyncpg faster): best variant vs best variant; "
        "in brackets like for like, `psycopg` vs `asyncpg` (the same statements, one round "
        "trip each, no pipeline):",
        "",
    ]
    for name, fn, higher_better in metrics:
        pairs = [
            (fn(chosen["asyncpg"][name]), fn(chosen["psycopg"][name])),
            (fn(by_key["asyncpg"]), fn(by_key["psycopg"])),
        ]
        best_ratio, same_ratio = ((a / p) if higher_better else (p / a) for a, p in pairs)
        lines.append(f"- {name}: {best_ratio:.2f}× ({same_ratio:.2f}×)")
    lines += [
        "",
        "Every variant:",
        "",
        "| variant | what | save-step p50 / p99 | tx/s at 32 (rounds) "
        "| CPU µs per tx at 32: client / Postgres | claim p50 / p99 | notify p50 / p99 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        save = (
            f"{ms(p50(v.save_latencies))} / {ms(pct(v.save_latencies, 99))}"
            if v.save_latencies
            else "–"
        )
        tps = f"{rate(v):,.0f} ({', '.join(f'{r:,.0f}' for r in v.rates)})" if v.rates else "–"
        claim = (
            f"{ms(p50(v.claim_latencies))} / {ms(pct(v.claim_latencies, 99))}"
            if v.claim_latencies
            else "–"
        )
        notify = (
            f"{ms(p50(v.notify_latencies))} / {ms(pct(v.notify_latencies, 99))}"
            if v.notify_latencies
            else "–"
        )
        cpu = (
            f"{statistics.median(v.client_us):,.0f} / {statistics.median(v.server_us):,.0f}"
            if v.rates
            else "–"
        )
        lines.append(f"| `{v.key}` | {v.label} | {save} | {tps} | {cpu} | {claim} | {notify} |")
    lines += [
        "",
        f"- save-step: {meta['iterations']} transactions per variant at concurrency 1 (after "
        "100 unmeasured), interleaved in 4 blocks; 20 steps per run, so each is a new step row "
        "and a new event on the run's channel. 7 statements / 7 round trips on asyncpg and "
        "psycopg (BEGIN, fence, step, event id, event, pg_notify, COMMIT); 2 round trips in "
        "psycopg's pipeline mode with explicit BEGIN/COMMIT (the fence row is read after the "
        "first flush and checked before COMMIT is sent), 3 with `conn.transaction()` in the "
        "pipeline. The `1stmt` references run the same writes as one statement of "
        "data-modifying CTEs (the fence in its WHERE; 1 round trip). No listener is attached "
        "while it runs.",
        f"- tx/s: {CONCURRENCY} tasks, each on its own run, over a pool of {POOL_SIZE}; "
        f"acquire → transaction → release in a loop; {meta['seconds']} s windows after 0.3 s "
        f"of warm-up, median of {meta['rounds']} round(s), rounds of the variants interleaved. "
        "asyncpg's pool runs `Connection.reset()`'s query (`SELECT pg_advisory_unlock_all(); "
        "CLOSE ALL; UNLISTEN *; RESET ALL`) on every release unless `reset=` is given; "
        "psycopg_pool only checks the transaction status. CPU per tx: this process's CPU time "
        "(`time.process_time()`), and the CPU time of every child of the test server's "
        "postmaster (`/proc/<pid>/stat`), over the window, divided by the transactions in it "
        "(medians over rounds); the two together ≈ 2 cores × window when the machine is "
        "saturated.",
        f"- claim: {CLAIM_ROWS:,} runs present ({CLAIM_ROWS * 9 // 10:,} due, "
        f"{CLAIM_HELD} of the oldest leased by another worker), {meta['claims']} claims of 10 "
        "runs; `RETURNING *` returns 9 columns.",
        f"- notify: {meta['notifies']} notifications per variant, one at a time; the stamp is "
        "taken before BEGIN, so the figure is the sender's whole transaction (INSERT + "
        "pg_notify + COMMIT) plus delivery to the listening connection in the same process. "
        "The pipeline variant's sender sends BEGIN … COMMIT in one round trip.",
    ]
    if probe:
        lines += [
            "",
            "### Exception classes (probe on a second throwaway server)",
            "",
            "| case | asyncpg | psycopg |",
            "|---|---|---|",
        ]
        for case, seen in probe["cases"].items():
            cells = [*seen, "", ""][:2]
            lines.append(f"| {case} | {cells[0]} | {cells[1]} |")
        lines += ["", "Class lineages:", ""]
        for name, chain in sorted(probe["lineages"].items()):
            lines.append(f"- {name}: {chain}")
    return "\n".join(lines) + "\n"


def rewrite_benchmarks(body: str) -> None:
    begin, end = f"<!-- {SECTION}:begin -->", f"<!-- {SECTION}:end -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    i = text.find(begin)
    j = text.find(end, i) if i >= 0 else -1
    if i >= 0 and j >= 0:
        text = text[:i] + block + text[j + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = BENCHMARKS.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(BENCHMARKS)


def run(coro_fn: Callable[[], Awaitable[Any]], loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro_fn())  # type: ignore[arg-type]
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (~30 s)")
    parser.add_argument("--write", action="store_true", help="rewrite the section in BENCHMARKS.md")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--no-errors", action="store_true", help="skip the exception probe")
    parser.add_argument("--iterations", type=int, help="save-step transactions per variant")
    args = parser.parse_args()
    full = not args.quick
    args.iterations = args.iterations or (2000 if full else 500)
    args.claims = 1000 if full else 300
    args.notifies = 2000 if full else 500
    args.rounds = 3 if full else 1
    args.seconds = 3.0 if full else 1.5

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    bin_dir = server_binaries()
    with postgres_server(free_port()) as server:
        url = server.url
        postgres = run(lambda: server_version(url), args.loop)
        master = postmaster_pid(server.directory / "data")
        variants = run(lambda: bench(args, url, master), args.loop)
    probe = None
    if not args.no_errors:
        step = time.monotonic()
        port = free_port()
        with postgres_server(port) as server:
            probe = run(
                lambda: probe_errors(
                    lambda p: f"postgresql://postgres@127.0.0.1:{p}/postgres",
                    port,
                    server.directory / "data",
                ),
                args.loop,
            )
        log(f"error probe: {time.monotonic() - step:.1f}s")
    load_after = os.getloadavg()[0]

    command = ".venv/bin/python bench/pg_drivers.py" + " ".join(["", *(a for a in sys.argv[1:])])
    loop_name = (
        f"uvloop {package_version('uvloop')}" if args.loop == "uvloop" else "asyncio (default)"
    )
    meta = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(),
        "load": f"{load_before:.2f} → {load_after:.2f}",
        "postgres": f"{postgres} ({bin_dir})",
        "loop": loop_name,
        "packages": (
            f"asyncpg {package_version('asyncpg')}; psycopg {package_version('psycopg')} "
            f"(psycopg-binary {package_version('psycopg-binary')}, libpq "
            f"{psycopg.pq.version() // 10000}.{psycopg.pq.version() % 100}, "
            f"implementation `{psycopg.pq.__impl__}`); psycopg-pool "
            f"{package_version('psycopg-pool')}"
        ),
        "asyncpg": package_version("asyncpg"),
        "psycopg": package_version("psycopg"),
        "mode": "quick" if args.quick else "full",
        "iterations": str(args.iterations),
        "claims": str(args.claims),
        "notifies": str(args.notifies),
        "rounds": str(args.rounds),
        "seconds": f"{args.seconds:g}",
    }
    report = render(variants, probe, meta)
    print(report)
    log(f"total {time.monotonic() - started:.0f}s")
    if args.write:
        rewrite_benchmarks(report)
        log(f"wrote the '{SECTION}' section of {BENCHMARKS}")


async def server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
