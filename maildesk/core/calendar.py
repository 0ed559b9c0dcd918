"""Business time: the clock service levels count in (pure; no database, no `holidays`).

Where it sits in the flow: `maildesk.sla` builds a `BusinessCalendar` from a service level
(hours, time zone, public holidays, admin-closed days) and `maildesk.timers` asks it when a
deadline falls. Everything here takes and returns timezone-aware datetimes; arithmetic is
done in UTC, and each day's opening hours are placed in the calendar's own time zone, so a
deadline across the last Sunday of March or October in Riga lands on the right wall-clock
time (subtracting two aware datetimes that share a tzinfo would count wall-clock time and
be an hour off across a change).

Durations come in two units, and `Duration` keeps them apart:
- minutes of business time (`4h`, `90m`): counted only while the desk is open;
- business days (`2d`, `5d`): "5d" ends on the 5th business day after the start, at the same
  position within that day's business hours as the start had (clipped to the day's length).
  A start outside business hours counts from the close of the last business day before it,
  so "Friday 18:00 + 1d" and "Monday 08:00 + 1d" both end at Monday's close: one full
  business day later. This is how people read "5 business days" and it does not depend on
  how long a day is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_SEARCH_DAYS = 3660  # a calendar with no business day in ten years is a mistake, not a loop
_RANGE = re.compile(r"^(?P<days>[a-z]{3}(?:\s*-\s*[a-z]{3})?(?:\s*,\s*[a-z]{3}(?:\s*-\s*[a-z]{3})?)*)\s+"
                    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$")
_DURATION = re.compile(r"^(?:(?P<d>\d+)\s*d)?\s*(?:(?P<h>\d+)\s*h)?\s*(?:(?P<m>\d+)\s*m(?:in)?)?$")


class CalendarError(ValueError):
    """Hours or a duration that cannot be read; the message is safe to show to an admin."""


@dataclass(frozen=True)
class Duration:
    """A service-level duration: whole business days, then business minutes."""

    days: int = 0
    minutes: int = 0

    def __str__(self) -> str:
        hours, minutes = divmod(self.minutes, 60)
        text = (f"{self.days}d" if self.days else "") + (f"{hours}h" if hours else "") + \
            (f"{minutes}m" if minutes else "")
        return text or "0m"


def parse_duration(text: str) -> Duration:
    """`4h`, `90m`, `2d`, `1d4h` -> Duration; days are business days, h/m business time."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or match is None:
        raise CalendarError(f"cannot read the duration {text.strip()!r} (write e.g. 4h, 90m, 2d)")
    days, hours, minutes = (int(match.group(unit) or 0) for unit in "dhm")
    return Duration(days=days, minutes=hours * 60 + minutes)


def parse_hours(text: str) -> dict[int, tuple[time, time]]:
    """`Mon-Fri 09:00-17:00; Sat 10:00-14:00` -> {weekday: (opens, closes)} (Monday = 0)."""
    hours: dict[int, tuple[time, time]] = {}
    for part in filter(None, (piece.strip() for piece in text.lower().split(";"))):
        match = _RANGE.match(part)
        if match is None:
            raise CalendarError(f"cannot read the hours {part!r} (write e.g. Mon-Fri 09:00-17:00)")
        opens, closes = _clock(match.group("start")), _clock(match.group("end"))
        if opens >= closes:
            raise CalendarError(f"{part!r}: the desk must open before it closes")
        for day in _weekdays(match.group("days")):
            hours[day] = (opens, closes)
    if not hours:
        raise CalendarError("no business hours given (write e.g. Mon-Fri 09:00-17:00)")
    return hours


def format_hours(hours: Mapping[int, tuple[time, time]]) -> str:
    """The inverse of parse_hours, grouping consecutive days with the same hours."""
    parts: list[str] = []
    days = sorted(hours)
    index = 0
    while index < len(days):
        last = index
        while last + 1 < len(days) and days[last + 1] == days[last] + 1 and hours[days[last + 1]] == hours[days[index]]:
            last += 1
        label = WEEKDAYS[days[index]].title() + ("" if last == index else "-" + WEEKDAYS[days[last]].title())
        opens, closes = hours[days[index]]
        parts.append(f"{label} {opens:%H:%M}-{closes:%H:%M}")
        index = last + 1
    return "; ".join(parts)


def _clock(text: str) -> time:
    hour, minute = (int(piece) for piece in text.split(":"))
    if hour == 24 and minute == 0:
        return time.max
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise CalendarError(f"{text!r} is not a time of day")
    return time(hour, minute)


def _weekdays(text: str) -> list[int]:
    found: list[int] = []
    for piece in text.split(","):
        ends = [end.strip() for end in piece.split("-")]
        if any(end not in WEEKDAYS for end in ends):
            raise CalendarError(f"unknown weekday in {piece.strip()!r} (use Mon, Tue, ... Sun)")
        first, last = WEEKDAYS.index(ends[0]), WEEKDAYS.index(ends[-1])
        if last < first:
            raise CalendarError(f"{piece.strip()!r}: write weekday ranges Monday first")
        found.extend(range(first, last + 1))
    return found


