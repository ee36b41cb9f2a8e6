"""The ``harness`` fixture: registries and workers on the test store, closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.workflow.helpers import Harness


@pytest.fixture
async def harness(backend_url: str) -> AsyncIterator[Harness]:
    made = Harness(backend_url)
    try:
        yield made
    finally:
        await made.close_all()
