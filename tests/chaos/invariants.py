"""The guarantees of DESIGN §10, checked after a chaos scenario from the outside.

Every scenario ends with ``await check_runs(...)``: each run's log (through the public
``Client``, in-process or over HTTP), its channel history (``Realtime.channel(id).history``) and
the ledger the step bodies of ``chaos_app`` wrote (every execution, with wall-clock times) are
compared:

- **runs lost**: triggered, not finished at the end, and not visibly waiting (sleep, wait,
  child run, retry delay);
- **runs failed**: finished other than ``RUN_SUCCESS`` (none of the chaos workflows fails on its
  own, so every failure is the fault's doing);
- **completed steps run again**: a body execution that started after its step's success was
  committed (the ``stepFinish`` event's id is the storage's time of that commit: the Redis
  server's ``TIME``, the SQLite writer's clock inside the transaction, or PostgreSQL's
  ``clock_timestamp()`` inside it; all are this machine's clock, like the ledger's);
- **double commits**: two ``stepFinish`` for one step (two executions committed side by side);
- **histories ≠ logs**: one ``runStart`` first, exactly one ``runFinish`` (last, with the log's
  status) per finished run and none otherwise, one ``stepFinish`` per ``STEP_SUCCESS`` step and
  none for any other, carrying the very result the log holds;
- **in-flight steps re-run** (allowed, at-least-once, counted): executions of a step that started
  before its success was committed, beyond the first.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepstream import Client, Realtime, RunNotFound
from stepstream.records import parse_cursor

FINISHED = {"RUN_SUCCESS", "RUN_FAILED", "RUN_CANCELED"}
WAITING_TYPES = {"SleepFor", "SleepUntil", "Wait", "Invoke"}
STATUS = {"RUN_SUCCESS": "success", "RUN_FAILED": "failed", "RUN_CANCELED": "canceled"}
SHOWN = 12  # violations listed per kind in a failure message


@dataclass
class Execution:
    """One execution of a step body, from its ledger lines."""

    id: str
    run_id: str
    step: str
    pid: int
    start_ns: int
    end_ns: int | None = None


def read_ledger(directory: Path) -> dict[tuple[str, str], list[Execution]]:
    """Every execution recorded under ``directory``, by (run id, step), oldest first."""
    executions: dict[str, Execution] = {}
    ends: dict[str, int] = {}
    for path in directory.glob("*.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 6:
                continue  # cannot happen with one os.write per line, but never trust a crash
            kind, execution, run_id, step, pid, ns = parts
            if kind == "start":
                executions[execution] = Execution(execution, run_id, step, int(pid), int(ns))
            elif kind == "end":
                ends[execution] = int(ns)
    by_step: dict[tuple[str, str], list[Execution]] = {}
    for execution in executions.values():
        execution.end_ns = ends.get(execution.id)
        by_step.setdefault((execution.run_id, execution.step), []).append(execution)
    for runs in by_step.values():
        runs.sort(key=lambda e: e.start_ns)
    return by_step


@dataclass
class Findings:
    """What ``check_runs`` found: violations by kind (each a sentence naming run, step and
    evidence) and figures."""

    runs: int = 0
    states: Counter[str] = field(default_factory=Counter)
    executions: int = 0
    inflight_reruns: int = 0
    lost: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    completed_reruns: list[str] = field(default_factory=list)
    double_commits: list[str] = field(default_factory=list)
    history_mismatches: list[str] = field(default_factory=list)
    reruns: list[str] = field(default_factory=list)  # the in-flight re-runs, spelled out

    def violations(self, *, reruns_allowed: bool = True) -> dict[str, list[str]]:
        found = {
            "runs lost": self.lost,
            "runs failed": self.failed,
            "completed steps run again": self.completed_reruns,
            "double commits (two stepFinish for one step)": self.double_commits,
            "histories != logs": self.history_mismatches,
        }
        if not reruns_allowed:
            found["steps executed twice though no worker died or stalled"] = self.reruns
        return found

    def figures(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "states": dict(self.states),
            "step executions": self.executions,
            "runs lost": len(self.lost),
            "runs failed": len(self.failed),
            "completed steps run again": len(self.completed_reruns),
            "double commits": len(self.double_commits),
            "histories != logs": len(self.history_mismatches),
            "in-flight steps re-run": self.inflight_reruns,
        }

    def assert_ok(self, scenario: str, *, reruns_allowed: bool = True) -> None:
        """Fail with every kind of violation found, the first few of each spelled out. Without
        ``reruns_allowed``, a step executed twice is one too: in a scenario where no worker
        dies or stalls past its lease, nothing justifies it."""
        lines = []
        for kind, found in self.violations(reruns_allowed=reruns_allowed).items():
            if found:
                lines.append(f"{kind}: {len(found)}")
                lines += [f"  - {text}" for text in found[:SHOWN]]
                if len(found) > SHOWN:
                    lines.append(f"  ... and {len(found) - SHOWN} more")
        if lines:
            raise AssertionError(f"{scenario}: DESIGN §10 violated\n" + "\n".join(lines))


async def check_runs(
    client: Client,
    realtime: Realtime,
    run_ids: Iterable[str],
    ledger: Path,
    *,
    parallel: int = 16,
) -> Findings:
    """Check every run of ``run_ids`` (each one triggered and acknowledged) against its channel
    history and the ledger. Call it once the scenario is over and its processes are gone."""
    executions = read_ledger(ledger)
    findings = Findings()
    gate = asyncio.Semaphore(parallel)

    async def one(run_id: str) -> None:
        async with gate:
            try:
                log = await client.logs(run_id)
            except RunNotFound:
                findings.lost.append(f"run {run_id} was acknowledged but is not stored")
                return
            messages = await realtime.channel(run_id).history(limit=None)
        events = [(m.id, m.data) for m in messages if m.event == "workflow.update"]
        _check_run(findings, log, events, executions)

    ids = set(run_ids)
    findings.runs = len(ids)
    await asyncio.gather(*(one(run_id) for run_id in sorted(ids)))
    findings.executions = sum(len(e) for (run_id, _), e in executions.items() if run_id in ids)
    return findings


def _check_run(
    findings: Findings,
    log: dict[str, Any],
    events: list[tuple[str, dict[str, Any]]],
    executions: dict[tuple[str, str], list[Execution]],
) -> None:
    run_id, state = log["workflowRunId"], log["workflowState"]
    steps = log["steps"]
    findings.states[state] += 1
    if state not in FINISHED:
        waiting = [
            s["stepName"]
            for s in steps
            if s["state"] == "STEP_RETRY"
            or (s["stepType"] in WAITING_TYPES and s["state"] == "STEP_PROGRESS")
        ]
        if not waiting:
            findings.lost.append(f"run {run_id} still {state} at the end: {_steps(steps)}")
    elif state != "RUN_SUCCESS":
        findings.failed.append(f"run {run_id} {state}: {log['error']!r}; {_steps(steps)}")

    mismatches = _history_mismatches(log, [data for _, data in events])
    if mismatches:
        findings.history_mismatches.append(f"run {run_id}: " + "; ".join(mismatches))

    finishes: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for event_id, data in events:
        if data.get("type") == "stepFinish":
            finishes.setdefault(data.get("stepName", "?"), []).append((event_id, data))
    for name, found in finishes.items():
        if len(found) > 1:
            commits = ", ".join(
                f"{event_id} (execution {_exec(data.get('result'))})" for event_id, data in found
            )
            findings.double_commits.append(
                f"run {run_id} step {name!r}: {len(found)} stepFinish: {commits}; ledger: "
                + _ledger(executions.get((run_id, name), []))
            )

    for step in steps:
        name = step["stepName"]
        runs = executions.get((run_id, name), [])
        if step["state"] != "STEP_SUCCESS" or not finishes.get(name):
            _count_reruns(findings, run_id, name, runs)
            continue
        event_id, data = finishes[name][0]
        committed_ms = parse_cursor(event_id)[0]
        after = [e for e in runs if e.start_ns >= (committed_ms + 1) * 1_000_000]
        _count_reruns(findings, run_id, name, [e for e in runs if e not in after])
        for rerun in after:
            findings.completed_reruns.append(
                f"run {run_id} step {name!r}: success committed at {committed_ms} (stepFinish "
                f"{event_id}, execution {_exec(data.get('result'))}); execution {rerun.id} "
                f"(pid {rerun.pid}) started {(rerun.start_ns / 1e6 - committed_ms):.0f} ms "
                f"later; ledger: {_ledger(runs)}"
            )


def _count_reruns(findings: Findings, run_id: str, step: str, runs: list[Execution]) -> None:
    if len(runs) > 1:
        findings.inflight_reruns += len(runs) - 1
        findings.reruns.append(
            f"run {run_id} step {step!r}: {len(runs)} executions: {_ledger(runs)}"
        )


def _history_mismatches(log: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """How the run's ``workflow.update`` history differs from its log (DESIGN §4)."""
    problems = []
    kinds = [e.get("type") for e in events]
    if kinds.count("runStart") != 1 or not kinds or kinds[0] != "runStart":
        problems.append(f"{kinds.count('runStart')} runStart (want one, first)")
    state = log["workflowState"]
    finishes = kinds.count("runFinish")
    if state in FINISHED:
        if finishes != 1 or kinds[-1] != "runFinish":
            problems.append(f"{state} but {finishes} runFinish (want one, last)")
        elif events[-1].get("status") != STATUS[state]:
            problems.append(f"{state} but runFinish says {events[-1].get('status')!r}")
    elif finishes:
        problems.append(f"{state} but {finishes} runFinish")
    logged = {step["stepName"]: step for step in log["steps"]}
    finished = Counter(e.get("stepName") for e in events if e.get("type") == "stepFinish")
    for name, step in logged.items():
        want = 1 if step["state"] == "STEP_SUCCESS" else 0
        if finished[name] != want:
            problems.append(f"step {name!r} {step['state']} with {finished[name]} stepFinish")
        elif want:
            result = next(
                e.get("result")
                for e in events
                if e.get("type") == "stepFinish" and e.get("stepName") == name
            )
            if result != step["out"]:
                problems.append(
                    f"step {name!r}: stepFinish result {result!r} but the log has {step['out']!r}"
                )
    for name in finished.keys() - logged.keys():
        problems.append(f"stepFinish for {name!r}, which the log does not have")
    started: set[str] = set()
    for event in events:
        if event.get("type") == "stepStart":
            started.add(event.get("stepName", "?"))
        elif event.get("type") == "stepFinish" and event.get("stepName") not in started:
            problems.append(f"stepFinish for {event.get('stepName')!r} without a stepStart")
    return problems


