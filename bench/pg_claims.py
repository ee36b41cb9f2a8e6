"""How the Postgres backend's claim (``ss_claim``) scales with concurrent workers (issue 10).

    .venv/bin/python bench/pg_claims.py --quick     # ~40 s smoke run
    .venv/bin/python bench/pg_claims.py             # full run (~2.5 min)
    .venv/bin/python bench/pg_claims.py --durable   # same with fsync on (commits wait for WAL)
    .venv/bin/python bench/pg_claims.py --rounds 3  # every cell 3 times, ratios of the medians

Needs ``asyncpg`` (``uvloop`` is used when installed) and Debian's PostgreSQL server binaries.
The script starts its own throwaway PostgreSQL (``tests/postgres.py``: initdb + pg_ctl into a
temp dir, a free port on 127.0.0.1, ``fsync=off`` unless ``--durable``), never any other server,
and opens the real backend on it (``backend_from_url(...?schema=claims_bench)``), whose
``open()`` creates the schema with the shipped migrations. In that schema it adds two
alternative claim functions, with the same signature as ``ss_claim``:

(a) ``ss_claim`` as shipped: expired leases first (index ``runs_leased`` on lease_until), then
    unleased due runs oldest first (index ``runs_due`` on due_at, partial on ``lease_owner IS
    NULL``), each ``UPDATE ... FROM (SELECT id ... LIMIT n FOR UPDATE SKIP LOCKED)``;
(b) "one index, SKIP LOCKED": one partial index on (due_at) WHERE state = 'RUN_STARTED' and one
    UPDATE whose inner select filters ``lease_until IS NULL OR lease_until < now``, ordered by
    due_at, ``FOR UPDATE SKIP LOCKED`` (the obvious design);
(c) "FOR UPDATE, no SKIP LOCKED": (b) with a plain ``FOR UPDATE``, so claimers queue on each
    other's locked rows.

Each variant is measured with only its own claim indexes on ``runs`` (the migration's other
indexes stay): (a) with the migration's ``runs_due`` and ``runs_leased``, (b) and (c) with the
single index. Every measurement (a cell) starts from the same state: ``runs`` truncated, then
refilled by SQL with ``--due`` unleased due runs (20,000; 5,000 with ``--quick``) plus, per
scenario, 0 / 10,000 / 50,000 runs leased to live workers (lease_until an hour ahead, due_at
older than every unleased run: they were claimed oldest first), then ``VACUUM ANALYZE``.

In a cell, K claimers (K = 1, 4, 16; 1 and 16 with ``--quick``), each on its own asyncpg
connection, loop: call the claim function with limit 10 (``SELECT id FROM fn(...)``), then
"finish" what they got at once (``UPDATE runs SET state = 'RUN_SUCCESS', lease_owner = NULL,
...``), until every due run is finished or the cell's time budget (``--budget``: 3.5 s, 1.5 s with
``--quick``) has passed. Reported per scenario, variant and K: runs claimed per second over the
cell, claim calls and the share that came back empty, claim-call latency p50 / p99 (client
round trip, including any wait on locks), and the checks: no run claimed twice (per-id count of
what the claimers received, and ``epoch`` <= 1 in the table), no live worker's lease taken, the
table's finished count equal to what the claimers finished; deadlocks (only the blocking variant
gets them) are counted and retried. The variants of one (scenario, K) run back to back, in
rotating order, so a burst of unrelated load hits them alike; on a busy machine single cells vary
by up to 2x, so read the large ratios, or use ``--rounds``.

Before the cells, an untimed warm-up runs each variant once on every connection. After them, it
counts, with nothing leased, how many of 3,000 claim UPDATEs are HOT (heap-only: no index entry
written) with (a)'s indexes and with (b)'s (lease_owner and lease_until are indexed only in (a)).
Finally, with 50,000 leased runs present, it prints ``EXPLAIN (ANALYZE, BUFFERS)`` of
``ss_claim``'s inner selects and of variant (b)'s, to show how many rows each scans, and the plans
``auto_explain`` records for the 6th call of each function in a session (the plans the functions
really run, after PL/pgSQL's plan cache had its chance to switch to a generic plan).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "src"))

from tests.postgres import postgres_server, server_binaries  # noqa: E402

from stepstream.backends import backend_from_url  # noqa: E402

SCHEMA = "claims_bench"
WORKFLOW = "bench"
LIMIT = 10
LEASE_MS = 30_000
LIVE_LEASE_MS = 3_600_000
FULL_LEASED = (0, 10_000, 50_000)

# The variants: claim function, label, and which claim index set runs carries meanwhile.
VARIANTS = ("a", "b", "c")
FUNCTION = {"a": "ss_claim", "b": "bench_claim_one_index", "c": "bench_claim_blocking"}
LABEL = {
    "a": "(a) ss_claim, split indexes",
    "b": "(b) one index, SKIP LOCKED",
    "c": "(c) FOR UPDATE, no SKIP LOCKED",
}
ONE_INDEX = "CREATE INDEX runs_due_any ON runs (due_at) WHERE state = 'RUN_STARTED'"
CLAIM_INDEXES = ("runs_due", "runs_leased", "runs_due_any")

ALTERNATIVE = """
CREATE FUNCTION {name}(
    p_owner text, p_lease_ms bigint, p_limit integer, p_workflows text[], p_exclude text[]
) RETURNS SETOF runs LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := ss_now();
BEGIN
    RETURN QUERY
    UPDATE runs r SET lease_owner = p_owner, lease_until = now_ms + p_lease_ms,
        epoch = r.epoch + 1
    FROM (SELECT id FROM runs
          WHERE state = 'RUN_STARTED' AND due_at <= now_ms
            AND (lease_until IS NULL OR lease_until < now_ms)
            AND workflow = ANY (p_workflows) AND NOT (id = ANY (p_exclude))
          ORDER BY due_at LIMIT p_limit {lock}) picked
    WHERE r.id = picked.id
    RETURNING r.*;
