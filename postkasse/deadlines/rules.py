"""The deadlines on a referral, on the Danish wall clock (Europe/Copenhagen, with daylight saving).

- Daily emptying: a referral waiting `new` in a queue is due to be pulled 24 hours after it entered the
  queue, with a warning at 20 hours; elapsed time, 365 days a year.
- Handling: a referral is due to be handled 8 calendar days after the mailbox accepted it, at the same
  local time of day, with a warning 2 days before. In working-day mode it is due at the end of the 8th
  working day after the day of receipt (weekends and Danish public holidays do not count), with the
  warning at the end of the 6th.
- A joint pathway's meetings (seed 003 5.4-5.5): the start-up meeting within 28 calendar days of the
  decision, the first follow-up within 42 days of the start-up meeting, each later one at the date the
  last meeting agreed; warned 7 days before, at the same local time of day.

A local time that does not exist (the spring change skips 02:00-03:00) is read with the offset from
before the change, i.e. one hour later on the clock; one that exists twice (autumn) is the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

import holidays

from postkasse.clock import COPENHAGEN, danish_date
from postkasse.config import DeadlineRulesSettings, DeadlineSettings

HANDLING_DAYS = 8


@lru_cache(maxsize=64)
def _holidays(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("DK", years=year, language="da"))


def is_working_day(day: date) -> bool:
    return day.weekday() < 5 and day not in _holidays(day.year)


def _local(wall: datetime) -> datetime:
    """A naive Copenhagen wall-clock time as an aware UTC time (see the module note on DST gaps)."""
    return wall.replace(tzinfo=COPENHAGEN).astimezone(UTC)


def calendar_days_after(received_at: datetime, days: int) -> datetime:
    """The same local time of day, `days` calendar days after `received_at`."""
    local = received_at.astimezone(COPENHAGEN).replace(tzinfo=None)
    return _local(local + timedelta(days=days))


def end_of_working_days_after(received_at: datetime, days: int) -> datetime:
    """Local midnight ending the `days`-th working day after the day of `received_at`."""
    day = danish_date(received_at)
    counted = 0
    while counted < days:
        day += timedelta(days=1)
        if is_working_day(day):
            counted += 1
    return _local(datetime.combine(day + timedelta(days=1), time()))


@dataclass(frozen=True)
class Rules:
    """One municipality's deadlines."""

    emptying_warning: timedelta = timedelta(hours=20)
    emptying_breach: timedelta = timedelta(hours=24)
    handling_days: int = HANDLING_DAYS
    handling_warning_days: int = 2
    working_days: bool = False
    startup_meeting_days: int = 28
    follow_up_meeting_days: int = 42
    meeting_warning_days: int = 7

    def meeting(self, start: datetime, days: int) -> tuple[datetime, datetime]:
        """(warning, due) for a meeting due `days` calendar days after `start`."""
        due = calendar_days_after(start, days)
        return calendar_days_after(due, -self.meeting_warning_days), due

    def agreed_meeting(self, day: date) -> tuple[datetime, datetime]:
        """(warning, due) for a meeting agreed for `day`: due at the end of that Danish day."""
        due = _local(datetime.combine(day + timedelta(days=1), time()))
        return calendar_days_after(due, -self.meeting_warning_days), due

    def handling(self, received_at: datetime) -> tuple[datetime, datetime]:
        """(warning, due) for a referral the mailbox accepted at `received_at`."""
        count = end_of_working_days_after if self.working_days else calendar_days_after
        warning_days = max(self.handling_days - self.handling_warning_days, 0)
        return count(received_at, warning_days), count(received_at, self.handling_days)


@dataclass(frozen=True)
class RuleBook:
    """The default rules and each municipality's own, where it has any."""

    default: Rules = Rules()
    by_municipality: Mapping[str, Rules] = field(default_factory=dict)

    def for_municipality(self, code: str | None) -> Rules:
        return self.by_municipality.get(code or "", self.default)

    @property
    def shortest_emptying_warning(self) -> timedelta:
        return min(r.emptying_warning for r in (self.default, *self.by_municipality.values()))


def rulebook(settings: DeadlineSettings) -> RuleBook:
    def rules(s: DeadlineRulesSettings) -> Rules:
        return Rules(
            timedelta(hours=s.emptying_warning_hours),
            timedelta(hours=s.emptying_breach_hours),
            s.handling_days,
            s.handling_warning_days,
            s.working_days,
            s.startup_meeting_days,
            s.follow_up_meeting_days,
            s.meeting_warning_days,
        )

    return RuleBook(rules(settings), {code: rules(s) for code, s in settings.municipality.items()})
