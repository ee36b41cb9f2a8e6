"""End to end through HTTP: trigger → first event at an SSE client, and SSE versus polling.

    python bench/e2e.py            # full run (~2 min), rewrites the "End to end" section
    python bench/e2e.py --quick    # < 1 min, prints only (add --write to record it)
    python bench/e2e.py --profile /tmp/e2eprof   # + py-spy profiles of the servers

Targets (each a real subprocess, app ``bench/wf_app.py``, log level warning):
- ``dev``: ``stepstream dev wf_app:workflows --backend sqlite:///<tmp>/e2e.db`` (uvicorn, one
  in-process worker, SQLite);
- ``server+worker``: ``stepstream server wf_app:workflows`` + ``stepstream worker
  wf_app:workflows`` on a private ``redis-server --save '' --appendonly no``.

(a) per run: pick ``workflowRunId``, open ``GET /api/realtime?channel=<id>&dialect=native``,
wait for its ``connected`` frame, then take the clock and ``POST /api/workflows/one?
workflowRunId=<id>`` on an already-open keep-alive connection; latency to the arrival of the
``runStart`` frame, of the first ``stepStart`` frame, and of the 202 response.
(b) the guide's comparison on a 10-step run (steps of ~200 ms that return ``time.time_ns()``
as they end): one client follows the run over SSE, another polls ``GET /api/runs/{id}`` every
1 s; per step, the delay from the step's end to the moment each client can see it, and the
HTTP requests each needed for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wf_common import BENCH, free_port, machine, median, ms, pct, redis_server, rewrite_section
from wf_http import SSE, Connection

HOST = "127.0.0.1"
STEPSTREAM = str(Path(sys.executable).parent / "stepstream")


class Procs:
    """Subprocesses started here (stopped with SIGINT, then killed), optionally under py-spy."""

    def __init__(self, profile: Path | None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.profile = profile
        self.profiles: list[Path] = []

    def start(self, label: str, args: list[str], env: dict[str, str]) -> None:
        if self.profile is not None:
            self.profile.mkdir(parents=True, exist_ok=True)
            out = self.profile / f"{label}.txt"
            self.profiles.append(out)
            spy = str(Path(sys.executable).parent / "py-spy")
            args = [spy, "record", "--format", "raw", "-r", "250", "-o", str(out), "--", *args]
        log = open(Path(tempfile.gettempdir()) / f"wfbench-{label}.log", "wb")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen(args, cwd=BENCH, env=env, stdout=log, stderr=subprocess.STDOUT)
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


async def wait_healthy(port: int, timeout: float = 20) -> None:  # noqa: ASYNC109
    """Poll /healthz until 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = Connection(HOST, port)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            status, _ = await conn.request("GET", "/healthz")
            await conn.close()
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"stepstream on port {port} is not healthy after {timeout}s")


async def follow(port: int, run_id: str) -> SSE:
    sse = SSE(HOST, port, f"/api/realtime?channel={run_id}&dialect=native")
    await sse.open()
    return sse


# -- (a) trigger → first event -----------------------------------------------------------------


async def first_event(port: int, runs: int) -> dict[str, list[float]]:
    post = Connection(HOST, port)
    await post.connect()
    out: dict[str, list[float]] = collections.defaultdict(list)
    for i in range(runs + 10):  # 10 warm-up runs
        run_id = "wfr_" + secrets.token_urlsafe(16)
        sse = await follow(port, run_id)
        frames = sse.frames()
        _, _, first = await frames.__anext__()
        assert first.get("type") == "connected", first
        seen: dict[str, int] = {}

        async def read() -> None:
            async for perf, _, frame in frames:  # noqa: B023
                kind = frame.get("data", {}).get("type") if "event" in frame else None
                if kind and kind not in seen:  # noqa: B023
                    seen[kind] = perf  # noqa: B023
                if kind == "runFinish":
                    return

        reader = asyncio.create_task(read())
        await asyncio.sleep(0)  # the reader is waiting on the socket before the clock starts
        t0 = time.perf_counter_ns()
        status, _ = await post.request("POST", f"/api/workflows/one?workflowRunId={run_id}", b"{}")
        t_resp = time.perf_counter_ns()
        assert status == 202, status
        await asyncio.wait_for(reader, 10)
        await sse.close()
        if i < 10:
            continue
        out["runStart"].append((seen["runStart"] - t0) / 1e6)
        out["stepStart"].append((seen["stepStart"] - t0) / 1e6)
        out["runFinish"].append((seen["runFinish"] - t0) / 1e6)
        out["202"].append((t_resp - t0) / 1e6)
    await post.close()
    return out


# -- (b) SSE versus polling ------------------------------------------------------------------------


