"""Terminal rendering for the CLI (rich): a run's step progress, logs and run tables (following a
run live is ``console_follow``)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from stepstream.clock import system_ms
from stepstream.records import FAILURE_POSITIONS, FLOW_CONTROL, parse_cursor

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


OPEN = frozenset({"running", "waiting", "retrying"})
# Steps that wait rather than run while open: an event, a sleep, a child run.
WAITING = frozenset({"Wait", "SleepFor", "SleepUntil", "Invoke"})
KINDS = frozenset({"runStart", "stepStart", "stepFinish", "stepFail", "runFinish"})
REOPENED = frozenset({"failed", "canceled"})  # a resumed run's steps that run again


@dataclass
class Attempt:
    attempt: int
    status: str  # running | retrying | completed | failed | canceled
    started_at: int | None
    finished_at: int | None = None
    error: str | None = None


@dataclass
class StepProgress:
    step_name: str
    step_type: str | None
    status: str  # running | waiting | retrying | completed | failed | canceled
    timestamp: int | None  # when its latest attempt started
    finished_at: int | None = None
    tries: list[Attempt] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    failure_function: bool = False  # a step of the workflow's failure function

    @property
    def open(self) -> bool:
        return self.status in OPEN


@dataclass
class RunProgress:
    """A run's state folded from its ``workflow.update`` events: the Python twin of the
    dashboard's reducer (``server/static/run-state.js``, whose docstring states the rules);
    ``tests/test_run_state.py`` feeds both the same events and compares the results.

    >>> progress = RunProgress("wfr_1")
    >>> progress.apply("1-0", {"type": "runStart", "timestamp": 1})
    True
    >>> progress.status
    'running'
    """

    run_id: str
    last_id: str | None = None
    status: str | None = None  # None until the first event, then running | success | ...
    started_at: int | None = None
    finished_at: int | None = None
    error: str | None = None
    steps: list[StepProgress] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status not in (None, "running")

    def apply(self, message_id: str, update: Any) -> bool:
        """Apply one event (its id and payload); ``False``, and no change, for an id that is not
        above the last one applied (a duplicate, or older than one already seen)."""
        try:
            key = parse_cursor(message_id)
        except ValueError:
            return False
        if self.last_id is not None and key <= parse_cursor(self.last_id):
            return False
        self.last_id = message_id
        kind = update.get("type") if isinstance(update, dict) else None
        if kind not in KINDS:
            return True
        at = update.get("timestamp")
        if self.status is None:
            self.status, self.started_at = "running", at
        if kind == "runStart" and update.get("resumed") and self.status != "running":
            self._reopen()
        elif kind == "stepStart":
            self._start(update, at)
        elif kind == "stepFinish":
            self._end(update, at, "completed")
        elif kind == "stepFail":
            self._end(update, at, "retrying" if update.get("willRetry") else "failed")
        elif kind == "runFinish":
            self.status, self.finished_at = update.get("status"), at
            self.error = update.get("error")
            for step in self.steps:
                if step.open:
                    _cancel(step, at)
        return True

    def end_from(self, log: Mapping[str, Any]) -> None:
        """End as the run's log says it ended, when no event said so (a server without a
        ``Realtime`` sends none)."""
        state = str(log.get("workflowState", "")).removeprefix("RUN_").lower()
        self.status = "success" if state == "success" else state or "failed"
        self.finished_at = log.get("workflowRunCompletedAt")
        self.error = log.get("error")

    def _reopen(self) -> None:
        """A resumed run (DESIGN §14): running again; its failed or canceled steps run again,
        their last attempt now one that was retried."""
        self.status, self.finished_at, self.error = "running", None, None
        for step in self.steps:
            if step.status in REOPENED:
                step.status = "retrying"
                for attempt in step.tries:
                    if attempt.status in REOPENED:
                        attempt.status = "retrying"

    def _start(self, update: dict[str, Any], at: int | None) -> None:
        step = self._step_for(update, at)
        for attempt in step.tries:
            if attempt.status == "running":  # cut short (its worker was lost): tried again
                attempt.status, attempt.finished_at = "retrying", at
        step.tries.append(Attempt(_number(update, len(step.tries) + 1), "running", at))
        step.status = "waiting" if step.step_type in WAITING else "running"
        step.timestamp, step.finished_at, step.error = at, None, None

    def _end(self, update: dict[str, Any], at: int | None, status: str) -> None:
        step = self._step_for(update, at)
        if not step.tries or step.tries[-1].status != "running":  # its start was not seen
            step.tries.append(Attempt(_number(update, len(step.tries) + 1), status, at))
        error = None if status == "completed" else update.get("error")
        last = step.tries[-1]
        last.status, last.finished_at, last.error = status, at, error
        step.status, step.finished_at, step.error = status, at, error
        if status == "completed":
            step.result = update.get("result")

    def _step_for(self, update: dict[str, Any], at: int | None) -> StepProgress:
        """The open step of the event's name, or a new one at the end of the list."""
        step = self._open_step(update["stepName"])
        if step is None:
            step = StepProgress(update["stepName"], None, "running", at)
            self.steps.append(step)
        if step.step_type is None:
            step.step_type = update.get("stepType")
        if update.get("failureFunction") is True:
            step.failure_function = True
        return step

    def _open_step(self, name: str) -> StepProgress | None:
        """The latest step of that name, if it is open."""
        for step in reversed(self.steps):
            if step.step_name == name:
                return step if step.open else None
        return None

    def render(self, doing: str = "") -> Group:
        """The run as the follower draws it, times taken up to now: one line per step (a
        spinner while it runs, the attempt number from the second on), then ``doing`` (what the
        run waits for, if anything) while it runs, or how it ended."""
        now = system_ms()
        header = self.header()
        if not self.finished and self.started_at is not None:
            header.append(f"  {_duration(now - self.started_at)}", style="dim")
        rows: list[Any] = [header]
        for step in self.steps:
            line = self.step_line(step, now)
            if not self.running(step):
                rows.append(line)
                continue
            spinner = Spinner("dots", text=line, style="cyan")
            spinner.start_time = 0.0  # the frame from the clock: it is made anew each frame
            rows.append(spinner)
        if not self.finished and doing:
            rows.append(Text(doing, style="dim italic"))
        if self.finished:
            rows.append(self.summary(now))
        return Group(*rows)

    def header(self) -> Text:
        return Text.assemble(("run ", "dim"), (self.run_id, "bold"))

    @staticmethod
    def running(step: StepProgress) -> bool:
        return step.open and step.status != "retrying"

    @staticmethod
    def step_line(step: StepProgress, now: int) -> Text:
        """A step's line: its mark (none while it runs), name, time taken, attempt number."""
        took = _duration((step.finished_at or now) - (step.timestamp or now))
        text = Text.assemble((step.step_name, "bold"), (f"  {took}", "dim"))
        if step.failure_function:
            text.append("  failure fn", style="magenta")
        number = step.tries[-1].attempt if step.tries else 1
        if number > 1:
            text.append(f"  attempt {number}", style="yellow")
        if RunProgress.running(step):
            return text
        mark, style = STEP_MARKS[step.status]
        if step.error:
            text.append(f"  {step.error}", style=style)
        if step.status == "retrying":
            text.append("  (will retry)", style="dim")
        return Text.assemble((f"{mark} ", style), text)

    def summary(self, now: int) -> Text:
        style = {"success": "green", "failed": "red"}.get(str(self.status), "yellow")
        total = _duration((self.finished_at or now) - (self.started_at or now))
        summary = Text.assemble((f"{self.status}", f"bold {style}"), (f" in {total}", "dim"))
        if self.error:
            summary.append(f": {self.error}", style=style)
        return summary


