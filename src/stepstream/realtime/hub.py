"""Fan-out inside one process, and the history→live handover.

A process holds one backend subscription per live channel however many consumers (SSE
connections, Python iterators) watch it; the ``Hub`` fans each event out to their ``Feed``s.

``Stream`` is one consumer's view of a set of channels: it attaches its feed (buffering live
events) *before* it replays history, then drops every buffered event whose id is not greater
than the last one it already produced for that channel. Any event is in the replay, in the
buffer, or both, so nothing is missed and nothing is produced twice.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

from stepstream.backends.base import Backend, CursorKey, Message, format_cursor, parse_cursor
from stepstream.errors import BackendUnavailable, CursorUnavailable

DEFAULT_QUEUE_LIMIT = 10_000
SUBSCRIBE_TIMEOUT = 15.0


class Feed:
    """A consumer's inbox: live events queue here until the consumer takes them."""

    __slots__ = ("alarmed", "channels", "limit", "lost", "overflow", "queue", "waiter")

    def __init__(self, channels: Collection[str], limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self.channels = tuple(channels)
        self.limit = limit
        self.queue: deque[Message] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        self.overflow = False
        self.alarmed = False

    def push(self, message: Message) -> None:
        if len(self.queue) >= self.limit:
            self.overflow = True
        else:
            self.queue.append(message)
        self.wake()

    def alarm(self) -> None:
        """Wake the consumer with nothing to take (a timer fired, the client left)."""
        self.alarmed = True
        self.wake()

    def mark_lost(self) -> None:
        self.lost = True
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Return once there is something to take (or a flag to look at)."""
        if self.queue or self.lost or self.overflow or self.alarmed:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class Hub:
    """One per ``Realtime``: multiplexes backend subscriptions to local feeds."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._feeds: dict[str, set[Feed]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        backend.set_sink(self)

    @property
    def watched(self) -> int:
        return len(self._feeds)

    async def attach(self, feed: Feed) -> None:
        """Register ``feed``; returns once live delivery to it is guaranteed."""
        new = []
        for channel in feed.channels:
            feeds = self._feeds.get(channel)
            if feeds is None:
                self._feeds[channel] = {feed}
                new.append(channel)
            else:
                feeds.add(feed)
        if new:
            ready = asyncio.get_running_loop().create_future()
            for channel in new:
                self._ready[channel] = ready
            self._spawn(self._listen(new, ready))
        try:
            waits = {self._ready[c] for c in feed.channels if c in self._ready}
            for ready in waits:
                try:
                    await asyncio.wait_for(asyncio.shield(ready), SUBSCRIBE_TIMEOUT)
                except TimeoutError:
                    raise BackendUnavailable(
                        f"the backend did not confirm a live subscription within "
                        f"{SUBSCRIBE_TIMEOUT:g} s; retry"
                    ) from None
        except BaseException:
            self.detach(feed)
            raise

    async def _listen(self, channels: list[str], ready: asyncio.Future[None]) -> None:
        async with self._lock:
            try:
                await self._backend.listen(channels)
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    ready.exception()  # marks it retrieved: waiters may all be gone
                for channel in channels:
                    if self._ready.get(channel) is ready:
                        del self._ready[channel]
                raise
            if not ready.done():
                ready.set_result(None)

    def detach(self, feed: Feed) -> None:
        gone = []
        for channel in feed.channels:
            feeds = self._feeds.get(channel)
            if feeds is None:
                continue
            feeds.discard(feed)
            if not feeds:
                del self._feeds[channel]
                self._ready.pop(channel, None)
                gone.append(channel)
        if gone:
            self._spawn(self._unlisten(gone))

    async def _unlisten(self, channels: list[str]) -> None:
        async with self._lock:
            idle = [c for c in channels if c not in self._feeds]
            if idle:
                await self._backend.unlisten(idle)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(_forget(self._tasks))

    # -- LiveSink ------------------------------------------------------------------------------

    def deliver(self, messages: list[Message]) -> None:
        feeds_by_channel = self._feeds
        for message in messages:
            feeds = feeds_by_channel.get(message.channel)
            if feeds:
                for feed in feeds:
                    feed.push(message)

    def _all_feeds(self) -> set[Feed]:
        return {feed for group in self._feeds.values() for feed in group}

    def lost(self, reason: str) -> None:
        feeds = self._all_feeds()
        self._feeds.clear()
        self._ready.clear()
        for feed in feeds:
            feed.mark_lost()

    def drain(self) -> None:
        """The server is shutting down: wake every consumer so it can say goodbye."""
        self.draining = True
        for feed in self._all_feeds():
            feed.alarm()

    async def close(self) -> None:
        for feed in self._all_feeds():
            feed.mark_lost()
        self._feeds.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _forget(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # failures were already handed to the waiters

    return done


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


@dataclass(frozen=True, slots=True)
class Connected:
    channel: str
    cursor: str


@dataclass(frozen=True, slots=True)
class Gap:
    channel: str
    cursor: str


Item = Message | Connected | Gap


class Stream:
    """History then live events of several channels for one consumer, no gap, no duplicate.

    ``on_gap="raise"`` raises ``CursorUnavailable`` for a trimmed cursor; ``"report"`` yields a
    ``Gap`` and goes on with the history that remains.
    """

    def __init__(
        self,
        hub: Hub,
        backend: Backend,
        starts: dict[str, Start],
        *,
        events: Collection[str] | None = None,
        on_gap: Literal["raise", "report"] = "raise",
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        self._hub = hub
        self._backend = backend
        self._starts = starts
        self._events = frozenset(events) if events else None
        self._on_gap = on_gap
        self._queue_limit = queue_limit
        self.floor: dict[str, CursorKey] = {}
        self.feed = Feed(starts, queue_limit)

    async def start(self) -> list[Item]:
        """Attach, then replay: for each channel, ``Connected`` then its history.

        ``Connected.cursor`` is the position *before* the replay (the cursor given, ``0-0`` for
        full history, just before the first replayed event, or the latest id when nothing is
        replayed): a client that drops before the replay arrives and resumes from it loses
        nothing.
        """
        await self._hub.attach(self.feed)
        items: list[Item] = []
        try:
            for channel, start in self._starts.items():
                gaps: list[Item] = []
                replay = await self._replay(channel, start, gaps)
                if replay:
                    before = _predecessor(replay[0].key)
                    if start.after is not None and not gaps:
                        before = start.after
                    elif start.history and start.limit is None and start.since_ms is None:
                        before = (0, 0)
                    self.floor[channel] = replay[-1].key
                else:
                    latest = await self._backend.latest_id(channel)
                    before = (0, 0) if latest is None else parse_cursor(latest)
                    if start.after is not None and start.after > before:
                        before = start.after
                    self.floor[channel] = before
                items.extend(gaps)
                items.append(Connected(channel, format_cursor(before)))
                items.extend(m for m in replay if self._wanted(m))
        except BaseException:
            self.close()
            raise
        return items

    async def _replay(self, channel: str, start: Start, items: list[Item]) -> list[Message]:
        if start.after is not None:
            try:
                return await self._backend.read(channel, after=start.after)
            except CursorUnavailable:
                if self._on_gap == "raise":
                    raise
                items.append(Gap(channel, format_cursor(start.after)))
                return await self._backend.read(channel)
        if start.history or start.since_ms is not None:
            return await self._backend.read(channel, start_ms=start.since_ms, limit=start.limit)
        return []

    def _wanted(self, message: Message) -> bool:
        return self._events is None or message.event in self._events

    async def next(self) -> list[Item]:
        """The next live items, waiting for them; ``[]`` when the feed was alarmed.

        A consumer that falls more than ``queue_limit`` events behind does not grow memory
        without bound: its queue is dropped and it catches up from storage after its cursors.
        """
        while True:
            feed = self.feed
            await feed.wait()
            items: list[Item] = []
            if feed.overflow:
                feed.queue.clear()
                feed.overflow = False
                items.extend(await self._catch_up(reattach=False))
            if feed.queue:
                items.extend(self._take(feed.queue))
            if feed.lost:
                items.extend(await self._catch_up(reattach=True))
            if items or feed.alarmed:
                feed.alarmed = False
                return items

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

    async def _catch_up(self, *, reattach: bool) -> list[Item]:
        """Replay from storage after our cursors; with ``reattach``, first take a fresh feed
        (live delivery broke, so the old one may have missed events)."""
        if reattach:
            self._hub.detach(self.feed)
            self.feed = Feed(self._starts, self._queue_limit)
            await self._hub.attach(self.feed)
        items: list[Item] = []
        for channel, last in self.floor.items():
            replay = await self._replay(channel, Start(after=last), items)
            for message in replay:
                if message.key > self.floor[channel]:
                    self.floor[channel] = message.key
                    if self._wanted(message):
                        items.append(message)
        return items

    @property
    def draining(self) -> bool:
        return self._hub.draining

    def close(self) -> None:
        self._hub.detach(self.feed)


def _predecessor(key: CursorKey) -> CursorKey:
    """A cursor just before ``key``: resuming after it yields ``key`` and nothing older."""
    ms, seq = key
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, 9_999_999_999_999_999) if ms > 0 else (0, 0)
