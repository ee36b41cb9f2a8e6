# ruff: noqa: RUF001, RUF002  (the report uses typographic dashes and multiplication signs)
"""Workflow engine overhead: stepstream side by side with DBOS Transact, in the same run, on
the same storage: SQLite (and stepstream on Redis) against DBOS on SQLite, and stepstream on
PostgreSQL against DBOS on the same PostgreSQL server.

    python bench/workflow.py            # full run (~8-10 min), rewrites the "Workflows" and
                                        # "Workflows on PostgreSQL" sections of BENCHMARKS.md
    python bench/workflow.py --quick    # ~1 min, prints only (add --write to record it)
    python bench/workflow.py --groups postgres   # only the PostgreSQL group (and its section):
                                                 # its four rows take turns 3 times (--repeat)
    python bench/workflow.py --profile /tmp/wfprof   # + py-spy profiles of the stepstream side

Groups (``--groups``, comma separated, default all):
- ``sqlite``, ``redis``: stepstream on a SQLite file / a private redis-server; DBOS on a SQLite
  system database (the "Workflows" section);
- ``postgres``: one private, durable PostgreSQL (``tests/postgres.py`` with ``durable=True``:
  ``fsync=on``, ``synchronous_commit=on``, so both systems pay the same WAL flush per commit),
  two empty databases on it, ``stepstream_bench`` for stepstream
  (``--backend postgresql://postgres@127.0.0.1:PORT/stepstream_bench``) and ``dbos_bench`` for
  DBOS (its ``system_database_url``; recreated empty before each DBOS mode) — the "Workflows on
  PostgreSQL" section.

Measures, per system and backend:
- per-step overhead of a 20-step workflow of trivial steps run sequentially, one run at a time:
  every step returns ``time.time_ns()``, which is stored as its result; the gap between two
  consecutive steps' stamps is one step's full cost (persist the step and its event, go back
  to the workflow, enter the next step). p50/p99 over all gaps; and trigger→finish of the
  whole run / 20 (includes trigger, claim, the run's start and finish writes);
- throughput: 200 concurrent 10-step runs started at once; completed steps per second from
  the first trigger to the last stored completion (median of ``--rounds``).

Each side runs in its own process: stepstream from this Python (``bench/wf_stepstream.py``),
DBOS from a separate venv (``bench/wf_dbos.py``), created on first use with
``python3 -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install 'dbos==3.4.*'``
(``--dbos-python`` to use another; dbos is never a stepstream dependency).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from wf_common import (
    BENCH,
    ROOT,
    OtherCpu,
    machine,
    median,
    ms,
    pct,
    pg_commit_floor,
    postgres_server,
    redis_server,
    rewrite_section,
)

DBOS_VENV = Path("/tmp/dbos-venv")
DBOS_PIN = "dbos==3.4.*"  # the release issue 10 compares with
GROUPS = ("sqlite", "redis", "postgres")
PG_NOTE = "PostgreSQL, fsync=on, synchronous_commit=on"


def load_average() -> str:
    """The 1-minute load average now (other work on a shared machine shows here)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def ensure_dbos(python: str | None) -> str:
    if python:
        return python
    exe = DBOS_VENV / "bin" / "python"
    probe = [str(exe), "-c", "import dbos"]
    if exe.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(exe)
    print(f"creating {DBOS_VENV} with dbos (once) ...", file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(DBOS_VENV)], check=True)
    subprocess.run([str(exe), "-m", "pip", "install", "-q", DBOS_PIN], check=True)
    return str(exe)


def run_json(
    cmd: list[str], label: str, profile: Path | None = None, servers: Sequence[int] = ()
) -> dict:
    """Run one side's process; its JSON line, with ``other_cpu`` (CPU used meanwhile by
    processes that are neither it, this script, nor the ``servers``, in % of one CPU)."""
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        raw = profile / f"{label}.txt"
        cmd = [spy, "record", "--format", "raw", "-r", "250", "-o", str(raw), "--", *cmd]
    t0 = time.monotonic()
    other = OtherCpu(servers)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH)
    other_cpu = other.pct()
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"{label} failed ({proc.returncode}): {shlex.join(cmd)}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    out = json.loads(lines[-1])
    out["elapsed_s"] = time.monotonic() - t0
    out["other_cpu"] = other_cpu
    if profile is not None:
        out["profile"] = summarize_profile(profile / f"{label}.txt")
    return out


