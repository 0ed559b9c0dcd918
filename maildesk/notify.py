"""Decisions -> rendered notifications -> outbox rows, in the caller's transaction.

A notice names a template and an audience; this module finds the people, picks each one's
language (user, then organisation, then the service default), renders the template and
writes one outbox row per recipient, with its own Message-ID and the thread's headers.
The person who caused a change is not told about it, and nobody gets two mails for one
event.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from maildesk import rows, store
from maildesk.compose import header_safe
from maildesk.config import Settings
from maildesk.core.effort import format_effort
from maildesk.core.tokens import make_token, message_id_with_token, reply_address
from maildesk.core.workflow import Audience
from maildesk.models import Message, OutboxItem, Ticket, User
from maildesk.render import Renderer
from maildesk.states import possible_for

TOKEN_PURPOSES = {"estimate_request": "estimate"}
NEVER_MAIL = re.compile(r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|abuse|root)@", re.IGNORECASE)


@dataclass(frozen=True)
class Recipient:
    address: str
    name: str
    role: str
    language: str


@dataclass(frozen=True)
class Thread:
    """Where a notification belongs in the mail thread."""

    in_reply_to: str = ""
    references: tuple[str, ...] = ()


def new_message_id(settings: Settings, ticket_key: str | None) -> str:
    label = (ticket_key or "maildesk").lower()
    return f"<{label}.{secrets.token_hex(10)}@{settings.support_domain}>"


class Notifier:
    """Renders and queues notifications; one per pipeline, stateless between calls."""

    def __init__(self, settings: Settings, renderer: Renderer) -> None:
        self.settings = settings
        self.renderer = renderer

    def recipient_for(self, user: User, *, session: Session) -> Recipient:
        return Recipient(user.address, user.name, user.role, self.language_of(user, session=session))

    def language_of(self, user: User | None, *, session: Session) -> str:
        if user is not None and user.language:
            return user.language
        if user is not None and user.organisation_id is not None:
            organisation = store.organisation(user.organisation_id, session=session)
            if organisation is not None and organisation.language:
                return organisation.language
        return self.settings.language

    def audience(self, ticket: Ticket, audience: Audience, actor: str, *, session: Session) -> list[User]:
        """The users an audience names for this ticket."""
        if audience == Audience.REPORTER:
            reporter = store.find_user(ticket.reporter, session=session)
            return [reporter] if reporter else []
        if audience == Audience.RESPONSIBLE:
            return store.responsible_representatives(ticket.organisation_id, session=session)
        if audience == Audience.AGENT and ticket.agent:
            agent = store.find_user(ticket.agent, session=session)
            if agent is not None:
                return [agent]
        if audience in (Audience.AGENT, Audience.AGENTS):
            return store.agents(session=session)
        actor_user = store.find_user(actor, session=session)
        return [actor_user] if actor_user else []

    def notify(self, ticket: Ticket, notices: Iterable[tuple[str, Audience]], *, session: Session,
               actor: str, now: datetime, thread: Thread, extra: Mapping[str, Any] | None = None,
               already: set[str] | None = None) -> list[int]:
        """Queue each notice for its audience, skipping the actor and anyone already told."""
        told = already if already is not None else set()
        queued: list[int] = []
        for template, audience in notices:
            for user in self.audience(ticket, audience, actor, session=session):
                if user.address in told or (user.address == actor and audience != Audience.ACTOR):
                    continue
                told.add(user.address)
                queued.append(self.queue(template, self.recipient_for(user, session=session), ticket=ticket,
                                         session=session, actor=actor, now=now, thread=thread, extra=extra))
        return queued

    def queue(self, template: str, recipient: Recipient, *, ticket: Ticket | None, session: Session,
              actor: str, now: datetime, thread: Thread, extra: Mapping[str, Any] | None = None,
              token_purpose: str | None = None) -> int:
        """Render one notification for one person and add it to the outbox (and the thread); the outbox id.

        Mail about a ticket carries the recipient's reply token in its Reply-To and its
        Message-ID, so that the answer proves which notification it answers, and to whom it went.
        """
        context = self.context(ticket, recipient, actor, session=session)
        reply_to, message_id = self.addresses(ticket, recipient, token_purpose or TOKEN_PURPOSES.get(template, "reply"))
        context["reply_address"] = reply_to
        context.update(extra or {})
        rendered = self.renderer.render(template, recipient.language, context)
        references = tuple(dict.fromkeys(ref for ref in (*thread.references, thread.in_reply_to) if ref))
        never = NEVER_MAIL.match(recipient.address) is not None
        subject = header_safe(rendered.subject, 300)
        ticket_id = ticket.id if ticket is not None else None
        outbox_id = rows.insert_one(OutboxItem, dict(
            ticket_id=ticket_id, message_id=message_id, in_reply_to=thread.in_reply_to,
            references=" ".join(references), to_addresses=json.dumps([recipient.address]), reply_to=reply_to,
            subject=subject, template=template, language=recipient.language, body_text=rendered.text,
            body_html=rendered.html, status="failed" if never else "pending", attempts=0,
            last_error="never mailed: a machine address" if never else "", recipient_results="{}",
            next_attempt_at=now, created_at=now), session=session)
        if ticket is not None:  # the thread shows outgoing mail too; linked by its Message-ID
            rows.insert_one(Message, dict(
                ticket_id=ticket_id, direction="out", message_id=message_id, in_reply_to=thread.in_reply_to,
                sender=self.settings.support_address, subject=subject, new_text=rendered.text,
                full_text=rendered.text, created_at=now, internal=recipient.role != "customer", unverified=False,
                outbox_id=outbox_id), session=session)
        return outbox_id

    def addresses(self, ticket: Ticket | None, recipient: Recipient, purpose: str) -> tuple[str, str]:
        """Reply-To and Message-ID: with the recipient's token when the mail is about a ticket."""
        if ticket is None:
            return self.settings.support_address, new_message_id(self.settings, None)
        version = ticket.estimate_version if purpose == "estimate" else 0
        token = make_token(self.settings.secret_key.encode("utf-8"), ticket=ticket.key, recipient=recipient.address,
                           purpose=purpose, version=version)
        return (reply_address(self.settings.support_address, token, self.settings.address_separator),
                message_id_with_token(token, self.settings.support_domain, secrets.token_hex(8)))

    def context(self, ticket: Ticket | None, recipient: Recipient, actor: str, *,
                session: Session) -> dict[str, Any]:
        actor_user = store.find_user(actor, session=session) if actor else None
        return {
            "ticket": ticket_context(ticket, session=session) if ticket is not None else None,
            "recipient": {"address": recipient.address, "name": recipient.name, "role": recipient.role,
                          "language": recipient.language},
            "actor": {"address": actor, "name": actor_user.name if actor_user else ""},
            "support_address": self.settings.support_address,
            "reply_address": self.settings.support_address,
            "possible_commands": self.possible(ticket, recipient, session=session),
        }

    def possible(self, ticket: Ticket | None, recipient: Recipient, *, session: Session) -> list[str]:
        """What the recipient could reply with now, so every mail says it."""
        user = store.find_user(recipient.address, session=session) if ticket is not None else None
        if ticket is None or user is None:
            return []
        return possible_for(ticket, user, session=session, now=ticket.updated_at, reopen_days=self.settings.reopen_days)


def ticket_context(ticket: Ticket, *, session: Session) -> dict[str, Any]:
    reporter = store.find_user(ticket.reporter, session=session)
    organisation = store.organisation(ticket.organisation_id, session=session)
    return {
        "key": ticket.key,
        "summary": ticket.summary,
        "description": ticket.description,
        "status": ticket.status,
        "type": ticket.type,
        "reporter": ticket.reporter,
        "reporter_name": reporter.name if reporter else "",
        "organisation": organisation.name if organisation else "",
        "assignee": ticket.assignee or "",
        "estimate": format_effort(ticket.estimate_minutes) if ticket.estimate_minutes else "",
        "estimate_minutes": ticket.estimate_minutes,
        "due_date": ticket.due_date.isoformat() if ticket.due_date else "",
    }
