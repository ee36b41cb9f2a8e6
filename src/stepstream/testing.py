"""A test kit for your own workflows (DESIGN §16): ``WorkflowEnv`` runs a registry's workflows
with the real engine and worker on an in-memory store and a virtual clock, so a workflow that
sleeps a day, waits an hour for an event and retries with backoff finishes in milliseconds.

>>> # async with WorkflowEnv(workflows) as env:
>>> #     run_id = await env.client.trigger("order", {"sku": "A1"})
>>> #     log = await env.wait(run_id)          # the clock jumps over every sleep
>>> #     assert log["workflowState"] == "RUN_SUCCESS"
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from types import TracebackType

from stepstream.backends.memory import MemoryBackend
from stepstream.client import Client
from stepstream.clock import system_ms
from stepstream.errors import RunNotFound, StepstreamError
from stepstream.realtime import Channel, Realtime
from stepstream.records import RunRecord, StepState, StepType
from stepstream.server.wire import RunLog
from stepstream.workflow.engine import Engine
from stepstream.workflow.registry import Registry
from stepstream.workflow.worker import Worker
from stepstream.workflows import Workflows

__all__ = ["RunStuck", "VirtualClock", "WorkflowEnv"]

POLL_SECONDS = 0.001  # how often a due run is looked for while the worker has not claimed it


class RunStuck(StepstreamError):
    """``WorkflowEnv.wait`` (``stepstream.testing``): the run can never finish (nothing runs,
    nothing is due, and no timer is left that could wake it), or its replay diverged."""

    code = "run_stuck"


class VirtualClock:
    """Epoch milliseconds that move only when told: the env's engine, worker and store all
    read it.

    >>> clock = VirtualClock(1_000)
    >>> clock.move_to(61_000)
    >>> clock()
    61000
    """

    def __init__(self, start_ms: int) -> None:
        self._now = start_ms

    def __call__(self) -> int:
        return self._now

    def move_to(self, ms: int) -> None:
        """Set the time to ``ms``; time never goes back."""
        self._now = max(self._now, ms)


class WorkflowEnv:
    """Runs the workflows of ``workflows`` (a ``Workflows`` or a bare ``Registry``) for a test:
    in-memory storage, the real engine and worker, and a virtual clock. The registry's own store
    is never opened. With a ``Realtime``, runs stream their ``workflow.update`` events on the
    env's in-memory channels (``env.channel(run_id)``), stamped with virtual time.

    >>> # async with WorkflowEnv(workflows) as env:
    >>> #     run_id = await env.client.trigger("approval")
    >>> #     await env.advance(60)               # one minute later, by hand
    >>> #     await env.client.notify("approved", {"by": "ann"})
    >>> #     log = await env.wait(run_id)

    ``start``: the virtual time to begin at (epoch milliseconds or a datetime; default: now).
    ``timeout``: the real seconds ``wait`` and ``advance`` may take before giving up (a step
    blocking, a workflow looping forever).
    """

    def __init__(
        self,
        workflows: Registry,
        *,
        start: int | dt.datetime | None = None,
        concurrency: int = 100,
        timeout: float = 30.0,
    ) -> None:
        if isinstance(start, dt.datetime):
            start = int(start.timestamp() * 1000)
        self.clock = VirtualClock(system_ms() if start is None else start)
        self.backend = MemoryBackend(clock=self.clock)
        source = workflows.realtime if isinstance(workflows, Workflows) else None
        self.realtime = None if source is None else _realtime_like(source, self.backend)
        self.engine = Engine(
            workflows,
            self.backend,
            self.realtime,
            max_result_bytes=getattr(workflows, "max_result_bytes", 1_048_576),
            clock=self.clock,
        )
        self.client = Client(self.engine)
        # No scheduler: on a virtual clock a declared schedule would start runs the test never
        # asked for. Trigger a scheduled workflow's run yourself to test it.
        self.worker = Worker(
            self.engine, concurrency=concurrency, owner="env", clock=self.clock, schedules=False
        )
        self.timeout = timeout
        self._workflows = workflows
        self._saved_engine: Engine | None = None
        self._running = False

    async def __aenter__(self) -> WorkflowEnv:
        await self.worker.start()
        if isinstance(self._workflows, Workflows):
            # Code that reaches the registry itself (``workflows.client()`` in a step or a
            # route under test) must reach the env too, never the registry's own store.
            self._saved_engine = self._workflows.engine
            self._workflows.engine = self.engine
        self._running = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._running = False
        if isinstance(self._workflows, Workflows) and self._saved_engine is not None:
            self._workflows.engine, self._saved_engine = self._saved_engine, None
        try:
            await self.worker.stop(grace=0)  # nothing to hand over: the store goes away
        finally:
            await self.engine.close()

    def now(self) -> int:
        """The virtual time, in epoch milliseconds (as in logs and events)."""
        return self.clock()

    def channel(self, name: str) -> Channel:
        """The env's realtime channel ``name`` (a run's progress events are on its run id)."""
        if self.realtime is None:
            raise RuntimeError("these workflows have no Realtime: create Workflows(realtime)")
        return self.realtime.channel(name)

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, running everything that falls due on the way at
        its own time (a sleep due in 60 s fires at exactly +60 s, and not before). ``advance(0)``
        runs what is due now."""
        if seconds < 0:
            raise ValueError(f"time only moves forward: advance({seconds})")
        target = self.clock() + int(seconds * 1000)
        async with self._real_time_limit(f"advance({seconds:g})", None):
            while True:
                await self._settle()
                due = self.backend.next_due_at()
                if due is None or due > target:
                    break
                self._jump(due)
            self.clock.move_to(target)

    async def wait(self, run_id: str) -> RunLog:
        """Run until ``run_id`` finishes, moving the clock to the next due timer whenever
        nothing can progress; returns its log (as ``client.logs``). Raises ``RunStuck`` when it
        can never finish, ``TimeoutError`` after the env's ``timeout`` in real seconds."""
        async with self._real_time_limit(f"wait({run_id!r})", run_id):
            while True:
                await self._settle()
                run = await self.backend.get_run(run_id)
                if run is None:
                    raise RunNotFound(run_id)
                if run.state.finished:
                    return await self.client.logs(run_id)
                parked = self.backend.parked()
                if parked:  # its code cannot replay it: it would only be looked at again
                    raise RunStuck(_parked(parked))
                due = self.backend.next_due_at()
                if due is None:
                    raise RunStuck(_stuck(run))
                self._jump(due)

    def _jump(self, due: int) -> None:
        self.clock.move_to(due)
        self.worker.wake()

    async def _settle(self) -> None:
        """Let everything due at the current virtual time run, until nothing is executing
        and nothing is due."""
        while True:
            active = list(self.worker.active.values())
            if active:
                await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                continue
            due = self.backend.next_due_at()
            if due is None or due > self.clock():
                return
            self.worker.wake()
            await asyncio.sleep(POLL_SECONDS)

    @contextlib.asynccontextmanager
    async def _real_time_limit(self, what: str, run_id: str | None) -> AsyncIterator[None]:
        if not self._running:
            raise RuntimeError(f"{what}: use the env inside `async with WorkflowEnv(...) as env:`")
        limit = self.timeout
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError:
            run = None if run_id is None else await self.backend.get_run(run_id)
            state = "" if run is None else f"; run {run_id} is at {_where(run)}"
            raise TimeoutError(
                f"{what} took over {limit:g} s of real time (virtual time reached "
                f"{self.clock()}{state}): a step may be blocking, or the workflow may loop "
                "forever; WorkflowEnv(timeout=) allows longer"
            ) from None


