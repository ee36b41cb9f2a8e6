"""The engine: a registry's runs on a store. It starts, notifies and cancels runs, wakes
workers, and is the ``Runtime`` each executing context writes through (``workflow/runtime.py``);
``workflow/execution.py`` executes one claimed run with it.

Every state change goes to the backend together with the ``workflow.update`` event that
reports it (DESIGN §4, built in ``events.py``), in one atomic unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from stepstream import events
from stepstream.backends.base import (
    AcquireSlot,
    Budget,
    CancelRun,
    CreateRun,
    FinishRun,
    Notify,
    ReleaseRun,
    ReleaseSlot,
    RunPatch,
    SaveSteps,
    WaitEvent,
)
from stepstream.clock import Clock, system_ms
from stepstream.errors import (
    ConfigurationError,
    NonRetryableError,
    NoWaiters,
    RunConflict,
    RunNotFound,
    StepstreamError,
    ValidationError,
)
from stepstream.futures import settle
from stepstream.records import (
    Emit,
    FlowLimits,
    HistoryPolicy,
    Lease,
    RunRecord,
    RunState,
    StepRecord,
    StepState,
    dumps,
)
from stepstream.workflow import http
from stepstream.workflow.threads import StepThreads

if TYPE_CHECKING:
    from stepstream.backends.base import Backend
    from stepstream.realtime.channel import Channel, Realtime
    from stepstream.workflow.flow import FlowControl
    from stepstream.workflow.registry import Registry

RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")
RUNS_FEED = "stepstream:runs"  # the channel announcing every run state change (live run lists)
RUNS_FEED_EVENT = "runs.update"
RUNS_FEED_POLICY = HistoryPolicy(max_length=1000)
RUNS_FEED_WINDOW = 0.1  # seconds of run changes one runs.update event announces together
PAUSED = "paused-workflow"  # the entries kind of paused workflows
PARK_SECONDS = 30  # how often a stuck run (non-determinism, unknown workflow) is looked at again
STEP_THREADS = 64  # synchronous step bodies running at once, per process
log = logging.getLogger("stepstream.engine")


def run_id_from(value: str | None) -> str:
    """A caller's id gets the ``wfr_`` prefix; no id gets 128 random bits."""
    if value is None:
        return "wfr_" + secrets.token_urlsafe(16)
    if not isinstance(value, str) or not RUN_ID.fullmatch(value) or value == "wfr_":
        raise ValidationError(
            f"workflowRunId {str(value)[:60]!r} must be 1-128 characters of A-Z a-z 0-9 _ - "
            "(after the wfr_ prefix, if it has one)"
        )
    return value if value.startswith("wfr_") else "wfr_" + value


MAX_LABELS = 20
MAX_LABEL_LENGTH = 100


