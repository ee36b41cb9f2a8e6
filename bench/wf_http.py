"""A minimal raw-asyncio HTTP/1.1 client for bench/e2e.py: one keep-alive connection for
requests, and an SSE reader that stamps every frame the moment its bytes are read (no HTTP
library between the socket and the clock)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], int]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return status, headers, len(head)


class Connection:
    """Sequential requests on one keep-alive connection; counts requests and bytes read."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.requests = 0
        self.bytes_in = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        self.requests += 1
        status, headers, size = await _read_head(self.reader)
        if headers.get("transfer-encoding") == "chunked":
            data = b""
            while True:
                n = int((await self.reader.readline()).split(b";")[0], 16)
                chunk = await self.reader.readexactly(n + 2)
                size += n + 2
                if n == 0:
                    break
                data += chunk[:-2]
        else:
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
            size += len(data)
        self.bytes_in += size
        return status, json.loads(data) if data else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
            self.writer = None


class SSE:
    """``GET path`` as an event stream; ``frames()`` yields ``(perf_ns, wall_ns, payload)`` per
    ``data:`` frame, stamped right after the chunk holding it was read."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.bytes_in = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.chunked = True

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        status, headers, size = await _read_head(self.reader)
        self.bytes_in += size
        if status != 200:
            raise RuntimeError(f"SSE {self.path} answered {status}")
        self.chunked = headers.get("transfer-encoding") == "chunked"

    async def frames(self) -> AsyncIterator[tuple[int, int, dict[str, Any]]]:
        assert self.reader is not None
        buffer = b""
        while True:
            if self.chunked:
                line = await self.reader.readline()
                if not line:
                    return
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    return
                data = (await self.reader.readexactly(n + 2))[:-2]
                self.bytes_in += len(line) + n + 2
            else:
                data = await self.reader.read(65536)
                if not data:
                    return
                self.bytes_in += len(data)
            perf, wall = time.perf_counter_ns(), time.time_ns()
            buffer += data
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                payload = b"\n".join(
                    line[5:].lstrip() for line in frame.split(b"\n") if line.startswith(b"data:")
                )
                if payload:
                    yield perf, wall, json.loads(payload)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
            self.writer = None