def summarize_profile(path: Path, top: int = 15) -> list[tuple[str, float]]:
    """Self time by file:line of a py-spy raw (collapsed) profile, biggest first."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        leaf = stack.split(";")[-1]
        counts[leaf] += int(n)
    return [(leaf, 100 * n / total) for leaf, n in counts.most_common(top)]


def commit_floor(directory: str, n: int = 1000) -> dict[str, tuple[float, float]]:
    """p50/p99 ms of a bare one-row SQLite WAL commit in ``directory`` (the disk's fsync floor
    under synchronous=FULL, and NORMAL for comparison)."""
    import sqlite3
    import time as _time

    out = {}
    for sync in ("FULL", "NORMAL"):
        conn = sqlite3.connect(f"{directory}/floor-{sync}.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {sync}")
        conn.execute("CREATE TABLE t (a INTEGER, b TEXT)")
        times = []
        for i in range(n):
            t0 = _time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 300))
            conn.execute("COMMIT")
            times.append((_time.perf_counter() - t0) * 1000)
        conn.close()
        out[sync] = (median(times), pct(times, 99))
    return out


Row = tuple[str, str, str, dict]  # system, storage family (sqlite/redis/postgres), note, output


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~1 min; prints only")
    parser.add_argument(
        "--write", action="store_true", help="rewrite BENCHMARKS.md even with --quick"
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-dbos", action="store_true")
    parser.add_argument("--dbos-python", help="a Python with dbos installed")
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles of stepstream here")
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs (throughput)")
    parser.add_argument("--redis-pool", type=int, help="append ?max_connections=N to Redis URLs")
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=30.0,
        help="run a row once more when other processes used more than this %% of one CPU "
        "meanwhile, and keep the quieter run (not with --quick; default %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="PostgreSQL group: turns of its rows, pooled (not with --quick; default 3)",
    )
    parser.add_argument(
        "--groups",
        default=",".join(GROUPS),
        help=f"comma separated, of {', '.join(GROUPS)} (default: all)",
    )
    args = parser.parse_args()
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    if not groups or any(g not in GROUPS for g in groups):
        parser.error(f"--groups takes {', '.join(GROUPS)}")
    quick = args.quick
    seq_ss, seq_db, rounds = (20, 10, 1) if quick else (100, 50, 3)
    dbos_python = None if args.no_dbos else ensure_dbos(args.dbos_python)
    args.command = shlex.join(["python", "bench/workflow.py", *sys.argv[1:]])
    args.load = [load_average()]

    results: list[Row] = []
    ss = [sys.executable, str(BENCH / "wf_stepstream.py"), "--seq-runs", str(seq_ss)]
    ss += ["--runs", str(args.runs), "--rounds", str(rounds), "--concurrency", str(args.runs)]
    db = [dbos_python or "", str(BENCH / "wf_dbos.py"), "--seq-runs", str(seq_db)]
    db += ["--runs", str(args.runs), "--rounds", str(rounds)]
    modes = ["async"] if quick else ["async", "queue"]
    dbos_version = None

    servers: list[int] = []  # storage servers not started as our children (PostgreSQL)

    def measure(what: str, run: Callable[[], dict]) -> dict:
        """Run a row; once more if unrelated load disturbed it, keeping the quieter run."""
        print(f"· {what} ...", file=sys.stderr)
        out = run()
        if not quick and out["other_cpu"] > args.max_other_cpu:
            print(f"  other processes used {out['other_cpu']:.0f}% CPU: again", file=sys.stderr)
            again = run()
            if again["other_cpu"] < out["other_cpu"]:
                out = again
        return out

    def stepstream(
        label: str,
        family: str,
        backend_note: str,
        url: str | Callable[[], str],
        extra: Sequence[str] = (),
    ) -> None:
        def run() -> dict:
            backend = url() if callable(url) else url
            cmd = [*ss, "--backend", backend, *extra]
            return run_json(cmd, f"stepstream-{label}", args.profile, servers)

        results.append(
            ("stepstream", family, backend_note, measure(f"stepstream {backend_note}", run))
        )

    def dbos(family: str, mode: str, extra: Callable[[], list[str]], storage: str) -> None:
        nonlocal dbos_version

        def run() -> dict:
            return run_json([*db, "--mode", mode, *extra()], f"dbos-{family}-{mode}", None, servers)

        out = measure(f"DBOS {storage} ({mode})", run)
        dbos_version = out.get("version")
        note = {
            "async": f"{storage}; async, start_workflow_async + gather",
            "queue": f"{storage}; sync steps, Queue.enqueue (thread pool)",
        }[mode]
        results.append((f"DBOS Transact {dbos_version}", family, note, out))

    if "sqlite" in groups or "redis" in groups:
        tmp = tempfile.mkdtemp(prefix="wfbench-")
        try:
            args.floor = commit_floor(tmp, 300 if quick else 1000)
            if "sqlite" in groups:
                stepstream(
                    "sqlite",
                    "sqlite",
                    "SQLite file, synchronous=FULL (default)",
                    lambda: f"sqlite:///{tempfile.mkdtemp(dir=tmp)}/a.db",
                )
                if not quick:
                    stepstream(
                        "sqlite-normal",
                        "sqlite",
                        "SQLite file, synchronous=NORMAL",
                        lambda: f"sqlite:///{tempfile.mkdtemp(dir=tmp)}/b.db?synchronous=normal",
                    )
            if "redis" in groups:
                # The backend's own pool size unless --redis-pool overrides it (redis-py option).
                pool = f"?max_connections={args.redis_pool}" if args.redis_pool else ""
                with redis_server() as url:
                    stepstream("redis", "redis", "Redis, no persistence", url + pool)
                with redis_server("--appendonly", "yes", "--appendfsync", "everysec") as url:
                    stepstream("redis-aof", "redis", "Redis, AOF appendfsync everysec", url + pool)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if dbos_python:
            for mode in modes:
                dbos("sqlite", mode, list, "SQLite system DB")
    if "postgres" in groups:
        print("· starting a private durable PostgreSQL ...", file=sys.stderr)
        with postgres_server() as pg:
            args.pg = pg
            servers.append(pg.postmaster_pid())
            args.pg_floor = pg_commit_floor(pg.url(), 300 if quick else 1000)
            # Each run (a rerun too) starts on an empty database. The rows take turns, --repeat
            # times, so the machine's slow and fast phases fall on all of them alike.
            for _ in range(1 if quick else args.repeat):
                stepstream("postgres", "postgres", PG_NOTE, lambda: pg.recreate("stepstream_bench"))
                if not quick:  # like DBOS's async row, whose steps are async def
                    stepstream(
                        "postgres-async",
                        "postgres",
                        f"{PG_NOTE}; async def steps",
                        lambda: pg.recreate("stepstream_bench"),
                        ["--bodies", "async"],
                    )
                if dbos_python:
                    for mode in modes:
                        dbos(
                            "postgres",
                            mode,
                            lambda: ["--system-db-url", pg.recreate("dbos_bench")],
                            "PostgreSQL system DB",
                        )
            servers.clear()
    args.load.append(load_average())

    write = (not quick or args.write) and not args.no_write
    if "sqlite" in groups or "redis" in groups:
        report = render(results, args, dbos_version)
        print(report)
        if write:
            rewrite_section("workflow", report)
            print("(rewrote the Workflows section of BENCHMARKS.md)", file=sys.stderr)
    if "postgres" in groups:
        report = render_postgres(merged(results), args, dbos_version)
        print(report)
        if write:
            rewrite_section("workflow-postgres", report, after="workflow")
            print("(rewrote the Workflows on PostgreSQL section of BENCHMARKS.md)", file=sys.stderr)


def merged(results: list[Row]) -> list[Row]:
    """One row per system and storage: the turns of a row (``--repeat``) pooled, their step
    gaps and throughput rounds together, the most disturbed turn's other CPU."""
    rows: dict[tuple[str, str, str], dict] = {}
    for system, family, note, out in results:
        kept = rows.get((system, family, note))
        if kept is None:
            rows[(system, family, note)] = {**out, "turns": 1}
            continue
        for key in ("deltas_ms", "whole_ms_per_step", "rounds"):
            kept[key] = kept[key] + out[key]
        kept["other_cpu"] = max(kept["other_cpu"], out["other_cpu"])
        kept["turns"] += 1
    return [(system, family, note, out) for (system, family, note), out in rows.items()]


