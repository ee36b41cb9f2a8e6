"""``subscribe_remote`` against a server whose storage is down for a moment: it answers 503
(``backend_unavailable``) and the client keeps trying, as browsers' ``EventSource`` does."""

from __future__ import annotations

import asyncio
import json

import pytest

from stepstream.errors import BackendUnavailable
from stepstream.realtime.remote import subscribe_remote

pytestmark = pytest.mark.anyio

UNAVAILABLE = json.dumps(
    {"error": {"code": "backend_unavailable", "message": "storage is restarting"}}
).encode()
EVENT = json.dumps({"id": "5-0", "channel": "c", "event": "t.e", "data": 1}).encode()


async def serve(refusals: int) -> tuple[asyncio.Server, list[int]]:
    """An HTTP server answering 503 ``refusals`` times, then a stream with one event."""
    answered: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if len(answered) < refusals:
            answered.append(503)
            head = (
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                f"content-length: {len(UNAVAILABLE)}\r\nconnection: close\r\n\r\n"
            )
            writer.write(head.encode() + UNAVAILABLE)
        else:
            answered.append(200)
            head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            writer.write(head.encode() + b"data: " + EVENT + b"\n\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, answered


async def test_a_503_is_retried_until_the_stream_opens() -> None:
    server, answered = await serve(refusals=2)
    port = server.sockets[0].getsockname()[1]
    async with server:
        stream = subscribe_remote(f"http://127.0.0.1:{port}/sse", ["c"], history=True)
        message = await asyncio.wait_for(anext(stream), 10)
        await stream.aclose()
    assert (message.id, message.data) == ("5-0", 1)
    assert answered == [503, 503, 200]


async def test_a_server_that_stays_unavailable_is_given_up_on() -> None:
    server, answered = await serve(refusals=100)
    port = server.sockets[0].getsockname()[1]
    async with server:
        stream = subscribe_remote(f"http://127.0.0.1:{port}/sse", ["c"], max_retries=1)
        with pytest.raises(BackendUnavailable, match="storage is restarting"):
            await asyncio.wait_for(anext(stream), 10)
    assert answered == [503, 503]
