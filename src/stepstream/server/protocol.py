"""uvicorn's httptools protocol with the bounds it lacks (what ``stepstream dev`` and
``stepstream server`` serve with).

A request's line and headers must arrive within ``HEADER_TIMEOUT`` seconds (a slowloris client
holds a connection forever otherwise, an idle one too) and weigh at most ``MAX_HEADER_BYTES``
(431; llhttp buffers any size); a body answered before its end (413) is read and dropped for at
most ``HEADER_TIMEOUT`` seconds, then the connection closes. The app's ``Guard`` bounds bodies.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT = 10.0  # seconds a request's line and headers may take to arrive
MAX_HEADER_BYTES = 64 * 1024


class BoundedHttp(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a deadline and a size limit on request heads."""

    received = 0  # bytes received while the head (request line, headers) is incomplete
    parsed = 0  # bytes of the head parsed so far
    in_head = True
    oversized = discarding = False
    head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timer = self.loop.call_later(HEADER_TIMEOUT, self.head_too_slow)

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            self.received += len(data)
        super().data_received(data)
        if self.oversized or (self.in_head and self.received > MAX_HEADER_BYTES):
            self.refuse(b"431 Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.parsed = True, 0
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(HEADER_TIMEOUT, self.head_too_slow)

    def on_url(self, url: bytes) -> None:
        self.parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.parsed += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head, self.received = False, 0
        self.stop_timer()
        if self.parsed > MAX_HEADER_BYTES:  # a head that came in one read
            self.oversized = True
            return  # the app never sees it; data_received answers 431
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.oversized:
            super().on_body(body)

    def on_response_complete(self) -> None:
        unread = self.cycle.more_body  # (before super() starts a pipelined request)
        super().on_response_complete()
        if unread and not self.transport.is_closing():
            # Answered before the body's end: closing now would reset the connection
            # (unread data) and the client could lose the answer. Drop the rest a while.
            self.discarding = True
            self.stop_timer()
            self.head_timer = self.loop.call_later(HEADER_TIMEOUT, self.transport.close)

    def on_message_complete(self) -> None:
        if self.oversized:
            return  # data_received answers
        if self.discarding:  # the dropped body is over: nothing more to wait for
            self.stop_timer()
            self.transport.close()
            return
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_timer()
        super().connection_lost(exc)

    def stop_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_too_slow(self) -> None:
        self.head_timer = None
        if self.received:
            self.refuse(b"408 Request Timeout")
        else:
            self.transport.close()  # connected and said nothing

    def refuse(self, status: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # not mid-response
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        self.transport.close()