@dataclass(frozen=True)
class BusinessCalendar:
    """Opening hours per weekday in one time zone, minus closed dates, plus extra working days.

    `open_dates` are weekend days that are working days (Latvia moves days off and works a
    Saturday instead); they get the hours of the first weekday that has any.
    """

    timezone_name: str
    hours: Mapping[int, tuple[time, time]]
    closed: frozenset[date] = field(default_factory=frozenset)
    open_dates: frozenset[date] = field(default_factory=frozenset)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone_name)

    def local_date(self, moment: datetime) -> date:
        return _aware(moment).astimezone(self.zone).date()

    def day_hours(self, day: date) -> tuple[time, time] | None:
        """The opening hours on a local date, or None when the desk is closed."""
        if day in self.closed:
            return None
        if day.weekday() in self.hours:
            return self.hours[day.weekday()]
        if day in self.open_dates and self.hours:
            return self.hours[min(self.hours)]
        return None

    def is_business_day(self, day: date) -> bool:
        return self.day_hours(day) is not None

    def window(self, day: date) -> tuple[datetime, datetime] | None:
        """The business hours of a local date as a UTC interval, or None when closed."""
        hours = self.day_hours(day)
        if hours is None:
            return None
        opens = datetime.combine(day, hours[0], tzinfo=self.zone).astimezone(timezone.utc)
        if hours[1] == time.max:
            closes = datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.zone).astimezone(timezone.utc)
        else:
            closes = datetime.combine(day, hours[1], tzinfo=self.zone).astimezone(timezone.utc)
        return opens, closes

    def business_days(self, start: date, step: int = 1) -> Iterable[date]:
        """Business days from `start` (inclusive) forwards (step 1) or backwards (step -1)."""
        day = start
        for _ in range(MAX_SEARCH_DAYS):
            if self.is_business_day(day):
                yield day
            day += timedelta(days=step)
        raise CalendarError("no business day within ten years: check the hours and closed days")

    def close_on_or_before(self, day: date) -> datetime:
        """The close of business on `day`, or of the last business day before it (UTC)."""
        last = next(iter(self.business_days(day, -1)))
        window = self.window(last)
        assert window is not None
        return window[1]


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to the business calendar; use aware datetimes")
    return moment


def _utc(moment: datetime) -> datetime:
    return _aware(moment).astimezone(timezone.utc)


def add_business_time(start: datetime, minutes: int, calendar: BusinessCalendar) -> datetime:
    """The moment `minutes` of business time after `start` (before it when negative), in UTC.

    A result that falls exactly on a close is the close, not the next opening: the earlier
    of two moments with no business time between them.
    """
    moment = _utc(start)
    if minutes < 0:
        return _subtract_business_time(moment, -minutes, calendar)
    remaining = timedelta(minutes=minutes)
    if not remaining:
        return moment
    for day in calendar.business_days(calendar.local_date(moment) - timedelta(days=1)):
        opens, closes = calendar.window(day)  # type: ignore[misc]
        if moment >= closes:
            continue
        cursor = max(moment, opens)
        if remaining <= closes - cursor:
            return cursor + remaining
        remaining -= closes - cursor
    raise AssertionError("unreachable: business_days raises first")


def _subtract_business_time(moment: datetime, minutes: int, calendar: BusinessCalendar) -> datetime:
    remaining = timedelta(minutes=minutes)
    for day in calendar.business_days(calendar.local_date(moment) + timedelta(days=1), -1):
        opens, closes = calendar.window(day)  # type: ignore[misc]
        if moment <= opens:
            continue
        cursor = min(moment, closes)
        if remaining <= cursor - opens:
            result = cursor - remaining
            # landing on an opening: the close of the business day before is the same moment
            return _previous_close(day, calendar) if result == opens else result
        remaining -= cursor - opens
    raise AssertionError("unreachable: business_days raises first")


def _previous_close(day: date, calendar: BusinessCalendar) -> datetime:
    return calendar.close_on_or_before(day - timedelta(days=1))


def business_minutes_between(a: datetime, b: datetime, calendar: BusinessCalendar) -> int:
    """Whole business minutes from `a` to `b` (negative when `b` is earlier)."""
    start, end = _utc(a), _utc(b)
    if end < start:
        return -business_minutes_between(b, a, calendar)
    total = timedelta(0)
    day = calendar.local_date(start) - timedelta(days=1)
    last = calendar.local_date(end) + timedelta(days=1)
    while day <= last:
        window = calendar.window(day)
        if window is not None:
            overlap = min(end, window[1]) - max(start, window[0])
            if overlap > timedelta(0):
                total += overlap
        day += timedelta(days=1)
    return int(total.total_seconds() // 60)


def business_position(moment: datetime, calendar: BusinessCalendar) -> tuple[date, timedelta]:
    """The business day a moment belongs to and how far into its hours it is, in (0, length].

    Outside business hours a moment belongs to the close of the last business day before it.
    """
    utc = _utc(moment)
    for day in calendar.business_days(calendar.local_date(utc) + timedelta(days=1), -1):
        opens, closes = calendar.window(day)  # type: ignore[misc]
        if utc > opens:
            return day, min(utc, closes) - opens
    raise AssertionError("unreachable: business_days raises first")


def add_business_days(start: datetime, days: int, calendar: BusinessCalendar) -> datetime:
    """The same position in the business day `days` business days later (earlier if negative)."""
    if days == 0:
        return _utc(start)
    day, offset = business_position(start, calendar)
    step = 1 if days > 0 else -1
    iterator = iter(calendar.business_days(day + timedelta(days=step), step))
    target = day
    for _ in range(abs(days)):
        target = next(iterator)
    return _at(target, offset, calendar)


def _at(day: date, offset: timedelta, calendar: BusinessCalendar) -> datetime:
    opens, closes = calendar.window(day)  # type: ignore[misc]
    return min(opens + offset, closes)


def add_duration(start: datetime, duration: Duration, calendar: BusinessCalendar) -> datetime:
    """Business days first, then business minutes; a zero duration is the start itself."""
    moment = add_business_days(start, duration.days, calendar) if duration.days else _utc(start)
    return add_business_time(moment, duration.minutes, calendar)


def next_business_day_before(moment: datetime, calendar: BusinessCalendar) -> datetime:
    """One business day before `moment`, at the same business position (reminders use it)."""
    return add_business_days(moment, -1, calendar)
