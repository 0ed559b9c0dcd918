"""What one parsed mail does: open a ticket, drive one with commands, comment, or be held.

Called by the pipeline inside the message's transaction. The policy lives in the core
(route, commands, workflow); this module only looks people and tickets up, applies the
decisions through `maildesk.tickets`, and queues the replies the sender should get.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlmodel import Session

from maildesk import store
from maildesk.config import Settings
from maildesk.core.commands import ParsedCommand, ParsedCommands, parse_commands
from maildesk.core.mail import InboundMail
from maildesk.core.workflow import (
    Audience, Command, Decision, Rejected, TicketState, decide, possible_commands, with_status,
)
from maildesk.models import Attachment, InboxItem, Message, OutboxItem, Ticket, User
from maildesk.notify import NEVER_MAIL, Notifier, Recipient, Thread
from maildesk.tickets import (
    NewTicketData, actor_of, add_customer, apply_decision, create_ticket, notices_for_new_ticket, refuse, state_of,
)

REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|vs|atb|pārs|pars)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
UNKNOWN_SENDER_QUIET = timedelta(days=1)


@dataclass(frozen=True)
class Handled:
    """How a mail ended: the inbox state, why, and the ticket it touched."""

    state: str
    reason: str = ""
    ticket_id: int | None = None
    ticket_key: str | None = None


def clean_summary(subject: str) -> str:
    """A ticket summary from a subject: reply/forward prefixes removed."""
    return REPLY_PREFIX.sub("", subject).strip()


class MailHandler:
    def __init__(self, settings: Settings, notifier: Notifier) -> None:
        self.settings = settings
        self.notifier = notifier

    @property
    def reopen_window(self) -> timedelta:
        return timedelta(days=self.settings.reopen_days)

    def new_ticket(self, mail: InboundMail, item: InboxItem, user: User, ticket_type: str | None, *,
                   session: Session, now: datetime) -> Handled:
        thread_id = mail.message_id or f"<inbox-{item.id}@{self.settings.support_domain}>"
        data = NewTicketData(reporter=user, summary=clean_summary(mail.subject), description=mail.text.strip(),
                             type=ticket_type, channel="email", thread_id=thread_id)
        ticket = create_ticket(data, session=session, settings=self.settings, now=now, actor=user.address)
        self.save_message(mail, item, ticket, session=session, now=now, internal=False)
        thread = Thread(in_reply_to=thread_id, references=mail.references)
        self.notifier.notify(ticket, notices_for_new_ticket(), session=session, actor=user.address, now=now,
                             thread=thread, extra={"channel": "email"})
        return Handled("processed", "new ticket", ticket.id, ticket.key)

    def reply(self, mail: InboundMail, item: InboxItem, ticket: Ticket, user: User, *, session: Session,
              now: datetime) -> Handled:
        actor = actor_of(user, session=session)
        parsed = parse_commands(mail.new_text)
        thread = Thread(in_reply_to=mail.message_id, references=tuple(dict.fromkeys((ticket.thread_id,
                                                                                       *mail.references))))
        state = state_of(ticket, session=session)
        if actor.role.value == "customer" and actor.organisation != state.organisation:
            self.save_message(mail, item, ticket, session=session, now=now, internal=True)
            rejected = Rejected(parsed.commands[0].request if parsed.commands else None,
                                state.status, "other_organisation", "the ticket belongs to another organisation")
            refuse(ticket, rejected, session=session, notifier=self.notifier, sender=user, now=now, thread=thread,
                   line=parsed.processed[0] if parsed.processed else "COMMENT", processed=parsed.processed,
                   ignored=parsed.ignored)
            return Handled("processed", "refused: other organisation", ticket.id, ticket.key)
        internal = parsed.internal and actor.is_agent
        self.save_message(mail, item, ticket, session=session, now=now, internal=internal)
        if not parsed.commands:
            self.comment(ticket, user, parsed.comment, internal, session=session, now=now, thread=thread)
            return Handled("processed", "internal note" if internal else "comment", ticket.id, ticket.key)
        outcome = self.run_commands(ticket, state, user, parsed, internal, session=session, now=now, thread=thread)
        return Handled("processed", outcome, ticket.id, ticket.key)

    def run_commands(self, ticket: Ticket, state: TicketState, user: User, parsed: ParsedCommands, internal: bool,
                     *, session: Session, now: datetime, thread: Thread) -> str:
        """Apply the commands in order; the first refusal stops the rest and is explained."""
        actor = actor_of(user, session=session)
        applied: list[str] = []
        told: set[str] = set()
        comment = "" if internal else parsed.comment
        for command in parsed.commands:
            result = self.check(command, state, actor_user=user, session=session, now=now)
            if isinstance(result, Rejected):
                refuse(ticket, result, session=session, notifier=self.notifier, sender=user, now=now, thread=thread,
                       line=command.line, processed=parsed.processed, ignored=parsed.ignored)
                return "; ".join([*applied, f"refused {command.request.command.value}: {result.reason_code}"])
            apply_decision(ticket, result, session=session, notifier=self.notifier, actor=user.address, now=now,
                           thread=thread, line=command.line, comment=comment, told=told)
            if command.request.command == Command.ADD_USER:
                self.welcome(ticket, command, session=session, now=now, thread=thread)
            state = with_status(state, result, now)
            applied.append(command.request.command.value)
        return "applied " + ", ".join(applied)

    def check(self, command: ParsedCommand, state: TicketState, *, actor_user: User, session: Session,
              now: datetime) -> Decision | Rejected:
        """The workflow's decision, then the checks that need the database or the parser's verdict."""
        actor = actor_of(actor_user, session=session)
        result = decide(state, command.request, actor, now, self.reopen_window)
        if isinstance(result, Rejected):
            return result
        code, reason = command.error, command.error_text
        if not code:
            code, reason = self._data_problem(command, session=session)
        if code:
            return Rejected(command.request, state.status, code, reason,
                            possible_commands(state, actor, now, self.reopen_window))
        return result

    def _data_problem(self, command: ParsedCommand, *, session: Session) -> tuple[str, str]:
        request = command.request
        if request.command == Command.ASSIGN:
            agent = store.find_user(request.argument, session=session)
            if agent is None or agent.role not in ("agent", "admin"):
                return "unknown_agent", f"{request.argument} is not a support agent"
        if request.command == Command.ADD_USER and store.find_user(request.argument, session=session):
            return "user_exists", f"{request.argument} is already a user"
        if request.command == Command.TYPE and not request.argument.strip():
            return "unknown_type", "TYPE needs the name of a request type"
        return "", ""

    def welcome(self, ticket: Ticket, command: ParsedCommand, *, session: Session, now: datetime,
                thread: Thread) -> None:
        """ADD USER: the customer joins the ticket's organisation and is mailed how to start."""
        request = command.request
        user = add_customer(request.argument, request.name, ticket.organisation_id, session=session, now=now)
        context = self.notifier.context(ticket, self.notifier.recipient_for(user, session=session), "",
                                        session=session)
        organisation = context["ticket"]["organisation"]
        self.notifier.queue("user_welcome", self.notifier.recipient_for(user, session=session), ticket=ticket,
                            session=session, actor="", now=now, thread=Thread(),
                            extra={"new_user": {"address": user.address, "name": user.name,
                                                "organisation": organisation}})

    def comment(self, ticket: Ticket, user: User, text: str, internal: bool, *, session: Session, now: datetime,
                thread: Thread) -> None:
        """A reply without commands: customer -> the agent (or all agents); agent -> the reporter."""
        store.add_event(session=session, ticket_id=ticket.id, at=now, actor=user.address,
                        command="INTERNAL" if internal else "COMMENT", from_status=ticket.status,
                        to_status=ticket.status, outcome="comment")
        ticket.updated_at = now
        session.add(ticket)
        if internal:
            return
        is_agent = user.role in ("agent", "admin")
        audience = Audience.REPORTER if is_agent else Audience.AGENT
        self.notifier.notify(ticket, (("comment", audience),), session=session, actor=user.address, now=now,
                             thread=thread, extra={"comment": text, "internal": False})

    def unknown_sender(self, mail: InboundMail, item: InboxItem, *, session: Session, now: datetime) -> Handled:
        """Held, not ticketed; one polite answer per address per day explains how to get access."""
        address = mail.from_address
        if not address or NEVER_MAIL.match(address) or self._answered_recently(address, session=session, now=now):
            return Handled("held", "unknown sender (not answered again)")
        recipient = Recipient(address, mail.from_name, "customer", self.settings.language)
        self.notifier.queue("unknown_sender", recipient, ticket=None, session=session, actor="", now=now,
                            thread=Thread(in_reply_to=mail.message_id, references=mail.references),
                            extra={"original_subject": mail.subject[:200]})
        return Handled("held", "unknown sender")

    def _answered_recently(self, address: str, *, session: Session, now: datetime) -> bool:
        query = (select(OutboxItem.id).where(OutboxItem.template == "unknown_sender",
                                             OutboxItem.to_addresses == json.dumps([address]),
                                             OutboxItem.created_at > now - UNKNOWN_SENDER_QUIET).limit(1))
        return session.execute(query).first() is not None

    def save_message(self, mail: InboundMail, item: InboxItem, ticket: Ticket, *, session: Session,
                     now: datetime, internal: bool) -> Message:
        message = Message(ticket_id=ticket.id, direction="in", message_id=mail.message_id[:1000],
                          in_reply_to=mail.in_reply_to[:1000], sender=mail.from_address, subject=mail.subject,
                          new_text=mail.new_text, full_text=mail.text, internal=internal, inbox_id=item.id,
                          created_at=now)
        session.add(message)
        session.flush()
        for attachment in mail.attachments:
            session.add(self.save_attachment(attachment.filename, attachment.content_type, attachment.payload,
                                             message_id=message.id))
        return message

    def save_attachment(self, filename: str, content_type: str, payload: bytes, *, message_id: int | None) -> Attachment:
        """Stored under its SHA-256 (a generated name); the sender's file name is data only."""
        digest = hashlib.sha256(payload).hexdigest()
        stored_name = f"{digest[:2]}/{digest}"
        path = self.settings.attachments_dir / stored_name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".part")
            temporary.write_bytes(payload)
            temporary.replace(path)
        assert message_id is not None
        return Attachment(message_id=message_id, filename=filename[:300], content_type=content_type[:200],
                          size=len(payload), sha256=digest, stored_name=stored_name)

