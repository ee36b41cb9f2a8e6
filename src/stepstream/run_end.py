"""Waiting for a run's end (``Client.wait``/``result``): each transport looks in its own way
(``Transport.finished``); what it keeps trying while a storage or server restarts is here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from stepstream.errors import BackendError
from stepstream.records import RunState
from stepstream.server.wire import RunLog

POLL = 0.2  # seconds between reads of a run's log where it streams no progress to wait on
RECHECK = 30.0  # seconds a wait for a run's end listens before it reads the log again
OUTAGE_PAUSE = 5.0  # at most this long between tries while the storage or server is away


async def until_finished(
    log: Callable[[], Awaitable[RunLog]],
    look: Callable[[], Awaitable[RunLog | None]],
    reached: Callable[[], bool] = lambda: True,
) -> RunLog:
    """The run's log once it has ended: ``log`` first, then ``look`` until it has it. An
    unreachable storage or server (a restart) is waited out, the caller bounding the wait
    (``asyncio.timeout``), unless it was never ``reached``: then it is the error it is (a
    wrong URL, say)."""
    pause = 0.1
    while True:
        try:
            first = await log()
            break
        except BackendError:
            if not reached():
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, OUTAGE_PAUSE)
    if first["workflowState"] != RunState.STARTED:
        return first
    pause = 0.1
    while True:
        try:
            ended = await look()
        except BackendError:  # BackendUnavailable: the server; others: its storage
            await asyncio.sleep(pause)
            pause = min(pause * 2, OUTAGE_PAUSE)
            continue
        if ended is not None:
            return ended
        pause = 0.1


def go_on(channel: str, cursor: str) -> None:
    """A wait for a run's end whose cursor was trimmed: it reads the log again anyway."""
