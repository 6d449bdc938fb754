"""Retention schedules: `daily HH:MM` or a five-field cron expression, in UTC."""

from __future__ import annotations

import datetime as dt

import pytest

from berth.domain.schedules import ScheduleInvalid, parse_schedule

AT = dt.datetime(2026, 12, 1, 18, 30, tzinfo=dt.UTC)


def test_daily_runs_at_its_time_today_or_tomorrow() -> None:
    schedule = parse_schedule("daily 3:05")
    assert schedule.text == "daily 03:05"
    assert schedule.next_after(AT) == dt.datetime(2026, 12, 2, 3, 5, tzinfo=dt.UTC)
    assert parse_schedule("daily 19:00").next_after(AT) == AT.replace(hour=19, minute=0)


def test_cron_expressions_and_their_next_time() -> None:
    schedule = parse_schedule("*/15  *  * * 1-5")
    assert schedule.text == "*/15 * * * 1-5"
    assert schedule.next_after(AT) == AT.replace(minute=45)  # a Tuesday


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("daily 24:00", "between 00:00 and 23:59"),
        ("every day", "neither 'daily HH:MM'"),
        ("61 * * * *", "Bad minute"),
        ("0 0 31 2 *", "Bad day-of-month"),  # never comes: refused, not searched forever
    ],
)
def test_bad_schedules_say_why(text: str, said: str) -> None:
    with pytest.raises(ScheduleInvalid, match=said):
        parse_schedule(text)
