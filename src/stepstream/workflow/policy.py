"""How a failing step is retried: ``Backoff`` and ``RetryPolicy``.

A leaf of ``workflow/``: the registry stores a policy per workflow, the context applies it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits ``initial * factor**(n-1)`` seconds,
    at most ``maximum``, times a random factor in ``[1 - jitter, 1]``.

    >>> Backoff(initial=1, factor=2, jitter=0).delay(3)
    4.0
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return float(base * (1 - self.jitter * random.random()))


RetryDelay = Backoff | Callable[[int], float] | float
"""A ``Backoff``, fixed seconds, or ``fn(attempt) -> seconds``."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` more attempts after the first, each after ``delay(attempt)`` seconds.

    >>> RetryPolicy(retries=2, retry_delay=5).delay(1)
    5.0
    """

    retries: int = 3
    retry_delay: RetryDelay = Backoff()

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if isinstance(self.retry_delay, Backoff):
            return self.retry_delay.delay(attempt)
        if callable(self.retry_delay):
            return float(self.retry_delay(attempt))
        return float(self.retry_delay)


@dataclass(frozen=True, slots=True)
class StepOptions:
    """One step's own ``policy`` (over its workflow's) and the seconds one attempt may take."""

    policy: RetryPolicy
    timeout: float | None = None
