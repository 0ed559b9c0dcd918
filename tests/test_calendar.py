"""Business time in Riga: weekends, Latvian holidays (moved days too), and both DST changes."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from maildesk.core.calendar import (
    BusinessCalendar, CalendarError, Duration, add_business_days, add_business_time, add_duration,
    business_minutes_between, format_hours, next_business_day_before, parse_duration, parse_hours,
)
from maildesk.sla import _public_days

RIGA = ZoneInfo("Europe/Riga")
CLOSED, WORKED = _public_days("LV", (2024, 2025, 2026, 2027))
LV = BusinessCalendar("Europe/Riga", parse_hours("Mon-Fri 09:00-17:00"), closed=CLOSED, open_dates=WORKED)
PLAIN = BusinessCalendar("Europe/Riga", parse_hours("Mon-Fri 09:00-17:00"))


def riga(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=RIGA)


@pytest.mark.parametrize("day, why", [
    (date(2026, 11, 18), "Proclamation Day"),
    (date(2024, 5, 6), "4 May 2024 was a Saturday: moved to Monday 6 May"),
    (date(2025, 5, 5), "4 May 2025 was a Sunday: moved to Monday 5 May"),
    (date(2026, 6, 23), "Līgo"),
    (date(2026, 6, 24), "Jāņi"),
    (date(2026, 6, 22), "the day off before Līgo, worked on Saturday 27 June"),
    (date(2026, 12, 24), "Christmas Eve"),
])
def test_latvian_holidays_from_the_holidays_package_close_the_desk(day: date, why: str) -> None:
    assert day in CLOSED, why
    assert not LV.is_business_day(day)


def test_a_saturday_worked_in_exchange_for_a_moved_day_off_is_a_business_day() -> None:
    assert date(2026, 6, 27) in WORKED and LV.is_business_day(date(2026, 6, 27))
    assert LV.window(date(2026, 6, 27)) == (riga(2026, 6, 27, 9).astimezone(timezone.utc),
                                            riga(2026, 6, 27, 17).astimezone(timezone.utc))


@pytest.mark.parametrize("start, days, expected", [
    # Friday 16:30 with a 5-day term: the weekend does not count
    (riga(2026, 11, 6, 16, 30), 5, riga(2026, 11, 13, 16, 30)),
    # ... and 18 November (Wednesday) is skipped as well
    (riga(2026, 11, 13, 16, 30), 5, riga(2026, 11, 23, 16, 30)),
    # 4 May 2024 fell on a Saturday; Monday 6 May was the day off
    (riga(2024, 5, 3, 16, 30), 1, riga(2024, 5, 7, 16, 30)),
    # 4 May 2025 fell on a Sunday; 2 May (moved) and 5 May (observed) were days off
    (riga(2025, 4, 30, 16, 30), 1, riga(2025, 5, 6, 16, 30)),
    # Līgo and Jāņi (and the moved day before them), with Saturday 27 June 2026 worked
    (riga(2026, 6, 19, 10), 1, riga(2026, 6, 25, 10)),
    (riga(2026, 6, 26, 10), 1, riga(2026, 6, 27, 10)),
    # outside business hours a day counts from the close of the last business day
    (riga(2026, 11, 6, 18, 0), 1, riga(2026, 11, 9, 17)),
    (riga(2026, 11, 9, 8, 0), 1, riga(2026, 11, 9, 17)),
    (riga(2026, 11, 7, 12, 0), 5, riga(2026, 11, 13, 17)),
    # backwards: the reminder one business day before
    (riga(2026, 11, 23, 16, 30), -1, riga(2026, 11, 20, 16, 30)),
    (riga(2026, 11, 19, 16, 30), -1, riga(2026, 11, 17, 16, 30)),
])
def test_business_days_keep_the_position_within_the_day(start: datetime, days: int, expected: datetime) -> None:
    assert add_business_days(start, days, LV) == expected.astimezone(timezone.utc)


@pytest.mark.parametrize("start, minutes, expected", [
    (riga(2026, 11, 10, 10), 240, riga(2026, 11, 10, 14)),
    (riga(2026, 11, 13, 16), 240, riga(2026, 11, 16, 12)),        # over a weekend
    (riga(2026, 11, 17, 16), 240, riga(2026, 11, 19, 12)),        # over 18 November
    (riga(2026, 11, 14, 11), 480, riga(2026, 11, 16, 17)),        # a Saturday start: ends at Monday's close
    (riga(2026, 11, 16, 12), 0, riga(2026, 11, 16, 12)),
    # spring forward: Sunday 29 March 2026 03:00 EET -> 04:00 EEST
    (riga(2026, 3, 27, 16), 240, riga(2026, 3, 30, 12)),
    # fall back: Sunday 25 October 2026 04:00 EEST -> 03:00 EET
    (riga(2026, 10, 23, 15), 240, riga(2026, 10, 26, 11)),
    # backwards across both changes; landing on an opening gives the previous close
    (riga(2026, 3, 30, 12), -60, riga(2026, 3, 30, 11)),
    (riga(2026, 3, 30, 10), -60, riga(2026, 3, 27, 17)),
    (riga(2026, 10, 26, 10), -120, riga(2026, 10, 23, 16)),
])
def test_business_time_counts_only_open_hours_in_local_time(start: datetime, minutes: int,
                                                            expected: datetime) -> None:
    assert add_business_time(start, minutes, LV) == expected.astimezone(timezone.utc)


def test_the_wall_clock_hours_hold_on_both_sides_of_a_dst_change() -> None:
    before, after = LV.window(date(2026, 3, 27)), LV.window(date(2026, 3, 30))
    assert before is not None and after is not None
    assert (before[0].hour, after[0].hour) == (7, 6)  # 09:00 in UTC+2, then in UTC+3
    autumn_before, autumn_after = LV.window(date(2026, 10, 23)), LV.window(date(2026, 10, 26))
    assert autumn_before is not None and autumn_after is not None
    assert (autumn_before[0].hour, autumn_after[0].hour) == (6, 7)


@pytest.mark.parametrize("a, b, minutes", [
    (riga(2026, 3, 27, 16), riga(2026, 3, 30, 12), 240),
    (riga(2026, 10, 23, 15), riga(2026, 10, 26, 11), 240),
    (riga(2026, 11, 13, 16, 30), riga(2026, 11, 23, 16, 30), 5 * 480),
    (riga(2026, 11, 14, 10), riga(2026, 11, 15, 10), 0),
    (riga(2026, 11, 16, 12), riga(2026, 11, 16, 10), -120),
])
def test_business_minutes_between(a: datetime, b: datetime, minutes: int) -> None:
    assert business_minutes_between(a, b, LV) == minutes


def test_durations_and_hours_read_and_print() -> None:
    assert parse_duration("4h") == Duration(0, 240)
    assert parse_duration("2d") == Duration(2, 0)
    assert parse_duration("1d 4h30m") == Duration(1, 270)
    assert str(parse_duration("90m")) == "1h30m"
    hours = parse_hours("Mon-Thu 08:00-17:00; Fri 08:00-15:00")
    assert hours[0] == (time(8), time(17)) and hours[4] == (time(8), time(15)) and 5 not in hours
    assert format_hours(hours) == "Mon-Thu 08:00-17:00; Fri 08:00-15:00"


@pytest.mark.parametrize("text", ["", "4x", "h", "-2d", "4 hours"])
def test_unreadable_durations_are_refused(text: str) -> None:
    with pytest.raises(CalendarError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["Mon-Fri", "Mon-Fri 17:00-09:00", "Xyz 09:00-17:00", "Fri-Mon 09:00-17:00",
                                  "Mon 25:00-26:00"])
def test_unreadable_hours_are_refused(text: str) -> None:
    with pytest.raises(CalendarError):
        parse_hours(text)


def test_a_short_friday_clips_the_position() -> None:
    calendar = BusinessCalendar("Europe/Riga", parse_hours("Mon-Thu 09:00-17:00; Fri 09:00-13:00"))
    assert add_business_days(riga(2026, 11, 12, 16), 1, calendar) == riga(2026, 11, 13, 13).astimezone(timezone.utc)


def test_mixed_durations_and_the_reminder_helper() -> None:
    start = riga(2026, 11, 13, 16, 30)
    assert add_duration(start, Duration(1, 60), PLAIN) == riga(2026, 11, 17, 9, 30).astimezone(timezone.utc)
    assert next_business_day_before(riga(2026, 11, 16, 16, 30), PLAIN) == riga(2026, 11, 13, 16, 30).astimezone(
        timezone.utc)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        add_business_time(datetime(2026, 11, 16, 12), 60, PLAIN)


def test_a_calendar_with_no_business_day_stops_with_an_error() -> None:
    never = BusinessCalendar("Europe/Riga", parse_hours("Mon 09:00-17:00"),
                             closed=frozenset(date(2026, 1, 5) + timedelta(weeks=n) for n in range(600)))
    with pytest.raises(CalendarError):
        add_business_time(riga(2026, 1, 1, 12), 60, never)
