"""The ``harness`` fixture: registries and workers on the test store, closed at teardown. The
engine runs on every backend, the in-memory one included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import STORES, store_url
from tests.workflow.helpers import Harness


@pytest.fixture(params=STORES)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request.param, request, tmp_path)


@pytest.fixture
async def harness(backend_url: str) -> AsyncIterator[Harness]:
    made = Harness(backend_url)
    try:
        yield made
    finally:
        await made.close_all()
