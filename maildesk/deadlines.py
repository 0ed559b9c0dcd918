"""A ticket's deadlines as data: computed from anchors whenever something they depend on changes.

Where it sits in the flow: the pipeline calls the hooks below in the transaction that changes
a ticket (`tickets.apply_decision` and `create_ticket` -> `on_status_change`; a human reply in
`handle` -> `on_reply`); `maildesk.timers` sweeps the columns they fill. Machine mail never
reaches these hooks: the pipeline keeps it as a note before routing (see handle.machine_mail).

Anchors are the moments a clock starts: `created_at` (first response), `estimate_accepted_at`
(work start), `acceptance_started_at` (the acceptance term in WAITING FOR CUSTOMER and READY
FOR DEPLOY). Due times are always recomputed from the anchors, so a changed service level
or a newly closed day moves every open deadline; "sent at" / "breached at" marks are kept, so
nothing fires twice.

The acceptance clock: entering WAITING FOR CUSTOMER or READY FOR DEPLOY starts it; a customer
reply stops it (no due time); the agent's next public reply starts a full new term (any later
public agent reply does too: the customer gets a full term after each new answer).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlmodel import Session

from maildesk import store
from maildesk.config import Settings
from maildesk.core.calendar import BusinessCalendar, add_business_time, add_duration, next_business_day_before
from maildesk.core.workflow import Status
from maildesk.models import Ticket
from maildesk.sla import Level, calendar_for, level_for

FINAL = (Status.CLOSED.value, Status.CANCELLED.value)
ACCEPTANCE = (Status.WAITING_FOR_CUSTOMER.value, Status.READY_FOR_DEPLOY.value)
DEADLINE_FIELDS = (
    "first_response_due_at", "first_response_warn_at", "first_response_at", "first_response_warned_at",
    "first_response_breached_at", "estimate_accepted_at", "work_start_due_at", "work_start_warn_at",
    "work_started_at", "work_start_warned_at", "work_start_breached_at", "acceptance_started_at",
    "acceptance_due_at", "reminder_due_at", "reminder_sent_at",
)


def schedule(ticket: Ticket, *, session: Session, settings: Settings) -> None:
    """Recompute every due time of an open ticket from its anchors, its level and calendar.

    Only the ticket's attributes change: a ticket of the session is saved with it, and a new
    one (`tickets.create_ticket`) gets its deadlines before its row is written.
    """
    if ticket.status in FINAL:
        ticket.acceptance_due_at = ticket.reminder_due_at = None
        return
    level = level_for(ticket, session=session, settings=settings)
    if ticket.first_response_at is None:
        calendar = calendar_for(level, ticket.created_at, session=session)
        due = add_duration(ticket.created_at, level.first_response, calendar)
        ticket.first_response_due_at = due
        ticket.first_response_warn_at = _warn_at(ticket.created_at, due, calendar, settings)
    _schedule_work_start(ticket, level, session=session, settings=settings)
    _schedule_acceptance(ticket, level, session=session)


def _schedule_work_start(ticket: Ticket, level: Level, *, session: Session, settings: Settings) -> None:
    """Work starts within the level's time after acceptance, or by the agreed due date if earlier."""
    start = ticket.estimate_accepted_at
    if start is None or ticket.work_started_at is not None:
        return
    calendar = calendar_for(level, start, session=session)
    due = add_duration(start, level.work_start, calendar)
    if ticket.due_date is not None:
        due = max(min(due, calendar.close_on_or_before(ticket.due_date)), start)
    ticket.work_start_due_at = due
    ticket.work_start_warn_at = _warn_at(start, due, calendar, settings)


def _schedule_acceptance(ticket: Ticket, level: Level, *, session: Session) -> None:
    start = ticket.acceptance_started_at
    if ticket.status not in ACCEPTANCE or start is None:
        ticket.acceptance_due_at = ticket.reminder_due_at = None
        return
    calendar = calendar_for(level, start, session=session)
    due = add_duration(start, level.acceptance_term, calendar)
    reminder = next_business_day_before(due, calendar)
    ticket.acceptance_due_at = due
    ticket.reminder_due_at = reminder if reminder > start else None