STEP_MARKS = {
    "completed": ("✓", "green"),
    "failed": ("✗", "red"),
    "retrying": ("↻", "yellow"),
    "canceled": ("⊘", "yellow"),
}


def print_log(log: dict[str, Any]) -> None:
    console = wide_console()
    state = log["workflowState"]
    console.print(
        Text.assemble(
            (log["workflowRunId"], "bold"),
            "  ",
            (log.get("displayName") or log["workflowName"], "bold cyan"),
            "  ",
            (state, STATE_STYLE.get(state, "")),
        )
    )
    console.print(f"created  {local_time(log['workflowRunCreatedAt'])}")
    if log.get("labels"):
        console.print(f"labels   {', '.join(log['labels'])}", highlight=False)
    for key, how in (("restartedFrom", "restarted from"), ("forkedFrom", "forked from")):
        if log.get(key):
            console.print(f"{how} {log[key]}", highlight=False)
    if log.get("workflowRunCompletedAt"):
        took = _duration(log["workflowRunCompletedAt"] - log["workflowRunCreatedAt"])
        console.print(f"finished {local_time(log['workflowRunCompletedAt'])}  ({took})")
    console.print(f"payload  {json.dumps(log.get('requestPayload'))}")
    if log.get("workflowRunResponse") is not None:
        console.print(f"result   {json.dumps(log['workflowRunResponse'])}")
    if log.get("error"):
        console.print(Text(f"error    {log['error']}", style="red"))
    doing = _doing(log)
    if doing:
        console.print(f"now      {doing}")
    console.print(_steps_table(log["steps"]))
    for step in log["steps"]:
        for failure in step.get("errors") or []:
            console.print(
                Text.assemble(
                    (f"\n{step['stepName']}", "bold"),
                    f" attempt {failure['attempt']} failed at {local_time(failure['at'])}: ",
                    (failure["error"], "red"),
                )
            )
            if failure["traceback"]:
                console.print(Text(failure["traceback"].rstrip(), style="dim"))


