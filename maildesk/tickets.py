"""Ticket rows changed by workflow decisions: shared by mail, the command line and timers.

`apply_decision` is the one place a Decision touches the database: status, holder, agent,
estimate, the audit event and the notices, all in the caller's session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session

from maildesk import deadlines, rows, store
from maildesk.config import Settings
from maildesk.core.workflow import Audience, Command, Decision, DEFAULT_TYPE, Holder, Rejected, Role, Status
from maildesk.models import Event, Ticket, User
from maildesk.notify import Notifier, Thread, new_message_id

CREATED = "CREATE"
TICKET_COLUMNS = tuple(column.name for column in Ticket.__table__.columns if column.name != "id")  # type: ignore[attr-defined]


@dataclass(frozen=True)
class NewTicketData:
    reporter: User
    summary: str
    description: str
    type: str | None
    channel: str
    thread_id: str


def create_ticket(data: NewTicketData, *, session: Session, settings: Settings, now: datetime,
                  actor: str) -> Ticket:
    """A new OPEN ticket in the agents' queue; the key comes from its never-reused id.

    The row is written whole, deadlines included, with one INSERT and the key's UPDATE; the
    ticket then joins the session as a persistent object, so later changes are saved with it.
    The values are ours, so the object is built without SQLModel's validation (`rows.new_object`).
    """
    ticket = rows.new_object(Ticket, dict(
        key=f"new-{secrets.token_hex(8)}", type=data.type or DEFAULT_TYPE,  # until the id is known
        summary=data.summary.strip()[:1000] or "(no subject)", description=data.description,
        status=Status.OPEN.value, reporter=data.reporter.address, organisation_id=data.reporter.organisation_id,
        holder=Holder.QUEUE.value, channel=data.channel, thread_id=data.thread_id, created_at=now, updated_at=now,
        status_changed_at=now, estimate_version=0))
    deadlines.on_status_change(ticket, session=session, settings=settings, now=now)
    ticket.id = rows.insert_one(Ticket, {name: getattr(ticket, name) for name in TICKET_COLUMNS}, session=session)
    ticket.key = f"{settings.ticket_prefix}-{ticket.id}"
    rows.update_by_id(Ticket, ticket.id, {"key": ticket.key}, session=session)
    make_transient_to_detached(ticket)
    session.add(ticket)
    store.remember_ticket(ticket, session=session)
    store.add_event(session=session, ticket_id=ticket.id, at=now, actor=actor, command=CREATED,
                    to_status=Status.OPEN.value, reason=f"opened by {data.channel}")
    return ticket


def apply_decision(ticket: Ticket, decision: Decision, *, session: Session, notifier: Notifier,
                   actor: str, now: datetime, thread: Thread, line: str, comment: str = "",
                   told: set[str] | None = None, reason: str = "") -> None:
    """Write what a Decision says and queue its notices, in the caller's transaction."""
    request = decision.request
    if decision.changes_status:
        ticket.status = decision.to_status.value
        ticket.status_changed_at = now
    if decision.holder is not None:
        ticket.holder = decision.holder.value
        ticket.assignee = _assignee(ticket, decision)
    ticket.agent = decision.agent
    if request.command == Command.ESTIMATE:
        ticket.estimate_minutes, ticket.due_date = request.minutes, request.due
        ticket.estimate_version += 1
    elif request.command == Command.TYPE:
        ticket.type = request.argument
    elif request.command == Command.ASSIGN:
        ticket.assignee, ticket.holder = request.argument, Holder.AGENT.value
    ticket.updated_at = now
    session.add(ticket)
    if decision.changes_status:
        deadlines.on_status_change(ticket, session=session, settings=notifier.settings, now=now)
    store.add_event(session=session, ticket_id=ticket.id, at=now, actor=actor, command=line or request.command.value,
                    from_status=decision.from_status.value, to_status=decision.to_status.value, reason=reason)
    extra = {"from_status": decision.from_status.value, "to_status": decision.to_status.value, "comment": comment}
    notifier.notify(ticket, decision.notices, session=session, actor=actor, now=now, thread=thread,
                    extra=extra, already=told)


def _assignee(ticket: Ticket, decision: Decision) -> str | None:
    if decision.holder == Holder.AGENT:
        return decision.agent
    if decision.holder == Holder.REPORTER:
        return ticket.reporter
    return None


def refuse(ticket: Ticket | None, rejected: Rejected, *, session: Session, notifier: Notifier, sender: User,
           now: datetime, thread: Thread, line: str, processed: tuple[str, ...] = (),
           ignored: tuple[str, ...] = ()) -> None:
    """Log a refused command and tell its sender what was understood and why it was refused."""
    label = line or (rejected.request.command.value if rejected.request else "COMMENT")
    store.add_event(session=session, ticket_id=ticket.id if ticket else None, at=now, actor=sender.address,
                    command=label, from_status=rejected.status.value,
                    to_status=rejected.status.value, outcome="refused", reason=rejected.reason)
    extra = {
        "refusal": {"command": label, "reason_code": rejected.reason_code,
                    "reason": rejected.reason, "processed": list(processed), "ignored": list(ignored)},
        "possible_commands": list(rejected.possible),
    }
    notifier.queue("command_refused", notifier.recipient_for(sender, session=session), ticket=ticket,
                   session=session, actor="", now=now, thread=thread, extra=extra)


def add_customer(address: str, name: str, organisation_id: int | None, *, session: Session,
                 now: datetime) -> User:
    user = User(address=address.lower(), name=name, role=Role.CUSTOMER.value, organisation_id=organisation_id,
                created_at=now)
    session.add(user)
    session.flush()
    store.forget_users(session=session)
    return user


def notices_for_new_ticket() -> tuple[tuple[str, Audience], ...]:
    return (("ticket_created", Audience.ACTOR), ("ticket_announced", Audience.AGENTS))


def events_of(ticket: Ticket, *, session: Session) -> list[Event]:
    query = select(Event).where(Event.ticket_id == ticket.id).order_by(Event.id)  # type: ignore[arg-type]
    return list(session.exec(query).scalars())  # type: ignore[call-overload]


def open_for_caller(reporter: User, agent: User, summary: str, description: str, ticket_type: str | None, *,
                    session: Session, settings: Settings, notifier: Notifier, now: datetime) -> Ticket:
    """The phone channel: an agent opens a ticket on the caller's behalf; the caller is told."""

    thread_id = new_message_id(settings, None)
    ticket = create_ticket(NewTicketData(reporter=reporter, summary=summary, description=description,
                                         type=ticket_type, channel="phone", thread_id=thread_id),
                           session=session, settings=settings, now=now, actor=agent.address)
    store.add_event(session=session, ticket_id=ticket.id, at=now, actor=agent.address, command="PHONE",
                    from_status=ticket.status, to_status=ticket.status, outcome="comment",
                    reason=f"created by {agent.address} for {reporter.address}")
    notifier.notify(ticket, (("ticket_created", Audience.REPORTER), ("ticket_announced", Audience.AGENTS)),
                    session=session, actor=agent.address, now=now, thread=Thread(), extra={"channel": "phone"})
    return ticket
