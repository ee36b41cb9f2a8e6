"""A fault-injecting TCP proxy for the SSE chaos scenario, on 127.0.0.1.

Each subscriber gets its own listening port (``listen(name)``), so every connection is known by
whose it is. Connections are forwarded byte for byte to the real server; ``cut_one()`` breaks
one that is streaming (its response has begun) in one of three ways:

- ``reset``: an abrupt close, RST to the client and to the server;
- ``mid_frame``: the next chunk from the server is forwarded only up to the middle of an SSE
  ``data:`` line, then the client gets a FIN and the server an RST;
- ``stall``: a half-open connection: nothing is forwarded either way (so the server's writes
  back up) for ``stall`` seconds, then both sides are reset.

Every connection and cut is recorded with loop times, from which ``reconnect_times()`` tells how
long each subscriber took to be streaming again after it lost a connection.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from tests.realtime.sse_client import raw_close

KINDS = ("reset", "mid_frame", "stall")
CHUNK = 65_536


@dataclass(eq=False)
class Link:
    """One client connection and its upstream twin."""

    subscriber: str
    opened: float
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    responded: float | None = None  # when the first response byte reached the client
    cut: Cut | None = None
    closed: bool = False
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class Cut:
    kind: str
    subscriber: str
    started: float
    at: float | None = None  # when the client's connection actually broke


class ChaosProxy:
    def __init__(self, upstream_port: int, rng: random.Random, *, stall: tuple[float, float]):
        self.upstream_port = upstream_port
        self.rng = rng
        self.stall = stall
        self.links: list[Link] = []
        self.cuts: list[Cut] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    async def listen(self, subscriber: str) -> int:
        """A new port whose connections belong to ``subscriber``."""

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._forward(subscriber, reader, writer)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    def streaming(self, subscriber: str | None = None) -> list[Link]:
        """Connections whose response has begun and that are neither cut nor closed."""
        return [
            link
            for link in self.links
            if link.responded is not None
            and link.cut is None
            and not link.closed
            and subscriber in (None, link.subscriber)
        ]

    def cut_one(self, kind: str) -> Cut | None:
        """Start a ``kind`` cut of a random streaming connection (``None`` if there is none)."""
        candidates = self.streaming()
        if not candidates:
            return None
        link = self.rng.choice(candidates)
        cut = Cut(kind, link.subscriber, self._loop.time())
        link.cut = cut
        self.cuts.append(cut)
        if kind == "reset":
            self._break(link, reset=True)
        elif kind == "mid_frame":
            # The next chunk from the server is cut (see _pump); if none comes within a second
            # (an idle connection), the connection is reset all the same.
            self._spawn(self._break_after(link, 1.0))
        elif kind == "stall":
            for pump in link.pumps:
                pump.cancel()
            self._spawn(self._break_after(link, self.rng.uniform(*self.stall)))
        else:
            raise ValueError(f"unknown cut {kind!r}; use one of {KINDS}")
        return cut

    def reconnect_times(self) -> dict[str, list[float]]:
        """Per subscriber: seconds from each broken connection to the first response byte of
        that subscriber's next connection (cuts that had no next connection are left out)."""
        times: dict[str, list[float]] = {}
        for cut in self.cuts:
            if cut.at is None:
                continue
            after = [
                link.responded
                for link in self.links
                if link.subscriber == cut.subscriber
                and link.opened >= cut.started
                and link.responded is not None
            ]
            if after:
                times.setdefault(cut.subscriber, []).append(max(0.0, min(after) - cut.at))
        return times

    async def aclose(self) -> None:
        for server in self._servers:
            server.close()
        for link in self.links:
            self._break(link, reset=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            with suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    # -- forwarding ----------------------------------------------------------------------------

    async def _forward(
        self, subscriber: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        link = Link(subscriber, self._loop.time(), writer)
        self.links.append(link)
        try:
            up_reader, link.upstream = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port
            )
        except OSError:
            self._break(link, reset=True)
            return
        link.pumps = [
            self._loop.create_task(self._pump(link, reader, link.upstream, from_server=False)),
            self._loop.create_task(self._pump(link, up_reader, writer, from_server=True)),
        ]
        for pump in link.pumps:
            self._tasks.add(pump)
            pump.add_done_callback(self._tasks.discard)
        await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
        if link.cut is None or link.cut.kind != "stall":
            # One side ended the conversation (EOF or error): end the other too.
            self._break(link, reset=False)

    async def _pump(
        self,
        link: Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        from_server: bool,
    ) -> None:
        with suppress(OSError, ConnectionError):
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    return
                if from_server:
                    if link.responded is None:
                        link.responded = self._loop.time()
                    if link.cut is not None and link.cut.kind == "mid_frame":
                        writer.write(data[: _inside_a_frame(data, self.rng)])
                        self._break(link, reset=False)
                        return
                writer.write(data)
                await writer.drain()

    async def _break_after(self, link: Link, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._break(link, reset=True)

    def _break(self, link: Link, *, reset: bool) -> None:
        if link.closed:
            return
        link.closed = True
        if link.cut is not None and link.cut.at is None:
            link.cut.at = self._loop.time()
        for writer, abrupt in ((link.client, reset), (link.upstream, True)):
            if writer is not None:
                with suppress(OSError, AttributeError):  # the peer may have closed it already
                    raw_close(writer, reset=abrupt)
        for pump in link.pumps:
            pump.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _inside_a_frame(data: bytes, rng: random.Random) -> int:
    """A position in ``data`` in the middle of a ``data:`` line (or of the chunk)."""
    start = data.find(b"data:")
    if start < 0:
        return len(data) // 2
    end = data.find(b"\n", start)
    end = len(data) if end < 0 else end
    return rng.randint(start + 1, max(start + 1, end - 1))
