"""The filter that keeps uvicorn's "unfinished response" ERROR out of the log for the SSE
responses stepstream gives up on purpose, and only for those (``realtime/sender.py``)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from stepstream.realtime import sender

pytestmark = pytest.mark.anyio


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_only_the_dropped_requests_line_is_taken_out() -> None:
    """Three requests served at once, as uvicorn serves them (a task each, logging its line
    after the app returned): the one whose client was dropped loses uvicorn's line; another
    that returned mid-response for its own reason keeps it, and so does any other ERROR."""
    logger = logging.getLogger("uvicorn.error")
    kept = Kept()
    logger.addHandler(kept)

    async def request(drop: bool, message: str) -> None:
        if drop:
            sender._DROPPED.set(True)
            logger.addFilter(sender._not_our_drop)  # what Sender.dropped does
        await asyncio.sleep(0)
        logger.error(message)

    try:
        await asyncio.gather(
            request(True, sender.UVICORN_UNFINISHED),
            request(False, sender.UVICORN_UNFINISHED),
            request(True, "Exception in ASGI application"),
        )
    finally:
        logger.removeHandler(kept)
        logger.removeFilter(sender._not_our_drop)
    assert kept.messages == [sender.UVICORN_UNFINISHED, "Exception in ASGI application"]
