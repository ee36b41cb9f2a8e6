"""Workers: claim due runs with a lease, keep the lease alive, execute, release on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from stepstream.backends.base import Claim
from stepstream.clock import Clock, system_ms
from stepstream.errors import BackendError, LeaseLost
from stepstream.records import Lease
from stepstream.workflow import recovery
from stepstream.workflow.engine import Engine, HasEngine, engine_of
from stepstream.workflow.execution import execute
from stepstream.workflow.presence import Presence
from stepstream.workflow.scheduler import Scheduler

if TYPE_CHECKING:
    from stepstream.records import RunRecord

log = logging.getLogger("stepstream.worker")

# Within this, a worker's clock is trusted as it is; beyond it, the worker reads time as the
# storage's clock plus what its own clock measured since (see ``Worker._clock``).
CLOCK_TOLERANCE_MS = 1000
CLOCK_SAMPLE_MS = 200  # a claim answered slower than this says too little about the skew
PAUSED_CHECK = 1.0  # seconds between reads of which workflows are paused


class Worker:
    """Executes the runs of ``workflows`` in this process, up to ``concurrency`` at a time.

    A worker claims only runs of workflows registered in ``workflows`` (in a rolling deploy, an
    old worker leaves a new workflow's runs to the new workers). A run is leased for ``lease``
    seconds, renewed every ``lease / 3``; if this process dies, another worker takes the run
    over once the lease expires, so ``lease`` is how long a dead worker's runs wait. Leases
    are judged by the storage's clock; every write of an execution carries the epoch of its
    claim, so an execution that lost its run (stalled past its lease, taken over) can no
    longer record anything. Due runs are found by polling every ``poll_interval`` seconds, and
    at once when any process triggers, notifies or releases one.

    Beside it runs a ``Scheduler`` (unless ``schedules=False``): it stores the schedules the
    registry declares, and starts the runs of every schedule of a workflow registered here
    and not paused, one per tick however many workers do the same.

    >>> # async with workflows.worker(concurrency=50):
    >>> #     ...  # runs execute in the background
    """

    def __init__(
        self,
        workflows: Engine | HasEngine,
        *,
        concurrency: int = 100,
        lease: float = 15.0,
        poll_interval: float = 0.1,
        owner: str | None = None,
        clock: Clock | None = None,
        schedules: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if lease < 0.3:
            raise ValueError("lease must be at least 0.3 seconds")
        self.engine = engine_of(workflows)
        self.concurrency = concurrency
        self.lease_ms = int(lease * 1000)
        self.poll_interval = poll_interval
        self.clock: Clock = clock or system_ms
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.active: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, Lease] = {}
        # When storage last said each lease was ours: the loop time its claim or renewal was
        # sent (conservative: storage granted it later than that).
        self._confirmed: dict[str, float] = {}
        # The renewals awaiting a run's row lock (``_heartbeat_loop``), by run id.
        self._answering: dict[str, asyncio.Task[None]] = {}
        self._offset = 0
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._paused_read = -PAUSED_CHECK
        self.scheduler = (
            Scheduler(self.engine, self._clock, self._schedulable) if schedules else None
        )
        self.presence = Presence(self.engine, self.owner, self._clock, self._describe)

    def wake(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        await self.engine.open()
        self.engine.add_waker(self.wake)
        self.engine.stoppers.append(self.canceled)
        await self.presence.beat()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="stepstream-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="stepstream-heartbeat"),
            asyncio.create_task(self.presence.run(), name="stepstream-presence"),
        ]
        if self.engine.retention is not None:
            self._tasks.append(asyncio.create_task(self._retention_loop(), name="stepstream-gc"))
        if self.scheduler is not None:
            await self.scheduler.declare()  # before start returns (on failure, its loop retries)
            self._tasks.append(asyncio.create_task(self.scheduler.run(), name="stepstream-cron"))

    async def stop(self, grace: float = 30.0) -> None:
        """Stop claiming; give running executions ``grace`` seconds to reach the end of the
        step bodies they are running (their leases are still renewed meanwhile): each then
        hands its run back, due at once, before its next body starts, and another worker goes
        on from there. What is still running at the deadline is cancelled, its run released
        too (the step it cut off runs again)."""
        self._stopping = True
        if self.scheduler is not None:
            self.scheduler.stop()
        self.engine.remove_waker(self.wake)
        with contextlib.suppress(ValueError):
            self.engine.stoppers.remove(self.canceled)
        self._wakeup.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._tasks:  # the claim loop ends by itself, handing back what it just claimed
            await asyncio.wait(self._tasks[:1], timeout=grace)
        if self.active:
            remaining = max(0.0, deadline - loop.time())
            await asyncio.wait(list(self.active.values()), timeout=remaining)
        active = list(self.active.values())
        for task in active:
            task.cancel()
        await asyncio.gather(*active, return_exceptions=True)
        await self.presence.leave()
        tasks = self._tasks + list(self._answering.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _describe(self) -> dict[str, Any]:
        """What this worker's presence entry says besides who and where it is."""
        return {
            "workflows": list(self.engine.registry.names),
            "concurrency": self.concurrency,
            "runs": len(self.active),
        }

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

    def _clock(self) -> int:
        """The time executions read: this worker's clock, corrected to the storage's when the
        two disagree by more than ``CLOCK_TOLERANCE_MS`` (so a skewed machine neither fires
        timers early nor stamps events in the future)."""
        return self.clock() + self._offset

    async def _claim_loop(self) -> None:
        backend = self.engine.backend
        while not self._stopping:
            if not backend.wakeups_active():
                try:
                    await backend.listen_wakeups(self.wake)
                except BackendError as exc:
                    log.warning("cannot listen for wake-ups (%s); polling only", exc)
            free = self.concurrency - len(self.active)
            claimed: list[RunRecord] = []
            sent = 0.0
            self._wakeup.clear()
            names = await self._unpaused()
            if free > 0 and names:
                try:
                    asked, sent = self.clock(), asyncio.get_running_loop().time()
                    claimed = await backend.claim_runs(
                        Claim(
                            self.owner,
                            self.lease_ms,
                            min(free, 100),
                            names,
                            exclude=tuple(self.active),
                        )
                    )
                except BackendError as exc:
                    log.warning("claiming runs failed (%s); retrying in 1 s", exc)
                    await asyncio.sleep(1)
                    continue
                if claimed:
                    self._measure_clock(claimed[0], asked, self.clock())
            if self._stopping:  # stopped while claiming: hand them straight back
                await self._hand_back(claimed)
                break
            for run in claimed:
                self._start(run, sent)
            if claimed and len(claimed) == min(free, 100):
                continue  # there may be more due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)

    async def _unpaused(self) -> tuple[str, ...]:
        """The workflows to claim runs of: those registered here and not paused (read again
        every ``PAUSED_CHECK`` seconds; a pause in this process counts at once)."""
        now = asyncio.get_running_loop().time()
        if now - self._paused_read >= PAUSED_CHECK:
            try:
                await self.engine.read_paused()
                self._paused_read = now
            except BackendError as exc:
                log.warning("reading paused workflows failed (%s); using the last answer", exc)
        paused = self.engine.paused
        return tuple(name for name in self.engine.registry.names if name not in paused)

    def _schedulable(self) -> tuple[str, ...]:
        """The workflows whose schedules this worker fires: registered here, not paused."""
        return tuple(name for name in self.engine.registry.names if name not in self.engine.paused)

    async def _hand_back(self, runs: list[RunRecord]) -> None:
        for run in runs:
            lease = Lease(run.id, self.owner, run.epoch)
            with contextlib.suppress(BackendError, LeaseLost):  # else the lease expires
                await self.engine.release(lease, run.due_at)

    def _measure_clock(self, run: RunRecord, asked: int, answered: int) -> None:
        """Compare this worker's clock with the storage's, which stamped the claim somewhere
        between ``asked`` and ``answered``. Only quick answers are precise enough to act on."""
        if run.lease_until is None or answered - asked > CLOCK_SAMPLE_MS:
            return
        offset = run.lease_until - self.lease_ms - (asked + answered) // 2
        self._offset = offset if abs(offset) > CLOCK_TOLERANCE_MS else 0

    def _start(self, run: RunRecord, claimed_at: float) -> asyncio.Task[None]:
        lease = Lease(run.id, self.owner, run.epoch)
        task = asyncio.create_task(self._execute(run, lease))
        self.active[run.id] = task
        self._leases[run.id] = lease
        self._confirmed[run.id] = claimed_at
        return task

    async def _execute(self, run: RunRecord, lease: Lease) -> None:
        try:
            await execute(
                self.engine,
                run,
                lease,
                self._clock,
                confirm=self._confirmer(lease),
                stopping=lambda: self._stopping,
            )
        except Exception:
            log.exception("run %s: unexpected engine error", run.id)
        finally:
            if self._leases.get(run.id) is lease:
                del self.active[run.id]
                del self._leases[run.id]
                self._confirmed.pop(run.id, None)
            self._wakeup.set()

    def canceled(self, run_id: str) -> None:
        """``run_id`` was canceled in this process: its execution here, if any, stops now, as
        it would when the next heartbeat found the lease gone."""
        self._confirmed.pop(run_id, None)
        task = self.active.get(run_id)
        if task is not None:
            task.cancel()

    def _confirmer(self, lease: Lease) -> Callable[[], Awaitable[None]]:
        """What an execution awaits before each step body: that it still holds its run.

        Normally the last heartbeat says so. After a stall longer than two thirds of the lease
        (an event loop blocked by another run's body, a suspended process), storage is asked
        first: another worker may have taken the run over meanwhile and committed the very
        step this execution, resuming with its old view of the run, is about to run again.
        Its writes would be refused by the fencing epoch, but the body's effects would not.
        """
        fresh = self.lease_ms * 2 / 3000

        async def confirm() -> None:
            loop = asyncio.get_running_loop()
            confirmed = self._confirmed.get(lease.run_id)
            if confirmed is not None and loop.time() - confirmed < fresh:
                return
            sent = loop.time()
            if lease.run_id not in await self.engine.backend.renew_leases([lease], self.lease_ms):
                raise LeaseLost(f"run {lease.run_id} was taken over while this worker stalled")
            if self._leases.get(lease.run_id) is lease:
                self._confirmed[lease.run_id] = sent

        return confirm

    async def _retention_loop(self) -> None:
        """Delete finished runs past the engine's ``retention``, a bounded batch at a time
        (every minute, or every half retention when shorter); every worker does, harmlessly."""
        retention = self.engine.retention
        assert retention is not None
        period = min(60.0, max(1.0, retention / 2))
        while not self._stopping:
            try:
                deleted = await recovery.sweep(self.engine, retention)
            except BackendError as exc:
                log.warning("deleting runs past their retention failed: %s", exc)
            else:
                if deleted:
                    log.info("deleted %d runs finished over %ss ago", deleted, retention)
            await asyncio.sleep(period)

    async def _heartbeat_loop(self) -> None:
        # Runs until ``stop`` cancels it, after the executions: a stopping worker still holds
        # what it executes. It never waits for one run: a run whose row another transaction
        # holds (a save, a claim in flight, an operator's open transaction) is answered apart,
        # so that however long that takes, this worker's other runs keep their leases.
        period = self.lease_ms / 3000
        loop = asyncio.get_running_loop()
        while True:
            asleep = loop.time()
            await asyncio.sleep(period)
            if not self.active:
                continue
            self._stalled(loop.time() - asleep - period)
            leases = list(self._leases.values())
            sent = asyncio.get_running_loop().time()
            try:
                held, changing = await self.engine.backend.renew_leases_now(leases, self.lease_ms)
            except BackendError as exc:
                log.warning("renewing leases failed: %s", exc)
                continue
            later = {lease.run_id for lease in changing}
            self._answered([lease for lease in leases if lease.run_id not in later], held, sent)
            for lease in changing:
                if lease.run_id not in self._answering:
                    task = asyncio.create_task(self._answer(lease), name="stepstream-renew")
                    self._answering[lease.run_id] = task

    def _stalled(self, late: float) -> None:
        """Say so when this worker's heartbeat came ``late`` seconds late, long enough for its
        leases to lapse (its runs may be taken over and their step in flight run again
        elsewhere): the usual cause is blocking code in an ``async def`` step or workflow,
        which holds up the whole event loop, and the fix is the user's to make."""
        if late < self.lease_ms / 3000:
            return
        runs = sorted(self.active)
        shown = ", ".join(runs[:5]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
        log.warning(
            "this worker stalled for over %.1f s (its leases last %.1f s) while it ran %s: runs "
            "taken over meanwhile run their step again elsewhere. Blocking code (time.sleep, "
            "requests, heavy CPU work) in an async def step or workflow stops every run of "
            "the process: make that step a plain def (it runs on a thread) or await "
            "asyncio.to_thread(...)",
            late,
            self.lease_ms / 1000,
            shown,
        )

    async def _answer(self, lease: Lease) -> None:
        """Renew the lease of a run another transaction was changing, once that change is
        done (a claim taking the run over decides it is lost)."""
        sent = asyncio.get_running_loop().time()
        try:
            held = await self.engine.backend.renew_leases([lease], self.lease_ms)
        except BackendError as exc:
            log.warning("renewing the lease of run %s failed: %s", lease.run_id, exc)
        else:
            self._answered([lease], held, sent)
        finally:
            del self._answering[lease.run_id]

    def _answered(self, leases: list[Lease], held: list[str], sent: float) -> None:
        """Storage's answer to renewing ``leases``, sent at loop time ``sent``: the executions
        of those still ``held`` go on, the others (canceled, taken over) stop."""
        kept = set(held)
        for lease in leases:
            if self._leases.get(lease.run_id) is not lease:
                continue  # that execution has ended (and maybe another begun)
            if lease.run_id in kept:
                # A heartbeat sent after this answer's request may have confirmed it since.
                self._confirmed[lease.run_id] = max(sent, self._confirmed.get(lease.run_id, sent))
            elif (task := self.active.get(lease.run_id)) is not None:
                task.cancel()  # canceled or taken over; its writes are fenced anyway
