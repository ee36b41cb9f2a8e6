"""Writing a streaming response body without letting a stalled client hold it forever.

``send`` waits while the server's buffer for the client is full; a client that accepts nothing
for ``send_timeout`` seconds (a dead peer, a frozen tab) is dropped. Each send only notes when it
began; one ``_StallWatch`` per event loop looks at every open response a few times per timeout,
so an idle connection holds no timer of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from contextvars import ContextVar

from starlette.types import Send

# Larger bodies are sent in pieces: what one send may wait for stays small, so send_timeout
# measures a stalled client, not a long replay on a slow link.
MAX_CHUNK = 65_536

log = logging.getLogger("stepstream.sse")


class Sender:
    """Writes a streaming response body, and drops a client that stops reading: its response
    is abandoned (the task writing it is cancelled), which frees its feed and lets the server
    close the connection."""

    __slots__ = ("_clock", "_send", "_task", "since", "stalled", "timeout")

    def __init__(self, send: Send, timeout: float) -> None:
        self._send = send
        self.timeout = timeout
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.since: float | None = None  # when the send in progress began
        self.stalled = False
        _stall_watch(loop).add(self)

    async def body(self, chunk: bytes) -> None:
        if len(chunk) <= MAX_CHUNK:
            self.since = self._clock()
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            for start in range(0, len(chunk), MAX_CHUNK):
                self.since = self._clock()
                piece = chunk[start : start + MAX_CHUNK]
                await self._send({"type": "http.response.body", "body": piece, "more_body": True})
        self.since = None

    async def end(self) -> None:
        """Finish the response (still watched: the last bytes can stall too)."""
        try:
            self.since = self._clock()
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.stalled:
                raise
            self.dropped()
        finally:
            self.since = None

    def stall(self) -> None:
        self.stalled = True
        self._task.cancel()

    def dropped(self) -> None:
        """Our own cancel was caught: the task goes on (to clean up), no longer cancelled."""
        self._task.uncancel()
        _DROPPED.set(True)
        logging.getLogger("uvicorn.error").addFilter(_not_our_drop)  # added the first time only
        log.warning(
            "dropped an SSE client that accepted nothing for %g s (it resumes from its cursor "
            "when it reconnects)",
            self.timeout,
        )

    def close(self) -> None:
        _stall_watch(asyncio.get_running_loop()).discard(self)


class _StallWatch:
    """The stalled-client check of one event loop: one timer, running while responses are
    open, that looks at each one's send in progress four times per ``send_timeout``."""

    def __init__(self) -> None:
        self.senders: set[Sender] = set()
        self.period = math.inf
        self.timer: asyncio.TimerHandle | None = None

    def add(self, sender: Sender) -> None:
        self.senders.add(sender)
        period = sender.timeout / 4
        if self.timer is None or period < self.period:
            self.period = min(self.period, period)
            if self.timer is not None:
                self.timer.cancel()
            self.timer = asyncio.get_running_loop().call_later(self.period, self._check)

    def discard(self, sender: Sender) -> None:
        self.senders.discard(sender)
        if not self.senders and self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.period = math.inf

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for sender in self.senders:
            since = sender.since
            if since is not None and now - since >= sender.timeout and not sender.stalled:
                sender.stall()
        self.timer = loop.call_later(self.period, self._check)


_STALL_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _StallWatch] = (
    weakref.WeakKeyDictionary()
)


def _stall_watch(loop: asyncio.AbstractEventLoop) -> _StallWatch:
    watch = _STALL_WATCHES.get(loop)
    if watch is None:
        watch = _STALL_WATCHES[loop] = _StallWatch()
    return watch


# Set in the task of a response stepstream gave up on purpose (``Sender.dropped``); uvicorn logs
# its line about the unfinished response in that same task, right after the app returns.
_DROPPED: ContextVar[bool] = ContextVar("stepstream_sse_dropped", default=False)
UVICORN_UNFINISHED = "ASGI callable returned without completing response."


def _not_our_drop(record: logging.LogRecord) -> bool:
    """A filter of the ``uvicorn.error`` logger: takes out uvicorn's ``ERROR: ASGI callable
    returned without completing response.`` for a response stepstream abandoned on purpose.
    Returning mid-response is the only way ASGI gives an app to give a client up, and uvicorn
    reports it as an application error; each drop already logs stepstream's own warning, so a
    server with slow readers would otherwise log errors in normal operation. Only the line of
    the very request whose client was dropped goes (a context variable of its task): any other
    app or route returning early is still reported."""
    return not (_DROPPED.get() and record.getMessage() == UVICORN_UNFINISHED)
