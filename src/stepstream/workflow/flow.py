"""``FlowControl``: keyed parallelism and rate limits on a workflow's step executions
(DESIGN §12). A leaf of ``workflow/``: the registry stores one per workflow, a trigger may give
its own, and ``limits`` fixes it for one run (``records.FlowLimits``), which storage enforces
across every worker (``FlowStore`` in ``backends/base.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepstream.errors import ConfigurationError, ValidationError
from stepstream.records import FlowLimits

MAX_KEY = 256  # characters of a flow control key
MAX_PERIOD = 366 * 24 * 3600  # seconds
MAX_LIMIT = 1_000_000_000  # a parallelism or rate: every backend stores it as a 64-bit integer


@dataclass(frozen=True, slots=True)
class FlowControl:
    """At most ``parallelism`` step executions (a ``run`` body or a ``call`` in flight) at once
    and at most ``rate`` started per ``period`` seconds, per ``key``, across every worker. The
    ``key`` is a string or a function of the run's payload; runs of different keys never wait
    for each other. A run whose next step has no budget waits (durably, holding no worker) until
    a slot frees or the rate window moves on.

    >>> FlowControl(key=lambda payload: payload["userId"], parallelism=2).limits({"userId": "u1"})
    FlowLimits(key='u1', parallelism=2, rate=None, period_ms=1000)
    """

    key: str | Callable[[Any], str]
    parallelism: int | None = None
    rate: int | None = None
    period: float = 1.0

    def __post_init__(self) -> None:
        if self.parallelism is None and self.rate is None:
            raise ConfigurationError("FlowControl needs parallelism=, rate= or both")
        for name in ("parallelism", "rate"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 1 <= value <= MAX_LIMIT):
                raise ConfigurationError(
                    f"FlowControl {name} must be an integer from 1 to {MAX_LIMIT:,}, "
                    f"got {value!r:.40}"
                )
        period = self.period
        if not isinstance(period, int | float) or not 0.001 <= period <= MAX_PERIOD:
            raise ConfigurationError(
                f"FlowControl period must be seconds from 0.001 to one year, got {period!r}"
            )
        if isinstance(self.key, str):
            _check_key(self.key, "FlowControl key", ConfigurationError)
        elif not callable(self.key):
            raise ConfigurationError("FlowControl key must be a string or fn(payload) -> str")

    def limits(self, payload: Any, workflow: str = "") -> FlowLimits:
        """The limits of one run with ``payload``; ``ValidationError`` if the key function
        fails on it (the trigger is refused, saying why)."""
        key = self.key
        if callable(key):
            try:
                key = key(payload)
            except Exception as exc:
                what = f"workflow {workflow!r}" if workflow else "the workflow"
                raise ValidationError(
                    f"the flow control key of {what} cannot be computed from this payload "
                    f"({type(exc).__name__}: {exc}); send the field it reads, or give "
                    "flowControlKey"
                ) from None
        _check_key(key, "the flow control key", ValidationError)
        return FlowLimits(key, self.parallelism, self.rate, round(self.period * 1000))


def _check_key(key: object, what: str, error: type[Exception]) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY or "\x00" in key:
        raise error(
            f"{what} must be a non-empty string of at most {MAX_KEY} characters, got {key!r:.80}"
        )
