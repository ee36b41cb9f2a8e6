"""Cron expressions and their ticks: ``Schedule`` (what a workflow declares) and ``Cron`` (the
tick arithmetic, on croniter, in a time zone).

A tick is an instant in epoch milliseconds. Every process computes the same ticks from the same
expression and zone, which is what makes a tick's run id (``tick_run_id``) the same everywhere
and lets storage refuse the second run of a tick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from stepstream.errors import ConfigurationError
from stepstream.records import dumps

SCHEDULE_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
CRON_HELP = (
    "5 fields (minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5'), or 6 with a "
    "leading seconds field (e.g. '*/10 * * * * *')"
)
# Each field's name and the numbers it takes (day-of-week 7 is Sunday, as 0).
FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
# 'R' picks a random value per parse, so each process would see other ticks; 'H' needs a hash key.
NOT_SHARED = re.compile(r"(?<![A-Za-z])[HR](?![A-Za-z])", re.I)


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a workflow runs by itself: a cron expression read in ``timezone``, and the payload
    each run gets.

    >>> Schedule(cron="0 9 * * 1-5", timezone="Europe/Berlin", payload={"kind": "daily"})
    Schedule(cron='0 9 * * 1-5', timezone='Europe/Berlin', payload={'kind': 'daily'})

    ``cron``: 5 fields, or 6 with a leading seconds field. A bad expression or an unknown time
    zone is a ``ConfigurationError`` saying which and how to fix it.
    """

    cron: str
    timezone: str = "UTC"
    payload: Any = None

    def __post_init__(self) -> None:
        Cron(self.cron, self.timezone)  # refused here, where it is declared
        try:
            dumps(self.payload)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"a schedule's payload must be JSON: {exc}") from None


def check_schedule_id(value: object) -> str:
    if not isinstance(value, str) or not SCHEDULE_ID.fullmatch(value):
        raise ConfigurationError(
            f"schedule id {str(value)[:80]!r} must be 1-64 characters of A-Z a-z 0-9 _ - "
            "(it becomes part of each run id)"
        )
    return value


def zone(name: object) -> ZoneInfo:
    """The time zone named ``name`` (IANA, e.g. ``Europe/Berlin``)."""
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        raise ConfigurationError(f"time zone {name!r} must be an IANA name such as 'Europe/Berlin'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigurationError(
            f"unknown time zone {name[:80]!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


class Cron:
    """The ticks of ``expression`` in ``timezone``, as epoch milliseconds.

    >>> cron = Cron("0 9 * * *", "Europe/Berlin")
    >>> cron.next_after(1_767_596_400_000)   # 2026-01-05 07:00 UTC: 08:00 in Berlin
    1767600000000
    """

    def __init__(self, expression: object, timezone: object = "UTC") -> None:
        if not isinstance(expression, str):
            raise ConfigurationError(f"cron must be a string: {CRON_HELP}")
        if len(expression) > 200:
            raise ConfigurationError(f"cron is {len(expression)} characters long: {CRON_HELP}")
        fields = expression.split()
        if len(fields) not in (5, 6):
            raise ConfigurationError(
                f"cron {expression[:80]!r} has {len(fields)} fields: expected {CRON_HELP}"
            )
        if NOT_SHARED.search(expression):
            raise ConfigurationError(
                f"cron {expression!r}: 'R' and 'H' are not supported (each process would pick "
                "other times); write the values out"
            )
        self.expression = " ".join(fields)
        self.seconds = len(fields) == 6
        self.zone = zone(timezone)
        # Fixed hours run once when clocks go back (the wall time repeats); '*' hours keep
        # running by the clock, like cron itself does.
        self._fixed_hours = not fields[-4].startswith("*")
        try:
            self._iter(0).get_next(float)
        except (CroniterError, ValueError, KeyError) as exc:
            problem = _out_of_range(fields) or str(exc)
            raise ConfigurationError(
                f"cron {expression!r}: {problem} (cron takes {CRON_HELP})"
            ) from None

    def _iter(self, at_ms: int) -> croniter[float]:
        start = datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(self.zone)
        return croniter(self.expression, start, second_at_beginning=self.seconds)

    def next_after(self, at_ms: int) -> int:
        """The first tick strictly after ``at_ms``."""
        ticks = self._iter(at_ms)
        while True:
            tick = round(ticks.get_next(float) * 1000)
            if not self._repeated(tick):
                return tick

    def latest(self, at_ms: int) -> int | None:
        """The last tick at or before ``at_ms`` (``None`` if there is none)."""
        ticks = self._iter(at_ms + 1)
        try:
            while True:
                tick = round(ticks.get_prev(float) * 1000)
                if not self._repeated(tick):
                    return tick
        except CroniterError:  # nothing before the epoch's dawn
            return None

    def _repeated(self, tick: int) -> bool:
        """Whether ``tick`` is the second occurrence of a wall time that clocks going back
        repeat, for an expression with fixed hours (it ran at the first)."""
        if not self._fixed_hours:
            return False
        local = datetime.fromtimestamp(tick / 1000, self.zone)
        return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def tick_run_id(schedule_id: str, tick_ms: int) -> str:
    """The run id of ``schedule_id``'s tick at ``tick_ms``: the same in every process, so
    storage refuses a second run of one tick.

    >>> tick_run_id("report", 1_767_600_000_000)
    'wfr_report-1767600000000'
    """
    return f"wfr_{schedule_id}-{tick_ms}"


def _out_of_range(fields: list[str]) -> str | None:
    """Which field holds a number it cannot take (``minute 61 is out of range 0-59``), if one
    does: croniter says only that the expression is "out of range"."""
    named = (("second", 0, 59), *FIELDS) if len(fields) == 6 else FIELDS
    for value, (name, low, high) in zip(fields, named, strict=True):
        for number in re.findall(r"(?<![/\d])\d+", value):  # not a step's "/n"
            if not low <= int(number) <= high:
                return f"{name} {number} is out of range {low}-{high}"
    return None
