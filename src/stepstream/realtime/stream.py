"""One consumer's stream of a set of channels: history, then live, with the handover.

A ``Stream`` attaches its feed to the ``Hub`` (buffering live events) *before* it replays
history, then drops every buffered event whose id is not greater than the last one it already
produced for that channel. Any event is in the replay, in the buffer, or both, so nothing is
missed and nothing is produced twice. History is read in pages, so a huge history streams
through bounded memory; a consumer that falls behind catches up from storage.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from stepstream.backends.base import Backend
from stepstream.errors import CursorUnavailable
from stepstream.realtime.hub import DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_LIMIT, Feed, Hub
from stepstream.records import CursorKey, Message, format_cursor, parse_cursor

# History is read from storage this many events at a time (replay, catch-up), so a channel with
# a huge history streams through bounded memory.
PAGE = 500


@dataclass(frozen=True, slots=True)
class Start:
    """Where a channel's stream begins: strictly after a cursor; or with history (all, the
    latest ``limit``, those since ``since_ms``, or both); or live only."""

    after: CursorKey | None = None
    history: bool = False
    limit: int | None = None
    since_ms: int | None = None

    @classmethod
    def live(cls) -> Start:
        return cls()

    @classmethod
    def resume_at(cls, ms: int) -> Start:
        """Resume from a time: every event stored at or after ``ms``, and a gap if any of
        those was trimmed (the promise of a resume after an event id, for a client that only
        knows a time). ``since_ms`` says it is a time: a browser's clock may be ahead of the
        storage's, and live events stored meanwhile, before ``ms``, are still delivered."""
        return cls(after=_predecessor((ms, 0)), since_ms=ms)


@dataclass(frozen=True, slots=True)
class Connected:
    channel: str
    cursor: str


@dataclass(frozen=True, slots=True)
class Gap:
    channel: str
    cursor: str


Item = Message | Connected | Gap


@dataclass(slots=True)
class _Pager:
    """Where a channel's next read from storage starts (initial replay or catch-up)."""

    after: CursorKey | None = None
    start_ms: int | None = None
    window: int | None = None  # the latest N: find where they begin first
    strict: bool = True  # a trimmed ``after`` is a gap (the consumer is already past it)
    start: Start | None = None  # the initial replay, still owing ``Connected``
    replay: bool = True  # False: live only, nothing to read


