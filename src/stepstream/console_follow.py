"""``stepstream trigger --follow``: a run's steps drawn live as its events arrive (a redrawn
screen on a terminal, a line per step into a pipe), with what it waits for from its log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.text import Text

from stepstream.clock import system_ms
from stepstream.console import RunProgress, _doing
from stepstream.errors import StepstreamError
from stepstream.realtime.remote import subscribe_remote


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

                await _follow(url, token, progress, moved, live.console.print, waits)
        else:
            piped = PipedProgress(console, progress)
            # A line each: the steps of its history first, then what it waits for.
            await _follow(
                url, token, progress, piped.update, console.print, piped.waits, POLL_SECONDS
            )
    except StepstreamError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        return 1
    return 0 if progress.status == "success" else 1


async def _follow(
    url: str,
    token: str | None,
    progress: RunProgress,
    moved: Callable[[], None],
    warn: Callable[[str], None],
    waits: Callable[[str], None],
    first_look: float = 0.0,
) -> None:
    """Apply the run's events to ``progress`` until it finishes, calling ``moved`` after each;
    meanwhile tell ``waits(what)`` what it waits for, from its log, the first time after
    ``first_look`` seconds."""
    watcher = asyncio.create_task(_watch(url, token, progress, waits, first_look))
    try:
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
    finally:
        watcher.cancel()


POLL_SECONDS = 1.0


async def _watch(
    url: str,
    token: str | None,
    progress: RunProgress,
    waits: Callable[[str], None],
    first_look: float,
) -> None:
    """Tell ``waits(what)`` what the run waits for (``""``: nothing), from its log, every
    ``POLL_SECONDS`` until it finishes."""
    from stepstream.client import Client

    async with Client(url=url, token=token) as client:
        await asyncio.sleep(first_look)
        while not progress.finished:
            with contextlib.suppress(StepstreamError):  # the events still show the steps
                now = _doing(await client.logs(progress.run_id))
                if not progress.finished:
                    waits("" if now == "running" else now)
            await asyncio.sleep(POLL_SECONDS)