END $$;
"""

FILL = """
INSERT INTO runs (id, workflow, state, created_at, due_at, lease_owner, lease_until, epoch,
                  payload, headers, phase, failure_attempts)
SELECT $1::text || g, $2::text, 'RUN_STARTED', $3::bigint + g, $3::bigint + g,
       CASE WHEN $5::boolean THEN 'live-' || (g % 64) END,
       CASE WHEN $5 THEN $6::bigint END,
       CASE WHEN $5 THEN 1 ELSE 0 END,
       'null', '{}', 'run', 0
FROM generate_series(1, $4::integer) AS g
"""

FINISH = """
UPDATE runs SET state = 'RUN_SUCCESS', completed_at = ss_now(), due_at = NULL,
    lease_owner = NULL, lease_until = NULL
WHERE id = ANY ($1::text[])
"""

# ss_claim's two inner selects and variant (b)'s, with the clock as a literal, for EXPLAIN.
INNER_SELECTS = {
    "a": [
        (
            "ss_claim, 1st select (expired leases, index runs_leased)",
            "SELECT id FROM runs WHERE state = 'RUN_STARTED' AND lease_owner IS NOT NULL "
            "AND lease_until < {now} AND due_at <= {now} AND workflow = ANY ('{{bench}}') "
            "AND NOT (id = ANY ('{{}}')) ORDER BY lease_until LIMIT 10 FOR UPDATE SKIP LOCKED",
        ),
        (
            "ss_claim, 2nd select (unleased due runs, index runs_due)",
            "SELECT id FROM runs WHERE state = 'RUN_STARTED' AND lease_owner IS NULL "
            "AND due_at <= {now} AND workflow = ANY ('{{bench}}') "
            "AND NOT (id = ANY ('{{}}')) ORDER BY due_at LIMIT 10 FOR UPDATE SKIP LOCKED",
        ),
    ],
    "b": [
        (
            "variant (b), its one select (index runs_due_any)",
            "SELECT id FROM runs WHERE state = 'RUN_STARTED' AND due_at <= {now} "
            "AND (lease_until IS NULL OR lease_until < {now}) AND workflow = ANY ('{{bench}}') "
            "AND NOT (id = ANY ('{{}}')) ORDER BY due_at LIMIT 10 FOR UPDATE SKIP LOCKED",
        ),
    ],
}


@dataclass(frozen=True)
class Settings:
    due: int
    leased: tuple[int, ...]
    workers: tuple[int, ...]
    budget: float
    rounds: int


@dataclass
class Cell:
    """One measurement: a scenario (leased runs in flight), a variant, K claimers."""

    leased: int
    variant: str
    workers: int
    target: int
    round: int = 1
    done: int = 0
    empty: int = 0
    deadlocks: int = 0
    latencies: list[float] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    duplicates: int = 0
    stolen: int = 0
    table_ok: bool = False

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def percentile(self, p: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.stolen and self.table_ok


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 5432:
            return port


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, server_settings={"search_path": SCHEMA})


async def prepare_schema(url: str) -> dict[str, str]:
    """Create the schema with the real backend, add the alternatives; the backend's indexes."""
    backend = backend_from_url(f"{url}?schema={SCHEMA}")
    await backend.open()
    await backend.close()
    admin = await connect(url)
    try:
        rows = await admin.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 "
            "AND indexname IN ('runs_due', 'runs_leased')",
            SCHEMA,
        )
        shipped = {row["indexname"]: row["indexdef"] for row in rows}
        if set(shipped) != {"runs_due", "runs_leased"}:
            raise SystemExit(f"the migrations no longer create runs_due / runs_leased: {shipped}")
        await admin.execute(ALTERNATIVE.format(name=FUNCTION["b"], lock="FOR UPDATE SKIP LOCKED"))
        await admin.execute(ALTERNATIVE.format(name=FUNCTION["c"], lock="FOR UPDATE"))
    finally:
        await admin.close()
    return shipped


