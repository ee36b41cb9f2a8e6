"""CPU per workflow step on PostgreSQL, this checkout beside a baseline revision, in one run.

    python bench/pg_cpu.py                       # baseline: HEAD~1
    python bench/pg_cpu.py --baseline 600af1c --pairs 3 --rounds 6
    python bench/pg_cpu.py --baseline 600af1c --seq-runs 40 --rounds 0 --bodies async

Wall-clock throughput on a shared 2-core machine moves with whatever else runs; the CPU a step
costs does not (much). For each side, one private durable PostgreSQL (``tests/postgres.py``,
``fsync=on``) and a fresh database; ``bench/wf_stepstream.py --seq-runs 0 --rounds N`` (N rounds
of 200 concurrent 10-step runs, after 5 warm-up runs) in its own process; the CPU time
(user + system, from ``/proc``) of that process and of every PostgreSQL process, divided by the
steps run. The baseline runs from a ``git worktree`` of the revision (its own ``src``), the two
sides alternate ``--pairs`` times, and the table shows medians (and the throughput each round
reported, which load moves). With ``--seq-runs N`` each side also runs N sequential 20-step
runs first and the table adds their per-step p50 (the gap between consecutive step bodies:
what ``bench/workflow.py`` reports as per-step overhead). ``--crowd N`` puts N runs that
another worker holds (started, leased, never due here) in each fresh database before the
workflow process starts, and never analyzes it: a new deployment's busy first minutes, before
autovacuum has statistics on ``runs`` (migration 12 is about that case). Prints the table;
``--write`` is not offered: BENCHMARKS.md quotes the figures with this command by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
WARM_UP_STEPS = 5 * 20


def postgres_cpu_s(postmaster: int) -> float:
    """CPU seconds (user + system) of the server whose postmaster is ``postmaster``: its own,
    its ended children's (reaped: ``cutime``, ``cstime``) and its live children's. Other
    PostgreSQL servers on the machine are not counted."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:  # fields[1]: ppid
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / TICKS


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_side(
    checkout: Path, url: str, args: argparse.Namespace, postmaster: int
) -> dict[str, float]:
    """CPU ms per step of the workflow process and of PostgreSQL, the median steps/s and the
    per-step p50 of the sequential runs."""
    database, python = postgres_cpu_s(postmaster), children_cpu_s()
    command = [sys.executable, str(checkout / "bench" / "wf_stepstream.py"), "--backend", url]
    command += ["--seq-runs", str(args.seq_runs), "--rounds", str(args.rounds)]
    if args.bodies != "sync":  # a baseline older than --bodies has only sync bodies
        command += ["--bodies", args.bodies]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: wf_stepstream.py failed:\n{done.stderr[-2000:]}")
    database, python = postgres_cpu_s(postmaster) - database, children_cpu_s() - python
    result = json.loads(done.stdout)
    steps = sum(r["steps"] for r in result["rounds"]) + WARM_UP_STEPS + 20 * args.seq_runs
    rates = [r["steps_per_s"] for r in result["rounds"]]
    deltas = result["deltas_ms"]
    return {
        "python_ms": python * 1000 / steps,
        "postgres_ms": database * 1000 / steps,
        "steps_per_s": statistics.median(rates) if rates else math.nan,
        "step_p50_ms": statistics.median(deltas) if deltas else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD~1", help="git revision (default HEAD~1)")
    parser.add_argument("--pairs", type=int, default=3, help="alternations of the two sides")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of 200 x 10 steps")
    parser.add_argument(
        "--seq-runs", type=int, default=0, help="sequential 20-step runs (per-step p50)"
    )
    parser.add_argument("--bodies", choices=["sync", "async"], default="sync")
    parser.add_argument("--crowd", type=int, default=0, help="runs held by another worker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stepstream-base-") as folder:
        base = Path(folder) / "checkout"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            sides = measure({"this checkout": ROOT, args.baseline: base}, args)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
    print(
        f"python bench/pg_cpu.py --baseline {args.baseline} --pairs {args.pairs} "
        f"--rounds {args.rounds} --seq-runs {args.seq_runs} --bodies {args.bodies}"
        + (f" --crowd {args.crowd}" if args.crowd else "")
        + f"   (load average {os.getloadavg()[0]:.2f} at the end)"
    )
    print(
        "| code | Python CPU ms/step | PostgreSQL CPU ms/step | steps/s (median of rounds) "
        "| per-step p50 ms (sequential) |"
    )
    print("|---|--:|--:|--:|--:|")
    for name, runs in sides.items():
        cells = [
            statistics.median(run[key] for run in runs)
            for key in ("python_ms", "postgres_ms", "step_p50_ms")
        ]
        rate = statistics.median(run["steps_per_s"] for run in runs)
        print(f"| {name} | {cells[0]:.3f} | {cells[1]:.3f} | {rate:,.0f} | {cells[2]:.3f} |")


CROWD = (
    "INSERT INTO stepstream.runs (id, workflow, state, created_at, due_at, payload, headers, "
    "phase, failure_attempts, lease_owner, lease_until, epoch) SELECT 'elsewhere' || i, "
    "'elsewhere', 'RUN_STARTED', 0, 9999999999999, 'null', '{}', 'run', 0, 'another-worker', "
    "9999999999999, 1 FROM generate_series(1, %d) AS i"
)


def crowd(checkout: Path, url: str, runs: int) -> None:
    """Migrate the new database with the side's own code, then add ``runs`` held elsewhere."""
    migrate = (
        "import asyncio, sys; sys.path.insert(0, sys.argv[1]); "
        "from stepstream.backends import backend_from_url\n"
        "async def main():\n"
        "    backend = backend_from_url(sys.argv[2]); await backend.open(); await backend.close()\n"
        "asyncio.run(main())"
    )
    subprocess.run([sys.executable, "-c", migrate, str(checkout / "src"), url], check=True)
    subprocess.run(["psql", url, "-qc", CROWD % runs], check=True)


def measure(
    checkouts: dict[str, Path], args: argparse.Namespace
) -> dict[str, list[dict[str, float]]]:
    sides: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    with postgres_server(free_port(), durable=True) as server:
        pid_file = server.directory / "data" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        for turn in range(args.pairs):
            for number, (name, checkout) in enumerate(checkouts.items()):
                database = f"cpu_{turn}_{number}"
                subprocess.run(
                    ["psql", server.url, "-qc", f"CREATE DATABASE {database}"], check=True
                )
                url = server.url.rsplit("/", 1)[0] + f"/{database}"
                if args.crowd:
                    crowd(checkout, url, args.crowd)
                sides[name].append(one_side(checkout, url, args, postmaster))
                print(name, sides[name][-1], file=sys.stderr)
    return sides


if __name__ == "__main__":
    main()
