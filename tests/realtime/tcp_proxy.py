"""A small TCP proxy on 127.0.0.1 for Redis fault tests: it adds latency, and it can make the
pub/sub connection silently dead (a half-open socket: nothing is forwarded either way, nothing
is closed), while every other connection, old or new, keeps working."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass, field

SUBSCRIBE = b"\r\nSUBSCRIBE\r\n"  # the command name as a RESP bulk string


@dataclass(eq=False)
class Link:
    subscriber: bool = False  # it sent SUBSCRIBE: the pub/sub connection
    frozen: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class Proxy:
    def __init__(self, target_port: int, *, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay  # seconds added to every chunk, each way
        self.links: list[Link] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def freeze_subscribers(self) -> int:
        """Stop forwarding on every pub/sub connection, without closing it. Returns how many."""
        frozen = [link for link in self.links if link.subscriber and not link.frozen]
        for link in frozen:
            link.frozen = True
        return len(frozen)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        link = Link(writers=[writer, up_writer])
        self.links.append(link)
        loop = asyncio.get_running_loop()
        link.pumps = [
            loop.create_task(self._pump(link, reader, up_writer, upstream=True)),
            loop.create_task(self._pump(link, up_reader, writer, upstream=False)),
        ]

    async def _pump(
        self,
        link: Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        with suppress(OSError, asyncio.CancelledError):
            while True:
                data = await reader.read(65_536)
                if not data:
                    break
                if upstream and SUBSCRIBE in data.upper():
                    link.subscriber = True
                if link.frozen:
                    await asyncio.Event().wait()  # half-open: hold everything, close nothing
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self.links:
            for task in link.pumps:
                task.cancel()
            for writer in link.writers:
                writer.close()
        for link in self.links:
            for task in link.pumps:
                with suppress(asyncio.CancelledError):
                    await task