async def fill(
    admin: asyncpg.Connection, variant: str, leased: int, due: int, shipped: dict[str, str]
) -> None:
    """Empty runs, insert the scenario's rows, build the variant's claim indexes, analyze."""
    await admin.execute("TRUNCATE runs")
    await admin.execute(f"DROP INDEX IF EXISTS {', '.join(CLAIM_INDEXES)}")
    now = await admin.fetchval("SELECT ss_now()")
    oldest = now - 60_000 - leased - due
    if leased:
        await admin.execute(FILL, "leased-", WORKFLOW, oldest, leased, True, now + LIVE_LEASE_MS)
    await admin.execute(FILL, "due-", WORKFLOW, oldest + leased, due, False, None)
    for statement in shipped.values() if variant == "a" else [ONE_INDEX]:
        await admin.execute(statement)
    await admin.execute("VACUUM ANALYZE runs")


async def claimer(
    conn: asyncpg.Connection, cell: Cell, owner: str, start: asyncio.Event, deadline: list[float]
) -> None:
    claim = f"SELECT id FROM {FUNCTION[cell.variant]}($1, $2, $3, $4, $5)"
    args = (owner, LEASE_MS, LIMIT, [WORKFLOW], [])
    await start.wait()
    while cell.done < cell.target and time.perf_counter() < deadline[0]:
        began = time.perf_counter()
        try:
            rows = await conn.fetch(claim, *args)
        except asyncpg.DeadlockDetectedError:
            cell.deadlocks += 1
            continue
        cell.latencies.append(time.perf_counter() - began)
        ids = [row[0] for row in rows]
        if not ids:
            cell.empty += 1
            continue
        cell.claimed.extend(ids)
        while True:
            try:
                await conn.execute(FINISH, ids)
                break
            except asyncpg.DeadlockDetectedError:  # a blocking claimer (c) held one of ours
                cell.deadlocks += 1
        cell.done += len(ids)


