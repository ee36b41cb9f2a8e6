"""What a ``WorkflowContext`` needs from the engine executing it, and the control-flow signals
its step methods raise.

The dependency is one way: the engine imports the context and implements ``Runtime``; the
context knows only this protocol. A new step kind is a context method built on these calls;
it needs a new member here only if it needs a new kind of storage operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from stepstream.errors import LeaseLost
from stepstream.records import Emit, FlowLimits, Lease, RunRecord, StepRecord

if TYPE_CHECKING:
    from stepstream.backends.base import Budget, ReleaseSlot
    from stepstream.realtime.channel import Channel


class Suspend(BaseException):
    """Control flow: the run must wait (a sleep, a retry delay, an event, a child run). A
    ``BaseException`` so that a user's ``except Exception`` cannot swallow it."""

    def __init__(self, wake_at: int | None) -> None:
        self.wake_at = wake_at


class Cancel(BaseException):
    """Control flow: ``context.cancel()`` was called."""


class StorageInterrupted(BaseException):
    """Control flow: storage failed while the run was executing. The execution stops and hands
    the run back to be resumed from its log: a storage error delays a run, it never fails it,
    and user code cannot mistake it for a failure of its own (``except Exception``)."""


class Escaped(Exception):
    """What user code raised that is no ``Exception`` (``SystemExit``, ``KeyboardInterrupt``,
    a ``CancelledError`` not cancelling anything, a ``BaseException`` of its own), as the
    failure it is: a step or a workflow fails with it, it never ends the worker's process or
    escapes its retries."""


CONTROL = (LeaseLost, StorageInterrupted, Cancel, Suspend)  # the engine's, weightiest first


def as_raised(error: BaseException) -> BaseException:
    """What the engine raises for ``error``, which user code raised (a step body, a workflow
    or failure function) or let through: the engine's own control flow and a real cancellation
    of the running task as they are, also out of an exception group (a ``TaskGroup`` wraps a
    step's ``Suspend``); any other ``BaseException`` as an ``Escaped``; an ``Exception`` as it
    is."""
    if isinstance(error, BaseExceptionGroup):
        for kind in CONTROL:
            found = error.subgroup(kind)
            if found is not None:
                return _weightiest(kind, found)
    if isinstance(error, (Exception, *CONTROL)):
        return error
    if isinstance(error, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is None or task.cancelling():
            return error  # the task is being cancelled (a stop, a timeout): not the code's
    return Escaped(
        f"{type(error).__name__}{f': {error}' if str(error) else ''} (raised by the workflow's "
        "code, where only an Exception fails a step or a run: it cannot end the worker)"
    )


def raise_as(error: BaseException) -> NoReturn:
    """Raise ``error`` (caught from user code) as ``as_raised`` says."""
    raised = as_raised(error)
    if raised is error:
        raise error
    raise raised from error


def _weightiest(kind: type[BaseException], group: BaseExceptionGroup) -> BaseException:
    """One of ``group``'s leaves of ``kind``: for ``Suspend``, the one that wakes first."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        elif isinstance(error, kind):
            leaves.append(error)

    collect(group)
    if kind is Suspend:
        timed = [leaf for leaf in leaves if isinstance(leaf, Suspend) and leaf.wake_at is not None]
        if timed:
            return min(timed, key=lambda leaf: leaf.wake_at or 0)
    return leaves[0]


class Runtime(Protocol):
    """The engine, as the context of one execution sees it. Every write is fenced by the
    execution's ``Lease``; ``updates`` are the progress events reporting the change (the
    runtime drops them when the registry has no realtime)."""

    def channel(self, run_id: str) -> Channel:
        """The run's realtime channel; ``RuntimeError`` when there is no realtime."""
        ...

    async def save_steps(
        self,
        lease: Lease,
        steps: list[StepRecord],
        updates: list[Emit],
        release: ReleaseSlot | None = None,
    ) -> None:
        """Store ``steps`` (by position) and append ``updates``, atomically; with ``release``,
        give that flow control slot back in the same unit."""
        ...

    async def wait_event(self, lease: Lease, step: StepRecord, updates: list[Emit]) -> str | None:
        """Store the waiting ``step``; the event data (JSON text) if it was already sent."""
        ...

    async def start_child(
        self, parent: RunRecord, position: int, child: str, workflow: str, body: Any
    ) -> None:
        """Create the child run ``child`` of an invoke step (once: a retry finds it exists)."""
        ...

    async def notify(self, event_id: str, data: Any) -> int:
        """Resolve every wait for ``event_id``; how many there were (``NoWaiters`` if none)."""
        ...

    async def in_thread(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run a synchronous step body off the event loop."""
        ...

    async def http_call(
        self, url: str, method: str, body: Any, headers: dict[str, str], seconds: float
    ) -> dict[str, Any]:
        """The body of a durable HTTP call: ``{"status", "headers", "body"}``."""
        ...

    def check_size(self, out: str, what: str) -> None:
        """``NonRetryableError`` if a result (JSON text) is over the configured limit."""
        ...

    def new_run_id(self) -> str:
        """A fresh run id (for a child run)."""
        ...

    async def acquire_slot(self, lease: Lease, limits: FlowLimits, step: StepRecord) -> Budget:
        """A flow control slot for ``step``'s position, or when to look again (the waiting
        ``step`` is then stored)."""
        ...

    async def release_slot(self, run_id: str, key: str, position: int) -> None:
        """Give a slot back, waking a run that waits for one."""
        ...

    def is_paused(self, workflow: str) -> bool:
        """Whether ``workflow`` is paused: no step of it may start."""
        ...
