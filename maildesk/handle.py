"""What one parsed mail does: open a ticket, drive one with commands, comment, or be held.

Called by the pipeline inside the message's transaction. The policy lives in the core
(route, commands, workflow); this module only looks people and tickets up, applies the
decisions through `maildesk.tickets`, and queues the replies the sender should get.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, select
from sqlmodel import Session

from maildesk import deadlines, rows, store
from maildesk.config import Settings
from maildesk.core.authorize import authorize
from maildesk.core.commands import ParsedCommand, ParsedCommands
from maildesk.core.mail import DeliveryReport, InboundMail
from maildesk.core.workflow import (
    Audience, Command, Decision, Rejected, TicketState, decide, possible_commands, with_status,
)
from maildesk.examine import Examined
from maildesk.models import Attachment, ConsumedToken, InboxItem, Message, OutboxItem, Ticket, User
from maildesk.notify import NEVER_MAIL, Notifier, Recipient, Thread
from maildesk.spool import Spooled, keep
from maildesk.states import actor_of, state_of
from maildesk.tickets import (
    NewTicketData, add_customer, apply_decision, create_ticket, notices_for_new_ticket, refuse,
)
from maildesk.verify import Sender

REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|vs|atb|pārs|pars)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
UNKNOWN_SENDER_QUIET = timedelta(days=1)
HOUR = timedelta(hours=1)
ARGUMENT_CODES = frozenset({"bad_effort", "bad_date", "due_required"})  # the parser knows better why
# The loop protection's counts, asked for nearly every mail (indexes from schema 0004).
SENT_COUNT = select(func.count()).select_from(OutboxItem).where(
    OutboxItem.template == bindparam("template"), OutboxItem.to_addresses == bindparam("to"),
    OutboxItem.created_at > bindparam("since"))
MAIL_COUNT = select(func.count()).select_from(InboxItem).where(
    InboxItem.sender == bindparam("sender"), InboxItem.received_at > bindparam("since"))
TICKET_MAIL_COUNT = select(func.count()).select_from(InboxItem).where(
    InboxItem.sender == bindparam("sender"), InboxItem.ticket_id == bindparam("ticket_id"),
    InboxItem.received_at > bindparam("since"))


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

    def new_ticket(self, examined: Examined, inbox_id: int, user: User, ticket_type: str | None, *,
                   session: Session, now: datetime) -> Handled:
        mail = examined.mail
        thread_id = mail.message_id or f"<inbox-{inbox_id}@{self.settings.support_domain}>"
        data = NewTicketData(reporter=user, summary=clean_summary(mail.subject), description=mail.text.strip(),
                             type=ticket_type, channel="email", thread_id=thread_id)
        ticket = create_ticket(data, session=session, settings=self.settings, now=now, actor=user.address)
        self.save_message(examined, inbox_id, ticket, session=session, now=now, internal=False)
        thread = Thread(in_reply_to=thread_id, references=mail.references)
        notices = notices_for_new_ticket()
        limited = (self._count_sent("ticket_created", user.address, HOUR, session=session, now=now)
                   >= self.settings.ack_limit_per_hour or not self.may_answer(user.address, session=session, now=now))
        if limited:
            notices = tuple(notice for notice in notices if notice[0] != "ticket_created")
            store.add_event(session=session, ticket_id=ticket.id, at=now, actor=user.address, command="ACKNOWLEDGE",
                            to_status=ticket.status, outcome="ignored",
                            reason="rate_limited: too many acknowledgements to this sender in the last hour")
        self.notifier.notify(ticket, notices, session=session, actor=user.address, now=now,
                             thread=thread, extra={"channel": "email"})
        return Handled("processed", "new ticket (acknowledgement rate-limited)" if limited else "new ticket",
                       ticket.id, ticket.key)

    def reply(self, examined: Examined, inbox_id: int, ticket: Ticket, user: User, *, session: Session,
              now: datetime) -> Handled:
        """A mail to an existing ticket: its commands (read from its new text in the parse helper), or a comment."""
        mail, parsed, sender = examined.mail, examined.commands, examined.sender
        actor = actor_of(user, session=session)
        thread = Thread(in_reply_to=mail.message_id, references=tuple(dict.fromkeys((ticket.thread_id,
                                                                                       *mail.references))))
        state = state_of(ticket, session=session)
        if actor.role.value == "customer" and actor.organisation != state.organisation:
            self.save_message(examined, inbox_id, ticket, session=session, now=now, internal=True)
            rejected = Rejected(parsed.commands[0].request if parsed.commands else None,
                                state.status, "other_organisation", "the ticket belongs to another organisation")
            refuse(ticket, rejected, session=session, notifier=self.notifier, sender=user, now=now, thread=thread,
                   line=parsed.processed[0] if parsed.processed else "COMMENT", processed=parsed.processed,
                   ignored=parsed.ignored)
            return Handled("processed", "refused: other organisation", ticket.id, ticket.key)
        internal = parsed.internal and actor.is_agent
        if parsed.commands and isinstance(self.check(parsed.commands[0], state, actor_user=user, session=session,
                                                     now=now), Decision):
            refusal = self.unauthorised(parsed, ticket, sender, session=session)
            if refusal:
                return self.unverified(examined, inbox_id, ticket, user, refusal, session=session, now=now)
        self.save_message(examined, inbox_id, ticket, session=session, now=now, internal=internal)
        if not parsed.commands:
            self.comment(ticket, user, parsed.comment, internal, session=session, now=now, thread=thread)
            return Handled("processed", "internal note" if internal else "comment", ticket.id, ticket.key)
        if self.replayed_approval(parsed, ticket, sender, inbox_id, session=session, now=now):
            return Handled("processed", "token_consumed: approval already used", ticket.id, ticket.key)
        outcome = self.run_commands(ticket, state, user, parsed, internal, session=session, now=now, thread=thread)
        return Handled("processed", outcome, ticket.id, ticket.key)

    def unauthorised(self, parsed: ParsedCommands, ticket: Ticket, sender: Sender, *, session: Session) -> str:
        """'' when every command in the mail passes the rule for commands, else why not."""
        for command in parsed.commands:
            problem = authorize(command.request.command, sender.evidence, ticket_key=ticket.key,
                                estimate_version=ticket.estimate_version,
                                require_both_for_approvals=self.settings.require_dmarc_for_approvals)
            if problem:
                return f"{command.request.command.value}: {problem}"
        return ""

    def replayed_approval(self, parsed: ParsedCommands, ticket: Ticket, sender: Sender, inbox_id: int, *,
                          session: Session, now: datetime) -> bool:
        """A token approves an estimate once: record it, or report a replay (a no-op)."""
        if sender.token is None or not any(c.request.command == Command.ACCEPT_ESTIMATE for c in parsed.commands):
            return False
        if session.get(ConsumedToken, sender.token) is not None:
            store.add_event(session=session, ticket_id=ticket.id, at=now, actor=sender.identity.address or "",
                            command="ACCEPT THE ESTIMATE", from_status=ticket.status, to_status=ticket.status,
                            outcome="ignored", reason="token_consumed: this approval was already used")
            return True
        session.add(ConsumedToken(token=sender.token, ticket_id=ticket.id, inbox_id=inbox_id, at=now))
        return False

    def unverified(self, examined: Examined, inbox_id: int, ticket: Ticket, user: User, problem: str, *,
                   session: Session, now: datetime) -> Handled:
        """Nothing changes: an internal note marked unverified, an audit event, and one request
        to confirm, sent to the address on file (never to whoever sent this mail)."""
        parsed = examined.commands
        self.save_message(examined, inbox_id, ticket, session=session, now=now, internal=True, unverified=True)
        line = parsed.processed[0] if parsed.processed else ""
        store.add_event(session=session, ticket_id=ticket.id, at=now, actor=user.address, command=line,
                        from_status=ticket.status, to_status=ticket.status, outcome="unverified", reason=problem)
        if not self._sent_recently("confirm_request", user.address, ticket.id, UNKNOWN_SENDER_QUIET,
                                   session=session, now=now):
            purpose = "estimate" if any(c.request.command == Command.ACCEPT_ESTIMATE for c in parsed.commands) \
                else "reply"
            self.notifier.queue("confirm_request", self.notifier.recipient_for(user, session=session), ticket=ticket,
                                session=session, actor="", now=now, thread=Thread(in_reply_to=ticket.thread_id),
                                extra={"command": line}, token_purpose=purpose)
        return Handled("processed", f"unverified: {problem}", ticket.id, ticket.key)

    def machine_mail(self, examined: Examined, inbox_id: int, ticket: Ticket | None, user: User | None, *,
                     session: Session, now: datetime) -> Handled:
        """Auto-replies, bounces and list mail: kept, logged with their class, never answered,
        never a command, never a new ticket, never a reopen or a clock change (RFC 3834)."""
        classification = examined.classification
        reason = f"{classification.kind}: {classification.reason}"
        if classification.kind == "bounce" and examined.mail.report is not None:
            bounced = self.bounced(examined, inbox_id, examined.mail.report, session=session, now=now)
            if bounced is not None:
                return bounced
        if ticket is not None and user is not None:
            self.save_message(examined, inbox_id, ticket, session=session, now=now, internal=True)
            store.add_event(session=session, ticket_id=ticket.id, at=now, actor=user.address,
                            command=classification.kind.upper().replace("_", " "), from_status=ticket.status,
                            to_status=ticket.status, outcome="ignored", reason=reason)
            return Handled("processed", f"kept as a note: {reason}", ticket.id, ticket.key)
        return Handled("ignored", reason)

    def bounced(self, examined: Examined, inbox_id: int, report: DeliveryReport, *, session: Session,
                now: datetime) -> Handled | None:
        """A bounce of one of our mails (its report returns our Message-ID): the outbox row says
        who was not reached, and the ticket keeps the bounce as an internal note with an event,
        so an agent sees that the customer never got it. Nobody is mailed about a bounce: that
        mail could bounce too. None when the mail it returns is not ours, or not sent yet (so a
        forged bounce cannot touch a mail still to go); a repeat of a bounce is only logged."""
        item = session.execute(select(OutboxItem).where(
            OutboxItem.message_id == report.original_message_id)).scalar_one_or_none()
        if item is None or item.status not in ("sent", "failed"):
            return None
        results = json.loads(item.recipient_results or "{}")
        failed = [failure for failure in report.failed if results.get(failure.address, {}).get("state") != "bounced"]
        if not failed:
            return Handled("ignored", f"bounce: already recorded for {item.template} mail {item.id}")
        details = {failure.address: f"{failure.status} {failure.diagnostic}".strip() for failure in failed}
        for address, detail in details.items():
            results[address] = {"state": "bounced", "detail": detail, "at": now.isoformat()}
        summary = "; ".join(f"{address}: {detail}" for address, detail in details.items())
        item.recipient_results = json.dumps(results)
        if item.status == "sent":  # a row still pending or being sent is its sender's to record
            item.status, item.last_error = "failed", f"bounced: {summary}"[:2000]
        session.add(item)
        reason = f"{item.template} mail {item.id} not delivered: {summary}"[:2000]
        ticket = session.get(Ticket, item.ticket_id) if item.ticket_id is not None else None
        if ticket is None:
            return Handled("ignored", f"bounce: {reason}")
        self.save_message(examined, inbox_id, ticket, session=session, now=now, internal=True)
        store.add_event(session=session, ticket_id=ticket.id, at=now, actor=examined.mail.from_address,
                        command="BOUNCE", from_status=ticket.status, to_status=ticket.status, outcome="bounced",
                        reason=reason)
        return Handled("processed", f"bounce: {reason}", ticket.id, ticket.key)

    def run_commands(self, ticket: Ticket, state: TicketState, user: User, parsed: ParsedCommands, internal: bool,
                     *, session: Session, now: datetime, thread: Thread) -> str:
        """Apply the commands in order; the first refusal stops the rest and is explained."""
        actor = actor_of(user, session=session)
        applied: list[str] = []
        told: set[str] = set()
        comment = "" if internal else parsed.comment
        if not internal:
            deadlines.on_reply(ticket, agent=actor.is_agent, session=session, settings=self.settings, now=now)
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
        if isinstance(result, Rejected) and not (command.error and result.reason_code in ARGUMENT_CODES):
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
        deadlines.on_reply(ticket, agent=is_agent, session=session, settings=self.settings, now=now)
        audience = Audience.REPORTER if is_agent else Audience.AGENT
        # Two auto-responders (a customer's and an agent's) would ping-pong through the ticket.
        looping = {other.address for other in self.notifier.audience(ticket, audience, user.address, session=session)
                   if self.keeps_writing(other.address, ticket.id, session=session, now=now)}
        if looping:
            store.add_event(session=session, ticket_id=ticket.id, at=now, actor=user.address, command="COMMENT",
                            from_status=ticket.status, to_status=ticket.status, outcome="ignored",
                            reason=f"circuit_breaker: no comment mail to {', '.join(sorted(looping))}, "
                                   "who keep writing to this ticket")
        self.notifier.notify(ticket, (("comment", audience),), session=session, actor=user.address, now=now,
                             thread=thread, extra={"comment": text, "internal": False}, already=looping)

    def unknown_sender(self, mail: InboundMail, inbox_id: int, sender: Sender, *, session: Session,
                       now: datetime) -> Handled:
        """Held, not ticketed; one polite answer per address per day explains how to get access.
        A From that cannot be trusted is held without any answer."""
        if not sender.evidence.from_trusted or sender.identity.address is None:
            return Handled("held", f"untrusted From: {sender.identity.reason}")
        address = sender.identity.address
        if (NEVER_MAIL.match(address) or self._sent_recently("unknown_sender", address, None, UNKNOWN_SENDER_QUIET,
                                                             session=session, now=now)
                or not self.may_answer(address, session=session, now=now)):
            return Handled("held", "unknown sender (not answered again)")
        recipient = Recipient(address, mail.from_name, "customer", self.settings.language)
        self.notifier.queue("unknown_sender", recipient, ticket=None, session=session, actor="", now=now,
                            thread=Thread(in_reply_to=mail.message_id, references=mail.references),
                            extra={"original_subject": mail.subject[:200]})
        return Handled("held", "unknown sender")

    def _sent_recently(self, template: str, address: str, ticket_id: int | None, within: timedelta, *,
                       session: Session, now: datetime) -> bool:
        query = select(OutboxItem.id).where(OutboxItem.template == template,
                                            OutboxItem.to_addresses == json.dumps([address]),
                                            OutboxItem.created_at > now - within)
        if ticket_id is not None:
            query = query.where(OutboxItem.ticket_id == ticket_id)
        return session.execute(query.limit(1)).first() is not None

    def _count_sent(self, template: str, address: str, within: timedelta, *, session: Session, now: datetime) -> int:
        return _count(SENT_COUNT, {"template": template, "to": json.dumps([address]), "since": now - within},
                      session=session)

    def keeps_writing(self, address: str, ticket_id: int | None, *, session: Session, now: datetime) -> bool:
        """The circuit breaker for one ticket: its answer limit of mails to it in the last hour."""
        return _count(TICKET_MAIL_COUNT, {"sender": address, "ticket_id": ticket_id, "since": now - HOUR},
                      session=session) >= self.settings.answer_limit_per_hour

    def may_answer(self, address: str, *, session: Session, now: datetime) -> bool:
        """The circuit breaker: an address that keeps writing gets no automatic answers."""
        return _count(MAIL_COUNT, {"sender": address, "since": now - HOUR},
                      session=session) < self.settings.answer_limit_per_hour

    def save_message(self, examined: Examined, inbox_id: int, ticket: Ticket, *, session: Session,
                     now: datetime, internal: bool, unverified: bool = False) -> int:
        """The mail as a message of the ticket's thread, with its attachments; returns the message id."""
        mail = examined.mail
        message_id = rows.insert_one(Message, dict(
            ticket_id=ticket.id, direction="in", message_id=mail.message_id[:1000],
            in_reply_to=mail.in_reply_to[:1000], sender=mail.from_address, subject=mail.subject,
            new_text=mail.new_text, full_text=mail.text, internal=internal, unverified=unverified,
            inbox_id=inbox_id, created_at=now), session=session)
        for attachment in examined.attachments:
            session.add(self.save_attachment(attachment, message_id=message_id))
        return message_id

    def save_attachment(self, attachment: Spooled, *, message_id: int) -> Attachment:
        """The spooled file moved to its content address (a generated name: the sender's file
        name is data only), and its row."""
        stored_name = keep(attachment, self.settings.attachments_dir)
        return Attachment(message_id=message_id, filename=attachment.filename[:300],
                          content_type=attachment.content_type[:200], size=attachment.size, sha256=attachment.sha256,
                          stored_name=stored_name)


def _count(statement: object, values: dict[str, object], *, session: Session) -> int:
    """One of the loop protection's counts."""
    row = rows.first_row(statement, values, session=session)
    return int(row[0]) if row else 0