async def sse_vs_polling(port: int, runs: int, interval: float) -> dict[str, object]:
    sse_delay: list[float] = []
    poll_delay: list[float] = []
    sse_end: list[float] = []
    poll_end: list[float] = []
    sse_requests: list[int] = []
    poll_requests: list[int] = []
    sse_bytes: list[int] = []
    poll_bytes: list[int] = []
    sse_states: list[int] = []
    poll_states: list[int] = []
    for _ in range(runs):
        run_id = "wfr_" + secrets.token_urlsafe(16)
        trigger = Connection(HOST, port)
        sse = await follow(port, run_id)
        frames = sse.frames()
        await frames.__anext__()  # connected
        sse_seen: dict[str, int] = {}
        stamps: dict[str, int] = {}
        sse_distinct = 0

        async def read_sse() -> None:
            nonlocal sse_distinct
            async for _, wall, frame in frames:  # noqa: B023
                if "event" not in frame:
                    continue
                data = frame["data"]
                sse_distinct += 1
                if data["type"] == "stepFinish":
                    sse_seen[data["stepName"]] = wall  # noqa: B023
                    stamps[data["stepName"]] = data["result"]  # noqa: B023
                elif data["type"] == "runFinish":
                    sse_seen["<run>"] = wall  # noqa: B023
                    return

        poller = Connection(HOST, port)
        poll_seen: dict[str, int] = {}
        snapshots: set[tuple[tuple[str, str], ...]] = set()

        async def poll() -> None:
            start = time.monotonic()
            k = 0
            while True:
                status, log = await poller.request("GET", f"/api/runs/{run_id}")  # noqa: B023
                wall = time.time_ns()
                assert status == 200, (status, log)
                snapshots.add(tuple((s["stepName"], s["state"]) for s in log["steps"]))  # noqa: B023
                for step in log["steps"]:
                    if step["state"] == "STEP_SUCCESS":
                        poll_seen.setdefault(step["stepName"], wall)  # noqa: B023
                if log["workflowState"] != "RUN_STARTED":
                    poll_seen.setdefault("<run>", wall)  # noqa: B023
                    return
                k += 1
                await asyncio.sleep(max(0, start + k * interval - time.monotonic()))

        reader = asyncio.create_task(read_sse())
        await asyncio.sleep(0)
        status, _ = await trigger.request(
            "POST", f"/api/workflows/ten?workflowRunId={run_id}", b"{}"
        )
        assert status == 202
        await asyncio.gather(asyncio.wait_for(reader, 30), asyncio.wait_for(poll(), 30))
        await sse.close()
        last = max(stamps.values())
        for name, stamp in stamps.items():
            sse_delay.append((sse_seen[name] - stamp) / 1e6)
            poll_delay.append((poll_seen[name] - stamp) / 1e6)
        sse_end.append((sse_seen["<run>"] - last) / 1e6)
        poll_end.append((poll_seen["<run>"] - last) / 1e6)
        sse_requests.append(trigger.requests + 1)
        poll_requests.append(trigger.requests + poller.requests)
        sse_bytes.append(sse.bytes_in)
        poll_bytes.append(poller.bytes_in)
        sse_states.append(sse_distinct)
        poll_states.append(len(snapshots))
        await trigger.close()
        await poller.close()
    return {
        "sse_delay": sse_delay,
        "poll_delay": poll_delay,
        "sse_end": sse_end,
        "poll_end": poll_end,
        "sse_requests": sse_requests,
        "poll_requests": poll_requests,
        "sse_bytes": sse_bytes,
        "poll_bytes": poll_bytes,
        "sse_states": sse_states,
        "poll_states": poll_states,
    }


# -- orchestration ---------------------------------------------------------------------------------


async def measure(port: int, args: argparse.Namespace) -> dict[str, object]:
    await wait_healthy(port)
    a = await first_event(port, args.runs)
    b = await sse_vs_polling(port, args.slow_runs, args.interval)
    return {"a": a, "b": b}


def run_target(name: str, args: argparse.Namespace, tmp: str) -> dict[str, object]:
    procs = Procs(args.profile)
    env = dict(os.environ)
    common = ["--log-level", "warning"]
    try:
        port = free_port()
        if name == "dev":
            backend = f"sqlite:///{tmp}/e2e.db"
            procs.start(
                "dev",
                [
                    STEPSTREAM,
                    "dev",
                    "wf_app:workflows",
                    "--backend",
                    backend,
                    "--port",
                    str(port),
                    *common,
                ],
                env,
            )
            return asyncio.run(measure(port, args))
        with redis_server() as url:
            procs.start(
                "server",
                [
                    STEPSTREAM,
                    "server",
                    "wf_app:workflows",
                    "--backend",
                    url,
                    "--port",
                    str(port),
                    *common,
                ],
                env,
            )
            procs.start("worker", [STEPSTREAM, "worker", "wf_app:workflows", "--backend", url], env)
            result = asyncio.run(measure(port, args))
            procs.stop()
            return result
    finally:
        procs.stop()


TARGETS = {
    "dev": "`stepstream dev` (SQLite, in-process worker)",
    "server+worker": "`stepstream server` + `stepstream worker` (Redis)",
}