async def measure(
    conns: Sequence[asyncpg.Connection],
    admin: asyncpg.Connection,
    shipped: dict[str, str],
    settings: Settings,
    leased: int,
    variant: str,
    workers: int,
    round_: int,
) -> Cell:
    await fill(admin, variant, leased, settings.due, shipped)
    cell = Cell(leased, variant, workers, target=settings.due, round=round_)
    start = asyncio.Event()
    deadline = [0.0]
    tasks = [
        asyncio.create_task(claimer(conns[i], cell, f"worker-{i}", start, deadline))
        for i in range(workers)
    ]
    await asyncio.sleep(0)
    began = time.perf_counter()
    deadline[0] = began + settings.budget
    start.set()
    await asyncio.gather(*tasks)
    cell.seconds = time.perf_counter() - began
    counts = collections.Counter(cell.claimed)
    cell.duplicates = sum(1 for n in counts.values() if n > 1)
    cell.stolen = sum(1 for run_id in counts if not run_id.startswith("due-"))
    row = await admin.fetchrow(
        "SELECT count(*) FILTER (WHERE id LIKE 'due-%' AND epoch > 1) AS twice, "
        "count(*) FILTER (WHERE id LIKE 'leased-%' AND (epoch <> 1 OR lease_owner NOT LIKE "
        "'live-%' OR state <> 'RUN_STARTED')) AS taken, "
        "count(*) FILTER (WHERE state = 'RUN_SUCCESS') AS finished FROM runs"
    )
    cell.table_ok = row["twice"] == 0 and row["taken"] == 0 and row["finished"] == cell.done
    return cell


def report_line(cell: Cell) -> str:
    calls = len(cell.latencies)
    empty = 100 * cell.empty / calls if calls else 0.0
    checks = (
        "ok"
        if cell.ok
        else (f"FAIL dup={cell.duplicates} stolen={cell.stolen} table_ok={cell.table_ok}")
    )
    if cell.deadlocks:
        checks += f", {cell.deadlocks} deadlock(s) (retried)"
    return (
        f"{cell.round:>2} {cell.leased:>7,} {LABEL[cell.variant]:<31} {cell.workers:>3} "
        f"{cell.done:>7,}/{cell.target:<7,} {cell.seconds:>5.1f} {cell.rate:>8,.0f} "
        f"{calls:>6,} {empty:>5.1f}% {cell.percentile(50):>7.2f} {cell.percentile(99):>8.2f}  "
        f"{checks}"
    )


HEADER = (
    f"{'#':>2} {'leased':>7} {'variant':<31} {'K':>3} {'finished/due':>15} {'s':>5} {'runs/s':>8} "
    f"{'claims':>6} {'empty':>6} {'p50 ms':>7} {'p99 ms':>8}  checks"
)


def summary(cells: list[Cell], settings: Settings) -> None:
    rates: dict[tuple[int, str, int], list[float]] = collections.defaultdict(list)
    for c in cells:
        rates[(c.leased, c.variant, c.workers)].append(c.rate)
    rate = {key: statistics.median(values) for key, values in rates.items()}
    over = f", median of {settings.rounds} rounds" if settings.rounds > 1 else ""
    print(f"\nRuns claimed per second relative to (a) ss_claim (same scenario and K{over}):")
    print(f"{'leased':>7} {'K':>3} {'(a) runs/s':>11} {'(b)/(a)':>8} {'(c)/(a)':>8}")
    for leased in settings.leased:
        for workers in settings.workers:
            a, b, c = (rate[(leased, v, workers)] for v in VARIANTS)
            print(f"{leased:>7,} {workers:>3} {a:>11,.0f} {b / a:>8.2f} {c / a:>8.2f}")
    k1, kmax = settings.workers[0], settings.workers[-1]
    print(f"\nScaling, runs/s at K={kmax} over K={k1}:")
    for leased in settings.leased:
        parts = []
        for variant in VARIANTS:
            one, many = rate[(leased, variant, k1)], rate[(leased, variant, kmax)]
            parts.append(f"{variant}: {many / one:.2f}x")
        print(f"  {leased:>7,} leased   " + "   ".join(parts))