class Stream:
    """History then live events of several channels for one consumer, no gap, no duplicate.

    ``on_gap="raise"`` raises ``CursorUnavailable`` for a trimmed cursor; ``"report"`` yields a
    ``Gap`` and goes on with the history that remains. History is read ``page`` events at a
    time, so ``start()`` returns the first piece and ``next()`` the rest before going live;
    live events are held back meanwhile (and caught up from storage if they overflow).
    """

    __slots__ = (
        "_backend",
        "_events",
        "_hub",
        "_on_gap",
        "_page",
        "_pending",
        "_queue_bytes",
        "_queue_limit",
        "_starts",
        "feed",
        "floor",
    )

    def __init__(
        self,
        hub: Hub,
        backend: Backend,
        starts: dict[str, Start],
        *,
        events: Collection[str] | None = None,
        on_gap: Literal["raise", "report"] = "raise",
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        page: int = PAGE,
    ) -> None:
        self._hub = hub
        self._backend = backend
        self._starts = starts
        self._events = frozenset(events) if events else None
        self._on_gap = on_gap
        self._queue_limit = queue_limit
        self._queue_bytes = queue_bytes
        self._page = page
        self.floor: dict[str, CursorKey] = {}
        self.feed = Feed(starts, queue_limit, queue_bytes)
        # Channels to read from storage (in order) before live events flow again.
        self._pending: dict[str, _Pager] = {}

    async def start(self) -> list[Item]:
        """Attach, then begin the replay: for each channel, ``Connected`` then its history.

        ``Connected.cursor`` is the position *before* the replay (the cursor given, ``0-0`` for
        full history, just before the first replayed event, or the latest id when nothing is
        replayed): a client that drops before the replay arrives and resumes from it loses
        nothing. Returns the first page or so; ``next()`` returns the rest.
        """
        await self._hub.attach(self.feed)
        self._pending = {channel: _initial(start) for channel, start in self._starts.items()}
        try:
            return await self._read_pending()
        except BaseException:
            self.close()
            raise

    async def next(self) -> list[Item]:
        """The next items, waiting for them; ``[]`` when the feed was alarmed.

        A consumer that falls more than ``queue_limit`` events (or ``queue_bytes``) behind does
        not grow memory without bound: its queue is dropped and it catches up from storage
        after its cursors.
        """
        while True:
            if self._pending:
                return await self._read_pending()
            feed = self.feed
            await feed.wait()
            if feed.lost:
                # Live delivery broke, so this feed may have missed events: take a fresh one,
                # then catch up from storage.
                self._hub.detach(feed)
                self.feed = Feed(self._starts, self._queue_limit, self._queue_bytes)
                await self._hub.attach(self.feed)
                self._fall_behind(self.floor)
                continue
            if feed.overflow:
                feed.clear()
                self._fall_behind(self.floor)
                continue
            if feed.stale:
                # Storage lost events of these channels before they reached us: check our
                # cursor against it (a gap if we had not got them) before anything queued.
                stale, feed.stale = feed.stale, None
                self._fall_behind(stale)
                continue
            items: list[Item] = []
            if feed.queue:
                items.extend(self._take(feed.queue))
                feed.size = 0
            if items or feed.alarmed:
                feed.alarmed = False
                return items

    def _fall_behind(self, channels: Collection[str]) -> None:
        for channel in channels:
            if channel not in self._pending:
                self._pending[channel] = _Pager(after=self.floor[channel])

    def _take(self, queue: deque[Message]) -> list[Message]:
        # The hot path of every broadcast, once per consumer: keep it a plain loop.
        floor = self.floor
        events = self._events
        taken = []
        while queue:
            message = queue.popleft()
            last = floor.get(message.channel)
            if last is not None and message.key <= last:
                continue
            floor[message.channel] = message.key
            if events is None or message.event in events:
                taken.append(message)
        return taken

    async def _read_pending(self) -> list[Item]:
        """About a page of items from storage, channel after channel."""
        items: list[Item] = []
        while self._pending and len(items) < self._page:
            channel, pager = next(iter(self._pending.items()))
            if await self._read_page(channel, pager, items):
                del self._pending[channel]
        if not self._pending:
            self._pending = {}  # a dict that held many channels keeps its size: let it go
        return items

    async def _read_page(self, channel: str, pager: _Pager, items: list[Item]) -> bool:
        """Read one page of ``channel`` into ``items``; ``True`` once it is caught up."""
        size = self._page
        batch: list[Message] = []
        gap = False
        if not pager.replay:
            done = True
        elif pager.window is not None and pager.window <= size:
            batch = await self._backend.read(channel, start_ms=pager.start_ms, limit=pager.window)
            done = True
        else:
            if pager.window is not None:
                pager.after = await self._window_start(channel, pager.window, pager.start_ms)
                pager.window = pager.start_ms = None
            try:
                batch = await self._backend.read(
                    channel, after=pager.after, start_ms=pager.start_ms, page=size
                )
            except CursorUnavailable:
                if pager.strict:
                    if self._on_gap == "raise":
                        raise
                    assert pager.after is not None
                    items.append(Gap(channel, format_cursor(pager.after)))
                    gap = True
                # Go on with all the history that remains (newer than anything trimmed).
                pager.after = pager.start_ms = None
                batch = await self._backend.read(channel, page=size)
            done = len(batch) < size
        if pager.start is not None:
            before = await self._before(channel, pager.start, batch, gap)
            items.append(Connected(channel, format_cursor(before)))
            self.floor[channel] = before
            pager.start = None
        floor = self.floor[channel]
        events = self._events
        for message in batch:
            if message.key > floor:
                floor = message.key
                if events is None or message.event in events:
                    items.append(message)
        self.floor[channel] = floor
        if batch:
            pager.after = batch[-1].key
            pager.strict = True  # the consumer is past it now
        return done

    async def _window_start(
        self, channel: str, count: int, start_ms: int | None
    ) -> CursorKey | None:
        """The cursor just before the latest ``count`` events (since ``start_ms``), found by
        paging backwards so that only a page is held at a time."""
        first: CursorKey | None = None
        while count > 0:
            want = min(count, self._page)
            batch = await self._backend.read(channel, before=first, start_ms=start_ms, limit=want)
            if not batch:
                break
            first = batch[0].key
            count -= len(batch)
            if len(batch) < want:
                break
        return None if first is None else _predecessor(first)

    async def _before(
        self, channel: str, start: Start, batch: list[Message], gap: bool
    ) -> CursorKey:
        """The ``Connected`` cursor: the position before the replay."""
        if batch:
            if start.after is not None and not gap:
                return start.after
            if start.history and start.limit is None and start.since_ms is None:
                return (0, 0)
            return _predecessor(batch[0].key)
        # Nothing replayed. The newest id is read after the replay, so an event stored in
        # between (it reaches us live) may already be that newest id: a cursor there would
        # drop it. Take the newest id only when the replay could not have included it.
        if start.after is not None and not gap and start.since_ms is None:
            return start.after  # nothing was stored after it when the replay read
        latest = await self._backend.latest_id(channel)
        if start.after is not None and not gap:
            # A time, maybe ahead of storage's clock: never past what is stored, or live
            # events stored before that time would be taken for ones already seen.
            return (0, 0) if latest is None else min(start.after, parse_cursor(latest))
        before = (0, 0) if latest is None else parse_cursor(latest)
        if start.after is not None and start.after > before:
            before = start.after
        if _replays_history(start) and latest is not None:
            since = start.since_ms or 0
            if before[0] >= since:  # within what the replay asked for: stored since it read
                return _predecessor((since, 0)) if since else (0, 0)
        return before

    @property
    def draining(self) -> bool:
        return self._hub.draining

    def close(self) -> None:
        self._hub.detach(self.feed)


def _replays_history(start: Start) -> bool:
    """Whether ``start`` asks for a replay from a point in time (all of history, a time, or the
    latest N), rather than after a cursor or live only."""
    return start.after is None and (
        start.history or start.since_ms is not None or start.limit is not None
    )


def _initial(start: Start) -> _Pager:
    if start.after is not None:
        return _Pager(after=start.after, start=start)
    if start.limit is not None:
        return _Pager(start_ms=start.since_ms, window=start.limit, strict=False, start=start)
    if start.history or start.since_ms is not None:
        return _Pager(start_ms=start.since_ms, start=start)
    return _Pager(start=start, replay=False)


def _predecessor(key: CursorKey) -> CursorKey:
    """A cursor just before ``key``: resuming after it yields ``key`` and nothing older."""
    ms, seq = key
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, 9_999_999_999_999_999) if ms > 0 else (0, 0)
