"""A TCP proxy that makes a server unreachable on demand, for the storage-outage scenarios.

``TcpFault(port)`` listens on a free 127.0.0.1 port and forwards every connection to
``127.0.0.1:port``, on an event loop in a thread of its own (so the test's loop never carries
the traffic). Faults:

- ``blackhole()``: a network partition. Connections stay open but no byte moves either way,
  and new ones are accepted but not connected onward; ``heal()`` delivers what was held, as
  TCP retransmission would once a partition heals. Clients see requests hang.
- ``refuse()``: the server is gone. Open connections are reset and new ones refused
  (``ECONNREFUSED``) until ``heal()``.

>>> # with TcpFault(redis_port) as proxy:
>>> #     url = f"redis://127.0.0.1:{proxy.port}/0"
>>> #     proxy.blackhole(); ...; proxy.heal()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from tests.conftest import free_port

CHUNK = 64 * 1024


class TcpFault:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-fault")
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._open: set[asyncio.StreamWriter] = set()

    # -- control, from any thread ----------------------------------------------------------

    def __enter__(self) -> TcpFault:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def blackhole(self) -> None:
        self._call(self._blackhole())

    def refuse(self) -> None:
        self._call(self._refuse())

    def heal(self) -> None:
        self._call(self._heal())

    def _call(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    # -- on the proxy's loop -------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", self.port, reuse_address=True
        )

    async def _blackhole(self) -> None:
        assert self._flowing is not None
        self._flowing.clear()

    async def _refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _heal(self) -> None:
        assert self._flowing is not None
        if self._server is None:
            await self._listen()
        self._flowing.set()

    async def _shutdown(self) -> None:
        await self._refuse()
        assert self._flowing is not None
        self._flowing.set()  # release the pumps held in a blackhole: they see closed streams

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.connections += 1
        self._open.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # a blackhole holds new connections too
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._open.add(upstream)
            await asyncio.gather(self._pump(reader, upstream), self._pump(up_reader, writer))
        except OSError:
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self._open.discard(end)
                    end.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        with contextlib.suppress(OSError):
            while data := await source.read(CHUNK):
                await self._flowing.wait()
                if sink.transport.is_closing():
                    return
                sink.write(data)
                await sink.drain()
        if not sink.transport.is_closing():
            sink.transport.abort()
