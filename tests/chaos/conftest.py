"""The chaos suite (DESIGN §10): fault scenarios on every backend, bounded in time.

``make chaos`` runs every scenario at full scale (``STEPSTREAM_CHAOS=full``); ``make test``
runs each at a quick scale of a few seconds, so a regression shows up in every CI run. Variants
that only multiply the run time (another backend for what the server does alone, more outages
of one storage) run in ``make chaos`` only; RELIABILITY.md names them.
"""

from __future__ import annotations

import os

import pytest

FULL = os.environ.get("STEPSTREAM_CHAOS", "").lower() == "full"


def scale(quick: int, full: int) -> int:
    """``quick`` in ``make test``, ``full`` in ``make chaos``."""
    return full if FULL else quick


@pytest.fixture
def full_scale() -> bool:
    return FULL
