"""Terminal rendering for the CLI (rich): live step progress, logs and run tables."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from stepstream.errors import StepstreamError
from stepstream.realtime.remote import subscribe_remote

STATE_STYLE = {
    "RUN_STARTED": "cyan",
    "RUN_SUCCESS": "green",
    "RUN_FAILED": "red",
    "RUN_CANCELED": "yellow",
    "STEP_SUCCESS": "green",
    "STEP_FAILED": "red",
    "STEP_RETRY": "yellow",
    "STEP_PROGRESS": "cyan",
    "STEP_CANCELED": "yellow",
}


@dataclass
class StepLine:
    name: str
    started: int
    finished: int | None = None
    status: str = "running"  # running | completed | failed | retrying
    error: str | None = None
    attempt: int = 1


@dataclass
class Progress:
    run_id: str
    steps: dict[str, StepLine] = field(default_factory=dict)
    status: str | None = None
    error: str | None = None
    started: int | None = None
    finished: int | None = None

    def apply(self, update: dict[str, Any]) -> None:
        kind, at = update.get("type"), int(update.get("timestamp", 0))
        name = update.get("stepName")
        if kind == "runStart":
            self.started = at
        elif kind == "stepStart" and name:
            self.steps[name] = StepLine(name, at, attempt=int(update.get("attempt", 1)))
        elif kind == "stepFinish" and name:
            line = self.steps.setdefault(name, StepLine(name, at))
            line.finished, line.status, line.error = at, "completed", None
        elif kind == "stepFail" and name:
            line = self.steps.setdefault(name, StepLine(name, at))
            line.finished, line.error = at, str(update.get("error"))
            line.status = "retrying" if update.get("willRetry") else "failed"
        elif kind == "runFinish":
            self.status, self.error, self.finished = update.get("status"), update.get("error"), at

    def render(self) -> Group:
        now = int(time.time() * 1000)
        rows: list[Any] = [Text.assemble(("run ", "dim"), (self.run_id, "bold"))]
        for line in self.steps.values():
            took = _duration((line.finished or now) - line.started)
            if line.status == "running":
                label = Text.assemble((line.name, "bold"), (f"  {took}", "dim"))
                rows.append(Spinner("dots", text=label, style="cyan"))
                continue
            mark, style = {
                "completed": ("✓", "green"),
                "failed": ("✗", "red"),
                "retrying": ("↻", "yellow"),
            }[line.status]
            text = Text.assemble((f"{mark} ", style), (line.name, "bold"), (f"  {took}", "dim"))
            if line.error:
                text.append(f"  {line.error}", style=style)
            rows.append(text)
        if self.status is not None:
            style = {"success": "green", "failed": "red"}.get(self.status, "yellow")
            total = _duration((self.finished or now) - (self.started or now))
            summary = Text.assemble((f"{self.status}", f"bold {style}"), (f" in {total}", "dim"))
            if self.error:
                summary.append(f": {self.error}", style=style)
            rows.append(summary)
        return Group(*rows)


async def follow_run(url: str, run_id: str, token: str | None = None) -> int:
    """Draw the run's steps live until it finishes; 0 on success, 1 otherwise."""
    console = Console()
    progress = Progress(run_id)
    endpoint = url.rstrip("/") + "/api/realtime"
    with Live(progress.render(), console=console, refresh_per_second=12) as live:
        try:
            events = subscribe_remote(
                endpoint,
                [run_id],
                history=True,
                token=token,
                on_gap=lambda channel, cursor: live.console.print(
                    f"[yellow]warning:[/] events after {cursor} were trimmed from history "
                    "before they could be shown; the run's log has every step"
                ),
            )
            async for message in events:
                if message.event == "workflow.update" and isinstance(message.data, dict):
                    progress.apply(message.data)
                    live.update(progress.render())
                    if progress.status is not None:
                        break
        except StepstreamError as exc:
            live.stop()
            Console(stderr=True).print(f"[bold red]error:[/] {exc}")
            return 1
    if not console.is_terminal:
        # Live ends a terminal's last line itself, not a pipe's: `| tail -1` must see it.
        console.line()
    return 0 if progress.status == "success" else 1


def print_log(log: dict[str, Any]) -> None:
    console = Console()
    state = log["workflowState"]
    console.print(
        Text.assemble(
            (log["workflowRunId"], "bold"),
            "  ",
            (log["workflowName"], "bold cyan"),
            "  ",
            (state, STATE_STYLE.get(state, "")),
        )
    )
    console.print(f"created  {_when(log['workflowRunCreatedAt'])}")
    if log.get("workflowRunCompletedAt"):
        took = _duration(log["workflowRunCompletedAt"] - log["workflowRunCreatedAt"])
        console.print(f"finished {_when(log['workflowRunCompletedAt'])}  ({took})")
    console.print(f"payload  {json.dumps(log.get('requestPayload'))}")
    if log.get("workflowRunResponse") is not None:
        console.print(f"result   {json.dumps(log['workflowRunResponse'])}")
    if log.get("error"):
        console.print(f"[red]error    {log['error']}[/]")
    table = Table(box=None, header_style="bold dim")
    for column in ("#", "step", "type", "state", "attempts", "took"):
        # Names and states whole; the free text wraps in what room is left (80 columns in a pipe).
        table.add_column(column, no_wrap=True)
    table.add_column("out / error", ratio=1)
    for step in log["steps"]:
        took = ""
        if step.get("startedAt") and step.get("finishedAt"):
            took = _duration(step["finishedAt"] - step["startedAt"])
        detail = step["error"] if step.get("error") else json.dumps(step.get("out"))
        table.add_row(
            str(step.get("stepId", "")),
            step["stepName"],
            step["stepType"],
            Text(step["state"], style=STATE_STYLE.get(step["state"], "")),
            str(step["attempts"]),
            took,
            (detail or "")[:80],
        )
    console.print(table)


def print_runs(runs: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold dim")
    for column in ("run", "workflow", "state", "created", "took"):
        table.add_column(column)
    for run in runs:
        took = ""
        if run.get("workflowRunCompletedAt"):
            took = _duration(run["workflowRunCompletedAt"] - run["workflowRunCreatedAt"])
        table.add_row(
            run["workflowRunId"],
            run["workflowName"],
            Text(run["workflowState"], style=STATE_STYLE.get(run["workflowState"], "")),
            _when(run["workflowRunCreatedAt"]),
            took,
        )
    Console().print(table)


def _duration(ms: int) -> str:
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms // 60_000}m{(ms % 60_000) // 1000:02d}s"


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