def _tput(out: dict) -> float:
    return median([r["steps_per_s"] for r in out["rounds"]])


def _row(system: str, note: str, out: dict, ratio: str) -> str:
    d = out["deltas_ms"]
    lo = min(r["steps_per_s"] for r in out["rounds"])
    hi = max(r["steps_per_s"] for r in out["rounds"])
    spread = f" ({lo:,.0f}–{hi:,.0f})" if len(out["rounds"]) > 1 else ""
    return (
        f"| {system} | {note} | {ms(median(d), 3)} | {ms(pct(d, 99), 3)} "
        f"| {ms(median(out['whole_ms_per_step']), 3)} | {_tput(out):,.0f}{spread} | {ratio} "
        f"| {ms(out.get('other_cpu', math.nan), 0)} |"
    )


def _shape(results: list[Row]) -> tuple[int, int]:
    out = results[0][3] if results else None
    return (len(out["whole_ms_per_step"]), len(out["rounds"])) if out else (0, 0)


def _machine_line(args: argparse.Namespace) -> str:
    return (
        f"Machine: {machine()}; 1-minute load average {args.load[0]} at the start, "
        f"{args.load[-1]} at the end (2 shared cores: other work on the box moves the figures; "
        "*other CPU %* is the CPU that processes outside the benchmark used while a row ran, "
        "100 = one whole core; a row above "
        f"{args.max_other_cpu:g} % is run once more and the quieter run kept). "
        "stepstream runs under uvloop (what `stepstream worker` uses); DBOS under the default "
        "asyncio loop / its thread pool."
    )


