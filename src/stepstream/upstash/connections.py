"""The HTTP/1.1 connections one execution of a gateway run delivers over, kept alive.

Every SDK step is a delivery to the same endpoint, so a request's cost is on every step's path.
httpx spends about 1 ms of CPU per request in its layers (client, transport, pool, anyio
streams); a delivery, a POST of a known body to one origin, needs none of them: the request's
head is written here (its header names and values checked as h11 would, so none can smuggle a
line), and the answer is read by httptools (uvicorn's C parser, llhttp), on an asyncio stream:
a few microseconds, where h11 took about 0.2 ms per exchange. Used for ``http://`` endpoints
no proxy of the environment applies to; others (``https``, a proxy) go through httpx
(``Engine.http_call``). The connections live as long as the execution: closed when its loop
ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx

from stepstream.upstash.text import TOKEN, VALUE, loads
from stepstream.workflow.http import PRIVATE_RESPONSE_HEADERS

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
READ = 65536


class Unanswered(Exception):
    """The request got no (complete) answer: connection refused, reset or timed out."""


class Stale(Exception):
    """A kept-alive connection closed by the server while idle: send again on a new one."""


class Malformed(Exception):
    """A header of the request is not valid HTTP, or the answer is not (or is cut short)."""


def request_head(target: str, authority: str, length: int, headers: dict[str, str]) -> bytes:
    """A POST's head; ``Malformed`` if a header's name or value is not valid HTTP."""
    lines = [f"POST {target} HTTP/1.1", f"host: {authority}", f"content-length: {length}"]
    for name, value in headers.items():
        if not TOKEN.fullmatch(name) or not VALUE.fullmatch(value):
            raise Malformed(f"header {name[:100]!r} is not a valid HTTP header")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    try:
        return "\r\n".join(lines).encode("ascii")
    except UnicodeEncodeError as exc:  # as h11 and httpx refuse them
        raise Malformed(f"a header of the request is not ASCII: {exc}") from None


class Reading:
    """One answer, as httptools' callbacks parse it (an informational 1xx answer is skipped)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.fields: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.headers_done = self.done = self.keep_alive = False
        self.sized = False  # a content-length or chunked body: EOF before its end is an error

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self.fields[key] = f"{self.fields[key]}, {text}" if key in self.fields else text
        self.sized = self.sized or key in ("content-length", "transfer-encoding")

    def on_headers_complete(self) -> None:
        self.headers_done, self.keep_alive = True, self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:  # 1xx: the answer follows
            self.fields, self.chunks, self.headers_done, self.sized = {}, [], False, False
        else:
            self.done = True


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
        # As httpx sends it: percent-encoded (a space or non-ASCII text would break the line).
        self.target = httpx.URL(url).raw_path.decode("ascii")
        self.idle: list[Stream] = []

    async def post(self, body: str, headers: dict[str, str], seconds: float) -> dict[str, Any]:
        """POST ``body``; the answer as ``Engine.http_call`` gives it (``status``,
        ``headers``, ``body`` parsed as JSON if it is); ``Unanswered`` if there is none."""
        content = body.encode()
        try:
            request = request_head(self.target, self.authority, len(content), headers) + content
            async with asyncio.timeout(seconds):
                while self.idle:
                    stream = self.idle.pop()
                    if stream[0].at_eof():
                        stream[1].close()
                        continue
                    with contextlib.suppress(Stale):
                        return await self.exchange(stream, request, True)
                stream = await asyncio.open_connection(self.host, self.port)
                return await self.exchange(stream, request, False)
        except (OSError, TimeoutError, Malformed, Stale) as exc:
            raise Unanswered(f"{type(exc).__name__}: {exc}") from exc

    async def exchange(self, stream: Stream, request: bytes, reused: bool) -> dict[str, Any]:
        reader, writer = stream
        kept = False
        try:
            writer.write(request)
            await writer.drain()
            answer, kept = await self.answer(reader, reused)
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
        self, reader: asyncio.StreamReader, reused: bool
    ) -> tuple[dict[str, Any], bool]:
        """The answer, and whether the connection can carry another request."""
        reading = Reading()
        while not reading.done:
            data = await reader.read(READ)
            if not data:
                if reused and not reading.headers_done and not reading.chunks:
                    raise Stale()
                if reading.headers_done and not reading.sized:
                    break  # a body that ends with the connection
                raise Malformed("the endpoint closed the connection mid-answer")
            try:
                reading.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise Malformed(f"the endpoint's answer is not HTTP/1.1: {exc}") from None
        text = b"".join(reading.chunks).decode(errors="replace")
        try:  # text, if JSON nested too deeply or with NaN: stored JSON never holds them
            parsed: Any = loads(text)
        except ValueError:
            parsed = text
        fields = {k: v for k, v in reading.fields.items() if k not in PRIVATE_RESPONSE_HEADERS}
        answer = {"status": reading.parser.get_status_code(), "headers": fields, "body": parsed}
        return answer, reading.done and reading.keep_alive

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
