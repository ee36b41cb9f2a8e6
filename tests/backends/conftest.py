"""The ``backend`` the storage contract suites run against: one opened on the test's
``backend_url`` (every store of ``STORES``), closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stepstream.backends import Backend, backend_from_url


@pytest.fixture
async def backend(backend_url: str) -> AsyncIterator[Backend]:
    backend = backend_from_url(backend_url)
    await backend.open()
    yield backend
    await backend.close()
