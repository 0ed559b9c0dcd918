"""Commands in the new text of a reply, efforts and due dates: parametrized tables."""

from __future__ import annotations

import re
import unicodedata
from datetime import date

import pytest
from hypothesis import given, settings, strategies as st

from maildesk.core.commands import (COMMANDS, MAX_LINE_LENGTH, TAKES_ARGUMENTS, ParsedCommand, normalise,
                                    parse_command_line, parse_commands)
from maildesk.core.effort import EffortError, format_effort, needs_approval, parse_due_date, parse_effort
from maildesk.core.workflow import Command, Request


@pytest.mark.parametrize("text, minutes", [
    ("45m", 45), ("90m", 90), ("1.5h", 90), ("1,5h", 90), ("2h30m", 150), ("2h 30m", 150), ("1d", 480),
    ("45 min", 45), ("3 h", 180), ("1d2h", 600), ("60m", 60),
])
def test_efforts_are_read_as_agents_write_them(text: str, minutes: int) -> None:
    assert parse_effort(text) == minutes


@pytest.mark.parametrize("text", ["", "soon", "3", "h", "0m", "-5m", "2x", "1.5.5h"])
def test_unreadable_efforts_are_refused(text: str) -> None:
    with pytest.raises(EffortError):
        parse_effort(text)


def test_efforts_format_back() -> None:
    assert [format_effort(m) for m in (45, 60, 150, 480)] == ["45m", "1h", "2h30m", "8h"]
    assert not needs_approval(60) and needs_approval(61)


def test_due_dates_in_iso_and_latvian_form() -> None:
    assert parse_due_date("2026-12-18") == parse_due_date("18.12.2026") == date(2026, 12, 18)
    with pytest.raises(ValueError):
        parse_due_date("next week")


@pytest.mark.parametrize("line, command", [
    ("ACCEPT THE ESTIMATE", Command.ACCEPT_ESTIMATE), ("accept the estimate", Command.ACCEPT_ESTIMATE),
    ("  Accept   the estimate. ", Command.ACCEPT_ESTIMATE), ("APSTIPRINĀT NOVĒRTĒJUMU", Command.ACCEPT_ESTIMATE),
    ("apstiprinat novertejumu", Command.ACCEPT_ESTIMATE), ("ATCELT PIEPRASĪJUMU", Command.CANCEL_REQUEST),
    ("CANCEL REQUEST", Command.CANCEL_REQUEST), ("APSTIPRINĀT RISINĀJUMU", Command.ACCEPT_SOLUTION),
    ("ACCEPT THE SOLUTION!", Command.ACCEPT_SOLUTION), ("Accept the estimate,", Command.ACCEPT_ESTIMATE), ("ATVĒRT NO JAUNA", Command.REOPEN),
    ("Reopen", Command.REOPEN), ("START", Command.START), ("RESOLVE", Command.RESOLVE),
    ("DEPLOY", Command.DEPLOY), ("CLOSE", Command.CLOSE), ("**REOPEN**", Command.REOPEN),
])
def test_keywords_match_ignoring_case_spaces_punctuation_and_diacritics(line: str, command: Command) -> None:
    parsed = parse_commands(line + "\n\nsome more text")
    assert [c.request.command for c in parsed.commands] == [command]
    assert parsed.comment == "some more text"


def test_estimate_with_due_date() -> None:
    (command,) = parse_commands("ESTIMATE 3h DUE 2026-12-18").commands
    assert (command.request.minutes, command.request.due, command.error) == (180, date(2026, 12, 18), "")


@pytest.mark.parametrize("line, error", [
    ("ESTIMATE soon", "bad_effort"), ("ESTIMATE 3h DUE someday", "bad_date"), ("ESTIMATE", "bad_effort"),
    ("ASSIGN nobody", "bad_address"), ("ADD USER not-an-address Name", "bad_address"),
])
def test_commands_with_unreadable_arguments_carry_an_error(line: str, error: str) -> None:
    (command,) = parse_commands(line).commands
    assert command.error == error


