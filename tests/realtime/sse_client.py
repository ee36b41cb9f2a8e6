"""Test-side SSE pieces: a frame parser, an httpx streaming client, raw sockets, and an
in-process ASGI driver that hangs up once a stream has started."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.server.asgi import Result, call

Params = Sequence[tuple[str, str]]


@dataclass
class Frame:
    """One dispatched SSE event: its ``data``, and the ``id:``/``event:`` lines it carried."""

    data: str
    id: str | None = None
    event: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def system(self) -> dict[str, Any] | None:
        """The body of a system event (``{"type": ...}``), ``None`` for a user event."""
        body = self.json
        return body if "type" in body else None


@dataclass
class Parser:
    """Incremental parser for ``text/event-stream`` (WHATWG rules, ``\\n`` or ``\\r\\n`` lines)."""

    _buffer: bytes = b""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _event: str | None = None

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        frames = []
        for raw in lines:
            line = raw.removesuffix(b"\r").decode()
            if not line:
                if self._data:
                    frames.append(Frame("\n".join(self._data), self._id, self._event))
                self._data, self._id, self._event = [], None, None
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            elif name == "id":
                self._id = value
            elif name == "event":
                self._event = value
        return frames


class Ended(Exception):
    """The server closed the stream."""


class SSEStream:
    """Frames of one streaming response, read by a background task into a queue."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.frames: asyncio.Queue[Frame | BaseException] = asyncio.Queue()
        self.raw = bytearray()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        parser = Parser()
        try:
            async for chunk in self.response.aiter_raw():
                self.raw += chunk
                for frame in parser.feed(chunk):
                    self.frames.put_nowait(frame)
        except Exception as exc:
            self.frames.put_nowait(exc)
        else:
            self.frames.put_nowait(Ended("the server closed the stream"))

    async def next(self, within: float = 10) -> Frame:
        item = await asyncio.wait_for(self.frames.get(), within)
        if isinstance(item, BaseException):
            self.frames.put_nowait(item)  # every later call sees it too
            raise item
        return item

    async def until(self, predicate: Callable[[Frame], bool], within: float = 10) -> list[Frame]:
        """Frames up to and including the first one ``predicate`` accepts."""
        frames: list[Frame] = []
        async with asyncio.timeout(within):
            while True:
                frame = await self.next(within)
                frames.append(frame)
                if predicate(frame):
                    return frames

    async def take(self, count: int, within: float = 10) -> list[Frame]:
        async with asyncio.timeout(within):
            return [await self.next(within) for _ in range(count)]

    async def ended(self, within: float = 10) -> list[Frame]:
        """The frames left before the server closes the stream."""
        frames: list[Frame] = []
        async with asyncio.timeout(within):
            while True:
                try:
                    frames.append(await self.next(within))
                except Ended:
                    return frames

    async def close(self) -> None:
        self._reader.cancel()
        with suppress(asyncio.CancelledError):
            await self._reader


@asynccontextmanager
async def connect(
    url: str, params: Params = (), headers: dict[str, str] | None = None
) -> AsyncIterator[SSEStream]:
    """A streaming GET of ``url``; the caller checks the status. Closing it drops the TCP
    connection, as a browser tab would."""
    timeout = httpx.Timeout(10, read=None)  # idle streams are bounded by SSEStream's waits
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        client.stream("GET", url, params=list(params), headers=headers) as response,
    ):
        stream = SSEStream(response)
        try:
            yield stream
        finally:
            await stream.close()


# -- raw sockets --------------------------------------------------------------------------------


async def raw_open(port: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send ``GET target`` on a new socket and read through the response headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
    writer.write(request.encode() + b"\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"unexpected response: {head!r}")
    return reader, writer


def raw_close(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Close the socket: an orderly FIN, or with ``reset`` an RST (``SO_LINGER`` 0)."""
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


# -- in-process ASGI ----------------------------------------------------------------------------


async def asgi_get(
    app: Any,
    query: bytes,
    *,
    method: str = "GET",
    path: str = "/api/realtime",
    headers: Sequence[tuple[bytes, bytes]] = (),
    within: float = 10,
) -> Result:
    """Call ``app`` once; a streaming response is hung up on after its first body chunk.

    Raises ``TimeoutError`` if the app does not finish ``within`` seconds (a hung connection).
    """
    return await call(app, method, path, query=query, headers=headers, within=within)
