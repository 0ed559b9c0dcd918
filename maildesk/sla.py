"""Service levels: what each organisation is promised, and the business calendar it counts in.

Where it sits in the flow: the admin manages levels and closed days from the command line
(`maildesk sla ...`); `maildesk.timers` asks `level_for(ticket)` and `calendar_for(level)`
when it (re)computes a ticket's deadlines. This is the only module that imports `holidays`.

Durations (see `maildesk.core.calendar`): `4h` and `90m` are business time; `2d`, `5d` are
business days, where "5d" ends on the 5th business day after the start at the same position
within that day's hours (a Friday 16:30 start with a 5-day term ends the 5th business day
after, at 16:30). Public holidays come from `holidays` for the level's country, including the
days off it moves and the Saturdays worked in exchange; the admin adds other closed days.
An organisation without a level gets MAILDESK_DEFAULT_SERVICE_LEVEL, or the workflow.md
defaults when no level of that name exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
from sqlalchemy import select
from sqlmodel import Session

from maildesk import store
from maildesk.config import Settings
from maildesk.core.calendar import BusinessCalendar, CalendarError, Duration, format_hours, parse_duration, parse_hours
from maildesk.models import ClosedDay, Organisation, ServiceLevel, Ticket

YEARS_AROUND = (-1, 3)  # holidays are loaded for these years around a deadline's start


class SlaError(ValueError):
    """A service-level request the admin must correct; the message says what is wrong."""


@dataclass(frozen=True)
class Level:
    """A service level with its texts parsed: what the timers compute with."""

    name: str
    first_response: Duration
    work_start: Duration
    acceptance_term: Duration
    hours: tuple[tuple[int, time, time], ...]
    timezone: str
    holidays: str
    stored: bool = True

    def row(self) -> dict[str, object]:
        """The level as `maildesk sla list --json` shows it."""
        return {"name": self.name, "first_response": str(self.first_response), "work_start": str(self.work_start),
                "acceptance_term": str(self.acceptance_term),
                "hours": format_hours({day: (opens, closes) for day, opens, closes in self.hours}),
                "timezone": self.timezone, "holidays": self.holidays, "stored": self.stored}


def parse_level(row: ServiceLevel) -> Level:
    """A stored row as a Level; raises SlaError naming the field that cannot be read."""
    try:
        hours = parse_hours(row.hours)
        durations = [parse_duration(text) for text in (row.first_response, row.work_start, row.acceptance_term)]
    except CalendarError as error:
        raise SlaError(f"service level {row.name!r}: {error}") from None
    return Level(row.name, *durations, tuple((day, *span) for day, span in sorted(hours.items())),
                 row.timezone, row.holidays)


def default_level(name: str) -> Level:
    """workflow.md's defaults, for a default level that the admin has not stored."""
    row = ServiceLevel(name=name, first_response="4h", work_start="2d", acceptance_term="5d",
                       hours="Mon-Fri 09:00-17:00", timezone="Europe/Riga", holidays="LV")
    level = parse_level(row)
    return Level(**{**level.__dict__, "stored": False})


def find_level(name: str, *, session: Session) -> ServiceLevel | None:
    """The level's row; remembered for the session (every new ticket asks), a miss too."""
    cache: dict[str, ServiceLevel | None] = session.info.setdefault("levels", {})
    name = name.strip()
    if name not in cache:
        cache[name] = session.execute(select(ServiceLevel).where(ServiceLevel.name == name)).scalars().first()
    return cache[name]


def level_named(name: str, *, session: Session, settings: Settings) -> Level:
    row = find_level(name, session=session)
    if row is not None:
        parsed: dict[str, Level] = session.info.setdefault("parsed_levels", {})
        if row.name not in parsed:  # every new ticket asks; add_level forgets them
            parsed[row.name] = parse_level(row)
        return parsed[row.name]
    if name == settings.default_service_level:
        return default_level(name)
    raise SlaError(f"no service level {name!r}: add it with `maildesk sla add`")


def level_for(ticket: Ticket, *, session: Session, settings: Settings) -> Level:
    """The ticket's organisation's level, else the default level."""
    organisation = store.organisation(ticket.organisation_id, session=session)
    name = organisation.service_level if organisation and organisation.service_level else None
    if name and find_level(name, session=session) is not None:
        return level_named(name, session=session, settings=settings)
    return level_named(settings.default_service_level, session=session, settings=settings)