def _warn_at(start: datetime, due: datetime, calendar: BusinessCalendar, settings: Settings) -> datetime | None:
    """MAILDESK_DEADLINE_WARNING_MINUTES of business time before the deadline, never before its start."""
    if settings.deadline_warning_minutes == 0:
        return None
    return max(add_business_time(due, -settings.deadline_warning_minutes, calendar), start)


def on_status_change(ticket: Ticket, *, session: Session, settings: Settings, now: datetime) -> None:
    """The ticket just got its status (or was created): move the anchors, then recompute."""
    status = ticket.status
    if status == Status.OPEN.value and ticket.first_response_due_at is None and ticket.channel == "phone":
        ticket.first_response_at = now  # the caller spoke to the agent who opened the ticket
    if status == Status.ESTIMATE_ACCEPTED.value:
        ticket.estimate_accepted_at, ticket.work_started_at = now, None
        ticket.work_start_warned_at = ticket.work_start_breached_at = None
    elif status == Status.IN_PROGRESS.value and ticket.estimate_accepted_at and ticket.work_started_at is None:
        ticket.work_started_at = now
    if status in ACCEPTANCE:
        ticket.acceptance_started_at, ticket.reminder_sent_at = now, None
    else:
        ticket.acceptance_started_at = None
    schedule(ticket, session=session, settings=settings)


def on_customer_reply(ticket: Ticket, *, session: Session, settings: Settings, now: datetime) -> None:
    """A customer answered while the acceptance term ran: the clock stops until the agent answers."""
    if ticket.status not in ACCEPTANCE or ticket.acceptance_started_at is None:
        return
    ticket.acceptance_started_at = None
    schedule(ticket, session=session, settings=settings)
    store.add_event(session=session, ticket_id=ticket.id, at=now, actor="", command="ACCEPTANCE TERM",
                    from_status=ticket.status, to_status=ticket.status, outcome="timer",
                    reason="stopped: the customer replied")


def on_agent_reply(ticket: Ticket, *, session: Session, settings: Settings, now: datetime) -> None:
    """An agent answered the customer: the first response is made; the acceptance term restarts."""
    changed = False
    if ticket.first_response_at is None:
        ticket.first_response_at, changed = now, True
    if ticket.status in ACCEPTANCE:
        ticket.acceptance_started_at, ticket.reminder_sent_at, changed = now, None, True
        store.add_event(session=session, ticket_id=ticket.id, at=now, actor="", command="ACCEPTANCE TERM",
                        from_status=ticket.status, to_status=ticket.status, outcome="timer",
                        reason="restarted: the agent replied")
    if changed:
        schedule(ticket, session=session, settings=settings)


def on_reply(ticket: Ticket, *, agent: bool, session: Session, settings: Settings, now: datetime) -> None:
    """A person's public reply on a ticket (never machine mail, never an internal note)."""
    hook = on_agent_reply if agent else on_customer_reply
    hook(ticket, session=session, settings=settings, now=now)


def reschedule_open(*, session: Session, settings: Settings, organisation_ids: list[int | None] | None = None) -> int:
    """Recompute every open ticket (of these organisations): after a level or calendar change."""
    query = select(Ticket).where(Ticket.status.not_in(FINAL))  # type: ignore[attr-defined]
    count = 0
    for ticket in session.execute(query).scalars():
        if organisation_ids is None or ticket.organisation_id in organisation_ids:
            schedule(ticket, session=session, settings=settings)
            count += 1
    return count


def deadline_view(ticket: Ticket) -> dict[str, Any]:
    """The deadline columns as ISO-8601 UTC strings (None when unset), for `ticket show --json`."""
    values = {name: getattr(ticket, name) for name in DEADLINE_FIELDS}
    return {name: value.isoformat() if value is not None else None for name, value in values.items()}


def local_text(moment: datetime, zone_name: str) -> str:
    """A moment as people read it in notifications: local wall-clock time and the zone."""
    return f"{moment.astimezone(ZoneInfo(zone_name)):%Y-%m-%d %H:%M} ({zone_name})"
