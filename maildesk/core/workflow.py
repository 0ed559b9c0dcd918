"""The customer's service-desk process as data: statuses, commands, the transition table.

`decide(ticket, request, actor, now)` is the only place that says whether a command may
change a ticket. It returns a `Decision` (new status, who holds the ticket, what to tell
whom) or a `Rejected` with a reason code; the store applies decisions, notify renders the
notices. Rows follow ../shared/spec/workflow.md section "Transitions" one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import Enum

from maildesk.core.effort import needs_approval


class Status(str, Enum):
    OPEN = "OPEN"
    IN_PROGRESS = "IN PROGRESS"
    ESTIMATED = "ESTIMATED"
    ESTIMATE_ACCEPTED = "ESTIMATE ACCEPTED"
    WAITING_FOR_CUSTOMER = "WAITING FOR CUSTOMER"
    INVOICE = "INVOICE"
    REOPENED = "REOPENED"
    READY_FOR_DEPLOY = "READY FOR DEPLOY"
    CLOSED = "CLOSED"
    CANCELLED = "CANCELLED"


class Command(str, Enum):
    """Every command a reply (or the timer) can carry; values are the canonical keywords."""

    ESTIMATE = "ESTIMATE"
    START = "START"
    ACCEPT_ESTIMATE = "ACCEPT THE ESTIMATE"
    CANCEL_REQUEST = "CANCEL REQUEST"
    RESOLVE = "RESOLVE"
    ACCEPT_SOLUTION = "ACCEPT THE SOLUTION"
    REOPEN = "REOPEN"
    DEPLOY = "DEPLOY"
    CLOSE = "CLOSE"
    AUTO_CLOSE = "AUTO CLOSE"
    TYPE = "TYPE"
    ASSIGN = "ASSIGN"
    ADD_USER = "ADD USER"


class Role(str, Enum):
    CUSTOMER = "customer"
    AGENT = "agent"
    ADMIN = "admin"
    SYSTEM = "system"


class Who(Enum):
    """Who may give a command: checked against the actor and the ticket."""

    AGENT = "agent"
    RESPONSIBLE = "responsible representative"
    REPORTER_OR_RESPONSIBLE = "reporter or responsible representative"
    CUSTOMER_OF_ORG = "customer of the organisation"
    SYSTEM = "system"


class Holder(str, Enum):
    """Who the ticket is assigned to after a transition (the table's last column)."""

    QUEUE = "agents"
    AGENT = "agent"
    REPORTER = "reporter"
    RESPONSIBLE = "responsible"
    NOBODY = "nobody"


class Audience(str, Enum):
    """Whom a notice goes to; notify resolves these to addresses."""

    REPORTER = "reporter"
    RESPONSIBLE = "responsible"
    AGENT = "agent"          # the ticket's agent, or every agent when it has none
    AGENTS = "agents"
    ACTOR = "actor"


class Size(Enum):
    """The 60-minute rule as a guard on ESTIMATE rows."""

    ANY = "any"
    SMALL = "at most 60 minutes"
    LARGE = "over 60 minutes"


@dataclass(frozen=True)
class Transition:
    sources: frozenset[Status]
    command: Command
    who: Who
    target: Status
    holder: Holder
    notices: tuple[tuple[str, Audience], ...]
    size: Size = Size.ANY


def _row(sources: tuple[Status, ...], command: Command, who: Who, target: Status, holder: Holder,
         notices: tuple[tuple[str, Audience], ...], size: Size = Size.ANY) -> Transition:
    return Transition(frozenset(sources), command, who, target, holder, notices, size)


S, C = Status, Command
_TO_REPORTER = (("status_changed", Audience.REPORTER),)
_TO_AGENT = (("status_changed", Audience.AGENT),)

TRANSITIONS: tuple[Transition, ...] = (
    _row((S.OPEN, S.REOPENED), C.ESTIMATE, Who.AGENT, S.IN_PROGRESS, Holder.AGENT, _TO_REPORTER, Size.SMALL),
    _row((S.OPEN, S.REOPENED), C.START, Who.AGENT, S.IN_PROGRESS, Holder.AGENT, _TO_REPORTER),
    _row((S.OPEN, S.REOPENED, S.ESTIMATED), C.ESTIMATE, Who.AGENT, S.ESTIMATED, Holder.RESPONSIBLE,
         (("estimate_request", Audience.RESPONSIBLE), ("status_changed", Audience.REPORTER)), Size.LARGE),
    _row((S.ESTIMATED,), C.ACCEPT_ESTIMATE, Who.RESPONSIBLE, S.ESTIMATE_ACCEPTED, Holder.AGENT,
         (("status_changed", Audience.AGENT), ("status_changed", Audience.REPORTER))),
    _row((S.OPEN, S.ESTIMATED, S.ESTIMATE_ACCEPTED), C.CANCEL_REQUEST, Who.REPORTER_OR_RESPONSIBLE,
         S.CANCELLED, Holder.NOBODY, (("status_changed", Audience.AGENT), ("status_changed", Audience.REPORTER))),
    _row((S.ESTIMATE_ACCEPTED,), C.START, Who.AGENT, S.IN_PROGRESS, Holder.AGENT, _TO_REPORTER),
    _row((S.IN_PROGRESS,), C.RESOLVE, Who.AGENT, S.WAITING_FOR_CUSTOMER, Holder.REPORTER,
         (("solution_proposed", Audience.REPORTER),)),
    _row((S.WAITING_FOR_CUSTOMER,), C.ACCEPT_SOLUTION, Who.CUSTOMER_OF_ORG, S.INVOICE, Holder.AGENT, _TO_AGENT),
    _row((S.WAITING_FOR_CUSTOMER, S.INVOICE, S.READY_FOR_DEPLOY, S.CLOSED), C.REOPEN, Who.CUSTOMER_OF_ORG,
         S.REOPENED, Holder.AGENT, _TO_AGENT),
    _row((S.REOPENED,), C.DEPLOY, Who.AGENT, S.READY_FOR_DEPLOY, Holder.REPORTER,
         (("solution_proposed", Audience.REPORTER),)),
    _row((S.INVOICE,), C.CLOSE, Who.AGENT, S.CLOSED, Holder.NOBODY, _TO_REPORTER),
    _row((S.WAITING_FOR_CUSTOMER, S.READY_FOR_DEPLOY), C.AUTO_CLOSE, Who.SYSTEM, S.CLOSED, Holder.NOBODY,
         (("auto_closed", Audience.REPORTER), ("auto_closed", Audience.AGENT))),
)

# Commands that change a ticket's data but never its status; agents only, in any open status.
DATA_COMMANDS = frozenset({C.TYPE, C.ASSIGN, C.ADD_USER})
FINAL_STATUSES = frozenset({S.CLOSED, S.CANCELLED})
ADD_NEW_USERS = "Add New Users"
DEFAULT_TYPE = "Service Request"
DEFAULT_REOPEN_WINDOW = timedelta(days=14)


@dataclass(frozen=True)
class Actor:
    """Who gives a command: a known user (or the system timer)."""

    address: str
    role: Role
    organisation: str | None = None
    responsible: bool = False

    @property
    def is_agent(self) -> bool:
        return self.role in (Role.AGENT, Role.ADMIN)


SYSTEM = Actor(address="", role=Role.SYSTEM)


@dataclass(frozen=True)
class TicketState:
    """What `decide` needs to know of a ticket; the store builds it from the row."""

    key: str
    status: Status
    reporter: str
    organisation: str | None
    agent: str | None = None
    type: str = DEFAULT_TYPE
    status_changed_at: datetime | None = None


@dataclass(frozen=True)
class Request:
    """A command with its arguments, as parsed from a mail (or made by a timer)."""

    command: Command
    minutes: int | None = None
    due: date | None = None
    argument: str = ""
    name: str = ""


@dataclass(frozen=True)
class Decision:
    """An allowed command: what changes, and which notices to send."""

    request: Request
    from_status: Status
    to_status: Status
    holder: Holder | None
    agent: str | None
    notices: tuple[tuple[str, Audience], ...] = ()

    @property
    def changes_status(self) -> bool:
        return self.from_status != self.to_status


@dataclass(frozen=True)
class Rejected:
    """A refused command (or, with no request, a refused comment): nothing changes."""

    request: Request | None
    status: Status
    reason_code: str
    reason: str
    possible: tuple[str, ...] = field(default=())


def decide(ticket: TicketState, request: Request, actor: Actor, now: datetime,
           reopen_window: timedelta = DEFAULT_REOPEN_WINDOW) -> Decision | Rejected:
    """Whether `actor` may apply `request` to `ticket` at `now`, and what follows."""
    refusal = _actor_refusal(ticket, actor)
    if refusal:
        return _reject(ticket, request, actor, now, reopen_window, *refusal)
    if request.command in DATA_COMMANDS:
        return _decide_data_command(ticket, request, actor, now, reopen_window)
    candidates = [row for row in TRANSITIONS if row.command == request.command]
    if candidates and not any(_may(row.who, ticket, actor) for row in candidates):
        code, reason = _role_refusal(candidates[0].who)
        return _reject(ticket, request, actor, now, reopen_window, code, reason)
    in_status = [row for row in candidates if ticket.status in row.sources
                 and _window_open(ticket, row, now, reopen_window)]
    if not in_status:
        return _reject(ticket, request, actor, now, reopen_window, "not_allowed_in_status",
                       f"{request.command.value} is not possible while the ticket is {ticket.status.value}")
    permitted = [row for row in in_status if _may(row.who, ticket, actor)]
    if not permitted:
        code, reason = _role_refusal(in_status[0].who)
        return _reject(ticket, request, actor, now, reopen_window, code, reason)
    if request.command == C.ESTIMATE:
        return _decide_estimate(ticket, request, actor, now, reopen_window, permitted)
    return _apply(permitted[0], ticket, request, actor)


def possible_commands(ticket: TicketState, actor: Actor, now: datetime,
                      reopen_window: timedelta = DEFAULT_REOPEN_WINDOW) -> tuple[str, ...]:
    """The keywords `actor` could send now, in table order, for refusals and notices."""
    if _actor_refusal(ticket, actor):
        return ()
    found: list[str] = []
    for row in TRANSITIONS:
        if (row.who != Who.SYSTEM and ticket.status in row.sources and _may(row.who, ticket, actor)
                and _window_open(ticket, row, now, reopen_window) and row.command.value not in found):
            found.append(row.command.value)
    if actor.is_agent and ticket.status not in FINAL_STATUSES:
        found.extend(command.value for command in (C.TYPE, C.ASSIGN))
        if ticket.type == ADD_NEW_USERS:
            found.append(C.ADD_USER.value)
    return tuple(found)


def _actor_refusal(ticket: TicketState, actor: Actor) -> tuple[str, str] | None:
    if actor.role == Role.CUSTOMER and actor.organisation != ticket.organisation:
        return "other_organisation", "the ticket belongs to another organisation"
    return None


def _may(who: Who, ticket: TicketState, actor: Actor) -> bool:
    if who == Who.SYSTEM:
        return actor.role == Role.SYSTEM
    if who == Who.AGENT:
        return actor.is_agent
    if actor.role != Role.CUSTOMER or actor.organisation != ticket.organisation:
        return False
    if who == Who.RESPONSIBLE:
        return actor.responsible
    if who == Who.REPORTER_OR_RESPONSIBLE:
        return actor.responsible or actor.address == ticket.reporter
    return True


def _role_refusal(who: Who) -> tuple[str, str]:
    return {
        Who.AGENT: ("role_agent_only", "only support agents may give this command"),
        Who.RESPONSIBLE: ("not_responsible",
                          "only a responsible representative of the organisation may accept an estimate"),
        Who.REPORTER_OR_RESPONSIBLE: ("not_reporter",
                                      "only the reporter or a responsible representative may cancel the request"),
        Who.CUSTOMER_OF_ORG: ("role_customer_only", "only the customer's representatives may give this command"),
        Who.SYSTEM: ("role_system_only", "this step is taken by the timer only"),
    }[who]


def _window_open(ticket: TicketState, row: Transition, now: datetime, window: timedelta) -> bool:
    """A CLOSED ticket may be reopened only within the reopen window (cancelled never)."""
    if row.command != C.REOPEN or ticket.status != S.CLOSED:
        return True
    return ticket.status_changed_at is not None and now - ticket.status_changed_at <= window


def _decide_estimate(ticket: TicketState, request: Request, actor: Actor, now: datetime,
                     window: timedelta, rows: list[Transition]) -> Decision | Rejected:
    if request.minutes is None or request.minutes <= 0:
        return _reject(ticket, request, actor, now, window, "bad_effort", "the effort is missing or unreadable")
    size = Size.LARGE if needs_approval(request.minutes) else Size.SMALL
    if size == Size.LARGE and request.due is None:
        return _reject(ticket, request, actor, now, window, "due_required",
                       "an estimate over 60 minutes needs a due date: ESTIMATE 3h DUE 2026-12-18")
    if request.due is not None and request.due < now.date():
        return _reject(ticket, request, actor, now, window, "bad_date", "the due date is in the past")
    fitting = [row for row in rows if row.size == size]
    if not fitting:
        return _reject(ticket, request, actor, now, window, "not_allowed_in_status",
                       f"an estimate {size.value} is not possible while the ticket is {ticket.status.value}")
    return _apply(fitting[0], ticket, request, actor)


def _decide_data_command(ticket: TicketState, request: Request, actor: Actor, now: datetime,
                         window: timedelta) -> Decision | Rejected:
    if not actor.is_agent:
        return _reject(ticket, request, actor, now, window, "role_agent_only",
                       "only support agents may give this command")
    if ticket.status in FINAL_STATUSES:
        return _reject(ticket, request, actor, now, window, "not_allowed_in_status",
                       f"{request.command.value} is not possible while the ticket is {ticket.status.value}")
    if request.command == C.ADD_USER and ticket.type != ADD_NEW_USERS:
        return _reject(ticket, request, actor, now, window, "wrong_ticket_type",
                       f"ADD USER works only on tickets of type {ADD_NEW_USERS}")
    agent = request.argument if request.command == C.ASSIGN else ticket.agent
    return Decision(request, ticket.status, ticket.status, None, agent, ())


def _apply(row: Transition, ticket: TicketState, request: Request, actor: Actor) -> Decision:
    agent = actor.address if actor.is_agent else ticket.agent
    return Decision(request, ticket.status, row.target, row.holder, agent, row.notices)


def _reject(ticket: TicketState, request: Request, actor: Actor, now: datetime, window: timedelta,
            code: str, reason: str) -> Rejected:
    return Rejected(request, ticket.status, code, reason, possible_commands(ticket, actor, now, window))


def with_status(ticket: TicketState, decision: Decision, now: datetime) -> TicketState:
    """The ticket as the next command in the same mail sees it."""
    if not decision.changes_status:
        return replace(ticket, agent=decision.agent)
    return replace(ticket, status=decision.to_status, agent=decision.agent, status_changed_at=now)