def _realtime_like(source: Realtime, backend: MemoryBackend) -> Realtime:
    """A ``Realtime`` with ``source``'s events and history bounds, on ``backend``."""
    realtime = Realtime(backend=backend, history=source.history_policy)
    realtime.schema = source.schema  # the same validators, workflow.update included
    return realtime


def _where(run: RunRecord) -> str:
    open_steps = [s for s in run.steps if s.state in (StepState.PROGRESS, StepState.RETRY)]
    if not open_steps:
        return f"{run.state.value}, {len(run.steps)} step(s) recorded"
    described = []
    for step in open_steps:
        if step.type is StepType.WAIT:
            described.append(f"step {step.name!r} waiting for event {step.event_id!r}")
        elif step.type is StepType.INVOKE:
            described.append(f"step {step.name!r} waiting for child run {step.child}")
        else:
            described.append(f"step {step.name!r} ({step.type.value}, {step.state.value})")
    return ", ".join(described)


def _parked(runs: list[RunRecord]) -> str:
    described = "; ".join(
        f"run {run.id} ({run.workflow}): "
        + (run.error or "" if run.phase == "run" else "its failure function's replay diverged")
        for run in runs
    )
    return (
        f"{described}. The code cannot replay what was recorded (code outside steps is not "
        "deterministic, or the workflow is not registered): fix it, the run cannot go on"
    )


def _stuck(run: RunRecord) -> str:
    return (
        f"run {run.id} ({run.workflow}) can never finish: nothing is running, no run is due and "
        f"no timer is left; it is at {_where(run)}. Send what it waits for "
        "(env.client.notify) before env.wait, or give the wait a timeout"
    )
