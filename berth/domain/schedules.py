"""When a scheduled job runs: `daily HH:MM` (UTC) or a five-field cron expression (UTC), as
`cronsim` reads it."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cronsim import CronSim, CronSimError

_DAILY = re.compile(r"daily (\d{1,2}):(\d{2})")
MAX_LENGTH = 64


class ScheduleInvalid(ValueError):
    """A schedule that cannot be read (said for a person)."""


@dataclass(frozen=True, slots=True)
class Schedule:
    text: str  # as stored: `daily HH:MM` or the cron expression
    cron: str

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first time strictly after `moment` (UTC)."""
        start = moment.astimezone(dt.UTC).replace(tzinfo=None)
        found: dt.datetime = next(CronSim(self.cron, start))
        return found.replace(tzinfo=dt.UTC)


def parse_schedule(text: str) -> Schedule:
    text = " ".join(text.split())
    if len(text) > MAX_LENGTH:
        raise ScheduleInvalid(f"a schedule has at most {MAX_LENGTH} characters")
    daily = _DAILY.fullmatch(text)
    if daily is not None:
        hour, minute = int(daily.group(1)), int(daily.group(2))
        if hour > 23 or minute > 59:
            raise ScheduleInvalid(f"{text!r}: the time must be HH:MM between 00:00 and 23:59")
        return Schedule(f"daily {hour:02d}:{minute:02d}", f"{minute} {hour} * * *")
    if len(text.split(" ")) != 5:
        raise ScheduleInvalid(
            f"{text!r} is neither 'daily HH:MM' (UTC) nor a cron expression of five fields "
            "(minute hour day-of-month month day-of-week, UTC), e.g. '30 3 * * *'"
        )
    try:
        CronSim(text, dt.datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ScheduleInvalid(f"cron expression {text!r}: {exc}") from None
    return Schedule(text, text)
