"""Monthly figures for the service manager and the billing side, from tickets and their events.

Where it sits: read-only queries behind `maildesk report sla` and `maildesk report invoice`.
Periods are whole local dates in MAILDESK_TIMEZONE, `to` included; with no dates, the
previous calendar month.

- SLA: tickets *created* in the period, per organisation: first response and work start in
  business minutes (counted in each ticket's own service-level calendar) against the level's
  targets, how many were in time, breaches, and how many of them were auto-closed.
- Invoice: tickets that *reached* INVOICE or were auto-accepted (closed by the timer) in the
  period, with their estimates, per organisation; a ticket appears once, with its latest such
  event in the period.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import or_, select
from sqlmodel import Session

from maildesk.config import Settings
from maildesk.core.calendar import business_minutes_between
from maildesk.core.effort import format_effort
from maildesk.core.workflow import Command, Status
from maildesk.models import Event, Organisation, Ticket
from maildesk.sla import calendar_for, level_for

AUTO_ACCEPTED = "auto-accepted"
NO_ORGANISATION = "-"


@dataclass(frozen=True)
class Period:
    first: date
    last: date

    def bounds(self, settings: Settings) -> tuple[datetime, datetime]:
        """[start of `first`, start of the day after `last`) in the desk's time zone, as UTC."""
        start = datetime.combine(self.first, time(0), tzinfo=settings.tz).astimezone(timezone.utc)
        end = datetime.combine(self.last + timedelta(days=1), time(0), tzinfo=settings.tz).astimezone(timezone.utc)
        return start, end


def period(first: date | None, last: date | None, today: date) -> Period:
    """The dates asked for; missing ones default to the previous calendar month."""
    month_start = today.replace(day=1)
    previous_end = month_start - timedelta(days=1)
    return Period(first or previous_end.replace(day=1), last or previous_end)


def _organisation_names(session: Session) -> dict[int | None, str]:
    names: dict[int | None, str] = {None: NO_ORGANISATION}
    names.update({row.id: row.name for row in session.execute(select(Organisation)).scalars()})
    return names


def _average(values: list[int]) -> int | None:
    return round(sum(values) / len(values)) if values else None


def sla_report(*, session: Session, settings: Settings, span: Period, organisation: str | None = None) -> dict[str, Any]:
    start, end = span.bounds(settings)
    names = _organisation_names(session)
    query = select(Ticket).where(Ticket.created_at >= start, Ticket.created_at < end).order_by(Ticket.id)
    groups: dict[str, list[Ticket]] = defaultdict(list)
    for ticket in session.execute(query).scalars():
        name = names.get(ticket.organisation_id, NO_ORGANISATION)
        if organisation is None or name.lower() == organisation.lower():
            groups[name].append(ticket)
    auto_closed = _auto_closed_ids(session)
    rows = [_sla_row(name, tickets, auto_closed, session=session, settings=settings)
            for name, tickets in sorted(groups.items())]
    return {"from": span.first.isoformat(), "to": span.last.isoformat(), "organisations": rows}


def _auto_closed_ids(session: Session) -> set[int]:
    query = select(Event.ticket_id).where(Event.command == Command.AUTO_CLOSE.value, Event.reason == AUTO_ACCEPTED)
    return {ticket_id for ticket_id in session.execute(query).scalars() if ticket_id is not None}


def _sla_row(name: str, tickets: list[Ticket], auto_closed: set[int], *, session: Session,
             settings: Settings) -> dict[str, Any]:
    level = level_for(tickets[0], session=session, settings=settings)
    response: list[int] = []
    start: list[int] = []
    for ticket in tickets:
        calendar = calendar_for(level_for(ticket, session=session, settings=settings), ticket.created_at,
                                session=session)
        if ticket.first_response_at is not None:
            response.append(business_minutes_between(ticket.created_at, ticket.first_response_at, calendar))
        if ticket.estimate_accepted_at is not None and ticket.work_started_at is not None:
            start.append(business_minutes_between(ticket.estimate_accepted_at, ticket.work_started_at, calendar))
    return {
        "organisation": name,
        "service_level": level.name,
        "tickets": len(tickets),
        "first_response_target": str(level.first_response),
        "responded": len(response),
        "responded_in_time": sum(1 for t in tickets if t.first_response_at is not None
                                 and t.first_response_due_at is not None
                                 and t.first_response_at <= t.first_response_due_at),
        "first_response_average_minutes": _average(response),
        "first_response_breaches": sum(1 for t in tickets if t.first_response_breached_at is not None),
        "work_start_target": str(level.work_start),
        "started": len(start),
        "started_in_time": sum(1 for t in tickets if t.work_started_at is not None and t.work_start_due_at is not None
                               and t.work_started_at <= t.work_start_due_at),
        "work_start_average_minutes": _average(start),
        "work_start_breaches": sum(1 for t in tickets if t.work_start_breached_at is not None),
        "auto_closed": sum(1 for t in tickets if t.id in auto_closed),
    }


def invoice_report(*, session: Session, settings: Settings, span: Period) -> dict[str, Any]:
    start, end = span.bounds(settings)
    reached = or_(Event.to_status == Status.INVOICE.value,
                  (Event.command == Command.AUTO_CLOSE.value) & (Event.reason == AUTO_ACCEPTED))
    query = (select(Event, Ticket).join(Ticket, Event.ticket_id == Ticket.id)
             .where(Event.outcome == "applied", Event.at >= start, Event.at < end, reached)
             .order_by(Event.at, Event.id))
    latest: dict[int, tuple[Event, Ticket]] = {}
    for event, ticket in session.execute(query):
        latest[ticket.id] = (event, ticket)  # type: ignore[index]
    names = _organisation_names(session)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event, ticket in sorted(latest.values(), key=lambda pair: pair[1].id or 0):
        groups[names.get(ticket.organisation_id, NO_ORGANISATION)].append({
            "key": ticket.key, "summary": ticket.summary, "type": ticket.type,
            "estimate_minutes": ticket.estimate_minutes,
            "estimate": format_effort(ticket.estimate_minutes) if ticket.estimate_minutes else "",
            "due_date": ticket.due_date.isoformat() if ticket.due_date else None,
            "reached": AUTO_ACCEPTED if event.to_status == Status.CLOSED.value else Status.INVOICE.value,
            "at": event.at.astimezone(settings.tz).date().isoformat(),
        })
    rows = [{"organisation": name, "tickets": tickets, "count": len(tickets),
             "estimate_minutes": sum(row["estimate_minutes"] or 0 for row in tickets)}
            for name, tickets in sorted(groups.items())]
    return {"from": span.first.isoformat(), "to": span.last.isoformat(), "organisations": rows}