async def hot_updates(
    admin: asyncpg.Connection, conn: asyncpg.Connection, shipped: dict[str, str]
) -> None:
    """How many claim UPDATEs are HOT (no index entry written) under each index set."""
    if await admin.fetchval("SELECT current_setting('server_version_num')::int") < 150000:
        return  # pg_stat_force_next_flush() is PostgreSQL 15's

    async def updated() -> tuple[int, int]:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")
        await asyncio.sleep(0.3)
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        row = await admin.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE schemaname = $1 AND relname = 'runs'",
            SCHEMA,
        )
        return row[0], row[1]

    due, calls = 3_000, 300
    print(
        f"\n=== HOT updates: {calls} claims of {LIMIT} out of {due:,} due runs, nothing leased ==="
    )
    for variant in ("a", "b"):
        await fill(admin, variant, 0, due, shipped)
        before = await updated()
        claim = f"SELECT id FROM {FUNCTION[variant]}($1, $2, $3, $4, $5)"
        for _ in range(calls):
            await conn.fetch(claim, "hot", LEASE_MS, LIMIT, [WORKFLOW], [])
        after = await updated()
        total, hot = after[0] - before[0], after[1] - before[1]
        share = 100 * hot / total if total else 0.0
        print(f"  {LABEL[variant]:<31} {total:>6,} claim UPDATEs, {hot:>6,} HOT ({share:.0f}%)")


async def explain(admin: asyncpg.Connection, shipped: dict[str, str], due: int) -> None:
    leased = 50_000
    print(f"\n=== EXPLAIN (ANALYZE, BUFFERS): {leased:,} leased runs + {due:,} due runs ===")
    notices: list[str] = []

    def on_notice(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        notices.append(message.message)

    for variant in ("a", "b"):
        await fill(admin, variant, leased, due, shipped)
        now = await admin.fetchval("SELECT ss_now()")
        for title, query in INNER_SELECTS[variant]:
            tr = admin.transaction()  # EXPLAIN ANALYZE really locks the rows: roll back
            await tr.start()
            try:
                plan = await admin.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query.format(now=now)}")
            finally:
                await tr.rollback()
            print(f"\n--- {title}")
            print(query.format(now=now))
            for row in plan:
                print("    " + row[0])
        # The plan the function itself runs (auto_explain reports nested statements).
        notices.clear()
        admin.add_log_listener(on_notice)
        try:
            tr = admin.transaction()
            await tr.start()
            try:
                call = f"SELECT id FROM {FUNCTION[variant]}($1, $2, $3, $4, $5)"
                args = ("explain", LEASE_MS, LIMIT, [WORKFLOW], [])
                # PL/pgSQL plans its statements for the call's values 5 times, then may switch
                # to a generic plan: log the 6th call, the steady state of a worker's session.
                for _ in range(5):
                    await admin.fetch(call, *args)
                await admin.execute(
                    "LOAD 'auto_explain'; SET LOCAL auto_explain.log_min_duration = 0; "
                    "SET LOCAL auto_explain.log_analyze = on; "
                    "SET LOCAL auto_explain.log_buffers = on; "
                    "SET LOCAL auto_explain.log_nested_statements = on; "
                    "SET LOCAL auto_explain.log_level = notice"
                )
                await admin.fetch(call, *args)
                await asyncio.sleep(0.05)
            finally:
                await tr.rollback()
        except asyncpg.PostgresError as exc:
            print(f"\n(auto_explain unavailable: {exc})")
            continue
        finally:
            admin.remove_log_listener(on_notice)
        print(
            f"\n--- auto_explain of the 6th call of {FUNCTION[variant]}() in a session "
            "(the statements inside it)"
        )
        for text in notices:
            if "UPDATE runs" not in text:
                continue
            # "duration: ... plan:", "Query Text: <the statement, several lines>", the plan.
            lines = text.splitlines()
            plan_at = next(i for i, line in enumerate(lines) if "(cost=" in line)
            for line in [lines[0], *lines[plan_at:]]:
                print("    " + line)
            print()