@lru_cache(maxsize=64)
def _public_days(country: str, years: tuple[int, ...]) -> tuple[frozenset[date], frozenset[date]]:
    """Days off (holidays and moved days) and weekend days worked instead, from `holidays`."""
    if not country:
        return frozenset(), frozenset()
    calendar = holidays.country_holidays(country, years=years)
    return frozenset(calendar.keys()), frozenset(getattr(calendar, "weekend_workdays", ()) or ())


def calendar_for(level: Level, around: datetime, *, session: Session) -> BusinessCalendar:
    """The level's business calendar for the years around `around` (holidays + closed days)."""
    year = around.year
    years = tuple(range(year + YEARS_AROUND[0], year + YEARS_AROUND[1] + 1))
    public, worked = _public_days(level.holidays, years)
    extra = closed_days(session=session)
    return BusinessCalendar(level.timezone, {day: (opens, closes) for day, opens, closes in level.hours},
                            closed=public | extra, open_dates=worked - extra)


def closed_days(*, session: Session) -> frozenset[date]:
    """The days the desk closed, read once per session (every deadline computation needs them)."""
    if "closed_days" not in session.info:
        session.info["closed_days"] = frozenset(session.execute(select(ClosedDay.day)).scalars())
    return session.info["closed_days"]  # type: ignore[no-any-return]


def add_level(name: str, *, session: Session, first_response: str, work_start: str, acceptance_term: str,
              hours: str, timezone: str, country: str, now: datetime, replace: bool = False) -> Level:
    """Store a level after checking every field; with `replace`, change an existing one."""
    _check_country(country)
    _check_timezone(timezone)
    row = find_level(name, session=session)
    if row is not None and not replace:
        raise SlaError(f"service level {name!r} already exists (use --replace to change it)")
    row = row or ServiceLevel(name=name.strip(), created_at=now)
    row.first_response, row.work_start, row.acceptance_term = first_response, work_start, acceptance_term
    row.hours, row.timezone, row.holidays = hours, timezone, country.upper()
    level = parse_level(row)
    if not level.name or len(level.name) > 100:
        raise SlaError("a service level needs a name of 1-100 characters")
    session.add(row)
    session.flush()
    session.info.pop("levels", None)
    session.info.pop("parsed_levels", None)
    return level


def list_levels(*, session: Session, settings: Settings) -> list[Level]:
    """Every stored level, and the default one even when it is only built in."""
    rows = [parse_level(row) for row in session.execute(select(ServiceLevel).order_by(ServiceLevel.name)).scalars()]
    if not any(level.name == settings.default_service_level for level in rows):
        rows.insert(0, default_level(settings.default_service_level))
    return rows


def close_day(day: date, reason: str, *, session: Session, now: datetime) -> bool:
    """Mark a day closed for every level; False when it already was."""
    if session.get(ClosedDay, day) is not None:
        return False
    session.add(ClosedDay(day=day, reason=reason[:200], created_at=now))
    session.flush()
    session.info.pop("closed_days", None)
    return True


def set_organisation_level(organisation: str, level: str, *, session: Session, settings: Settings) -> Organisation:
    """Give an organisation a level (which must exist, or be the default one)."""
    row = store.find_organisation(organisation, session=session)
    if row is None:
        raise SlaError(f"no organisation {organisation!r}")
    level_named(level, session=session, settings=settings)
    row.service_level = level.strip()
    session.add(row)
    session.flush()
    return row


def organisations_using(level: str, *, session: Session, settings: Settings) -> Iterable[int | None]:
    """Organisation ids whose tickets count in `level` (None: tickets with no organisation)."""
    ids = [row.id for row in session.execute(select(Organisation)).scalars()
           if (row.service_level or settings.default_service_level) == level]
    return [*ids, None] if level == settings.default_service_level else ids


def _check_country(country: str) -> None:
    if not country:
        return
    try:
        holidays.country_holidays(country.upper(), years=2026)
    except NotImplementedError:
        raise SlaError(f"the holidays package knows no country {country!r} (use e.g. LV, or '' for none)") from None


def _check_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SlaError(f"unknown time zone {name!r} (use an IANA name such as Europe/Riga)") from None