def _exec(result: Any) -> str:
    return str(result.get("exec")) if isinstance(result, dict) else repr(result)


def _steps(steps: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['stepName']}={s['state']}/{s['attempts']}" for s in steps) or "no steps"


def _ledger(runs: list[Execution]) -> str:
    if not runs:
        return "no execution"
    base = runs[0].start_ns
    return ", ".join(
        f"{e.id}@pid{e.pid} +{(e.start_ns - base) / 1e6:.0f}ms"
        + ("" if e.end_ns is None else f"..+{(e.end_ns - base) / 1e6:.0f}ms")
        for e in runs
    )


def resume_delays(
    executions: dict[tuple[str, str], list[Execution]], pid: int, killed_ns: int
) -> list[float]:
    """Seconds until each run a killed worker (``pid``) was in the middle of shows activity
    again (an execution of one of its steps started by another process).

    A run counts as held by the dead worker when its newest ledger line before the kill was
    written by that worker and the run's body work was not complete (it had a later step to
    start). Its delay is the first execution started after the kill, anywhere."""
    by_run: dict[str, list[Execution]] = {}
    for (run_id, _), runs in executions.items():
        by_run.setdefault(run_id, []).extend(runs)
    delays = []
    for runs in by_run.values():
        before = [e for e in runs if e.start_ns < killed_ns]
        if not before:
            continue
        last = max(before, key=lambda e: max(e.start_ns, e.end_ns or 0))
        if last.pid != pid:
            continue
        later = [e.start_ns for e in runs if e.start_ns >= killed_ns and e.pid != pid]
        if later:
            delays.append((min(later) - killed_ns) / 1e9)
    return delays


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {p50:.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s (n={len(ordered)})"


async def wait_finished(client: Client, run_ids: Iterable[str], within: float) -> set[str]:
    """Wait until none of ``run_ids`` is ``RUN_STARTED`` (reading the state index, a page at a
    time) or ``within`` seconds pass; returns those still started (``check_runs`` says why)."""
    ids = set(run_ids)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        started: set[str] = set()
        cursor = None
        while True:
            page = await client.runs(state="RUN_STARTED", cursor=cursor, count=500)
            started.update(run["workflowRunId"] for run in page["runs"])
            cursor = page["cursor"]
            if cursor is None:
                break
        started &= ids
        if not started or asyncio.get_running_loop().time() > deadline:
            return started
        await asyncio.sleep(0.5)
