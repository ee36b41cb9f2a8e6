"""``stepstream trigger --follow``: a run's steps drawn live as its events arrive (a redrawn
screen on a terminal, a line per step into a pipe), with what it waits for from its log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from stepstream.clock import system_ms
from stepstream.console import RunProgress, _doing, print_log
from stepstream.errors import StepstreamError
from stepstream.realtime.remote import subscribe_remote
from stepstream.records import RunState


class PipedProgress:
    """``--follow`` into a pipe or a file, where a redrawn screen cannot be: one line per step
    as it ends (each attempt that will be retried too), what the run waits for whenever that
    changes, and how it ended, each line flushed as it is printed."""

    def __init__(self, console: Console, progress: RunProgress) -> None:
        self.console = console
        self.progress = progress
        self.printed: set[tuple[int, int, str]] = set()
        self.doing = ""
        self.say(progress.header())

    def say(self, line: Text) -> None:
        self.console.print(line, soft_wrap=True)  # a line is a line: not folded at 80 columns
        self.console.file.flush()

    def waits(self, doing: str) -> None:
        """What the run waits for, from its log: printed when it says something new."""
        if doing and doing != self.doing:
            self.doing = doing
            self.say(Text(doing, style="dim italic"))

    def update(self) -> None:
        """Print the steps that ended since, and how the run ended once it has."""
        now = system_ms()
        for index, step in enumerate(self.progress.steps):
            attempt = step.tries[-1].attempt if step.tries else 1
            key = (index, attempt, str(step.status))
            if not RunProgress.running(step) and key not in self.printed:
                self.printed.add(key)
                self.say(RunProgress.step_line(step, now))
        if self.progress.finished:
            self.say(self.progress.summary(now))


async def follow_run(url: str, run_id: str, token: str | None = None) -> int:
    """Draw the run's steps live until it finishes; 0 on success, 1 otherwise. Steps come from
    the run's events; what a waiting run waits for (an event, a flow control slot, a worker)
    from its log, read again every ``POLL_SECONDS`` while it runs."""
    console = Console()
    progress = RunProgress(run_id)
    from_log: list[dict[str, Any]] = []  # the log that told the run's end, if its events did not
    try:
        if console.is_terminal:
            doing = [""]
            with Live(
                console=console,
                refresh_per_second=8,
                get_renderable=lambda: progress.render(doing[0]),
            ) as live:

                def moved() -> None:
                    doing[0] = ""  # it moved on: the next look at its log says what it waits for
                    live.refresh()

                def waits(now: str) -> None:
                    doing[0] = now

                await _follow(url, token, progress, moved, live.console.print, waits, from_log)
        else:
            piped = PipedProgress(console, progress)
            # A line each: the steps of its history first, then what it waits for.
            await _follow(
                url, token, progress, piped.update, console.print, piped.waits, from_log,
                POLL_SECONDS,
            )  # fmt: skip
    except StepstreamError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        return 1
    if from_log:
        console.print(
            "[yellow]note:[/] no events came for this run (does the app give its Workflows a "
            "Realtime?); its end and steps are read from its log:"
        )
        print_log(from_log[0])
    return 0 if progress.status == "success" else 1


async def _follow(
    url: str,
    token: str | None,
    progress: RunProgress,
    moved: Callable[[], None],
    warn: Callable[[str], None],
    waits: Callable[[str], None],
    from_log: list[dict[str, Any]],
    first_look: float = 0.0,
) -> None:
    """Apply the run's events to ``progress`` until it finishes, calling ``moved`` after each;
    meanwhile tell ``waits(what)`` what it waits for, from its log, the first time after
    ``first_look`` seconds. A run whose log says it ended while no event says so for
    ``ENDED_GRACE`` seconds (a server without a ``Realtime`` sends none) ends from its log,
    which is added to ``from_log``."""
    watcher = asyncio.create_task(_watch(url, token, progress, waits, first_look, from_log))
    reader = asyncio.create_task(_read(url, token, progress, moved, warn))
    try:
        await asyncio.wait({watcher, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (watcher, reader):
            task.cancel()
        ended, read = await asyncio.gather(watcher, reader, return_exceptions=True)
    if isinstance(read, Exception):  # the watcher is best effort: the events tell the steps
        raise read
    if ended is True:
        moved()  # the end the log told


async def _read(
    url: str,
    token: str | None,
    progress: RunProgress,
    moved: Callable[[], None],
    warn: Callable[[str], None],
) -> None:
    """Apply the run's events to ``progress`` until one says it finished."""
    events = subscribe_remote(
        url.rstrip("/") + "/api/realtime",
        [progress.run_id],
        history=True,
        token=token,
        on_gap=lambda channel, cursor: warn(
            f"[yellow]warning:[/] events after {cursor} were trimmed from history before "
            "they could be shown; the run's log has every step"
        ),
    )
    async for message in events:
        if message.event == "workflow.update" and progress.apply(message.id, message.data):
            moved()
            if progress.finished:
                break


POLL_SECONDS = 1.0
ENDED_GRACE = 3.0  # seconds a run's events may lag its log's end before the log is believed


async def _watch(
    url: str,
    token: str | None,
    progress: RunProgress,
    waits: Callable[[str], None],
    first_look: float,
    from_log: list[dict[str, Any]],
) -> bool:
    """Tell ``waits(what)`` what the run waits for (``""``: nothing), from its log, every
    ``POLL_SECONDS`` until it finishes; end ``progress`` from the log when no event has said
    so ``ENDED_GRACE`` seconds after the log did (``True``), and add the log to ``from_log``
    if no event came at all."""
    from stepstream.client import Client

    loop = asyncio.get_running_loop()
    ended_at: float | None = None
    async with Client(url=url, token=token) as client:
        await asyncio.sleep(first_look)
        while not progress.finished:
            with contextlib.suppress(StepstreamError):  # the events still show the steps
                log = await client.logs(progress.run_id)
                if log["workflowState"] == RunState.STARTED:
                    ended_at = None
                    now = _doing(log)
                    if not progress.finished:
                        waits("" if now == "running" else now)
                elif ended_at is None:
                    ended_at = loop.time()
                elif loop.time() - ended_at >= ENDED_GRACE and not progress.finished:
                    if progress.status is None:  # no event at all: its steps from the log
                        from_log.append(dict(log))
                    progress.end_from(log)
                    return True
            await asyncio.sleep(POLL_SECONDS)
    return False