def _steps_table(steps: list[dict[str, Any]]) -> Table:
    """A run's steps: position, name, type, state, attempts, time taken, result or error."""
    table = Table(box=None, header_style="bold dim")
    for column in ("#", "step", "type", "state", "attempts", "took"):
        # Names and states whole; the free text wraps in what room is left (80 columns in a pipe).
        table.add_column(column, no_wrap=True)
    table.add_column("out / error", ratio=1, overflow="fold")
    for step in steps:
        took = ""
        if step.get("startedAt") and step.get("finishedAt"):
            took = _duration(step["finishedAt"] - step["startedAt"])
        detail = step["error"] if step.get("error") else json.dumps(step.get("out"))
        if step.get("waitingFor") == FLOW_CONTROL:
            detail = "waiting for a flow control slot"
        elif step.get("waitEventId") and step["state"] == "STEP_PROGRESS":
            detail = f"waiting for event {step['waitEventId']!r}"
        position = step.get("stepId", "")
        table.add_row(
            "failure fn"
            if isinstance(position, int) and position >= FAILURE_POSITIONS
            else str(position),
            step["stepName"],
            step["stepType"],
            Text(step["state"], style=STATE_STYLE.get(step["state"], "")),
            str(step["attempts"]),
            took,
            detail or "",
        )
    return table


def _doing(log: Mapping[str, Any]) -> str:
    """What a running run does now, from its log's ``status`` and ``waitingFor``."""
    if log.get("workflowState") != "RUN_STARTED":
        return ""
    status, waiting = log.get("status"), log.get("waitingFor")
    if status == "waiting" and waiting == FLOW_CONTROL and log.get("flowControl"):
        return f"waiting for flow control (key {log['flowControl']['key']!r})"
    if status == "waiting" and waiting == "event":
        waits = [s for s in log["steps"] if s.get("waitEventId")]
        if not waits:
            return "waiting for an event"
        deadline = waits[-1].get("waitDeadline")
        until = f" (until {local_time(deadline)})" if deadline else ""
        return f"waiting for event {waits[-1]['waitEventId']!r}{until}"
    if status == "waiting" and waiting:
        return {"sleep": "sleeping", "childRun": "waiting for a child run"}.get(
            str(waiting), str(waiting)
        )
    if status == "queued" and log.get("queuedBecause"):
        return f"queued: {log['queuedBecause']}"
    return {
        "queued": "queued: no worker has claimed it yet",
        "scheduled": "scheduled: not due yet",
        "retrying": "retrying: a step waits for its next attempt",
        "running": "running",
    }.get(str(status), "")


def print_runs(runs: list[dict[str, Any]]) -> None:
    """A table of runs, one line each. Piped, lines are as long as they need to be, so run ids
    are never folded or cut and ``awk '{print $1}'`` gets them; a narrow terminal folds ids."""
    console = wide_console()
    table = Table(box=None, header_style="bold dim")
    table.add_column("run", no_wrap=True, overflow="fold")
    for column in ("workflow", "state", "created", "took", "labels"):
        table.add_column(column, overflow="fold")
    for run in runs:
        took = ""
        if run.get("workflowRunCompletedAt"):
            took = _duration(run["workflowRunCompletedAt"] - run["workflowRunCreatedAt"])
        table.add_row(
            run["workflowRunId"],
            run.get("displayName") or run["workflowName"],
            Text(run["workflowState"], style=STATE_STYLE.get(run["workflowState"], "")),
            local_time(run["workflowRunCreatedAt"]),
            took,
            ",".join(run.get("labels") or ()),
        )
    console.print(table)


def _cancel(step: StepProgress, at: int | None) -> None:
    for attempt in step.tries:
        if attempt.status == "running":
            attempt.status, attempt.finished_at = "canceled", at
    step.status = "canceled"
    if step.finished_at is None:
        step.finished_at = at


def _number(update: dict[str, Any], default: int) -> int:
    number = update.get("attempt")
    return default if number is None else int(number)


def _duration(ms: int) -> str:
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms // 60_000}m{(ms % 60_000) // 1000:02d}s"


def wide_console() -> Console:
    """Where tables go: a terminal's width; piped, lines as long as they need to be (a table
    takes only the width it needs), so a script never gets an id or an error folded in two."""
    console = Console()
    if not console.is_terminal:
        console.width = 1000
    return console


def local_time(ms: int) -> str:
    """Epoch ms as this machine's local time, naming its zone (a schedule's next run, say,
    is shown in the viewer's zone, not the schedule's)."""
    return dt.datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
