"""The HTTP/1.1 connections one execution of a gateway run delivers over, kept alive.

Every SDK step is a delivery to the same endpoint, so a request's cost is on every step's path.
httpx spends about 1 ms of CPU per request in its layers (client, transport, pool, anyio
streams); a delivery, a POST of a known body to one origin, needs none of them: h11 (the
HTTP/1.1 parser under httpx) on an asyncio stream does it in a third of that. Used for
``http://`` endpoints no proxy of the environment applies to; others (``https``, a proxy) go
through httpx (``Engine.http_call``). The connections live as long as the execution: closed
when its loop ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import h11

from stepstream.workflow.engine import PRIVATE_RESPONSE_HEADERS

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
READ = 65536


class Unanswered(Exception):
    """The request got no (complete) answer: connection refused, reset or timed out."""


class Stale(Exception):
    """A kept-alive connection closed by the server while idle: send again on a new one."""


def direct(url: str) -> bool:
    """Whether ``url`` is plain HTTP that no proxy of the environment applies to."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    proxies = urllib.request.getproxies()
    return not (proxies.get("http") or proxies.get("all")) or bool(
        urllib.request.proxy_bypass(parts.hostname)
    )


class Connections:
    """Keep-alive connections to the origin of ``url`` (``direct``), one per request under
    way."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self.authority = parts.netloc.rpartition("@")[2]
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.idle: list[Stream] = []

    async def post(self, body: str, headers: dict[str, str], seconds: float) -> dict[str, Any]:
        """POST ``body``; the answer as ``Engine.http_call`` gives it (``status``,
        ``headers``, ``body`` parsed as JSON if it is); ``Unanswered`` if there is none."""
        content = body.encode()
        try:
            async with asyncio.timeout(seconds):
                while self.idle:
                    stream = self.idle.pop()
                    if stream[0].at_eof():
                        stream[1].close()
                        continue
                    with contextlib.suppress(Stale):
                        return await self.exchange(stream, content, headers, True)
                stream = await asyncio.open_connection(self.host, self.port)
                return await self.exchange(stream, content, headers, False)
        except (OSError, TimeoutError, h11.ProtocolError, Stale) as exc:
            raise Unanswered(f"{type(exc).__name__}: {exc}") from exc

    async def exchange(
        self, stream: Stream, content: bytes, headers: dict[str, str], reused: bool
    ) -> dict[str, Any]:
        reader, writer = stream
        kept = False
        try:
            connection = h11.Connection(h11.CLIENT)
            fields = [("host", self.authority), ("content-length", str(len(content)))]
            fields += [(name, value) for name, value in headers.items()]
            request = h11.Request(method="POST", target=self.target, headers=fields)
            writer.write(
                connection.send(request)
                + connection.send(h11.Data(data=content))
                + connection.send(h11.EndOfMessage())
            )
            await writer.drain()
            answer = await self.answer(connection, reader, reused)
            kept = connection.our_state is h11.DONE and connection.their_state is h11.DONE
            return answer
        except ConnectionError:
            if reused:  # reset while idle, seen only now
                raise Stale() from None
            raise
        finally:
            if kept:
                self.idle.append(stream)
            else:
                writer.close()

    async def answer(
        self, connection: h11.Connection, reader: asyncio.StreamReader, reused: bool
    ) -> dict[str, Any]:
        status, fields, chunks = 0, dict[str, str](), list[bytes]()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ)
                if not data and reused and not status:
                    raise Stale()
                connection.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    key = name.decode("latin-1")
                    text = value.decode("latin-1")
                    fields[key] = f"{fields[key]}, {text}" if key in fields else text
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the endpoint closed the connection")
        text = b"".join(chunks).decode(errors="replace")
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        fields = {k: v for k, v in fields.items() if k not in PRIVATE_RESPONSE_HEADERS}
        return {"status": status, "headers": fields, "body": parsed}

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
