"""Commands in the new text of a reply: the keyword table and the parser.

Like Mailman's command runner, only the first lines of what the sender wrote count, each
command is a whole line, and the sender is told which lines were processed and which
ignored. Matching ignores case, surrounding spaces, trailing punctuation and Latvian
diacritics (customers type `APSTIPRINAT` as often as `APSTIPRINĀT`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date

from maildesk.core.effort import EffortError, parse_due_date, parse_effort
from maildesk.core.workflow import Command, Request

# keyword (normalised: upper case, no diacritics, single spaces) -> command
COMMANDS: dict[str, Command] = {
    "ESTIMATE": Command.ESTIMATE,
    "START": Command.START,
    "ACCEPT THE ESTIMATE": Command.ACCEPT_ESTIMATE,
    "APSTIPRINAT NOVERTEJUMU": Command.ACCEPT_ESTIMATE,
    "CANCEL REQUEST": Command.CANCEL_REQUEST,
    "ATCELT PIEPRASIJUMU": Command.CANCEL_REQUEST,
    "RESOLVE": Command.RESOLVE,
    "ACCEPT THE SOLUTION": Command.ACCEPT_SOLUTION,
    "APSTIPRINAT RISINAJUMU": Command.ACCEPT_SOLUTION,
    "REOPEN": Command.REOPEN,
    "ATVERT NO JAUNA": Command.REOPEN,
    "DEPLOY": Command.DEPLOY,
    "CLOSE": Command.CLOSE,
    "TYPE": Command.TYPE,
    "ASSIGN": Command.ASSIGN,
    "ADD USER": Command.ADD_USER,
}
INTERNAL_KEYWORD = "INTERNAL"
TAKES_ARGUMENTS = frozenset({Command.ESTIMATE, Command.TYPE, Command.ASSIGN, Command.ADD_USER})
COMMAND_ZONE_LINES = 3
MAX_LINE_LENGTH = 200

# longest first, so that "ADD USER x" is not read as a shorter keyword with arguments
_WITH_ARGUMENTS = sorted((item for item in COMMANDS.items() if item[1] in TAKES_ARGUMENTS),
                         key=lambda item: -len(item[0]))
_TRAILING_PUNCTUATION = re.compile(r"[.!:;,]+$")
_ADDRESS = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+$")
_DUE = re.compile(r"\s+(?:DUE|TERMINS)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedCommand:
    """One command line; `error` is a reason code when its arguments could not be read."""

    line: str
    request: Request
    error: str = ""
    error_text: str = ""


@dataclass(frozen=True)
class ParsedCommands:
    commands: tuple[ParsedCommand, ...]
    internal: bool
    processed: tuple[str, ...]
    ignored: tuple[str, ...]
    comment: str


def normalise(line: str) -> str:
    """Upper case, no diacritics, single spaces, no trailing punctuation or markup."""
    if not line.isascii():  # ASCII has nothing to decompose
        decomposed = unicodedata.normalize("NFKD", line)
        line = "".join(char for char in decomposed if not unicodedata.combining(char))
    plain = line.strip().strip("*_").strip()
    plain = _TRAILING_PUNCTUATION.sub("", plain)
    return " ".join(plain.upper().split())


def parse_commands(new_text: str) -> ParsedCommands:
    """Commands from the first lines of the new text; everything else is the comment."""
    lines = new_text.replace("\r\n", "\n").split("\n")
    commands: list[ParsedCommand] = []
    processed: list[str] = []
    ignored: list[str] = []
    command_lines: set[int] = set()
    internal = False
    zone_seen = 0
    for index, raw_line in enumerate(lines):
        line = raw_line.strip()
        if not line:
            continue
        if zone_seen >= COMMAND_ZONE_LINES:
            break
        zone_seen += 1
        keyword_line = normalise(line)
        parsed = None if keyword_line == INTERNAL_KEYWORD else _command(line, keyword_line)
        if keyword_line == INTERNAL_KEYWORD:
            internal = True
        elif parsed is None:
            if commands or internal:
                break
            ignored.append(line)
            continue
        else:
            commands.append(parsed)
        processed.append(line)
        command_lines.add(index)
    comment = "\n".join(line for index, line in enumerate(lines) if index not in command_lines)
    return ParsedCommands(tuple(commands), internal, tuple(processed), tuple(ignored), comment.strip())


def parse_command_line(line: str) -> ParsedCommand | None:
    """A ParsedCommand when the whole line is a command, None when it is ordinary text."""
    return _command(line, normalise(line))


def _command(line: str, keyword_line: str) -> ParsedCommand | None:
    if len(line) > MAX_LINE_LENGTH:
        return None
    command = COMMANDS.get(keyword_line)
    if command is not None:
        if command in TAKES_ARGUMENTS:
            return _argument_error(line, command)
        return ParsedCommand(line, Request(command))
    for keyword, command in _WITH_ARGUMENTS:
        if keyword_line.startswith(keyword + " "):
            return _with_arguments(line, command, _original_arguments(line, keyword))
    return None


def _original_arguments(line: str, keyword: str) -> str:
    """The text after the keyword, in the sender's own case and letters."""
    words = line.strip().split()
    return " ".join(words[len(keyword.split()):])


def _with_arguments(line: str, command: Command, arguments: str) -> ParsedCommand:
    if command == Command.ESTIMATE:
        return _estimate(line, arguments)
    if command == Command.TYPE:
        return ParsedCommand(line, Request(command, argument=arguments.strip()))
    if command == Command.ASSIGN:
        address = arguments.strip().strip("<>").lower()
        if not _ADDRESS.match(address):
            return ParsedCommand(line, Request(command), "bad_address", f"{arguments!r} is not an address")
        return ParsedCommand(line, Request(command, argument=address))
    return _add_user(line, arguments)


def _estimate(line: str, arguments: str) -> ParsedCommand:
    effort_text, _, due_text = _DUE.sub(" \x00 ", " " + arguments).partition("\x00")
    try:
        minutes = parse_effort(effort_text)
    except EffortError as error:
        return ParsedCommand(line, Request(Command.ESTIMATE), "bad_effort", str(error))
    due: date | None = None
    if due_text.strip():
        try:
            due = parse_due_date(due_text)
        except ValueError:
            return ParsedCommand(line, Request(Command.ESTIMATE, minutes=minutes), "bad_date",
                                 f"cannot read the due date {due_text.strip()!r} (write e.g. 2026-12-18)")
    return ParsedCommand(line, Request(Command.ESTIMATE, minutes=minutes, due=due))


def _add_user(line: str, arguments: str) -> ParsedCommand:
    address, _, name = arguments.strip().partition(" ")
    address = address.strip("<>,").lower()
    if not _ADDRESS.match(address):
        return ParsedCommand(line, Request(Command.ADD_USER), "bad_address",
                             "write ADD USER <address> <full name>")
    return ParsedCommand(line, Request(Command.ADD_USER, argument=address, name=" ".join(name.split())))


def _argument_error(line: str, command: Command) -> ParsedCommand:
    code = {Command.ESTIMATE: "bad_effort", Command.TYPE: "unknown_type"}.get(command, "bad_address")
    return ParsedCommand(line, Request(command), code, f"{command.value} needs an argument")
