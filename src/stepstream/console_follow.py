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

    def update(self, doing: str | None = None) -> None:
        """Print the steps that ended since, and ``doing`` (what the run waits for, from its
        log; ``None``: not read now) if it says something new."""
        now = system_ms()
        for index, step in enumerate(self.progress.steps):
            attempt = step.tries[-1].attempt if step.tries else 1
            key = (index, attempt, str(step.status))
            if not RunProgress.running(step) and key not in self.printed:
                self.printed.add(key)
                self.say(RunProgress.step_line(step, now))
        if doing and doing != self.doing and not self.progress.finished:
            self.doing = doing
            self.say(Text(doing, style="dim italic"))
        if self.progress.finished:
            self.say(self.progress.summary(now))


async def follow_run(url: str, run_id: str, token: str | None = None) -> int:
    """Draw the run's steps live until it finishes; 0 on success, 1 otherwise. Steps come from
    the run's events; what a waiting run waits for (an event, a flow control slot, a worker)
    from its log, read again every ``POLL_SECONDS`` while it runs."""
    console = Console()
    progress = RunProgress(run_id)
    doing = [""]
    endpoint = url.rstrip("/") + "/api/realtime"
    if not console.is_terminal:
        return await _follow_piped(endpoint, url, token, PipedProgress(console, progress), doing)
    with Live(
        console=console, refresh_per_second=8, get_renderable=lambda: progress.render(doing[0])
    ) as live:
        watcher = asyncio.create_task(_watch(url, token, progress, doing))
        try:
            events = subscribe_remote(
                endpoint,
                [run_id],
                history=True,
                token=token,
                on_gap=lambda channel, cursor: live.console.print(_gap_warning(cursor)),
            )
            async for message in events:
                if message.event == "workflow.update" and progress.apply(message.id, message.data):
                    doing[0] = ""  # it moved on: the next look at its log says what it waits for
                    live.refresh()
                    if progress.finished:
                        break
        except StepstreamError as exc:
            live.stop()
            Console(stderr=True).print(f"[bold red]error:[/] {exc}")
            return 1
        finally:
            watcher.cancel()
    return 0 if progress.status == "success" else 1


async def _follow_piped(
    endpoint: str, url: str, token: str | None, piped: PipedProgress, doing: list[str]
) -> int:
    progress = piped.progress
    watcher = asyncio.create_task(_watch(url, token, progress, doing, piped.update))
    try:
        events = subscribe_remote(
            endpoint,
            [progress.run_id],
            history=True,
            token=token,
            on_gap=lambda channel, cursor: piped.console.print(_gap_warning(cursor)),
        )
        async for message in events:
            if message.event == "workflow.update" and progress.apply(message.id, message.data):
                piped.update()
                if progress.finished:
                    break
    except StepstreamError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        return 1
    finally:
        watcher.cancel()
    return 0 if progress.status == "success" else 1


def _gap_warning(cursor: str) -> str:
    return (
        f"[yellow]warning:[/] events after {cursor} were trimmed from history before they "
        "could be shown; the run's log has every step"
    )


POLL_SECONDS = 1.0


async def _watch(
    url: str,
    token: str | None,
    progress: RunProgress,
    doing: list[str],
    changed: Callable[[str], None] | None = None,
) -> None:
    """Keep ``doing[0]`` saying what the run waits for, from its log, until it finishes (and
    tell ``changed``)."""
    from stepstream.client import Client

    async with Client(url=url, token=token) as client:
        if changed is not None:  # a line each: the steps of its history first, then the wait
            await asyncio.sleep(POLL_SECONDS)
        while not progress.finished:
            with contextlib.suppress(StepstreamError):  # the events still show the steps
                now = _doing(await client.logs(progress.run_id))
                doing[0] = "" if now == "running" else now
                if changed is not None and not progress.finished:
                    changed(doing[0])
            await asyncio.sleep(POLL_SECONDS)
