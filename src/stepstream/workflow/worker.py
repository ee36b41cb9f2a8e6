"""Workers: claim due runs with a lease, keep the lease alive, execute, release on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING

from stepstream.clock import Clock, system_ms
from stepstream.errors import BackendError
from stepstream.workflow.context import now_ms

if TYPE_CHECKING:
    from stepstream.workflow.records import RunRecord
    from stepstream.workflow.registry import Workflows

log = logging.getLogger("stepstream.worker")


class Worker:
    """Executes the runs of ``workflows`` in this process, up to ``concurrency`` at a time.

    A run is leased for ``lease`` seconds and the lease is renewed every ``lease / 3``; if this
    process dies, another worker takes the run over once the lease expires. Due runs are found
    by polling every ``poll_interval`` seconds, and at once when this process triggers,
    notifies or releases one.

    >>> # async with workflows.worker(concurrency=50):
    >>> #     ...  # runs execute in the background
    """

    def __init__(
        self,
        workflows: Workflows,
        *,
        concurrency: int = 100,
        lease: float = 30.0,
        poll_interval: float = 0.1,
        owner: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.workflows = workflows
        self.engine = workflows.engine
        self.concurrency = concurrency
        self.lease_ms = int(lease * 1000)
        self.poll_interval = poll_interval
        self.clock: Clock = clock or system_ms
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.active: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        await self.workflows.open()
        self.engine.add_waker(self.wake)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="stepstream-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="stepstream-heartbeat"),
        ]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop claiming; give running executions ``grace`` seconds to finish or suspend, then
        cancel the rest, releasing their runs to other workers."""
        self._stopping = True
        self.engine.remove_waker(self.wake)
        self._wakeup.set()
        if self.active:
            await asyncio.wait(list(self.active.values()), timeout=grace)
        for task in [*self.active.values(), *self._tasks]:
            task.cancel()
        await asyncio.gather(*self.active.values(), *self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    async def _claim_loop(self) -> None:
        backend = self.workflows.backend
        while not self._stopping:
            if not backend.wakeups_active():
                try:
                    await backend.listen_wakeups(self.wake)
                except BackendError as exc:
                    log.warning("cannot listen for wake-ups (%s); polling only", exc)
            free = self.concurrency - len(self.active)
            claimed: list[RunRecord] = []
            self._wakeup.clear()
            if free > 0:
                try:
                    claimed = await self.workflows.backend.claim_runs(
                        self.owner, now_ms(), self.lease_ms, min(free, 100)
                    )
                except BackendError as exc:
                    log.warning("claiming runs failed (%s); retrying in 1 s", exc)
                    await asyncio.sleep(1)
                    continue
            for run in claimed:
                task = asyncio.create_task(self._execute(run))
                self.active[run.id] = task
            if claimed and len(claimed) == min(free, 100):
                continue  # there may be more due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)

    async def _execute(self, run: RunRecord) -> None:
        try:
            await self.engine.execute(run, self.owner)
        except BackendError as exc:
            log.warning(
                "run %s: storage failed (%s); its lease will expire and it resumes", run.id, exc
            )
        except Exception:
            log.exception("run %s: unexpected engine error", run.id)
        finally:
            self.active.pop(run.id, None)
            self._wakeup.set()

    async def _heartbeat_loop(self) -> None:
        period = self.lease_ms / 3000
        while not self._stopping:
            await asyncio.sleep(period)
            if not self.active:
                continue
            ids = list(self.active)
            try:
                held = set(
                    await self.workflows.backend.renew_leases(
                        self.owner, ids, now_ms() + self.lease_ms
                    )
                )
            except BackendError as exc:
                log.warning("renewing leases failed: %s", exc)
                continue
            for run_id in ids:
                task = self.active.get(run_id)
                if run_id not in held and task is not None:
                    task.cancel()  # canceled or taken over; its writes are fenced anyway