def checked_labels(labels: Sequence[str]) -> list[str]:
    """``labels`` as a run keeps them (duplicates dropped), or ``ValidationError`` naming the
    one that is not a non-empty string of at most 100 characters."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValidationError(f"labels must be a list of strings, got {labels!r:.60}")
    kept = list(dict.fromkeys(labels))
    if len(kept) > MAX_LABELS:
        raise ValidationError(f"a run takes at most {MAX_LABELS} labels, got {len(kept)}")
    for label in kept:
        if (
            not isinstance(label, str)
            or not 1 <= len(label) <= MAX_LABEL_LENGTH
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in label)
        ):
            raise ValidationError(
                f"label {label!r:.60} must be a string of 1 to {MAX_LABEL_LENGTH} characters, "
                "none of them control characters"
            )
    return kept


def to_json(value: Any, what: str) -> str:
    try:
        return dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply to store as JSON") from None


class HasEngine(Protocol):
    """What workers, clients and the app are built from: a ``Workflows`` holds its engine."""

    @property
    def engine(self) -> Engine: ...


def engine_of(source: Engine | HasEngine) -> Engine:
    return source if isinstance(source, Engine) else source.engine


class Engine:
    """The runs of ``registry``'s workflows on ``backend``: it starts, notifies and cancels
    them, records how an execution ends, and (with ``realtime``) reports their progress on the
    channel named by each run id. ``execution.execute`` runs a claimed one through it.

    ``max_result_bytes``: the largest step result or return value, as JSON text.
    ``retention``: seconds a finished run is kept (``None``: for ever); workers delete older
    ones with their channel history.
    """

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        realtime: Realtime | None = None,
        *,
        max_result_bytes: int = 1_048_576,
        retention: float | None = None,
        clock: Clock = system_ms,
    ) -> None:
        if max_result_bytes < 1:
            raise ConfigurationError(f"max_result_bytes must be >= 1, got {max_result_bytes}")
        if retention is not None and not retention > 0:
            raise ConfigurationError(
                f"retention must be seconds > 0 (or None to keep every run), got {retention}"
            )
        self.retention = retention
        self.registry = registry
        self.backend = backend
        self.realtime = realtime
        self.max_result_bytes = max_result_bytes
        self.clock = clock
        self._opened = False
        self._wakers: list[Callable[[], None]] = []
        # Called with a run's id when this process cancels it: its workers stop executing it.
        self.stoppers: list[Callable[[str], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._changes: list[tuple[str, RunState | None]] = []  # not announced yet
        self._http: httpx.AsyncClient | None = None
        self._threads: StepThreads | None = None
        self.park_seconds: float = PARK_SECONDS
        # Workflows paused (as this process last read them): not claimed, no step started.
        self.paused: frozenset[str] = frozenset()

    def new_run_id(self) -> str:
        return run_id_from(None)

    @property
    def policy(self) -> HistoryPolicy:
        return self.realtime.history_policy if self.realtime is not None else HistoryPolicy()

    async def open(self) -> None:
        """Open the store (the realtime's, if any). Idempotent."""
        if self.realtime is not None:
            await self.realtime.open()
        elif not self._opened:
            await self.backend.open()
        self._opened = True

    async def close(self) -> None:
        """Release the engine's resources (``aclose``) and close the store."""
        await self.aclose()
        if self.realtime is not None:
            await self.realtime.aclose()
        else:
            await self.backend.close()
        self._opened = False

    # -- local wake-ups ------------------------------------------------------------------------

    def add_waker(self, waker: Callable[[], None]) -> None:
        self._wakers.append(waker)

    def remove_waker(self, waker: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._wakers.remove(waker)

    def wake(self, at: int | None = None) -> None:
        """Tell workers a run is due: now (this process's and, through the backend, every
        other's), or at ``at`` (this process's, if within a minute)."""
        delay = 0.0 if at is None else (at - self.clock()) / 1000
        if delay <= 0:
            task = asyncio.get_running_loop().create_task(self._wake_others())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._wakers:
            return
        if delay > 60:
            return  # the workers' polling finds it
        loop = asyncio.get_running_loop()
        for waker in list(self._wakers):
            if delay <= 0:
                waker()
            else:
                loop.call_later(delay, waker)

    def announce(self, run_id: str, state: RunState | None) -> None:
        """Tell live run lists (the ``RUNS_FEED`` channel) that ``run_id`` changed to ``state``
        (``None``: deleted). Best effort, after the change and not awaited: the changes of
        ``RUNS_FEED_WINDOW`` go out as one event (one write for a burst of runs, on a channel
        every process writes to), and a list that misses one is right at its next refresh."""
        if self.realtime is None:
            return
        self._changes.append((run_id, state))
        if len(self._changes) == 1:
            task = asyncio.get_running_loop().create_task(self._announce())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _announce(self) -> None:
        try:
            await asyncio.sleep(RUNS_FEED_WINDOW)
        finally:  # canceled (the loop is closing): those changes go unannounced
            changes, self._changes = self._changes, []
        raw = events.run_states(changes, self.clock())
        try:
            await self.backend.append(RUNS_FEED, RUNS_FEED_EVENT, raw, RUNS_FEED_POLICY)
        except StepstreamError as exc:
            log.debug("announcing run changes failed: %s", exc)

    async def _wake_others(self) -> None:
        with contextlib.suppress(StepstreamError):  # best effort: workers also poll
            await self.backend.wake_workers()

    # -- the Runtime of a context (see ``workflow/runtime.py``) ------------------------------

    def reported(self, *updates: Emit) -> tuple[Emit, ...]:
        """The progress events to store with a change: none without a realtime."""
        return updates if self.realtime is not None else ()

    def channel(self, run_id: str) -> Channel:
        if self.realtime is None:
            raise RuntimeError("this Workflows has no Realtime: create it with Workflows(realtime)")
        return self.realtime.channel(run_id)

    async def save_steps(
        self,
        lease: Lease,
        steps: list[StepRecord],
        updates: list[Emit],
        release: ReleaseSlot | None = None,
    ) -> None:
        op = SaveSteps(
            lease,
            tuple(steps),
            emits=self.reported(*updates),
            policy=self.policy,
            release=release,
        )
        if await self.backend.save_steps(op):
            self.wake()  # a run waiting for the slot given back

    async def wait_event(self, lease: Lease, step: StepRecord, updates: list[Emit]) -> str | None:
        return await self.backend.wait_event(
            WaitEvent(lease, step, emits=self.reported(*updates), policy=self.policy)
        )

    async def acquire_slot(self, lease: Lease, limits: FlowLimits, step: StepRecord) -> Budget:
        return await self.backend.acquire_slot(AcquireSlot(lease, limits, step))

    async def release_slot(self, run_id: str, key: str, position: int) -> None:
        if await self.backend.release_slot(ReleaseSlot(run_id, key, position)):
            self.wake()

    # -- how an execution ends (``execution.py``, and a worker handing runs back) --------------

    async def release(
        self, lease: Lease, due: int | None, patch: RunPatch | None = None, *, hold: bool = False
    ) -> None:
        """Give the run up until ``due`` (``None``: until a notify or a child wakes it)."""
        op = ReleaseRun(lease, due, patch or {}, hold=hold, policy=self.policy)
        await self.backend.release_run(op)

    async def finish(
        self, lease: Lease, state: RunState, result: str | None, error: str | None, at: int
    ) -> None:
        """End the run in ``state``, with its ``runFinish`` event."""
        update = self.reported(events.run_finish(lease.run_id, at, state, error))
        op = FinishRun(lease, state, result, error, at=at, emits=update, policy=self.policy)
        await self.backend.finish_run(op)
        self.announce(lease.run_id, state)

    # -- starting, notifying, canceling ---------------------------------------------------------

    async def trigger(
        self,
        workflow: str,
        body: Any = None,
        *,
        run_id: str | None = None,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
        parent: str | None = None,
        parent_position: int | None = None,
        flow_control: FlowControl | None = None,
        labels: Sequence[str] = (),
    ) -> str:
        """Start a run of ``workflow``; its id. ``flow_control`` replaces the workflow's own;
        ``labels`` name the run to find it by (``RunFilter.label``)."""
        definition = self.registry.get(workflow)
        payload = to_json(body, "the request payload")
        flow = flow_control or definition.flow_control
        run_id = run_id_from(run_id)
        if delay is not None and (not isinstance(delay, int | float) or delay < 0):
            raise ValidationError(f"delay must be seconds >= 0, got {delay!r}")
        now = self.clock()
        due = now + int((delay or 0) * 1000)
        run = RunRecord(
            id=run_id,
            workflow=workflow,
            state=RunState.STARTED,
            created_at=now,
            payload=payload,
            headers=dict(headers or {}),
            due_at=due,
            timeout_at=None if definition.timeout is None else due + int(definition.timeout * 1000),
            parent=parent,
            parent_position=parent_position,
            flow=None if flow is None else flow.limits(body, workflow),
            labels=checked_labels(labels),
        )
        await self.create(run)
        return run_id

    async def create(self, run: RunRecord, *updates: Emit) -> None:
        """Store ``run`` with its ``runStart`` (and ``updates``), and wake workers when due."""
        update = self.reported(events.run_start(run.id, run.created_at), *updates)
        await self.backend.create_run(CreateRun(run, emits=update, policy=self.policy))
        self.announce(run.id, run.state)
        self.wake(run.due_at)

    async def start_child(
        self, parent: RunRecord, position: int, child: str, workflow: str, body: Any
    ) -> None:
        with contextlib.suppress(RunConflict):  # created on an earlier attempt
            await self.trigger(
                workflow, body, run_id=child, parent=parent.id, parent_position=position
            )

    async def notify(self, event_id: str, data: Any = None, run_id: str | None = None) -> int:
        if not isinstance(event_id, str) or not event_id:
            raise ValidationError("event_id must be a non-empty string")
        raw = to_json(data, "the event data")
        woken = await self.backend.notify(Notify(event_id, raw, run_id, at=self.clock()))
        if woken:
            self.wake()
        elif run_id is None:
            raise NoWaiters(event_id)
        return woken

    # -- pausing whole workflows ------------------------------------------------------------

    async def pause(self, workflow: str) -> None:
        """Stop executing ``workflow``'s runs (triggers are still accepted and stored): no
        worker claims them and a run executing now stops before its next step."""
        self.registry.get(workflow)
        await self.backend.put_entry(PAUSED, workflow, dumps({"pausedAt": self.clock()}))
        self.paused = self.paused | {workflow}

    async def resume(self, workflow: str) -> None:
        """Execute ``workflow``'s runs again (those due meanwhile at once)."""
        self.registry.get(workflow)
        await self.backend.delete_entry(PAUSED, workflow)
        self.paused = self.paused - {workflow}
        self.wake()

    async def read_paused(self) -> frozenset[str]:
        """The paused workflows, as storage says now (kept in ``paused``)."""
        self.paused = frozenset(await self.backend.list_entries(PAUSED))
        return self.paused

    def is_paused(self, workflow: str) -> bool:
        return workflow in self.paused

    async def cancel(self, run_id: str) -> None:
        """End a running run as ``RUN_CANCELED``, and the child runs it waits for (``invoke``:
        nothing would take their results), theirs too, after it."""
        now = self.clock()
        update = self.reported(events.run_finish(run_id, now, RunState.CANCELED, "canceled"))
        await self.backend.cancel_run(CancelRun(run_id, at=now, emits=update, policy=self.policy))
        # A worker of this process executing the run stops now, not at its next heartbeat:
        # meanwhile it would start steps (deliver them, for the gateway) of a canceled run.
        for stop in list(self.stoppers):
            stop(run_id)
        self.announce(run_id, RunState.CANCELED)
        run = await self.backend.get_run(run_id)
        for step in run.steps if run is not None else ():
            if step.child is not None and step.state is not StepState.SUCCESS:
                with contextlib.suppress(RunConflict, RunNotFound):  # it ended meanwhile
                    await self.cancel(step.child)

    # -- step bodies ------------------------------------------------------------------------

    async def in_thread(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Run a synchronous step body on a thread of its own pool, so a slow or blocking body
        never stalls the event loop (and with it the heartbeats that keep the run's lease)."""
        if self._threads is None:
            self._threads = StepThreads(STEP_THREADS, "stepstream-step")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def report(*callback: Any) -> None:
            # RuntimeError: the loop has closed, and nobody waits for this outcome.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(*callback)

        def body() -> None:
            # The outcome goes straight to ``done``, and the thread waits for its next job at
            # once: the loop it wakes finds the GIL free (bench/thread_hop.py, threads.py).
            try:
                value = context.run(fn, *args, **kwargs)
            except StopIteration as exc:  # an asyncio future refuses it
                failure = RuntimeError(f"the step body raised StopIteration ({exc})")
                report(settle, done, None, failure)
            except BaseException as exc:
                report(settle, done, None, exc)
            else:
                report(settle, done, value)

        def dropped() -> None:  # the engine closed before a thread took the body
            report(done.cancel)

        ticket = self._threads.submit(body, dropped)
        try:
            return await done
        except asyncio.CancelledError:
            StepThreads.cancel(ticket)  # not started yet (every thread busy): it never will
            raise

    def check_size(self, out: str, what: str) -> None:
        limit = self.max_result_bytes
        if len(out) > limit:
            raise NonRetryableError(
                f"{what} is {len(out):,} bytes of JSON, over the limit of {limit:,} "
                "(Workflows(max_result_bytes=...)): store large data elsewhere and return a "
                "reference to it"
            )

    # -- durable HTTP calls ------------------------------------------------------------------

    async def http_call(
        self, url: str, method: str, body: Any, headers: dict[str, str], seconds: float
    ) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx.AsyncClient()
        return await http.call(self._http, url, method, body, headers, seconds)

    async def aclose(self) -> None:
        if self._tasks:  # announcements and wake-ups under way: a moment to land
            await asyncio.wait(list(self._tasks), timeout=1)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._threads is not None:
            self._threads.close()
            self._threads = None
