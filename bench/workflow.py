# ruff: noqa: RUF001  (the report uses typographic dashes and multiplication signs)
"""Workflow engine overhead: stepstream (SQLite, Redis) side by side with DBOS Transact
(SQLite system database), in the same run.

    python bench/workflow.py            # full run (~2-3 min), rewrites the "Workflows" section
    python bench/workflow.py --quick    # < 1 min, prints only (add --write to record it)
    python bench/workflow.py --profile /tmp/wfprof   # + py-spy profiles of the stepstream side

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
``python3 -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install dbos`` (``--dbos-python``
to use another; dbos is never a stepstream dependency).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wf_common import BENCH, ROOT, machine, median, ms, pct, redis_server, rewrite_section

DBOS_VENV = Path("/tmp/dbos-venv")


def ensure_dbos(python: str | None) -> str:
    if python:
        return python
    exe = DBOS_VENV / "bin" / "python"
    probe = [str(exe), "-c", "import dbos"]
    if exe.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(exe)
    print(f"creating {DBOS_VENV} with dbos (once) ...", file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(DBOS_VENV)], check=True)
    subprocess.run([str(exe), "-m", "pip", "install", "-q", "dbos"], check=True)
    return str(exe)


def run_json(cmd: list[str], label: str, profile: Path | None = None) -> dict:
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        raw = profile / f"{label}.txt"
        cmd = [spy, "record", "--format", "raw", "-r", "250", "-o", str(raw), "--", *cmd]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"{label} failed ({proc.returncode}): {shlex.join(cmd)}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    out = json.loads(lines[-1])
    out["elapsed_s"] = time.monotonic() - t0
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="< 1 min; prints only")
    parser.add_argument(
        "--write", action="store_true", help="rewrite BENCHMARKS.md even with --quick"
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-dbos", action="store_true")
    parser.add_argument("--dbos-python", help="a Python with dbos installed")
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles of stepstream here")
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs (throughput)")
    parser.add_argument("--redis-pool", type=int, help="append ?max_connections=N to Redis URLs")
    args = parser.parse_args()
    quick = args.quick
    seq_ss, seq_db, rounds = (20, 10, 1) if quick else (100, 50, 3)
    dbos_python = None if args.no_dbos else ensure_dbos(args.dbos_python)

    results: list[tuple[str, str, dict]] = []
    ss = [sys.executable, str(BENCH / "wf_stepstream.py"), "--seq-runs", str(seq_ss)]
    ss += ["--runs", str(args.runs), "--rounds", str(rounds), "--concurrency", str(args.runs)]

    def stepstream(label: str, backend_note: str, url: str) -> None:
        print(f"· stepstream {backend_note} ...", file=sys.stderr)
        out = run_json([*ss, "--backend", url], f"stepstream-{label}", args.profile)
        results.append(("stepstream", backend_note, out))

    tmp = tempfile.mkdtemp(prefix="wfbench-")
    try:
        args.floor = commit_floor(tmp, 300 if quick else 1000)
        stepstream("sqlite", "SQLite file, synchronous=FULL (default)", f"sqlite:///{tmp}/a.db")
        if not quick:
            stepstream(
                "sqlite-normal",
                "SQLite file, synchronous=NORMAL",
                f"sqlite:///{tmp}/b.db?synchronous=normal",
            )
        # The backend's own pool size unless --redis-pool overrides it (a redis-py URL option).
        pool = f"?max_connections={args.redis_pool}" if args.redis_pool else ""
        with redis_server() as url:
            stepstream("redis", "Redis, no persistence", url + pool)
        with redis_server("--appendonly", "yes", "--appendfsync", "everysec") as url:
            stepstream("redis-aof", "Redis, AOF appendfsync everysec", url + pool)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dbos_version = None
    if dbos_python:
        db = [dbos_python, str(BENCH / "wf_dbos.py"), "--seq-runs", str(seq_db)]
        db += ["--runs", str(args.runs), "--rounds", str(rounds)]
        modes = ["async"] if quick else ["async", "queue"]
        for mode in modes:
            print(f"· DBOS ({mode}) ...", file=sys.stderr)
            out = run_json([*db, "--mode", mode], f"dbos-{mode}")
            dbos_version = out.get("version")
            note = {
                "async": "SQLite system DB; async, start_workflow_async + gather",
                "queue": "SQLite system DB; sync steps, Queue.enqueue (thread pool)",
            }[mode]
            results.append((f"DBOS Transact {dbos_version}", note, out))

    report = render(results, args, quick, dbos_version)
    print(report)
    if (not quick or args.write) and not args.no_write:
        rewrite_section("workflow", report)
        print("(rewrote the Workflows section of BENCHMARKS.md)", file=sys.stderr)


def render(
    results: list[tuple[str, str, dict]],
    args: argparse.Namespace,
    quick: bool,
    dbos_version: str | None,
) -> str:
    dbos_best = max(
        (
            median([r["steps_per_s"] for r in out["rounds"]])
            for system, _, out in results
            if system.startswith("DBOS")
        ),
        default=None,
    )
    dbos_step = min(
        (median(out["deltas_ms"]) for system, _, out in results if system.startswith("DBOS")),
        default=None,
    )
    rows = [
        "| system | storage / how runs are started | per-step p50 (ms) | per-step p99 (ms) "
        "| run time / 20, p50 (ms) | throughput (steps/s) | vs DBOS |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    verdicts = []
    for system, note, out in results:
        d = out["deltas_ms"]
        tput = median([r["steps_per_s"] for r in out["rounds"]])
        lo = min(r["steps_per_s"] for r in out["rounds"])
        hi = max(r["steps_per_s"] for r in out["rounds"])
        spread = f" ({lo:,.0f}–{hi:,.0f})" if len(out["rounds"]) > 1 else ""
        ratio = f"{tput / dbos_best:.1f}×" if dbos_best and system == "stepstream" else ""
        rows.append(
            f"| {system} | {note} | {ms(median(d), 3)} | {ms(pct(d, 99), 3)} "
            f"| {ms(median(out['whole_ms_per_step']), 3)} | {tput:,.0f}{spread} | {ratio} |"
        )
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
    cmd = "python bench/workflow.py" + (" --quick" if quick else "")
    n_seq = len(results[0][2]["whole_ms_per_step"]) if results else 0
    rounds = len(results[0][2]["rounds"]) if results else 0
    lines = [
        "## Workflows",
        "",
        f"Generated by `{cmd}` on {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        f"Machine: {machine()}. stepstream runs under uvloop (what `stepstream worker` uses); "
        "DBOS under the default asyncio loop / its thread pool.",
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
        "of the same run.",
        "- Storage: stepstream's SQLite is a file in a temp dir, WAL, `synchronous=FULL` "
        "(the default: a commit survives power loss) unless the row says NORMAL; Redis is a "
        "private `redis-server --save ''` with `--appendonly no` (nothing on disk) or "
        "`--appendonly yes --appendfsync everysec`. DBOS uses a SQLite system database in a "
        "temp dir with DBOS's defaults (rollback journal, `synchronous=FULL`).",
        "- Each side runs in its own process, one after the other; DBOS in a separate venv "
        "(`python3 -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install dbos`, made by "
        "the script if missing), never installed into stepstream's environment.",
    ]
    floor = args.floor
    lines.append(
        f"- Disk floor, same temp dir, same run: a bare one-row SQLite WAL commit takes "
        f"{floor['FULL'][0]:.3f} ms p50 ({floor['FULL'][1]:.3f} p99) with synchronous=FULL and "
        f"{floor['NORMAL'][0]:.3f} ms ({floor['NORMAL'][1]:.3f}) with NORMAL. A sequential step "
        "is one commit (its result must be durable before the workflow moves on), so on "
        "SQLite/FULL that fsync is part of every step; the NORMAL row shows the rest."
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
    if args.profile:
        lines += ["", "py-spy (self time, stepstream processes):", ""]
        for system, note, out in results:
            if out.get("profile"):
                lines.append(
                    f"- {system}, {note}: "
                    + "; ".join(f"`{leaf}` {share:.1f}%" for leaf, share in out["profile"][:8])
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    os.chdir(ROOT)
    main()
