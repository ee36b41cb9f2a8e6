"""The kept-alive connections deliveries go over (``upstash/connections.py``), against a raw
HTTP/1.1 server that counts its connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from stepstream.upstash.connections import Connections, Unanswered, direct
from tests.conftest import free_port

pytestmark = pytest.mark.anyio


class Server:
    """Answers each POST with its body echoed as JSON; ``close_after`` closes each connection
    after that many answers (as an endpoint's keep-alive timeout does), chunked if ``chunked``."""

    def __init__(self, close_after: int | None = None, chunked: bool = False) -> None:
        self.close_after, self.chunked = close_after, chunked
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while self.close_after is None or answered < self.close_after:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                payload = b'{"got": "' + body + b'"}'
                if self.chunked:
                    size = f"{len(payload):x}".encode()
                    answer = b"transfer-encoding: chunked\r\n\r\n" + size + b"\r\n" + payload
                    answer += b"\r\n0\r\n\r\n"
                else:
                    answer = f"content-length: {len(payload)}\r\n\r\n".encode() + payload
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + answer)
                await writer.drain()
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[str]:
    port = free_port()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/api/wf?x=1"
    finally:
        listener.close()


async def test_one_connection_serves_every_delivery() -> None:
    server = Server()
    async with serving(server) as url:
        connections = Connections(url)
        for n in range(3):
            answer = await connections.post(f"step{n}", {"upstash-retried": "0"}, 5)
            assert answer["status"] == 200
            assert answer["body"] == {"got": f"step{n}"}
        await connections.aclose()
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /api/wf?x=1 HTTP/1.1\r\n")
    assert b"upstash-retried: 0\r\n" in server.requests[0]


async def test_a_connection_closed_while_idle_is_replaced() -> None:
    server = Server(close_after=1, chunked=True)
    async with serving(server) as url:
        connections = Connections(url)
        for n in range(3):
            answer = await connections.post(f"step{n}", {}, 5)
            assert answer["body"] == {"got": f"step{n}"}
            if n == 1:
                await asyncio.sleep(0.05)  # the close has landed: seen before sending
        await connections.aclose()
    assert server.connections == 3
    assert len(server.requests) == 3  # each delivered once


async def test_no_answer_is_unanswered() -> None:
    connections = Connections(f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(Unanswered, match=r"ConnectionRefused|OSError"):
        await connections.post("x", {}, 5)


def test_https_and_proxied_endpoints_go_through_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert direct("http://app:3000/api/wf")
    assert not direct("https://app/api/wf")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not direct("http://app:3000/api/wf")
    monkeypatch.setenv("NO_PROXY", "app")
    assert direct("http://app:3000/api/wf")


@asynccontextmanager
async def raw_server(raw: bytes, received: list[bytes]) -> AsyncIterator[str]:
    """Reads each request (head and body), answers ``raw`` and closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        received.append(head + await reader.readexactly(length))
        writer.write(raw)
        await writer.drain()
        writer.close()

    port = free_port()
    listener = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/wf"
    finally:
        listener.close()


async def test_answers_ending_with_the_connection_and_after_a_1xx_are_read() -> None:
    received: list[bytes] = []
    close_delimited = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"a": 1}'
    async with raw_server(close_delimited, received) as url:
        connections = Connections(url)
        answer = await connections.post("x", {}, 5)
        assert (answer["status"], answer["body"]) == (200, {"a": 1})
        assert connections.idle == []  # that connection is done
    informational = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"
    )
    async with raw_server(informational, received) as url:
        answer = await Connections(url).post("x", {}, 5)
        assert (answer["status"], answer["body"]) == (201, "ok")


async def test_a_cut_answer_or_an_invalid_header_is_unanswered() -> None:
    received: list[bytes] = []
    async with raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", received) as url:
        with pytest.raises(Unanswered, match="mid-answer"):
            await Connections(url).post("x", {}, 5)
        for name, value in (("x-a", "1\r\nx-injected: 1"), ("bad name", "1"), ("x-b", "é")):
            with pytest.raises(Unanswered, match="header"):
                await Connections(url).post("x", {name: value}, 5)
    assert len(received) == 1  # nothing of the refused requests was sent
