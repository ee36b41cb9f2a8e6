"""``Realtime`` (typed pub/sub with history) and its ``Channel``s."""

from __future__ import annotations

import asyncio
import datetime as dt
import weakref
from collections.abc import AsyncGenerator, Collection, Sequence
from types import TracebackType
from typing import Any

from stepstream.auth import TokenSigner
from stepstream.backends import Backend, backend_from_url
from stepstream.errors import ConfigurationError, StepstreamError, ValidationError
from stepstream.realtime.hub import Hub
from stepstream.realtime.schema import EventSchema, Schema
from stepstream.realtime.stream import Start, Stream
from stepstream.records import HistoryPolicy, Message, parse_cursor

MAX_CHANNEL_NAME = 200
OPEN: weakref.WeakSet[Realtime] = weakref.WeakSet()
"""Every opened ``Realtime`` of this process (so a server can drain them on shutdown)."""


def drain_all() -> None:
    """``drain()`` every open ``Realtime`` of this process."""
    for realtime in list(OPEN):
        realtime.drain()


def check_channel_name(name: object) -> str:
    """Return ``name`` if it is a usable channel name, else raise ``ValidationError``."""
    if not isinstance(name, str) or not name:
        raise ValidationError("a channel name must be a non-empty string")
    if len(name) > MAX_CHANNEL_NAME:
        raise ValidationError(
            f"channel name is {len(name)} characters long; the limit is {MAX_CHANNEL_NAME}"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValidationError(f"channel name {name!r} contains control characters")
    return name


class Realtime:
    """Typed pub/sub with history, over the backend a URL names.

    >>> from pydantic import BaseModel
    >>> class Note(BaseModel):
    ...     text: str
    >>> realtime = Realtime(schema={"chat": {"note": Note}}, backend="sqlite:///chat.db")
    >>> # async with realtime:
    >>> #     await realtime.channel("room-1").emit("chat.note", {"text": "hi"})

    ``backend``: a URL (``sqlite:///file.db``, ``redis://host:6379/0``,
    ``postgresql://user@host/db``), a backend object, or
    ``None`` for ``$STEPSTREAM_BACKEND`` / a local SQLite file. ``history`` bounds what each
    channel keeps. ``max_duration`` (seconds) is how long one SSE response lives at most before
    the client is told to reconnect (each response draws 90-100 % of it, so clients spread their
    reconnects); ``ping_interval`` is the SSE keepalive period; an SSE client that accepts no
    bytes for ``send_timeout`` seconds while frames wait for it is dropped (it resumes from its
    cursor when it comes back).
    """

    def __init__(
        self,
        schema: Schema | None = None,
        *,
        backend: str | Backend | None = None,
        history: HistoryPolicy | None = None,
        max_duration: float = 300,
        ping_interval: float = 15,
        send_timeout: float = 10,
        secret: str | bytes | None = None,
    ) -> None:
        self.schema = EventSchema(schema)
        self.signer = TokenSigner(secret)
        self.backend: Backend = (
            backend_from_url(backend) if backend is None or isinstance(backend, str) else backend
        )
        self.history_policy = history or HistoryPolicy()
        if max_duration <= 0 or ping_interval <= 0 or send_timeout <= 0:
            raise ConfigurationError(
                "max_duration, ping_interval and send_timeout must be positive seconds"
            )
        self.max_duration = max_duration
        self.ping_interval = ping_interval
        self.send_timeout = send_timeout
        self._hub: Hub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Task[None] | None = None
        self._opening_loop: asyncio.AbstractEventLoop | None = None
        self._channels: dict[str, Channel] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the backend. Called for you on first use; idempotent."""
        loop = asyncio.get_running_loop()
        if self._hub is None:
            if self._opening is None or self._opening_loop is not loop:
                self._opening = loop.create_task(self._open())
                self._opening_loop = loop
            # Concurrent first uses share one opening: two hubs would split the subscribers.
            await asyncio.shield(self._opening)
        elif loop is not self._loop:
            raise StepstreamError(
                "this Realtime was opened on another event loop; create one per loop "
                "(or aclose() it before reusing it)"
            )

    async def _open(self) -> None:
        try:
            await self.backend.open()
        finally:
            self._opening = None
        self._loop = asyncio.get_running_loop()
        self._hub = Hub(self.backend)
        OPEN.add(self)

    def drain(self) -> None:
        """Tell every SSE response of this process to send ``reconnect`` and end (call on
        shutdown: clients resume elsewhere from their cursors instead of holding the server
        open until ``max_duration``). ``stepstream dev``/``server`` do it on SIGTERM/SIGINT."""
        if self._hub is not None:
            self._hub.drain()

    async def aclose(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            await hub.close()
        await self.backend.close()
        self._loop = None

    async def __aenter__(self) -> Realtime:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def hub(self) -> Hub:
        if self._hub is None or self._loop is not asyncio.get_running_loop():
            await self.open()
        assert self._hub is not None
        return self._hub

    # -- channels --------------------------------------------------------------------------

    def token(self, channels: Sequence[str], ttl: float = 3600) -> str:
        """A signed token letting a browser subscribe to ``channels`` for ``ttl`` seconds
        (pass it as ``?token=`` to the SSE endpoint). Signed with ``secret`` /
        ``$STEPSTREAM_SECRET``, which every server of a deployment must share."""
        for name in [channels] if isinstance(channels, str) else channels:
            check_channel_name(name)
        return self.signer.mint(channels, ttl)

    def channel(self, name: str) -> Channel:
        """The channel called ``name`` (created on first emit)."""
        channel = self._channels.get(name)
        if channel is None:
            channel = Channel(self, check_channel_name(name))
            if len(self._channels) < 10_000:  # a cache, not a registry
                self._channels[name] = channel
        return channel

    async def emit(self, event: str, data: Any) -> str:
        """``emit`` on the channel ``default``."""
        return await self.channel("default").emit(event, data)

    async def history(self, **kwargs: Any) -> list[Message]:
        """``history`` of the channel ``default``."""
        return await self.channel("default").history(**kwargs)

    def subscribe(self, **kwargs: Any) -> AsyncGenerator[Message, None]:
        """``subscribe`` to the channel ``default``."""
        return self.channel("default").subscribe(**kwargs)

    async def stream(
        self,
        starts: dict[str, Start],
        *,
        events: Collection[str] | None = None,
        on_gap: Any = "raise",
    ) -> Stream:
        """A ``Stream`` over several channels (what the SSE endpoint uses)."""
        hub = await self.hub()
        return Stream(hub, self.backend, starts, events=events, on_gap=on_gap)


class Channel:
    """A named event stream with history. Get one from ``Realtime.channel(name)``."""

    def __init__(self, realtime: Realtime, name: str) -> None:
        self.realtime = realtime
        self.name = name

    def __repr__(self) -> str:
        return f"Channel({self.name!r})"

    async def emit(self, event: str, data: Any) -> str:
        """Validate ``data`` against the schema of ``event``, store it and deliver it to every
        subscriber, atomically. Returns the event id.

        Raises ``ValidationError`` (naming each bad field; nothing is stored) for an unknown
        event or invalid data.

        >>> # await realtime.channel("run-1").emit("workflow.update", {...})
        """
        raw = self.realtime.schema.encode(event, data)
        await self.realtime.hub()
        message = await self.realtime.backend.append(
            self.name, event, raw, self.realtime.history_policy
        )
        return message.id

    async def history(
        self,
        limit: int | None = 100,
        start: int | dt.datetime | None = None,
        end: int | dt.datetime | None = None,
        after: str | None = None,
    ) -> list[Message]:
        """Stored events, oldest first: the **latest** ``limit`` (``None``: all) of those with
        time in ``[start, end]`` (epoch milliseconds or datetimes) and strictly after the cursor
        ``after``. Raises ``CursorUnavailable`` if events after ``after`` were trimmed."""
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValidationError(f"limit must be a positive integer or None, got {limit!r}")
        await self.realtime.hub()
        return await self.realtime.backend.read(
            self.name,
            after=_cursor_arg(after),
            start_ms=_ms(start),
            end_ms=_ms(end),
            limit=limit,
        )

    async def subscribe(
        self,
        events: Collection[str] | None = None,
        history: bool | int = False,
        after: str | None = None,
    ) -> AsyncGenerator[Message, None]:
        """Events as they arrive: first history (``True`` for all, ``N`` for the latest N) or
        everything after the cursor ``after``, then live, with no gap and no duplicate.

        >>> # async for message in realtime.channel("run-1").subscribe(history=True):
        >>> #     print(message.event, message.data)

        ``events`` keeps only those event names. Raises ``CursorUnavailable`` (on the first
        iteration) when ``after`` was trimmed away, or later when events this subscriber should
        have had were trimmed from storage before they reached it: never a silent hole.
        """
        if after is not None and history is not False:
            raise ValidationError("give either after= (resume) or history=, not both")
        if isinstance(history, bool):
            start = Start(after=_cursor_arg(after), history=history)
        elif isinstance(history, int) and history > 0:
            start = Start(history=True, limit=history)
        else:
            raise ValidationError(f"history must be True, False or a positive int, got {history!r}")
        unknown = [e for e in events or () if e not in self.realtime.schema]
        if unknown:
            raise ValidationError(f"unknown event(s) {', '.join(unknown)} in events=")
        stream = await self.realtime.stream({self.name: start}, events=events)
        try:
            for item in await stream.start():
                if isinstance(item, Message):
                    yield item
            while True:
                for item in await stream.next():
                    if isinstance(item, Message):
                        yield item
        finally:
            stream.close()


def _cursor_arg(cursor: str | None) -> tuple[int, int] | None:
    if cursor is None:
        return None
    try:
        return parse_cursor(cursor)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"after={cursor!r} is not a cursor like '1732400000000-0'") from exc


def _ms(value: int | dt.datetime | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    raise ValidationError(f"expected epoch milliseconds or a datetime, got {value!r}")
