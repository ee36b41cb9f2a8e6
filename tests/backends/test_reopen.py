"""A backend closed and opened again under another event loop (``asyncio.run`` per test or
per job, one backend object kept): its locks were made once and, where calls had waited for
them under the first loop, refused the second ("bound to a different event loop")."""

from __future__ import annotations

import asyncio

from stepstream.backends import backend_from_url
from stepstream.records import HistoryPolicy


def test_a_backend_reopened_under_another_event_loop_works(backend_url: str) -> None:
    backend = backend_from_url(backend_url)

    async def use(turn: int) -> None:
        await asyncio.gather(backend.open(), backend.open())  # the second waits for the first
        try:
            await asyncio.gather(backend.listen(["a"]), backend.listen(["b"]))
            message = await backend.append("a", "t.e", str(turn), HistoryPolicy())
            assert [m.id for m in await backend.read("a", limit=10)][-1] == message.id
        finally:
            await backend.close()

    for turn in range(2):
        asyncio.run(use(turn))