async def run(settings: Settings, durable: bool) -> None:
    port = free_port()
    with postgres_server(port, durable=durable) as server:
        url = server.url
        shipped = await prepare_schema(url)
        admin = await connect(url)
        version = await admin.fetchval("SHOW server_version")
        print(
            f"PostgreSQL {version} ({'fsync on' if durable else 'fsync=off'}), port {port}, "
            f"schema {SCHEMA}; Python {platform.python_version()}, asyncpg "
            f"{asyncpg.__version__}, {os.cpu_count()} CPUs, load average "
            f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        print(
            f"{settings.due:,} due runs per cell, leased scenarios {list(settings.leased)}, "
            f"K = {list(settings.workers)}, limit {LIMIT}, budget {settings.budget:g} s per cell"
        )
        print("\n" + HEADER)
        conns = [await connect(url) for _ in range(max(settings.workers))]
        cells: list[Cell] = []
        try:
            # Untimed: compile the functions and plan their statements in every session, warm
            # the caches, so that the first measured cell is not the one paying for it.
            warm = Settings(due=2_000, leased=(0,), workers=(0,), budget=0.5, rounds=1)
            for variant in VARIANTS:
                await measure(conns, admin, shipped, warm, 0, variant, len(conns), 0)
            turn = 0
            for round_ in range(1, settings.rounds + 1):
                for leased in settings.leased:
                    for workers in settings.workers:
                        order = VARIANTS[turn % 3 :] + VARIANTS[: turn % 3]
                        turn += 1
                        for variant in order:
                            cell = await measure(
                                conns, admin, shipped, settings, leased, variant, workers, round_
                            )
                            cells.append(cell)
                            print(report_line(cell), flush=True)
            cells.sort(key=lambda c: (c.leased, c.workers, c.variant, c.round))
            print("\nSorted:\n" + HEADER)
            for cell in cells:
                print(report_line(cell))
            summary(cells, settings)
            await hot_updates(admin, conns[0], shipped)
            await explain(admin, shipped, settings.due)
        finally:
            for conn in conns:
                with contextlib.suppress(Exception):
                    await conn.close()
            await admin.close()
    failed = [c for c in cells if not c.ok]
    print(f"\nchecks: {'all passed' if not failed else f'{len(failed)} cell(s) FAILED'}")
    if failed:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--durable", action="store_true", help="fsync on (default: off)")
    parser.add_argument("--budget", type=float, help="seconds per cell (3.5; 1.5 with --quick)")
    parser.add_argument("--due", type=int, help="due runs per cell (20000; 5000 with --quick)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every cell (median)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    options = parser.parse_args()
    server_binaries()  # fail early, with its message, when PostgreSQL is not installed
    settings = Settings(
        due=options.due or (5_000 if options.quick else 20_000),
        leased=FULL_LEASED,
        workers=(1, 16) if options.quick else (1, 4, 16),
        budget=options.budget or (1.5 if options.quick else 3.5),
        rounds=max(1, options.rounds),
    )
    started = time.perf_counter()
    if options.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            asyncio.run(run(settings, options.durable))
        else:
            uvloop.run(run(settings, options.durable))
    else:
        asyncio.run(run(settings, options.durable))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