def render(results: dict[str, dict], args: argparse.Namespace, quick: bool) -> str:
    rows_a = [
        "| target | runStart p50 | runStart p99 | first stepStart p50 | first stepStart p99 "
        "| 202 response p50 | runFinish p50 |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    verdicts = []
    for name, res in results.items():
        a = res["a"]
        rows_a.append(
            f"| {TARGETS[name]} | {ms(median(a['runStart']))} | {ms(pct(a['runStart'], 99))} "
            f"| {ms(median(a['stepStart']))} | {ms(pct(a['stepStart'], 99))} "
            f"| {ms(median(a['202']))} | {ms(median(a['runFinish']))} |"
        )
        for what in ("runStart", "stepStart"):
            p50 = median(a[what])
            verdicts.append(
                f"- {TARGETS[name]}: trigger → {what} p50 {p50:.2f} ms "
                f"{'meets' if p50 <= 10 else 'MISSES'} the ≤ 10 ms target."
            )
    rows_b = [
        "| target | client | step end → visible p50 (ms) | p99 (ms) | max (ms) "
        "| last step end → run end visible p50 (ms) | HTTP requests per run | bytes received "
        "per run | distinct states seen |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, res in results.items():
        b = res["b"]
        for label, key in (("SSE", "sse"), (f"polling every {args.interval:g} s", "poll")):
            delay = b[f"{key}_delay"]
            states = b[f"{key}_states"]
            rows_b.append(
                f"| {TARGETS[name]} | {label} | {ms(median(delay), 1)} | {ms(pct(delay, 99), 1)} "
                f"| {ms(max(delay), 1)} | {ms(median(b[f'{key}_end']), 1)} "
                f"| {median(b[f'{key}_requests']):.0f} | {median(b[f'{key}_bytes']):,.0f} "
                f"| {median(states):.0f} {'events' if key == 'sse' else 'snapshots'} |"
            )
    cmd = "python bench/e2e.py" + (" --quick" if quick else "")
    lines = [
        "## End to end",
        "",
        f"Generated by `{cmd}` on {time.strftime('%Y-%m-%d %H:%M %Z')}. Machine: {machine()}.",
        "",
        f"### Trigger → first event at an SSE client ({args.runs} runs per target, ms)",
        "",
        *rows_a,
        "",
        *verdicts,
        "",
        "Per run the client picks the run id, opens `GET /api/realtime?channel=<id>&dialect="
        "native` (a fresh connection) and waits for `connected`; the clock starts just before "
        "`POST /api/workflows/one?workflowRunId=<id>` is written on an already-open keep-alive "
        "connection and stops when the frame's bytes are read (raw asyncio client, "
        "`bench/wf_http.py`). `one` is a single trivial step: its `stepStart` goes out in the "
        "same write as its `stepFinish` (a step shorter than 20 ms stores its start with its "
        "end), so *first stepStart* is trigger → claimed by a worker → step ran → stored → "
        "delivered. `runStart` is written by the trigger itself. 10 warm-up runs first. "
        "Servers run with `--log-level warning` (no access log).",
        "",
        f"### SSE versus polling `GET /api/runs/{{id}}` every {args.interval:g} s "
        f"(10 steps of ~200 ms, {args.slow_runs} runs per target)",
        "",
        *rows_b,
        "",
        "Both clients follow the same run at once. *step end* is the `time.time_ns()` the step "
        "returns as it ends (stored as its result; same clock, same machine); *visible* is when "
        "the client has read the `stepFinish` frame (SSE) or the first poll response showing "
        "the step `STEP_SUCCESS` (polling; the first poll goes out right after the trigger, then "
        "one per interval, drift-free). Requests include the trigger `POST`; the SSE stream is "
        "one request however long the run. *distinct states seen*: progress events received "
        "(SSE) versus distinct step-state snapshots among the poll responses.",
    ]
    if args.profile:
        from workflow import summarize_profile

        lines += ["", "py-spy (self time):", ""]
        for path in sorted(args.profile.glob("*.txt")):
            top = summarize_profile(path)[:8]
            lines.append(f"- {path.stem}: " + "; ".join(f"`{k}` {v:.1f}%" for k, v in top))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--target", action="append", choices=list(TARGETS))
    parser.add_argument("--runs", type=int)
    parser.add_argument("--slow-runs", type=int)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    args.runs = args.runs or (50 if args.quick else 200)
    args.slow_runs = args.slow_runs or (2 if args.quick else 5)
    tmp = tempfile.mkdtemp(prefix="wfbench-e2e-")
    results = {}
    try:
        for name in args.target or list(TARGETS):
            print(f"· {name} ...", file=sys.stderr)
            results[name] = run_target(name, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = render(results, args, args.quick)
    print(report)
    if (not args.quick or args.write) and not args.no_write and not args.target:
        rewrite_section("e2e", report)
        print("(rewrote the End to end section of BENCHMARKS.md)", file=sys.stderr)


if __name__ == "__main__":
    main()
