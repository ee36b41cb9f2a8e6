"""Fan-out inside one process.

A process holds one backend subscription per live channel however many consumers (SSE
connections, Python iterators) watch it; the ``Hub`` fans each event out to their ``Feed``s.
The history→live handover of one consumer is ``stream.Stream``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Collection

from stepstream.backends.base import Backend
from stepstream.errors import BackendUnavailable
from stepstream.records import Message

DEFAULT_QUEUE_LIMIT = 10_000
# What one consumer may hold queued, in event data: past either bound it stops queueing and
# catches up from storage instead, so a stalled reader costs at most this much memory.
DEFAULT_QUEUE_BYTES = 1 << 20
SUBSCRIBE_TIMEOUT = 15.0


class Feed:
    """A consumer's inbox: live events queue here until the consumer takes them."""

    __slots__ = (
        "alarmed",
        "channels",
        "limit",
        "lost",
        "max_bytes",
        "overflow",
        "queue",
        "size",
        "stale",
        "waiter",
    )

    def __init__(
        self,
        channels: Collection[str],
        limit: int = DEFAULT_QUEUE_LIMIT,
        max_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        self.channels = tuple(channels)
        self.limit = limit
        self.max_bytes = max_bytes
        self.queue: deque[Message] = deque()
        self.size = 0  # bytes of event data queued
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        self.overflow = False
        self.alarmed = False
        self.stale: set[str] | None = None  # channels whose events storage lost before delivery

    def push(self, message: Message) -> None:
        if not self.overflow:
            size = self.size + len(message.raw)
            if len(self.queue) >= self.limit or size > self.max_bytes:
                # Everything from here on is in storage: the consumer catches up from there.
                self.overflow = True
            else:
                self.queue.append(message)
                self.size = size
        self.wake()

    def alarm(self) -> None:
        """Wake the consumer with nothing to take (a timer fired, the client left)."""
        self.alarmed = True
        self.wake()

    def mark_lost(self) -> None:
        self.lost = True
        self.wake()

    def mark_missed(self, channel: str) -> None:
        if self.stale is None:
            self.stale = set()
        self.stale.add(channel)
        self.wake()

    def clear(self) -> None:
        self.queue.clear()
        self.size = 0
        self.overflow = False

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Return once there is something to take (or a flag to look at)."""
        if self.queue or self.lost or self.overflow or self.alarmed or self.stale:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class Hub:
    """One per ``Realtime``: multiplexes backend subscriptions to local feeds.

    Subscriptions are coalesced: channels that need a backend subscription queue up while one
    ``listen`` is in flight and the next ``listen`` takes them all, so a reconnect storm of
    thousands of consumers costs a few round trips, not one each.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._feeds: dict[str, set[Feed]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch: list[str] = []  # channels waiting for the next listen ...
        self._batch_ready: asyncio.Future[None] | None = None  # ... resolved when it is done
        self._listening = False
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
            ready = self._batch_ready
            if ready is None:
                ready = self._batch_ready = asyncio.get_running_loop().create_future()
            self._batch.extend(new)
            for channel in new:
                self._ready[channel] = ready
            if not self._listening:
                self._listening = True
                self._spawn(self._listen_batches())
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

    async def _listen_batches(self) -> None:
        """Subscribe every waiting channel, batch after batch, until none waits."""
        try:
            while self._batch_ready is not None:
                async with self._lock:
                    ready, channels = self._batch_ready, self._batch
                    if ready is None:
                        break
                    self._batch_ready, self._batch = None, []
                    # Channels detached (or lost) since they queued need no subscription.
                    wanted = [c for c in dict.fromkeys(channels) if self._ready.get(c) is ready]
                    try:
                        if wanted:
                            await self._backend.listen(wanted)
                    except BaseException as exc:
                        ready.set_exception(exc)
                        ready.exception()  # marks it retrieved: waiters may all be gone
                        for channel in wanted:
                            if self._ready.get(channel) is ready:
                                del self._ready[channel]
                        if not isinstance(exc, Exception):
                            raise
                    else:
                        # Subscribers lost while it registered (the backend's connection
                        # dropped and came back) may never return: watch nothing for nobody.
                        orphans = [c for c in wanted if c not in self._feeds]
                        if orphans:
                            with contextlib.suppress(Exception):
                                await self._backend.unlisten(orphans)
                        ready.set_result(None)
        finally:
            self._listening = False

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

    def missed(self, channels: list[str]) -> None:
        for channel in channels:
            for feed in self._feeds.get(channel, ()):
                feed.mark_missed(channel)

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
