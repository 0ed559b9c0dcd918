"""The transition table against ../shared/spec/workflow.md, row by row, and decide() around it."""

from __future__ import annotations

import os
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from maildesk.core.workflow import (
    ADD_NEW_USERS, SYSTEM, TRANSITIONS, Actor, Command, Decision, Holder, Rejected, Request, Role, Status,
    TicketState, decide, possible_commands, with_status,
)

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
AGENT = Actor("agent@desk.lv", Role.AGENT)
REPORTER = Actor("anna@acme.lv", Role.CUSTOMER, "ACME")
RESPONSIBLE = Actor("boss@acme.lv", Role.CUSTOMER, "ACME", responsible=True)
COLLEAGUE = Actor("janis@acme.lv", Role.CUSTOMER, "ACME")
STRANGER = Actor("eve@other.lv", Role.CUSTOMER, "Other", responsible=True)
S = Status

# (sources, command as written in workflow.md, who, target, holder) transcribed from workflow.md.
SPEC_ROWS = [
    ({S.OPEN, S.REOPENED}, "ESTIMATE 45m", "agent", S.IN_PROGRESS, Holder.AGENT),
    ({S.OPEN, S.REOPENED}, "START", "agent", S.IN_PROGRESS, Holder.AGENT),
    ({S.OPEN, S.REOPENED, S.ESTIMATED}, "ESTIMATE 3h DUE 2026-12-18", "agent", S.ESTIMATED, Holder.RESPONSIBLE),
    ({S.ESTIMATED}, "ACCEPT THE ESTIMATE", "responsible", S.ESTIMATE_ACCEPTED, Holder.AGENT),
    ({S.OPEN, S.ESTIMATED, S.ESTIMATE_ACCEPTED}, "CANCEL REQUEST", "reporter", S.CANCELLED, Holder.NOBODY),
    ({S.ESTIMATE_ACCEPTED}, "START", "agent", S.IN_PROGRESS, Holder.AGENT),
    ({S.IN_PROGRESS}, "RESOLVE", "agent", S.WAITING_FOR_CUSTOMER, Holder.REPORTER),
    ({S.WAITING_FOR_CUSTOMER}, "ACCEPT THE SOLUTION", "customer", S.INVOICE, Holder.AGENT),
    ({S.WAITING_FOR_CUSTOMER, S.INVOICE, S.READY_FOR_DEPLOY, S.CLOSED}, "REOPEN", "customer", S.REOPENED,
     Holder.AGENT),
    ({S.REOPENED}, "DEPLOY", "agent", S.READY_FOR_DEPLOY, Holder.REPORTER),
    ({S.INVOICE}, "CLOSE", "agent", S.CLOSED, Holder.NOBODY),
    ({S.WAITING_FOR_CUSTOMER, S.READY_FOR_DEPLOY}, "AUTO CLOSE", "system", S.CLOSED, Holder.NOBODY),
]
ACTORS = {"agent": AGENT, "responsible": RESPONSIBLE, "reporter": REPORTER, "customer": COLLEAGUE, "system": SYSTEM}


def _allowed_pairs() -> set[tuple[Status, Command]]:
    return {(source, row.command) for row in TRANSITIONS for source in row.sources}


def request_for(text: str) -> Request:
    if text.startswith("ESTIMATE"):
        minutes = 45 if "45m" in text else 180
        return Request(Command.ESTIMATE, minutes=minutes, due=date(2026, 12, 18) if "DUE" in text else None)
    return Request(Command(text))


