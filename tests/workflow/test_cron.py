"""Cron expressions and their ticks (``workflow/cron.py``): 5 and 6 fields, what a bad one says,
the latest and next tick around a daylight saving change in Europe/Berlin, the run id of a tick,
and what ``@workflow(schedule=...)`` accepts."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from stepstream import ConfigurationError, Schedule, Workflows
from stepstream.workflow.cron import Cron, check_schedule_id, tick_run_id

BERLIN = ZoneInfo("Europe/Berlin")


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, *,
       tz: ZoneInfo | None = None, fold: int = 0) -> int:  # fmt: skip
    moment = datetime(year, month, day, hour, minute, second, tzinfo=tz or UTC, fold=fold)
    return int(moment.timestamp() * 1000)


def local(tick: int) -> str:
    return datetime.fromtimestamp(tick / 1000, BERLIN).strftime("%Y-%m-%d %H:%M:%S%z")


def test_five_fields_tick_on_minutes() -> None:
    cron = Cron("0 9 * * 1-5")  # weekdays at 09:00 UTC; 2026-01-02 is a Friday
    friday = ms(2026, 1, 2, 9)
    assert cron.next_after(friday - 1) == friday
    assert cron.next_after(friday) == ms(2026, 1, 5, 9)  # strictly after: Monday
    assert cron.latest(friday) == friday  # at or before
    assert cron.latest(friday - 1) == ms(2026, 1, 1, 9)
    assert cron.latest(ms(2026, 1, 4, 12)) == friday  # Sunday: Friday's


def test_six_fields_lead_with_seconds() -> None:
    every_second = Cron("* * * * * *")
    assert every_second.seconds
    assert every_second.next_after(ms(2026, 1, 1)) == ms(2026, 1, 1) + 1000
    assert every_second.latest(ms(2026, 1, 1) + 1999) == ms(2026, 1, 1) + 1000
    thirty = Cron("30 0 9 * * *")  # 09:00:30, not minute 30 of hour 0
    assert thirty.next_after(ms(2026, 1, 1)) == ms(2026, 1, 1, 9, 0, 30)
    assert Cron("  */10   * * * * * ").expression == "*/10 * * * * *"


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("0 9 * *", "has 4 fields: expected 5 fields"),
        ("0 9 * * 1 2026 x", "has 7 fields"),
        ("", "has 0 fields"),
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 * 1,13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 1-8", "day-of-week 8 is out of range 0-7"),
        ("60 0 9 * * *", "second 60 is out of range 0-59"),
        ("*/0 * * * *", "not acceptable"),
        ("0 0 31 2 *", "failed to find"),
        ("R 9 * * *", "'R' and 'H' are not supported"),
        ("H 9 * * *", "'R' and 'H' are not supported"),
    ],
)
def test_a_bad_expression_says_what_and_how(expression: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Cron(expression)
    message = str(caught.value)
    assert says in message
    assert repr(expression) in message or "fields" in message


def test_an_unknown_time_zone_names_the_fix() -> None:
    for name in ("Mars/Olympus", "utc", "", "../etc/passwd", "a" * 1000):
        with pytest.raises(ConfigurationError, match="IANA name such as 'Europe/Berlin'"):
            Cron("0 9 * * *", name)


def test_a_fixed_time_in_the_skipped_hour_runs_at_three() -> None:
    # 2026-03-29: clocks go from 02:00 to 03:00 in Berlin; 02:30 does not exist that day.
    cron = Cron("30 2 * * *", "Europe/Berlin")
    tick = cron.next_after(ms(2026, 3, 28, 12, tz=BERLIN))
    assert local(tick) == "2026-03-29 03:00:00+0200"
    assert local(cron.next_after(tick)) == "2026-03-30 02:30:00+0200"
    assert cron.latest(ms(2026, 3, 29, 3, 30, tz=BERLIN)) == tick


def test_a_fixed_time_in_the_repeated_hour_runs_once() -> None:
    # 2026-10-25: clocks go from 03:00 back to 02:00; 02:30 happens twice, the job once.
    cron = Cron("30 2 * * *", "Europe/Berlin")
    tick = cron.next_after(ms(2026, 10, 24, 12, tz=BERLIN))
    assert local(tick) == "2026-10-25 02:30:00+0200"
    assert local(cron.next_after(tick)) == "2026-10-26 02:30:00+0100"
    second_half_past_two = ms(2026, 10, 25, 2, 45, tz=BERLIN, fold=1)
    assert cron.latest(second_half_past_two) == tick


def test_every_half_hour_keeps_time_through_the_repeated_hour() -> None:
    cron = Cron("*/30 * * * *", "Europe/Berlin")
    at = ms(2026, 10, 25, 1, 50, tz=BERLIN)
    ticks = []
    for _ in range(6):
        at = cron.next_after(at)
        ticks.append(at)
    assert all(later - earlier == 30 * 60_000 for earlier, later in itertools.pairwise(ticks))
    assert [local(tick) for tick in ticks] == [
        "2026-10-25 02:00:00+0200",
        "2026-10-25 02:30:00+0200",
        "2026-10-25 02:00:00+0100",
        "2026-10-25 02:30:00+0100",
        "2026-10-25 03:00:00+0100",
        "2026-10-25 03:30:00+0100",
    ]


def test_nine_in_berlin_is_eight_utc_in_winter_and_seven_in_summer() -> None:
    cron = Cron("0 9 * * *", "Europe/Berlin")
    assert cron.next_after(ms(2026, 3, 28, 12)) == ms(2026, 3, 29, 7)  # CEST from that morning
    assert cron.latest(ms(2026, 3, 29, 6)) == ms(2026, 3, 28, 8)  # still CET the day before


def test_a_tick_run_id_is_the_schedule_and_the_tick() -> None:
    assert tick_run_id("report", 1_767_600_000_000) == "wfr_report-1767600000000"
    assert check_schedule_id("a" * 64) == "a" * 64
    for bad in ("", "a" * 65, "has space", "slash/es", "dot.s", 7):
        with pytest.raises(ConfigurationError, match="1-64 characters"):
            check_schedule_id(bad)


def test_a_workflow_declares_a_schedule() -> None:
    workflows = Workflows(backend="memory://")

    @workflows.workflow("report", schedule="0 9 * * 1-5")
    async def report(context: object) -> None: ...

    @workflows.workflow("berlin", schedule=Schedule("0 9 * * *", "Europe/Berlin", {"k": 1}))
    async def berlin(context: object) -> None: ...

    assert workflows.get("report").schedule == Schedule("0 9 * * 1-5")
    assert workflows.get("berlin").schedule == Schedule("0 9 * * *", "Europe/Berlin", {"k": 1})
    with pytest.raises(ConfigurationError, match="has 3 fields"):
        workflows.workflow("bad", schedule="0 9 *")
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        Schedule("0 9 * * *", timezone="Europe/Berln")
    with pytest.raises(ConfigurationError, match="payload must be JSON"):
        Schedule("0 9 * * *", payload={"when": datetime.now()})
    with pytest.raises(ConfigurationError, match="cannot declare a schedule"):
        workflows.workflow("has space", schedule="0 9 * * *")
    with pytest.raises(ConfigurationError, match="cron expression"):
        workflows.workflow("wrong", schedule=5)  # type: ignore[arg-type]
