"""The ``backend`` the storage contract suites run against: one opened on the test's
``backend_url`` (every store of ``STORES``), closed at teardown; ``calls``, the functions a
PostgreSQL ``backend`` (a module's own fixture) calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from stepstream.backends import Backend, backend_from_url
from stepstream.backends.postgres import PostgresBackend


@pytest.fixture
async def backend(backend_url: str) -> AsyncIterator[Backend]:
    backend = backend_from_url(backend_url)
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture
def calls(backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The functions the backend called, in order."""
    made: list[str] = []
    fetch = backend._db.fetch

    async def recording(sql: str, *args: Any, read: bool = False) -> Any:
        made.append(sql.split("(")[0].removeprefix("SELECT "))
        return await fetch(sql, *args, read=read)

    monkeypatch.setattr(backend._db, "fetch", recording)
    return made