def ticket(status: Status, **changes: object) -> TicketState:
    values: dict[str, object] = {"key": "SD-1", "status": status, "reporter": REPORTER.address,
                                 "organisation": "ACME", "agent": AGENT.address,
                                 "status_changed_at": NOW - timedelta(hours=1)}
    values.update(changes)
    return TicketState(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("sources, command, who, target, holder", SPEC_ROWS)
def test_every_row_of_the_spec_table_is_applied(sources, command, who, target, holder) -> None:
    for source in sources:
        result = decide(ticket(source), request_for(command), ACTORS[who], NOW)
        assert isinstance(result, Decision), (source, command, result)
        assert result.to_status == target and result.holder == holder


def test_the_table_has_exactly_the_spec_rows() -> None:
    spec = {(frozenset(sources), request_for(command).command, target) for sources, command, _, target, _ in SPEC_ROWS}
    table = {(row.sources, row.command, row.target) for row in TRANSITIONS}
    assert table == spec


def _workflow_md() -> Path | None:
    shared = Path(os.environ.get("MAILDESK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    path = shared / "spec" / "workflow.md"
    return path if path.is_file() else None


def test_the_table_matches_workflow_md_itself() -> None:
    path = _workflow_md()
    if path is None:
        pytest.skip("../shared/spec/workflow.md not found beside the repository (set MAILDESK_SHARED_DIR)")
    text = path.read_text(encoding="utf-8").split("### Transitions", 1)[1].split("\n\n", 1)[0]
    parsed = set()
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        sources = frozenset(Status(name) for name in re.findall(r"`([A-Z ]+)`", cells[0]))
        target = Status(re.findall(r"`([A-Z ]+)`", cells[3])[0])
        written = [word for word in re.findall(r"`([^`]+)`", cells[1]) if word != "DUE"] or ["AUTO CLOSE"]
        parsed.update((sources, request_for(word).command, target) for word in written)
    expected = {(frozenset(s), request_for(c).command, t) for s, c, _, t, _ in SPEC_ROWS}
    assert parsed == expected


REFUSAL_CODES = {"not_allowed_in_status", "role_agent_only", "role_customer_only", "role_system_only",
                 "not_responsible", "not_reporter"}
OUTSIDE_THE_TABLE = [(status, command) for status in Status for command in Command
                     if command not in (Command.TYPE, Command.ASSIGN, Command.ADD_USER)
                     and (status, command) not in _allowed_pairs()]


@pytest.mark.parametrize("status, command", OUTSIDE_THE_TABLE)
def test_every_pair_outside_the_table_is_refused_for_everyone(status: Status, command: Command) -> None:
    for actor in ACTORS.values():
        request = Request(command, minutes=45, due=date(2026, 12, 18))
        result = decide(ticket(status), request, actor, NOW)
        big = decide(ticket(status), Request(command, minutes=180, due=date(2026, 12, 18)), actor, NOW)
        assert isinstance(result, Rejected) or command == Command.ESTIMATE and isinstance(big, Rejected)
        if isinstance(result, Rejected):
            assert result.reason_code in REFUSAL_CODES


def test_accept_the_estimate_from_a_non_responsible_customer_is_refused() -> None:
    result = decide(ticket(S.ESTIMATED), Request(Command.ACCEPT_ESTIMATE), COLLEAGUE, NOW)
    assert isinstance(result, Rejected) and result.reason_code == "not_responsible"
    assert "ACCEPT THE ESTIMATE" not in result.possible and "CANCEL REQUEST" not in result.possible


def test_accept_the_estimate_from_another_organisation_is_refused() -> None:
    result = decide(ticket(S.ESTIMATED), Request(Command.ACCEPT_ESTIMATE), STRANGER, NOW)
    assert isinstance(result, Rejected) and result.reason_code == "other_organisation"


def test_agent_commands_from_a_customer_are_refused() -> None:
    for command in (Command.START, Command.RESOLVE, Command.CLOSE, Command.TYPE, Command.ASSIGN):
        result = decide(ticket(S.OPEN), Request(command, argument="x"), RESPONSIBLE, NOW)
        assert isinstance(result, Rejected) and result.reason_code == "role_agent_only", command


def test_the_reporter_may_cancel_but_a_colleague_may_not() -> None:
    assert isinstance(decide(ticket(S.OPEN), Request(Command.CANCEL_REQUEST), REPORTER, NOW), Decision)
    refused = decide(ticket(S.OPEN), Request(Command.CANCEL_REQUEST), COLLEAGUE, NOW)
    assert isinstance(refused, Rejected) and refused.reason_code == "not_reporter"


def test_the_sixty_minute_rule() -> None:
    sixty = decide(ticket(S.OPEN), Request(Command.ESTIMATE, minutes=60), AGENT, NOW)
    sixty_one = decide(ticket(S.OPEN), Request(Command.ESTIMATE, minutes=61, due=date(2026, 12, 1)), AGENT, NOW)
    assert isinstance(sixty, Decision) and sixty.to_status == S.IN_PROGRESS
    assert isinstance(sixty_one, Decision) and sixty_one.to_status == S.ESTIMATED


def test_a_large_estimate_needs_a_due_date_in_the_future() -> None:
    missing = decide(ticket(S.OPEN), Request(Command.ESTIMATE, minutes=180), AGENT, NOW)
    past = decide(ticket(S.OPEN), Request(Command.ESTIMATE, minutes=180, due=date(2026, 1, 1)), AGENT, NOW)
    assert isinstance(missing, Rejected) and missing.reason_code == "due_required"
    assert isinstance(past, Rejected) and past.reason_code == "bad_date"


def test_a_small_estimate_on_an_estimated_ticket_is_refused() -> None:
    result = decide(ticket(S.ESTIMATED), Request(Command.ESTIMATE, minutes=30), AGENT, NOW)
    assert isinstance(result, Rejected) and result.reason_code == "not_allowed_in_status"


def test_a_closed_ticket_reopens_only_within_the_window() -> None:
    recent = ticket(S.CLOSED, status_changed_at=NOW - timedelta(days=3))
    old = ticket(S.CLOSED, status_changed_at=NOW - timedelta(days=30))
    assert isinstance(decide(recent, Request(Command.REOPEN), REPORTER, NOW), Decision)
    refused = decide(old, Request(Command.REOPEN), REPORTER, NOW)
    assert isinstance(refused, Rejected) and refused.reason_code == "not_allowed_in_status"


def test_add_user_only_on_add_new_users_tickets() -> None:
    request = Request(Command.ADD_USER, argument="new@acme.lv", name="New Person")
    assert isinstance(decide(ticket(S.OPEN, type=ADD_NEW_USERS), request, AGENT, NOW), Decision)
    refused = decide(ticket(S.OPEN), request, AGENT, NOW)
    assert isinstance(refused, Rejected) and refused.reason_code == "wrong_ticket_type"


def test_possible_commands_follow_the_table() -> None:
    assert possible_commands(ticket(S.WAITING_FOR_CUSTOMER), REPORTER, NOW) == ("ACCEPT THE SOLUTION", "REOPEN")
    assert possible_commands(ticket(S.ESTIMATED), RESPONSIBLE, NOW) == ("ACCEPT THE ESTIMATE", "CANCEL REQUEST")
    assert "START" in possible_commands(ticket(S.OPEN), AGENT, NOW)
    assert possible_commands(ticket(S.OPEN), STRANGER, NOW) == ()


def test_the_timer_alone_may_auto_close() -> None:
    assert isinstance(decide(ticket(S.WAITING_FOR_CUSTOMER), Request(Command.AUTO_CLOSE), SYSTEM, NOW), Decision)
    refused = decide(ticket(S.WAITING_FOR_CUSTOMER), Request(Command.AUTO_CLOSE), AGENT, NOW)
    assert isinstance(refused, Rejected)


REQUESTS = st.sampled_from([
    Request(Command.ESTIMATE, minutes=45), Request(Command.ESTIMATE, minutes=180, due=date(2026, 12, 18)),
    Request(Command.ESTIMATE, minutes=180), *(Request(c) for c in Command if c not in
                                             (Command.ESTIMATE, Command.TYPE, Command.ASSIGN, Command.ADD_USER)),
    Request(Command.TYPE, argument="Incident"), Request(Command.ASSIGN, argument="agent@desk.lv"),
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(REQUESTS, st.sampled_from(sorted(ACTORS)), st.integers(0, 40)), max_size=30))
def test_random_command_sequences_never_reach_an_undefined_state(steps) -> None:
    state = ticket(S.OPEN)
    now = NOW
    for request, who, days in steps:
        now += timedelta(days=days)
        result = decide(state, request, ACTORS[who], now)
        if isinstance(result, Decision):
            assert (state.status, request.command) in _allowed_pairs() or request.command in (
                Command.TYPE, Command.ASSIGN, Command.ADD_USER)
            state = with_status(state, result, now)
        else:
            assert result.status == state.status and result.reason_code
        assert state.status in Status
