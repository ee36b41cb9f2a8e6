"""The storage protocol every backend implements, and the records it moves.

A backend is one module (``sqlite.py``, ``redis.py``) behind the narrow async ``Backend``
protocol below. The realtime hub and the engine never speak SQL or Redis; a new backend is one
file that passes ``tests/backends/test_contract.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from stepstream.errors import ConfigurationError

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


class LiveSink(Protocol):
    """Where a backend delivers live events (the realtime hub). Called on the event loop."""

    def deliver(self, messages: list[Message]) -> None:
        """New events, in per-channel id order."""

    def lost(self, reason: str) -> None:
        """Live delivery broke (connection lost); events may have been missed since."""


class Backend(Protocol):
    """The storage protocol. Every method is a coroutine unless noted; all are safe to call
    concurrently from one event loop."""

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
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        """Events of ``channel``, oldest first: strictly after ``after``, with time in
        ``[start_ms, end_ms]``; with ``limit``, the **latest** ``limit`` of those. Raises
        ``CursorUnavailable`` when events after ``after`` were trimmed away."""

    async def latest_id(self, channel: str) -> str | None:
        """The newest stored id of ``channel``, or ``None`` when it holds nothing."""

    async def listen(self, channels: Collection[str]) -> None:
        """Start live delivery of ``channels`` to the sink. Returns only once every event appended
        from now on (by any process) is sure to reach the sink: the replay-after-subscribe
        handover depends on it."""

    async def unlisten(self, channels: Collection[str]) -> None:
        """Stop live delivery of ``channels``."""
