"""The storage protocol every backend implements, and the operations it takes.

A backend is one package (``sqlite/``, ``redis/``, ``memory/``) behind the narrow async ``Backend``
protocol below. The realtime hub and the engine never speak SQL or Redis; a new backend is one
module or package that passes ``tests/backends/test_contract.py`` and
``tests/backends/test_runs_contract.py``.

Each change of a run is one frozen record (``CreateRun``, ``SaveSteps``, ``ReleaseRun``, ...)
passed to the method of the same name::

    await backend.finish_run(FinishRun(lease, RunState.SUCCESS, result, None, at=now, emits=...))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol, TypedDict
from urllib.parse import urlsplit, urlunsplit

from stepstream.records import (
    CursorKey,
    Emit,
    FlowLimits,
    HistoryPolicy,
    Lease,
    Message,
    RunPage,
    RunRecord,
    RunState,
    StepRecord,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reported:
    """What every operation that changes a run carries besides the change: the realtime events
    reporting it (``emits``), appended in the same atomic unit with ``policy`` trimming."""

    emits: tuple[Emit, ...] = ()
    policy: HistoryPolicy = field(default_factory=HistoryPolicy)


@dataclass(frozen=True, slots=True)
class CreateRun(Reported):
    """Store ``run`` (with its steps), due at ``run.due_at``."""

    run: RunRecord


@dataclass(frozen=True, slots=True)
class Claim:
    """Lease up to ``limit`` due runs of ``workflows`` to ``owner`` for ``lease_ms``, skipping
    the ids in ``exclude`` (the caller's own executions)."""

    owner: str
    lease_ms: int
    limit: int
    workflows: tuple[str, ...]
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """The step at ``position`` of ``run_id`` no longer executes under ``key``."""

    run_id: str
    key: str
    position: int


@dataclass(frozen=True, slots=True)
class SaveSteps(Reported):
    """Insert or replace ``steps`` (by position) of the run ``lease`` holds; with ``release``,
    give that flow control slot up in the same atomic unit (``FlowStore.release_slot``)."""

    lease: Lease
    steps: tuple[StepRecord, ...]
    release: ReleaseSlot | None = field(default=None, kw_only=True)


class RunPatch(TypedDict, total=False):
    """Run fields a ``ReleaseRun`` changes; a field left out keeps its value."""

    phase: str
    error: str | None
    failure_attempts: int
    failed_step: str | None


@dataclass(frozen=True, slots=True)
class ReleaseRun(Reported):
    """Give up the run ``lease`` holds until ``due_at`` (``None``: until a notify or a child
    wakes it), changing the fields in ``patch``; ``hold``: even if a step was resolved."""

    lease: Lease
    due_at: int | None
    patch: RunPatch = field(default_factory=RunPatch)
    hold: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class FinishRun(Reported):
    """End the run ``lease`` holds in ``state`` (finished) ``at`` epoch ms, with ``result``
    (JSON text) or ``error``."""

    lease: Lease
    state: RunState
    result: str | None
    error: str | None
    at: int


@dataclass(frozen=True, slots=True)
class WaitEvent(Reported):
    """Save ``step`` of the run ``lease`` holds, waiting for ``step.event_id``."""

    lease: Lease
    step: StepRecord


@dataclass(frozen=True, slots=True)
class CancelRun(Reported):
    """Cancel the run ``run_id`` ``at`` epoch ms, whoever holds it."""

    run_id: str
    at: int


@dataclass(frozen=True, slots=True)
class ResumeRun(Reported):
    """Continue the failed or canceled run ``run_id`` in place, ``at`` epoch ms (DESIGN §14),
    with ``timeout_at`` as its new run timeout (epoch ms, ``None``: none). ``headers`` and
    ``flow``, when given, replace the run's own from then on (the QStash gateway's DLQ resume
    with overrides); ``None`` keeps them."""

    run_id: str
    at: int
    timeout_at: int | None = field(default=None, kw_only=True)
    headers: dict[str, str] | None = field(default=None, kw_only=True)
    flow: FlowLimits | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a listing shows: each field set narrows it (``None``: any). ``label``: runs
    triggered with that label; ``created_after`` / ``created_before``: ``created_at`` strictly
    after / before, epoch ms."""

    state: str | None = None
    workflow: str | None = None
    label: str | None = None
    created_after: int | None = None
    created_before: int | None = None


@dataclass(frozen=True, slots=True)
class Waiter:
    """A step waiting for an event: its run, position, name and timeout (epoch ms, or
    ``None`` if it waits forever)."""

    run_id: str
    position: int
    step_name: str
    deadline: int | None


@dataclass(frozen=True, slots=True)
class Notify:
    """Send ``event_id`` with data ``raw`` (JSON text) to the steps waiting for it (only in
    ``run_id`` if given), ``at`` the caller's epoch ms (the runs it wakes are due by the
    storage's clock)."""

    event_id: str
    raw: str
    run_id: str | None
    at: int


@dataclass(frozen=True, slots=True)
class AcquireSlot:
    """Start the step at ``step.position`` of the run ``lease`` holds under ``limits``, if the
    key has budget; if not, save ``step`` (its waiting form) and register the run as waiting."""

    lease: Lease
    limits: FlowLimits
    step: StepRecord


@dataclass(frozen=True, slots=True)
class Budget:
    """The answer to ``AcquireSlot``: ``granted``, or when to look again (``retry_at``, epoch
    ms: when the rate window frees, or when the soonest slot's lease could expire)."""

    granted: bool
    retry_at: int | None = None


class LiveSink(Protocol):
    """Where a backend delivers live events (the realtime hub). Called on the event loop."""

    def deliver(self, messages: list[Message]) -> None:
        """New events, in per-channel id order."""

    def lost(self, reason: str) -> None:
        """Live delivery broke (connection lost); events may have been missed since."""

    def missed(self, channels: list[str]) -> None:
        """Events of ``channels`` were removed from storage (trimmed, expired) before they could
        be delivered live. Called after ``deliver`` of the same batch; consumers check their own
        cursor against storage (a ``gap`` if they had not got those events)."""


class RealtimeStore(Protocol):
    """The realtime half of the storage protocol. Every method is a coroutine unless noted;
    all are safe to call concurrently from one event loop."""

    url: str

    async def open(self) -> None:
        """Connect / create storage. Idempotent."""

    async def close(self) -> None:
        """Release every resource. Idempotent."""

    async def ping(self) -> None:
        """Raise ``BackendUnavailable`` unless storage answers."""

    def set_sink(self, sink: LiveSink) -> None:
        """Where live events go (one sink per backend instance)."""

    async def append(self, channel: str, event: str, raw: str, policy: HistoryPolicy) -> Message:
        """Store one event and publish it to live listeners, **atomically**: once this returns,
        the event is in history and every listener (any process) will get it; if it raises, it
        is in neither. Assigns the next id of the channel (strictly increasing) and applies
        ``policy`` trimming."""

    async def read(
        self,
        channel: str,
        *,
        after: CursorKey | None = None,
        before: CursorKey | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        page: int | None = None,
    ) -> list[Message]:
        """Events of ``channel``, oldest first: strictly after ``after`` and strictly before
        ``before``, with time in ``[start_ms, end_ms]``; with ``limit``, the **latest** ``limit``
        of those; with ``page`` (not with ``limit``), the **oldest** ``page`` of those, to read
        a long history in bounded pieces. Raises ``CursorUnavailable`` when events after
        ``after`` were trimmed away."""

    async def latest_id(self, channel: str) -> str | None:
        """The newest stored id of ``channel``, or ``None`` when it holds nothing."""

    async def listen(self, channels: Collection[str]) -> None:
        """Start live delivery of ``channels`` to the sink. Returns only once every event appended
        from now on (by any process) is sure to reach the sink: the replay-after-subscribe
        handover depends on it."""

    async def unlisten(self, channels: Collection[str]) -> None:
        """Stop live delivery of ``channels``."""


class RunStore(Protocol):
    """The workflow half of the storage protocol. Every method that changes a run takes one
    operation record; those that report the change (``Reported``) append its ``emits`` **in the
    same atomic unit** (with ``policy`` trimming, delivered live like ``append``), so after any
    crash a run's event history matches its log.

    "Fenced" methods take the ``Lease`` of one claim and act only while the run is
    ``RUN_STARTED`` and still held by that very claim (same owner, same ``epoch``); otherwise
    they change nothing and raise ``LeaseLost``. Leases are judged by the storage's own clock,
    never by a worker's.
    """

    async def create_run(self, op: CreateRun) -> None:
        """Store a new run (due at ``run.due_at``). ``RunConflict`` if the id exists."""

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run with its steps (ordered by position), or ``None``."""

    async def list_runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage:
        """Runs newest first (without steps), filtered; ``cursor`` continues a page. Served
        from an index for every combination of filters: the work is bounded by ``count``."""

    async def claim_runs(self, op: Claim) -> list[RunRecord]:
        """Lease up to ``limit`` runs of ``workflows`` that are ``RUN_STARTED``, due
        (``due_at <= now``) and not leased (or whose lease expired), skipping the ids in
        ``exclude`` (the caller's own executions), to ``owner`` until ``now + lease_ms``; oldest
        due first. ``now`` is the storage's time. Each claim increments the run's ``epoch``
        (the fencing token of ``Lease``). Returns them with their steps, ``epoch`` and
        ``lease_until``. Atomic: two workers never get the same run."""

    async def renew_leases(self, leases: list[Lease], lease_ms: int) -> list[str]:
        """Extend these leases to storage time + ``lease_ms``; returns the run ids still held
        by exactly those claims. A run another transaction is changing (a claim taking it
        over, a save) is answered once that change is done."""

    async def renew_leases_now(
        self, leases: list[Lease], lease_ms: int
    ) -> tuple[list[str], list[Lease]]:
        """``renew_leases`` without waiting for any run: the run ids still held, and the
        leases of the runs another transaction is changing (for ``renew_leases`` to answer once
        that change is done). A heartbeat goes on while such a change takes long (an open
        transaction holding a run's row): its other runs must not lose their leases to it. Only
        PostgreSQL renews with row locks; every other backend answers each run at once."""

    async def save_steps(self, op: SaveSteps) -> int:
        """Fenced. Insert or replace these steps (by position). With ``op.release``, then give
        that slot up like ``release_slot``; returns how many runs that woke (0 without)."""

    async def release_run(self, op: ReleaseRun) -> None:
        """Fenced. Give the run up until ``due_at`` (``None``: until a notify or a child wakes
        it); ``patch`` updates run fields (``phase``, ``error``, ``failure_attempts``,
        ``failed_step``). A step resolved meanwhile (a notify, a child's end) makes it due now
        instead, unless ``hold``: a parked run waits for a deploy, not for its events."""

    async def finish_run(self, op: FinishRun) -> None:
        """Fenced. End the run in ``state``. If it was invoked by a parent, resolve the parent's
        invoke step (``out`` = ``{"state", "result", "error"}``) and make the parent due now."""

    async def wait_event(self, op: WaitEvent) -> str | None:
        """Fenced. If an event for ``step.event_id`` was already sent to this run (lookback),
        consume it, save ``step`` resolved with it (``out`` = the data, ``resolved`` true) and
        return the data (JSON text); otherwise save ``step``, register it as waiting for
        ``step.event_id`` and return ``None``. Either way ``emits`` are appended."""

    async def notify(self, op: Notify) -> int:
        """Resolve every step waiting for ``event_id`` (only in ``run_id`` if given): its ``out``
        becomes ``raw``, ``resolved`` true, and its run is due now. Returns how many. If
        ``run_id`` is given and nothing of it waits, keep the event for that run (lookback) and
        return 0. ``RunNotFound`` / ``RunConflict`` (finished) for a bad ``run_id``. Atomic."""

    async def wake_workers(self) -> None:
        """Best effort: tell workers in other processes that a run is due now, so they claim
        it without waiting for their next poll."""

    async def listen_wakeups(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on this loop) whenever ``wake_workers`` is called anywhere."""

    def wakeups_active(self) -> bool:
        """Whether ``listen_wakeups`` is still in effect (a dropped connection ends it)."""

    async def cancel_run(self, op: CancelRun) -> None:
        """Mark a running run ``RUN_CANCELED`` (its in-progress steps ``STEP_CANCELED``), drop its
        lease and waits, and resolve its parent's invoke step like ``finish_run``. Not fenced:
        whoever holds the run loses it. ``RunNotFound``, or ``RunConflict`` if it already
        finished."""


class RenewsAtOnce:
    """``renew_leases_now`` for a backend whose renewals never wait for a row lock: every run
    is answered at once."""

    renew_leases: Callable[[list[Lease], int], Awaitable[list[str]]]

    async def renew_leases_now(
        self, leases: list[Lease], lease_ms: int
    ) -> tuple[list[str], list[Lease]]:
        return await self.renew_leases(leases, lease_ms), []


class RecoveryStore(Protocol):
    """Finding, recovering and deleting runs (DESIGN §14)."""

    async def find_runs(self, where: RunFilter, *, cursor: str | None, count: int) -> RunPage:
        """Runs newest first (without steps) matching every field of ``where``; ``cursor``
        continues a page, like ``list_runs`` (which is ``find_runs`` by state and workflow).
        Served from an index: with ``label``, from the label's own index; the time bounds
        narrow an index scan rather than filter a whole table, so the work stays bounded by
        ``count`` plus the runs created in the excluded time range of the scanned index."""

    async def resume_run(self, op: ResumeRun) -> None:
        """Atomically, if the run is ``RUN_FAILED`` or ``RUN_CANCELED``: delete its steps that
        did not succeed (every state but ``STEP_SUCCESS``) and every failure-function step
        (position >= ``FAILURE_POSITIONS``), with their waits; make it ``RUN_STARTED``, due now
        (storage time), unleased (its ``epoch`` kept), not held, with ``completed_at``,
        ``result``, ``error`` and ``failed_step`` cleared, ``phase`` ``"run"``,
        ``failure_attempts`` 0 and ``timeout_at`` set to ``op.timeout_at``; ``headers`` and
        ``flow`` replaced by ``op.headers`` and ``op.flow`` when they are given; append
        ``emits``. ``RunNotFound``; ``RunConflict`` (nothing changes) if it is running or
        succeeded."""

    async def delete_run(self, run_id: str) -> None:
        """Atomically delete a finished run: its record, steps, waits, kept lookback events,
        label index entries and the whole history of its channel (named by its id, gone for
        every reader: ``latest_id`` is ``None`` after). ``RunNotFound``; ``RunConflict``
        (nothing changes) while it is ``RUN_STARTED``."""

    async def list_waiters(self, event_id: str) -> list[Waiter]:
        """The steps waiting for ``event_id`` now (registered by ``wait_event``, not yet
        resolved, their run still started), oldest registration first where the backend
        keeps that order, else by run id."""


class FlowStore(Protocol):
    """Flow control (DESIGN §12): slots of keyed parallelism and rate, shared by every worker.

    A slot is held by one step execution of one run's claim: it counts only while that run is
    ``RUN_STARTED`` and still leased by the claim that took it, so a crashed worker's slots come
    back when its lease ends, without anyone releasing them.
    """

    async def acquire_slot(self, op: AcquireSlot) -> Budget:
        """Fenced. Atomically, by storage time ``now``: drop the key's slots that no longer
        count and its rate starts older than ``period_ms``; then, if fewer than ``parallelism``
        slots count (the run's own slot at this position aside) and fewer than ``rate`` starts
        remain, take a slot (with ``parallelism``) and record a start (with ``rate``), forget
        the run's waiter entry, and grant. Otherwise save ``op.step``; when slots are the
        limit, register the run as a waiter of the key (keeping an earlier registration's
        place in line); answer ``retry_at`` = the latest of: when the oldest start leaves the
        window (rate is the limit), the soonest slot holder's lease end (slots are the limit)."""

    async def release_slot(self, op: ReleaseSlot) -> int:
        """Not fenced. Give the slot up and wake the longest-waiting waiter of the key whose
        step still waits (resolve it, the run due now, like a notify); waiters whose run moved
        on are dropped on the way. Returns how many runs it woke (0 or 1)."""


class EntryStore(Protocol):
    """Small named JSON documents by ``kind`` (schedules, paused workflows): a few thousand at
    most per kind, read whole."""

    async def put_entry(self, kind: str, key: str, value: str, *, create: bool = False) -> None:
        """Store ``value`` (JSON text) under ``kind``/``key``; with ``create``, ``RunConflict``
        if it exists (and nothing changes)."""

    async def get_entry(self, kind: str, key: str) -> str | None:
        """The value stored under ``kind``/``key``, or ``None``."""

    async def list_entries(self, kind: str) -> dict[str, str]:
        """Every entry of ``kind``, by key."""

    async def delete_entry(self, kind: str, key: str) -> bool:
        """Remove ``kind``/``key``; whether it existed."""


class Backend(RealtimeStore, RunStore, FlowStore, EntryStore, RecoveryStore, Protocol):
    """The whole storage protocol: what ``sqlite/``, ``redis/``, ``postgres/`` and
    ``memory/`` implement."""


def shown_url(url: str) -> str:
    """A backend URL fit for logs and messages: its password replaced by ``***``.

    >>> shown_url("postgresql://app:s3cret@db:5432/app")
    'postgresql://app:***@db:5432/app'
    """
    parts = urlsplit(url)
    if not parts.password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))