def render(results: list[Row], args: argparse.Namespace, dbos_version: str | None) -> str:
    results = [r for r in results if r[1] in ("sqlite", "redis")]
    dbos_rows = [out for system, _, _, out in results if system.startswith("DBOS")]
    dbos_best = max((_tput(out) for out in dbos_rows), default=None)
    dbos_step = min((median(out["deltas_ms"]) for out in dbos_rows), default=None)
    rows = [
        "| system | storage / how runs are started | per-step p50 (ms) | per-step p99 (ms) "
        "| run time / 20, p50 (ms) | throughput (steps/s) | vs DBOS | other CPU % |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    verdicts = []
    for system, _, note, out in results:
        d = out["deltas_ms"]
        tput = _tput(out)
        ratio = f"{tput / dbos_best:.1f}×" if dbos_best and system == "stepstream" else ""
        rows.append(_row(system, note, out, ratio))
        if system == "stepstream":
            ok_step = median(d) <= 0.5
            ok_tput = dbos_best is not None and tput >= 10 * dbos_best
            verdicts.append(
                f"- stepstream, {note}: per-step p50 {median(d):.3f} ms "
                f"{'meets' if ok_step else 'MISSES'} the ≤ 0.5 ms target; throughput "
                + (
                    f"{tput / dbos_best:.1f}× DBOS's best "
                    f"{'meets' if ok_tput else 'MISSES'} the ≥ 10× target."
                    if dbos_best
                    else "(no DBOS figure in this run)."
                )
            )
    n_seq, rounds = _shape(results)
    lines = [
        "## Workflows",
        "",
        f"Generated by `{args.command}` on {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        _machine_line(args),
        "",
        *rows,
        "",
        *verdicts,
        "",
        "What the numbers are:",
        "",
        f"- **per-step p50/p99**: {n_seq} runs of a 20-step workflow, one run at a time, each "
        "step a trivial function returning `time.time_ns()` (stored as the step's result, "
        "and carried by its `stepFinish` event on stepstream). Each gap between two "
        "consecutive steps' stamps is one step's whole cost: persist the step result "
        "(stepstream: with its `stepStart`+`stepFinish` events, in one atomic write), return "
        "to the workflow, enter the next step. 19 gaps per run.",
        "- **run time / 20**: trigger call → the run's end seen by the driver, divided by 20 "
        "(stepstream: `runFinish` received on the run's channel by an in-process subscriber; "
        "DBOS: `await handle.get_result()`), so it also carries trigger, claim, start and "
        "finish writes.",
        f"- **throughput**: {args.runs} runs of a 10-step workflow started at once "
        "(stepstream: `asyncio.gather` of `client.trigger`, one in-process worker with "
        f"`concurrency={args.runs}`; DBOS: as in the row), "
        "completed steps ÷ (last stored completion time − first trigger), median of "
        f"{rounds} round(s) (range in brackets). *vs DBOS* divides by the best DBOS row "
        "of the same run (SQLite system database; the PostgreSQL comparison has its own "
        "section below).",
        "- Storage: stepstream's SQLite is a file in a temp dir, WAL, `synchronous=FULL` "
        "(the default: a commit survives power loss) unless the row says NORMAL; Redis is a "
        "private `redis-server --save ''` with `--appendonly no` (nothing on disk) or "
        "`--appendonly yes --appendfsync everysec`. DBOS uses a SQLite system database in a "
        "temp dir with DBOS's defaults (rollback journal, `synchronous=FULL`).",
        "- Each side runs in its own process, one after the other; DBOS in a separate venv "
        f"(`python3 -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install '{DBOS_PIN}'`, "
        "made by the script if missing), never installed into stepstream's environment.",
    ]
    floor = getattr(args, "floor", None)
    if floor:
        lines.append(
            f"- Disk floor, same temp dir, same run: a bare one-row SQLite WAL commit takes "
            f"{floor['FULL'][0]:.3f} ms p50 ({floor['FULL'][1]:.3f} p99) with synchronous=FULL "
            f"and {floor['NORMAL'][0]:.3f} ms ({floor['NORMAL'][1]:.3f}) with NORMAL. A "
            "sequential step is one commit (its result must be durable before the workflow "
            "moves on), so on SQLite/FULL that fsync is part of every step; the NORMAL row "
            "shows the rest."
        )
    lines.append(
        "- DBOS *queue* row: its run time / 20 includes the queue's polling "
        "(`polling_interval_sec=0.05`) and `get_result()` polling, not step cost."
    )
    if dbos_step:
        lines.append(
            f"- DBOS per-step p50 in this run: {dbos_step:.2f} ms; 5 warm-up runs precede "
            "every measurement on both sides."
        )
    lines += _profile_lines(args, results)
    return "\n".join(lines) + "\n"


def _profile_lines(args: argparse.Namespace, results: list[Row]) -> list[str]:
    if not args.profile:
        return []
    lines = ["", "py-spy (self time, stepstream processes):", ""]
    for system, _, note, out in results:
        if out.get("profile"):
            lines.append(
                f"- {system}, {note}: "
                + "; ".join(f"`{leaf}` {share:.1f}%" for leaf, share in out["profile"][:8])
            )
    return lines


def render_postgres(results: list[Row], args: argparse.Namespace, dbos_version: str | None) -> str:
    """The "Workflows on PostgreSQL" section: stepstream and DBOS on one durable server, with
    issue 10's goals (per-step p50 ≤ 1 ms and ≥ 5× lower than DBOS; throughput ≥ 10× DBOS)."""
    results = [r for r in results if r[1] == "postgres"]
    ours = [(note, out) for system, _, note, out in results if system == "stepstream"]
    dbos_rows = [out for system, _, _, out in results if system.startswith("DBOS")]
    dbos_tput = max((_tput(out) for out in dbos_rows), default=None)
    dbos_step = min((median(out["deltas_ms"]) for out in dbos_rows), default=None)
    rows = [
        "| system | storage / how runs are started | per-step p50 (ms) | per-step p99 (ms) "
        "| run time / 20, p50 (ms) | throughput (steps/s) | vs DBOS (step cost ÷, throughput ×) "
        "| other CPU % |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    verdicts = []
    for system, _, note, out in results:
        ratio = ""
        if system == "stepstream" and dbos_tput and dbos_step:
            step = median(out["deltas_ms"])
            ratio = f"{dbos_step / step:.1f}× lower, {_tput(out) / dbos_tput:.1f}×"
        rows.append(_row(system, note, out, ratio))
    # DBOS's row whose step bodies are of the same kind: its async row has async def steps,
    # its queue row plain def steps (run inline on the workflow's thread).
    dbos_by_kind = {
        "async": [
            median(out["deltas_ms"]) for s, _, n, out in results if "DBOS" in s and "; async," in n
        ],
        "sync": [
            median(out["deltas_ms"])
            for s, _, n, out in results
            if "DBOS" in s and "sync steps" in n
        ],
    }
    for note, out in ours:
        step, tput = median(out["deltas_ms"]), _tput(out)
        goal = "meets" if step <= 1.0 else "MISSES"
        verdicts.append(f"- stepstream, {note}:")
        verdicts.append(f"  - per-step p50 {step:.3f} ms: {goal} the ≤ 1 ms goal.")
        kind = "async" if "async def" in note else "sync"
        alike = dbos_by_kind[kind][0] if dbos_by_kind[kind] else None
        if alike:
            bodies = (
                "`async def` steps, its async row"
                if kind == "async"
                else ("plain `def` steps, its queue row")
            )
            verdicts.append(
                f"  - per-step p50 {alike / step:.1f}× lower than DBOS with {bodies} "
                f"({alike:.3f} ms): {'meets' if alike >= 5 * step else 'MISSES'} the ≥ 5× goal "
                "step body for step body."
            )
        if dbos_step and dbos_tput:
            verdicts += [
                f"  - per-step p50 {dbos_step / step:.1f}× lower than DBOS's best row "
                f"({dbos_step:.3f} ms): {'meets' if dbos_step >= 5 * step else 'MISSES'} the "
                "≥ 5× goal against whichever DBOS row was faster.",
                f"  - throughput {tput:,.0f} steps/s = {tput / dbos_tput:.1f}× DBOS's best "
                f"({dbos_tput:,.0f}): {'meets' if tput >= 10 * dbos_tput else 'MISSES'} the "
                "≥ 10× goal.",
            ]
        else:
            verdicts.append("  - (no DBOS figure in this run: the ratios are not measured.)")
    pg = args.pg
    settings = ", ".join(f"`{k}={v}`" for k, v in sorted(pg.settings.items()))
    floor = args.pg_floor
    n_seq, rounds = _shape(results)
    n_db = len(dbos_rows[0]["whole_ms_per_step"]) if dbos_rows else 0
    turns = results[0][3].get("turns", 1) if results else 1
    lines = [
        "## Workflows on PostgreSQL",
        "",
        f"Generated by `{args.command}` on {time.strftime('%Y-%m-%d %H:%M %Z')}: stepstream "
        f"and DBOS Transact {dbos_version or '(not run)'} on one PostgreSQL {pg.version} "
        "server, in the same run.",
        _machine_line(args),
        "",
        *rows,
        "",
        "Goals (issue 10), stepstream on PostgreSQL:",
        "",
        *verdicts,
        "",
        "What the numbers are:",
        "",
        "- **The server**: one private PostgreSQL started by the script for this run "
        f"(`tests/postgres.py`, `durable=True`: initdb into a temp dir, 127.0.0.1, a free port, "
        f"the server's defaults otherwise): {settings}. So every commit of either system "
        "waits for its WAL flush. Two databases on it, each created empty right before its "
        "system runs: `stepstream_bench` (stepstream: `--backend "
        "postgresql://postgres@127.0.0.1:PORT/stepstream_bench`, its defaults: schema "
        "`stepstream`, a pool of 10 asyncpg connections plus one LISTEN connection) and "
        "`dbos_bench` (DBOS: `system_database_url` = `postgresql://postgres@127.0.0.1:PORT/"
        "dbos_bench`, its defaults: SQLAlchemy + psycopg 3, a pool of 20, LISTEN/NOTIFY on; "
        "dropped and created again before each run of a row).",
        f"- Commit floor, same server, same run: a bare one-row `INSERT` (asyncpg, autocommit, "
        f"one round trip) takes {floor[0]:.3f} ms p50 ({floor[1]:.3f} p99). A sequential "
        "step is at least one such commit on either system (its result must be durable "
        "before the workflow moves on).",
        f"- **per-step p50/p99**: {n_seq} (stepstream) / {n_db} (DBOS) runs of a 20-step "
        "workflow, one run at a time, each step a trivial function returning "
        "`time.time_ns()` (a plain `def`, which stepstream runs on a thread so a blocking body "
        "cannot stall the loop, or an `async def` where the row says so; DBOS's async row has "
        "`async def` steps, its queue row `def` steps), "
        "stored as the step's result; the gap between consecutive steps' "
        "stamps is one step's whole cost (19 gaps per run). 5 warm-up runs first on both "
        "sides. *run time / 20*: trigger → the run's end seen by the driver, ÷ 20.",
        f"- **throughput**: {args.runs} runs of a 10-step workflow started at once, completed "
        "steps ÷ (last stored completion time − first trigger), median of "
        f"{rounds} round(s) (range in brackets).",
        "- *vs DBOS*: DBOS's best per-step p50 ÷ stepstream's (how many times lower "
        "stepstream's step cost is), and stepstream's throughput ÷ DBOS's best.",
        "- DBOS *queue* row: its run time / 20 includes the queue's polling "
        "(`polling_interval_sec=0.05`) and `get_result()` polling, not step cost.",
        "- The same workflows, harness and process layout as the section above "
        "(`bench/wf_stepstream.py`, `bench/wf_dbos.py --system-db-url ...`, one process per "
        "row, one after the other; DBOS in its own venv). "
        f"The four rows take turns {turns} time(s) (`--repeat`), each turn of a row on an "
        "empty database, and a row's figures pool its turns (all their step gaps, all their "
        "throughput rounds): on this shared machine either system's step cost moves by 10–20 % "
        "from one minute to the next, and one turn each can tilt the ratios either way.",
    ]
    lines += _profile_lines(args, results)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    os.chdir(ROOT)
    main()
