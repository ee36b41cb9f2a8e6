"""The records every layer shares: realtime messages and cursors, history policies, runs and
steps with their states, and the events a state change carries (DESIGN §2, §5).

A leaf: it imports only ``errors``. Storage (``backends``), the realtime hub, the engine and the
server all speak in these types.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from stepstream.errors import ConfigurationError

_SURROGATE = re.compile("[\ud800-\udfff]")
# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON that every store can parse back.

    Python writes a lone surrogate (an ``OSError`` about a ``surrogateescape`` file name, say)
    as an escape such as ``\\udcff``, which strict parsers (Redis's lua-cjson, Postgres) reject.
    Such characters become U+FFFD here, so nothing stored is unreadable elsewhere. The check is
    a substring test on the output; only text with ``\\ud8``-``\\udf`` escapes pays for more.
    """
    text = _ENCODER.encode(value)
    if "\\ud" in text:
        return _ENCODER.encode(_replace_surrogates(value))
    return text


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        # A well-formed astral character is one code point in Python: only lone ones match.
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace_surrogates(v) for v in value]
    return value


CURSOR = re.compile(r"^(\d{1,16})-(\d{1,16})$")

CursorKey = tuple[int, int]


def parse_cursor(cursor: str) -> CursorKey:
    """``"1732400000000-3"`` → ``(1732400000000, 3)``; raises ``ValueError`` on anything else."""
    match = CURSOR.match(cursor)
    if match is None:
        raise ValueError(f"{cursor!r} is not a cursor: expected '<milliseconds>-<sequence>'")
    return int(match[1]), int(match[2])


def format_cursor(key: CursorKey) -> str:
    return f"{key[0]}-{key[1]}"


class Message:
    """One stored event: its ``id`` (cursor), ``channel``, dotted ``event`` name and ``data``.

    ``raw`` keeps the JSON text as stored so fan-out never re-serialises it; ``frames`` caches the
    encoded SSE frame per dialect for the same reason.
    """

    __slots__ = ("_data", "channel", "event", "frames", "id", "key", "raw")

    def __init__(self, id: str, channel: str, event: str, raw: str, key: CursorKey | None = None):
        self.id = id
        self.channel = channel
        self.event = event
        self.raw = raw
        self.key = key if key is not None else parse_cursor(id)
        self.frames: dict[str, bytes] = {}
        self._data: Any = _UNSET

    @property
    def data(self) -> Any:
        if self._data is _UNSET:
            self._data = json.loads(self.raw)
        return self._data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.id, self.channel, self.event, self.raw) == (
            other.id,
            other.channel,
            other.event,
            other.raw,
        )

    def __hash__(self) -> int:
        return hash((self.id, self.channel))

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, channel={self.channel!r}, event={self.event!r}, "
            f"data={self.raw})"
        )


_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much history a channel keeps.

    ``max_length``: keep only the latest N events. ``expire_after``: drop a channel's whole history
    this many seconds after its last emit (a sliding expiry, refreshed by every emit).
    ``None`` means unlimited.
    """

    max_length: int | None = None
    expire_after: float | None = None

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 1:
            raise ConfigurationError(f"max_length must be >= 1 or None, got {self.max_length}")
        if self.expire_after is not None and self.expire_after <= 0:
            raise ConfigurationError(f"expire_after must be > 0 or None, got {self.expire_after}")


class RunState(StrEnum):
    """A run's state in its log (``workflowState``)."""

    STARTED = "RUN_STARTED"
    SUCCESS = "RUN_SUCCESS"
    FAILED = "RUN_FAILED"
    CANCELED = "RUN_CANCELED"

    @property
    def finished(self) -> bool:
        return self is not RunState.STARTED


RUN_STATES = tuple(state.value for state in RunState)
"""The state names a run list may be filtered by."""


class StepState(StrEnum):
    """A step's state in its run's log."""

    PROGRESS = "STEP_PROGRESS"
    SUCCESS = "STEP_SUCCESS"
    RETRY = "STEP_RETRY"
    FAILED = "STEP_FAILED"
    CANCELED = "STEP_CANCELED"


class StepType(StrEnum):
    """What kind of step it is (``stepType`` in logs and events)."""

    RUN = "Run"
    SLEEP = "SleepFor"
    SLEEP_UNTIL = "SleepUntil"
    CALL = "Call"
    WAIT = "Wait"
    NOTIFY = "Notify"
    INVOKE = "Invoke"
    PATCH = "Patch"  # a marker: the run executed ``context.patched(name)`` for the first time


@dataclass(slots=True)
class StepRecord:
    """One step of a run, at its position. ``out`` is the JSON text of its result.

    ``wake_at`` (epoch ms): when a sleep ends or a wait times out. ``event_id``: what a wait
    waits for. ``child``: the run an invoke started. ``resolved``: a notify or a finished child
    has written ``out`` while the step was still in progress; the run's worker completes it.
    ``waiting_for``: ``"flowControl"`` while the step has not started for want of budget
    (``resolved`` then means a slot was freed for it). ``errors``: each failed attempt, oldest
    first, as ``{"attempt", "error", "traceback", "at"}``.
    """

    position: int
    name: str
    type: StepType
    state: StepState
    attempts: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    out: str | None = None
    error: str | None = None
    wake_at: int | None = None
    event_id: str | None = None
    child: str | None = None
    resolved: bool = False
    waiting_for: str | None = None
    errors: list[dict[str, Any]] | None = None

    def passed(self, at: int) -> bool:
        """Whether the step's timer (a wait's deadline) has gone off at ``at`` (epoch ms): the
        one rule by which a worker times a wait out and a notify finds it over."""
        return self.wake_at is not None and self.wake_at <= at

    def to_json(self) -> str:
        # By hand: dataclasses.asdict deep-copies and is the slowest part of a step's write.
        data = {name: getattr(self, name) for name in STEP_FIELDS}
        data["type"] = self.type.value
        data["state"] = self.state.value
        return dumps(data)

    @classmethod
    def from_json(cls, text: str) -> StepRecord:
        data = json.loads(text)
        data["type"] = StepType(data["type"])
        data["state"] = StepState(data["state"])
        return cls(**data)


