"""Which workers are alive: each ``Worker`` writes a small entry (``EntryStore``, kind
``worker``) every few seconds — who it is, where, what it runs, how many runs it holds — and
removes it when it stops. ``live_workers`` reads the fresh ones, so an operator (``GET
/api/workers``, ``/healthz``, the dashboard) can see that no worker is running, rather than
wonder why runs stay queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stepstream.errors import StepstreamError
from stepstream.records import dumps

if TYPE_CHECKING:
    from stepstream.clock import Clock
    from stepstream.workflow.engine import Engine

WORKERS = "worker"  # the entries kind
EVERY = 5.0  # seconds between a worker's presence writes
LIVE_MS = 30_000  # a worker heard from within this is alive
FORGET_MS = 3_600_000  # an entry this old (a worker killed without goodbye) is deleted
log = logging.getLogger("stepstream.worker")


class Presence:
    """One worker's entry: written every ``EVERY`` seconds by ``run``, removed by ``leave``.
    ``describe`` says what changes (the runs it holds)."""

    def __init__(
        self, engine: Engine, owner: str, clock: Clock, describe: Callable[[], dict[str, Any]]
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.clock = clock
        self.describe = describe
        self.started_at = clock()
        self.stopped = False
        self._failing = False

    async def beat(self) -> None:
        """Write this worker's entry now (``Worker.start`` awaits the first one: a started
        worker is visible)."""
        entry = {
            "id": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "startedAt": self.started_at,
            "lastHeartbeat": self.clock(),
            **self.describe(),
        }
        try:
            await self.engine.backend.put_entry(WORKERS, self.owner, dumps(entry))
            self._failing = False
        except StepstreamError as exc:
            if not self._failing:  # once per outage: the claim loop reports storage trouble too
                log.warning("recording this worker's presence failed: %s", exc)
            self._failing = True

    async def run(self) -> None:
        """Beat every ``EVERY`` seconds until ``leave``."""
        while not self.stopped:
            await asyncio.sleep(EVERY)
            if not self.stopped:
                await self.beat()

    async def leave(self) -> None:
        """Stop writing (even if a cancel of ``run`` got lost in a driver) and remove the
        entry."""
        self.stopped = True
        with contextlib.suppress(StepstreamError):
            await self.engine.backend.delete_entry(WORKERS, self.owner)


async def live_workers(engine: Engine) -> list[dict[str, Any]]:
    """The workers heard from within ``LIVE_MS`` (by their last heartbeat), oldest first;
    entries of workers silent for over ``FORGET_MS`` are deleted on the way."""
    now = engine.clock()
    live = []
    for owner, text in (await engine.backend.list_entries(WORKERS)).items():
        try:
            entry = json.loads(text)
            heard = int(entry["lastHeartbeat"])
        except (ValueError, KeyError, TypeError):
            heard = 0
        if now - heard > FORGET_MS:
            await engine.backend.delete_entry(WORKERS, owner)
        elif now - heard <= LIVE_MS:
            live.append(entry)
    return sorted(live, key=lambda entry: (entry.get("startedAt", 0), entry["id"]))