def test_add_user_keeps_the_full_name_as_written() -> None:
    (command,) = parse_commands("ADD USER <Anna.Berzina@ACME.lv> Anna Bērziņa").commands
    assert (command.request.command, command.request.argument, command.request.name) == (
        Command.ADD_USER, "anna.berzina@acme.lv", "Anna Bērziņa")


def test_a_plain_reply_is_a_comment_with_nothing_processed() -> None:
    parsed = parse_commands("Paldies, viss strādā!\nAr cieņu, Anna")
    assert parsed.commands == () and not parsed.internal
    assert parsed.ignored == ("Paldies, viss strādā!", "Ar cieņu, Anna")
    assert parsed.comment == "Paldies, viss strādā!\nAr cieņu, Anna"


def test_commands_count_only_in_the_first_lines() -> None:
    text = "Hello\nI looked at it\nand tested\nfurther\nACCEPT THE SOLUTION"
    assert parse_commands(text).commands == ()


def test_a_sentence_mentioning_a_keyword_is_not_a_command() -> None:
    assert parse_commands("I cannot ACCEPT THE SOLUTION yet").commands == ()


def test_internal_marks_an_agent_note() -> None:
    parsed = parse_commands("INTERNAL\nCustomer is on holiday")
    assert parsed.internal and parsed.comment == "Customer is on holiday"


def test_several_commands_in_order() -> None:
    parsed = parse_commands("TYPE Add New Users\nADD USER new@acme.lv New Person\n\nDone.")
    assert [c.request.command for c in parsed.commands] == [Command.TYPE, Command.ADD_USER]
    assert parsed.comment == "Done."


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_the_command_parser_never_raises(text: str) -> None:
    parsed = parse_commands(text)
    assert all(command.line in text for command in parsed.commands)


def _normalise_by_the_definition(line: str) -> str:
    """Upper case, diacritics removed (NFKD, combining marks dropped), single spaces, no
    trailing punctuation or markup: `normalise` with no short cut for ASCII."""
    plain = "".join(char for char in unicodedata.normalize("NFKD", line) if not unicodedata.combining(char))
    plain = re.sub(r"[.!:;,]+$", "", plain.strip().strip("*_").strip())
    return " ".join(plain.upper().split())


def _command_by_the_table(line: str) -> ParsedCommand | None:
    """The keyword table read longest keyword first, a whole line each: what `parse_command_line`
    must answer, here without its dictionary look-up."""
    if len(line) > MAX_LINE_LENGTH:
        return None
    keyword_line = _normalise_by_the_definition(line)
    for keyword, command in sorted(COMMANDS.items(), key=lambda item: -len(item[0])):
        if keyword_line == keyword:
            return parse_command_line(line) if command in TAKES_ARGUMENTS else ParsedCommand(line, Request(command))
        if command in TAKES_ARGUMENTS and keyword_line.startswith(keyword + " "):
            return parse_command_line(line)
    return None


_LINE_PARTS = st.sampled_from(["accept the estimate", "APSTIPRINĀT", "novērtējumu", "ESTIMATE", "2h", "DUE",
                               "2026-12-18", "add user", "a@b.lv", "Anna Bērziņa", "TYPE", "assign", "reopen",
                               "ATVĒRT NO JAUNA", "internal", "  ", "*", "!", ".", "ß", "ﬁ", "Ａ", "x"])


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(), st.lists(_LINE_PARTS, max_size=6).map(" ".join)))
def test_a_command_line_is_read_as_the_keyword_table_says(line: str) -> None:
    assert normalise(line) == _normalise_by_the_definition(line)
    expected = _command_by_the_table(line)
    parsed = parse_command_line(line)
    assert (parsed is None) == (expected is None)
    if expected is not None and parsed is not None:
        assert parsed.request.command == expected.request.command
