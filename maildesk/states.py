"""Rows as the pure core sees them: a User as an Actor, a Ticket as a TicketState.

Shared by the pipeline (tickets, handle) and notifications (which list the commands each
recipient could send now).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session

from maildesk import store
from maildesk.core.workflow import Actor, Role, Status, TicketState, possible_commands
from maildesk.models import Ticket, User


def actor_of(user: User, *, session: Session) -> Actor:
    organisation = None
    if user.organisation_id is not None:
        row = store.organisation(user.organisation_id, session=session)
        organisation = row.name if row else None
    role = Role(user.role) if user.role in {role.value for role in Role} else Role.CUSTOMER
    return Actor(address=user.address, role=role, organisation=organisation, responsible=user.responsible)


def state_of(ticket: Ticket, *, session: Session) -> TicketState:
    organisation = None
    if ticket.organisation_id is not None:
        row = store.organisation(ticket.organisation_id, session=session)
        organisation = row.name if row else None
    return TicketState(key=ticket.key, status=Status(ticket.status), reporter=ticket.reporter,
                       organisation=organisation, agent=ticket.agent, type=ticket.type,
                       status_changed_at=ticket.status_changed_at)


def possible_for(ticket: Ticket, user: User, *, session: Session, now: datetime, reopen_days: int) -> list[str]:
    return list(possible_commands(state_of(ticket, session=session), actor_of(user, session=session), now,
                                  timedelta(days=reopen_days)))
