"""Tickets, users and outbox rows as plain dicts: what `--json` prints and people read."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from maildesk import store
from maildesk.deadlines import deadline_view
from maildesk.models import Event, Message, OutboxItem, Ticket, User


def ticket_summary(ticket: Ticket) -> dict[str, Any]:
    return {"key": ticket.key, "status": ticket.status, "type": ticket.type, "summary": ticket.summary,
            "reporter": ticket.reporter}


def ticket_detail(ticket: Ticket, *, session: Session) -> dict[str, Any]:
    organisation = store.organisation(ticket.organisation_id, session=session)
    events = session.execute(select(Event).where(Event.ticket_id == ticket.id).order_by(Event.id)).scalars()
    messages = session.execute(select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id)).scalars()
    return {
        **ticket_summary(ticket),
        "description": ticket.description,
        "organisation": organisation.name if organisation else None,
        "assignee": ticket.assignee,
        "holder": ticket.holder,
        "agent": ticket.agent,
        "estimate_minutes": ticket.estimate_minutes,
        "due_date": ticket.due_date.isoformat() if ticket.due_date else None,
        "channel": ticket.channel,
        "created_at": ticket.created_at.isoformat(),
        "updated_at": ticket.updated_at.isoformat(),
        "status_changed_at": ticket.status_changed_at.isoformat(),
        "deadlines": deadline_view(ticket),
        "events": [{"at": event.at.isoformat(), "actor": event.actor, "command": event.command,
                    "from_status": event.from_status, "to_status": event.to_status, "outcome": event.outcome,
                    "reason": event.reason} for event in events],
        "messages": [{"direction": message.direction, "from": message.sender, "message_id": message.message_id,
                      "subject": message.subject, "internal": message.internal, "new_text": message.new_text,
                      "at": message.created_at.isoformat()} for message in messages],
    }


def user_row(user: User, organisation: str | None) -> dict[str, Any]:
    return {"address": user.address, "name": user.name, "role": user.role, "organisation": organisation,
            "responsible": user.responsible, "language": user.language}


def outbox_row(item: OutboxItem, ticket_key: str | None) -> dict[str, Any]:
    return {"id": item.id, "ticket": ticket_key, "to": json.loads(item.to_addresses), "subject": item.subject,
            "message_id": item.message_id, "in_reply_to": item.in_reply_to, "references": item.references,
            "reply_to": item.reply_to, "template": item.template, "language": item.language,
            "status": item.status, "attempts": item.attempts, "last_error": item.last_error,
            "created_at": item.created_at.isoformat(), "body_text": item.body_text}