STEP_FIELDS = tuple(f.name for f in fields(StepRecord))
FLOW_CONTROL = "flowControl"  # a step's ``waiting_for`` while it waits for a flow control slot
FAILURE_POSITIONS = 1_000_000  # the failure function's own steps live past the run's


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """The flow control a run's steps execute under, fixed when it is triggered (a resume may
    replace it: ``ResumeRun.flow``): across every worker sharing the storage, at most
    ``parallelism`` step executions at once and at most ``rate`` started per ``period_ms`` for
    ``key`` (``None``: no such limit)."""

    key: str
    parallelism: int | None = None
    rate: int | None = None
    period_ms: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "parallelism": self.parallelism,
            "rate": self.rate,
            "period_ms": self.period_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowLimits:
        return cls(data["key"], data.get("parallelism"), data.get("rate"), data["period_ms"])


@dataclass(slots=True)
class RunRecord:
    """A workflow run. ``payload``/``result`` are JSON text; times are epoch milliseconds.

    ``due_at``: when a worker may (re)claim it; ``None`` while it waits for something else (an
    event without timeout, a child run). ``phase`` is ``"run"`` normally and ``"failure"`` while
    the failure function runs (``error`` then holds the failure being handled, ``failed_step``
    the step that caused it, if one did). ``flow``: its flow control, if any. ``labels``: the
    names it was triggered with, to find it by. ``restarted_from`` / ``forked_from``: the run it
    was started again from (DESIGN §14).
    """

    id: str
    workflow: str
    state: RunState
    created_at: int
    payload: str = "null"
    headers: dict[str, str] = field(default_factory=dict)
    completed_at: int | None = None
    result: str | None = None
    error: str | None = None
    due_at: int | None = None
    timeout_at: int | None = None
    parent: str | None = None
    parent_position: int | None = None
    phase: str = "run"
    failure_attempts: int = 0
    failed_step: str | None = None
    lease_owner: str | None = None
    lease_until: int | None = None
    epoch: int = 0
    flow: FlowLimits | None = None
    labels: list[str] = field(default_factory=list)
    restarted_from: str | None = None
    forked_from: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    # Set by a claim: how many claims in a row took the run over from an expired lease with no
    # step stored since the previous one (``next_takeovers``); 0 for any other claim.
    takeovers: int = 0

    def meta_json(self) -> str:
        """Everything but the indexed columns and the steps, as JSON."""
        return dumps(
            {
                "payload": self.payload,
                "headers": self.headers,
                "result": self.result,
                "error": self.error,
                "timeout_at": self.timeout_at,
                "parent_position": self.parent_position,
                "phase": self.phase,
                "failure_attempts": self.failure_attempts,
                "failed_step": self.failed_step,
                "flow": None if self.flow is None else self.flow.to_dict(),
                "labels": self.labels,
                "restarted_from": self.restarted_from,
                "forked_from": self.forked_from,
            }
        )

    def with_meta(self, text: str) -> RunRecord:
        # Fields a newer version stored and this one does not know are skipped, so processes of
        # two versions can share one store during a rolling upgrade.
        meta = {k: v for k, v in json.loads(text).items() if k in RUN_FIELDS}
        flow = meta.pop("flow", None)
        if "labels" in meta:
            meta["labels"] = list(meta["labels"] or ())
        return replace(self, **meta, flow=None if flow is None else FlowLimits.from_dict(flow))

    def step(self, position: int) -> StepRecord | None:
        for step in self.steps:
            if step.position == position:
                return step
        return None


RUN_FIELDS = frozenset(f.name for f in fields(RunRecord))


def next_takeovers(
    count: int, at_epoch: int | None, at_steps: int | None, epoch: int, steps: int
) -> int:
    """``takeovers`` of a claim taking over a run at ``epoch`` (before the claim's bump) with
    ``steps`` stored: one more than ``count`` when the run's previous claim was a takeover too
    (it left the run at ``at_epoch``) and it stored no step since (it saw ``at_steps``), else
    1. The one rule, which Redis's Lua and PostgreSQL's SQL state in their own language."""
    return count + 1 if at_epoch == epoch and at_steps == steps else 1


@dataclass(frozen=True, slots=True)
class Lease:
    """One claim of one run: the fencing token every write of that execution carries.

    ``epoch`` grows by one with every claim of the run, so a write from an earlier claim (a
    stalled worker, a worker whose lease expired and was taken over, even the same worker
    claiming its run again) is refused by storage with ``LeaseLost``, whatever the clocks say.
    """

    run_id: str
    owner: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Emit:
    """A realtime event to append in the same atomic unit as a state change."""

    channel: str
    event: str
    raw: str


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[RunRecord]
    cursor: str | None
