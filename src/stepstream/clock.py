"""The one clock: epoch milliseconds, replaceable.

Every part that reads the time for a run (engine, context, workers) takes it from a ``Clock``,
so a test can move time or skew one worker's clock. Lease decisions never trust a worker's
clock: backends take the time of the storage itself (Redis ``TIME``, the SQLite host's clock)
for claims and renewals, so a worker whose clock runs ahead cannot take over leased runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]
"""A function returning the current time as integer epoch milliseconds."""


def system_ms() -> int:
    """This machine's wall clock, in epoch milliseconds."""
    return time.time_ns() // 1_000_000
