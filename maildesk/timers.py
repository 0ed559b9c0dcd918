"""Sweeps over the deadline columns: auto-close, reminders, deadline warnings and breaches.

Where it sits in the flow: the daemon runs `sweep` every minute (`schedule` only decides when),
and `maildesk tick [--now]` runs it on demand. Timers re-enter the flow at "workflow
decision": an auto-close is `workflow.decide(AUTO_CLOSE, SYSTEM)` applied by
`tickets.apply_decision`, with its notices, exactly like a command from mail.

Exactly once, with no locks (the healthchecks way): each action first claims its ticket with
a conditional UPDATE (`... WHERE reminder_sent_at IS NULL AND reminder_due_at = <the due time
we saw>`) and acts only when that changed one row, in the same transaction as the action. A
second sweep at the same instant, or a second daemon on the same PostgreSQL, finds the row
already claimed (PostgreSQL re-checks the WHERE after the first commit; SQLite serialises
writers) and does nothing. A reply that stops a clock changes the due time, so a claim made
on the old one fails. The claim is the first statement of its transaction, so SQLite never
has to upgrade a stale read snapshot.

Catching up: candidates are "due at or before now", so a daemon that was down closes each
overdue ticket once on its next sweep; a ticket already past its close gets no reminder, and
a deadline already missed gets the breach notice without a warning first.

The hooks that keep the columns right live in `maildesk.deadlines` and are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from maildesk import store
from maildesk.config import Settings
from maildesk.core.workflow import SYSTEM, Audience, Command, Decision, Request, decide
from maildesk.deadlines import (
    ACCEPTANCE, FINAL, deadline_view, local_text, on_agent_reply, on_customer_reply, on_reply, on_status_change,
    reschedule_open, schedule,
)
from maildesk.models import Ticket
from maildesk.notify import Notifier, Thread
from maildesk.sla import level_for
from maildesk.states import state_of
from maildesk.tickets import apply_decision

log = logging.getLogger("maildesk.timers")
AUTO_ACCEPTED = "auto-accepted"
SWEEP_BATCH = 500

__all__ = ["sweep", "SweepReport", "on_status_change", "on_customer_reply", "on_agent_reply", "on_reply",
           "reschedule_open", "schedule", "deadline_view", "AUTO_ACCEPTED"]


@dataclass
class SweepReport:
    """How many of each action one sweep took."""

    closed: int = 0
    reminded: int = 0
    breached: int = 0
    warned: int = 0
    failed: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{field.name} {getattr(self, field.name)}" for field in fields(self))


@dataclass(frozen=True)
class Clock:
    """A service-level deadline that warns before and breaches after (first response, work start)."""

    kind: str
    due: Any
    warn: Any
    done: Any
    warned: Any
    breached: Any
    open_condition: Callable[[], ColumnElement[bool]]
    what: str


CLOCKS = (
    Clock("first_response", Ticket.first_response_due_at, Ticket.first_response_warn_at, Ticket.first_response_at,
          Ticket.first_response_warned_at, Ticket.first_response_breached_at,
          lambda: Ticket.status.not_in(FINAL), "first response"),  # type: ignore[attr-defined]
    Clock("work_start", Ticket.work_start_due_at, Ticket.work_start_warn_at, Ticket.work_started_at,
          Ticket.work_start_warned_at, Ticket.work_start_breached_at,
          lambda: Ticket.status == "ESTIMATE ACCEPTED", "work start"),  # type: ignore[arg-type]
)


def sweep(engine: Engine, settings: Settings, notifier: Notifier, *, now: datetime) -> SweepReport:
    """Take every action that is due at `now`, each once; safe to run twice or in two daemons."""
    report = SweepReport()
    _each(engine, report, "closed", _due_closes(now), lambda s, i, due: _auto_close(s, i, due, notifier, now))
    _each(engine, report, "reminded", _due_reminders(now),
          lambda s, i, due: _remind(s, i, due, notifier, settings, now))
    for clock in CLOCKS:
        _each(engine, report, "breached", _due_breaches(clock, now),
              lambda s, i, due, c=clock: _breach(s, i, due, c, notifier, settings, now))
        _each(engine, report, "warned", _due_warnings(clock, now),
              lambda s, i, due, c=clock: _warn(s, i, due, c, notifier, settings, now))
    if any(getattr(report, field.name) for field in fields(report)):
        log.info("timers at %s: %s", now.isoformat(), report)
    return report


def _each(engine: Engine, report: SweepReport, counter: str, query: Any,
          act: Callable[[Session, int, datetime], bool]) -> None:
    """Run `act` per candidate in its own transaction; one failing ticket never stops the rest."""
    with store.transaction(engine) as session:
        candidates = list(session.execute(query.order_by(Ticket.id).limit(SWEEP_BATCH)))
    for ticket_id, due in candidates:
        try:
            with store.transaction(engine) as session:
                if act(session, ticket_id, due):
                    setattr(report, counter, getattr(report, counter) + 1)
        except Exception:
            report.failed += 1
            log.exception("timer %s failed for ticket id %s", counter, ticket_id)


def _claim(session: Session, ticket_id: int, conditions: list[Any], values: dict[str, Any]) -> bool:
    """The conditional UPDATE that makes an action happen once: True when this sweep won it."""
    statement = update(Ticket).where(Ticket.id == ticket_id, *conditions).values(**values)
    result = session.execute(statement.execution_options(synchronize_session=False))
    return result.rowcount == 1  # type: ignore[attr-defined]


def _due_closes(now: datetime) -> Any:
    return select(Ticket.id, Ticket.acceptance_due_at).where(Ticket.status.in_(ACCEPTANCE),  # type: ignore[attr-defined]
                                                             Ticket.acceptance_due_at <= now)


def _auto_close(session: Session, ticket_id: int, due: datetime, notifier: Notifier, now: datetime) -> bool:
    """The acceptance term passed with no customer reply: CLOSED through the workflow table."""
    if not _claim(session, ticket_id, [Ticket.status.in_(ACCEPTANCE), Ticket.acceptance_due_at == due],  # type: ignore[attr-defined]
                  {"acceptance_due_at": None, "reminder_due_at": None}):
        return False
    ticket = session.get(Ticket, ticket_id)
    assert ticket is not None
    decision = decide(state_of(ticket, session=session), Request(Command.AUTO_CLOSE), SYSTEM, now)
    if not isinstance(decision, Decision):
        raise RuntimeError(f"{ticket.key}: the workflow refused AUTO CLOSE: {decision.reason}")
    apply_decision(ticket, decision, session=session, notifier=notifier, actor="", now=now, thread=_thread(ticket),
                   line=Command.AUTO_CLOSE.value, reason=AUTO_ACCEPTED)
    log.info("ticket %s auto-closed: the acceptance term ended %s", ticket.key, due.isoformat())
    return True


def _due_reminders(now: datetime) -> Any:
    return select(Ticket.id, Ticket.reminder_due_at).where(
        Ticket.status.in_(ACCEPTANCE), Ticket.reminder_due_at <= now,  # type: ignore[attr-defined]
        Ticket.reminder_sent_at.is_(None), Ticket.acceptance_due_at > now)  # type: ignore[union-attr]


def _remind(session: Session, ticket_id: int, due: datetime, notifier: Notifier, settings: Settings,
            now: datetime) -> bool:
    """One business day before the auto-close, the customer is told when it will happen."""
    if not _claim(session, ticket_id, [Ticket.status.in_(ACCEPTANCE), Ticket.reminder_sent_at.is_(None),  # type: ignore[attr-defined, union-attr]
                                       Ticket.reminder_due_at == due], {"reminder_sent_at": now}):
        return False
    ticket = session.get(Ticket, ticket_id)
    assert ticket is not None and ticket.acceptance_due_at is not None
    closes_at = local_text(ticket.acceptance_due_at, level_for(ticket, session=session, settings=settings).timezone)
    notifier.notify(ticket, (("acceptance_reminder", Audience.REPORTER),), session=session, actor="", now=now,
                    thread=_thread(ticket), extra={"closes_at": closes_at})
    store.add_event(session=session, ticket_id=ticket.id, at=now, actor="", command="REMINDER",
                    from_status=ticket.status, to_status=ticket.status, outcome="timer",
                    reason=f"the ticket closes as accepted at {closes_at} unless the customer replies")
    return True


def _pending(clock: Clock) -> list[Any]:
    return [clock.open_condition(), clock.done.is_(None), clock.breached.is_(None)]


def _due_breaches(clock: Clock, now: datetime) -> Any:
    return select(Ticket.id, clock.due).where(clock.due <= now, *_pending(clock))


def _breach(session: Session, ticket_id: int, due: datetime, clock: Clock, notifier: Notifier, settings: Settings,
            now: datetime) -> bool:
    """A deadline passed: one breach event and one notice to the agent (or all agents)."""
    values = {clock.breached.key: now, clock.warned.key: func.coalesce(clock.warned, now)}
    if not _claim(session, ticket_id, [*_pending(clock), clock.due == due], values):
        return False
    _tell_agents(session, ticket_id, due, clock, notifier, settings, now, breached=True)
    return True


def _due_warnings(clock: Clock, now: datetime) -> Any:
    return select(Ticket.id, clock.warn).where(clock.warn <= now, clock.due > now, clock.warned.is_(None),
                                              *_pending(clock))


def _warn(session: Session, ticket_id: int, warn_at: datetime, clock: Clock, notifier: Notifier,
          settings: Settings, now: datetime) -> bool:
    if not _claim(session, ticket_id, [*_pending(clock), clock.warned.is_(None), clock.warn == warn_at],
                  {clock.warned.key: now}):
        return False
    ticket = session.get(Ticket, ticket_id)
    assert ticket is not None
    _tell_agents(session, ticket_id, getattr(ticket, clock.due.key), clock, notifier, settings, now, breached=False)
    return True


def _tell_agents(session: Session, ticket_id: int, due: datetime, clock: Clock, notifier: Notifier,
                 settings: Settings, now: datetime, *, breached: bool) -> None:
    ticket = session.get(Ticket, ticket_id)
    assert ticket is not None
    deadline_at = local_text(due, level_for(ticket, session=session, settings=settings).timezone)
    notifier.notify(ticket, (("deadline_warning", Audience.AGENT),), session=session, actor="", now=now,
                    thread=_thread(ticket),
                    extra={"deadline_kind": clock.kind, "deadline_at": deadline_at, "breached": breached})
    store.add_event(session=session, ticket_id=ticket.id, at=now, actor="",
                    command="SLA BREACH" if breached else "SLA WARNING", from_status=ticket.status,
                    to_status=ticket.status, outcome="breach" if breached else "timer",
                    reason=f"{clock.what} {'was due' if breached else 'is due'} at {deadline_at}")
    log.info("ticket %s: %s deadline %s %s", ticket.key, clock.what, "missed" if breached else "near", deadline_at)


def _thread(ticket: Ticket) -> Thread:
    return Thread(in_reply_to=ticket.thread_id, references=(ticket.thread_id,) if ticket.thread_id else ())
