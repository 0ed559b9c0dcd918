"""The new text of a reply: what the sender wrote in this mail, without quotes and signatures.

Flow: transport -> inbox -> parse (calls `new_text`) -> route -> commands -> workflow -> store
-> notify -> outbox -> SMTP. Only the new text counts for commands, so a quoted notification
that says ACCEPT THE SOLUTION must never reach `maildesk.core.commands`.

Two passes, because a missed quote is worse than a lost line:
1. our own line rules cut at the first quote header (Gmail, Outlook, Apple Mail, Thunderbird,
   Latvian clients, forwards, `-- ` signatures) and drop every `>` line;
2. mail-parser-reply, with a Latvian profile, strips what is left of signatures
   ("Sent from my iPhone", "Ar cieņu", ...).
This is the only module that imports `mailparser_reply`.
"""

from __future__ import annotations

import re
from typing import Final

from mailparser_reply.constants import QUOTED_MATCH_INCLUDE
from mailparser_reply.parser import EmailMessage

LANGUAGES: Final = ("en", "lv")


def _header_block(field_names: str) -> str:
    """mail-parser-reply's Outlook header-block pattern ("From: ...\nSent: ..."), anchored at line
    starts: it matches the same lines as the library's `(?:^|\n|\n>)` form, but the regex engine
    drops every position inside a line at once, which made the whole pass several times faster.
    """
    field = QUOTED_MATCH_INCLUDE + r"[* ]*(?:" + field_names + r"):[ *]*(?:\s{,2}).*"
    return r"(^" + field + r"(?:\n" + field + r")+(?:\n.*)?)"


# A Latvian profile in mail-parser-reply's table format (see its constants.MAIL_LANGUAGES).
# Gmail LV attributions look like "2026. gada 26. nov., plkst. 10:00 — Anna <a@b> rakstīja:"
# or "pirmd., 2026. g. 26. nov., plkst. 10:00 ... rakstīja:", sometimes wrapped over two lines.
_LV_DATE_START: Final = r"(?:\d|pirmd|otrd|trešd|ceturtd|piektd|sestd|svētd)"
LATVIAN_PROFILE: Final[dict[str, str | list[str]]] = {
    "wrote_header": (
        r"^(" + QUOTED_MATCH_INCLUDE
        + r"(?:" + _LV_DATE_START + r"[^\n]{0,300}\n)?\S[^\n]{0,300}rakstīja ?:)$"
    ),
    "from_header": _header_block("No|Nosūtīts|Kam|Tēma|Datums|Kopija"),
    "signatures": ["Ar cieņu", "Ar sveicieniem", "Ar labākajiem vēlējumiem"],
    "sent_from": "Nosūtīts no",
}
# The English profile stays the library's, but for the faster form of the same header block.
ENGLISH_OVERRIDES: Final[dict[str, str | list[str]]] = {
    "from_header": _header_block("From|Sent|To|Subject|Date|Cc|Organization"),
}
PROFILES: Final = {"lv": LATVIAN_PROFILE, "en": ENGLISH_OVERRIDES}

# Lines that start quoted or forwarded mail: everything from such a line on is not new text.
_SEPARATOR: Final = re.compile(
    r"^(?:-{2,}\s*(?:Original Message|Oriģinālā ziņa|Sākotnējā ziņa|Forwarded message"
    r"|Pārsūtīts ziņojums|Pārsūtītā ziņa)\s*-{2,}"
    r"|Begin forwarded message:"
    r"|_{10,}"
    r"|--"
    r"|(?:Sent from my|Get Outlook for|Nosūtīts no man[aā]s?)\b.{0,60})$",
    re.IGNORECASE,
)
# Outlook's quoted header block, English or Latvian ("*From:*" when converted from HTML).
_BLOCK_FIRST: Final = re.compile(r"^\*?(?:From|No)\*?:", re.IGNORECASE)
_BLOCK_NEXT: Final = re.compile(
    r"^\*?(?:Sent|Date|To|Subject|Cc|Nosūtīts|Datums|Kam|Tēma|Kopija)\*?:", re.IGNORECASE
)
_BLOCK_REACH: Final = 6
# "On <date>, <name> <addr> wrote:", "26.11.2026 10:00, X wrote:", "... rakstīja:".
_ATTRIBUTION_END: Final = re.compile(r"(?:wrote|rakstīja)\s*:$", re.IGNORECASE)
_ATTRIBUTION_START: Final = re.compile(r"^(?:On\s|" + _LV_DATE_START + r")", re.IGNORECASE)
_DATE_OR_ADDRESS: Final = re.compile(r"[\d@]")
_ATTRIBUTION_MAX: Final = 400
_SHIELD: Final = re.compile("\ue000(\\d+)\ue001")


class _ReplyMessage(EmailMessage):
    """mail-parser-reply's message, reading our `PROFILES` before its own global table.

    The library only knows languages from its module-level dict; overriding the one lookup
    method adds Latvian without changing that shared table.
    """

    def _get_language_regex(self, language: str, regex_key: str) -> str:
        value = PROFILES.get(language, {}).get(regex_key)
        if value is None:
            return str(super()._get_language_regex(language=language, regex_key=regex_key))
        return "|".join(value) if isinstance(value, list) else value


# The library builds its three patterns per message; they depend only on the languages, so
# they are built once here and handed to every message through its constructor.
_PATTERNS: Final = _ReplyMessage(text="", languages=list(LANGUAGES), keep_hyphen_lists=True)
# Its disclaimer rule deletes any sentence starting "Warning:" or "Caution:" that mentions mail,
# which is how customers describe their problems ("Warning: mail server says the box is full").
_NO_DISCLAIMERS: Final = re.compile(r"\A(?!)")


def new_text(text: str) -> str:
    """What the sender wrote in this mail; '' when the mail is only a quote or forward."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept = _drop_quoted_lines(lines[: _first_cut(lines)])
    return _first_reply_body("\n".join(kept))


def _first_cut(lines: list[str]) -> int:
    """Index of the first line that starts quoted or forwarded mail (len(lines) if none)."""
    for index, raw in enumerate(lines):
        line = raw.strip()
        if _SEPARATOR.match(line) or _starts_outlook_block(lines, index):
            return index
        start = _attribution_start(lines, index)
        if start is not None and not _quote_follows(lines, index + 1):
            return start
    return len(lines)


def _starts_outlook_block(lines: list[str], index: int) -> bool:
    """A "From:" line followed closely by "Sent:", "To:", ... lines: a quoted header block."""
    if not _BLOCK_FIRST.match(lines[index].strip()):
        return False
    following = lines[index + 1 : index + 1 + _BLOCK_REACH]
    return any(_BLOCK_NEXT.match(line.strip()) for line in following)


def _attribution_start(lines: list[str], index: int) -> int | None:
    """Where the "... wrote:" attribution ending on this line begins, or None if it is none.

    Gmail wraps long attributions, so "On Thu, ... Service Desk <" can sit on the line above
    "support@x> wrote:"; that line belongs to the attribution too.
    """
    line = lines[index].strip()
    if not line.endswith(":") or len(line) > _ATTRIBUTION_MAX or not _ATTRIBUTION_END.search(line):
        return None
    if _ATTRIBUTION_START.match(line):
        return index
    previous = lines[index - 1].strip() if index > 0 else ""
    if previous and _ATTRIBUTION_START.match(previous) and len(previous) + len(line) <= _ATTRIBUTION_MAX:
        return index - 1
    if _DATE_OR_ADDRESS.search(line):
        return index
    return None


def _quote_follows(lines: list[str], index: int) -> bool:
    """True when the next non-blank line is '>'-quoted: the attribution only heads that quote."""
    for line in lines[index:]:
        if line.strip():
            return line.lstrip().startswith(">")
    return False


def _drop_quoted_lines(lines: list[str]) -> list[str]:
    """Remove '>' lines and the attributions heading them, keeping inline answers between."""
    drop: set[int] = set()
    for index, line in enumerate(lines):
        if line.lstrip().startswith(">"):
            drop.add(index)
            continue
        start = _attribution_start(lines, index)
        if start is not None:
            drop.update(range(start, index + 1))
    return [line for index, line in enumerate(lines) if index not in drop]


def _first_reply_body(text: str) -> str:
    """mail-parser-reply's first reply without its signature; '' when a quote header it knows
    stands at the very top (then its first reply is the quoted one)."""
    if not text.strip():
        return ""
    shielded, hidden = _shield_long_lines(text)
    # The constructor only normalises the text (line ends, stripped lines); `read()` is replaced
    # by `_first_reply`, which computes the same first reply with far fewer regex attempts.
    message = _ReplyMessage(text=shielded, languages=list(LANGUAGES), keep_hyphen_lists=True,
                            _header_regex=_PATTERNS.HEADER_REGEX,
                            _disclaimers_regex=_NO_DISCLAIMERS,
                            _signature_regex=_PATTERNS.SIGNATURE_REGEX)
    first = _first_reply(message.text)
    if first is None:
        return ""
    body = _SHIELD.sub(lambda match: _unshield(match, hidden), first)
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def _first_reply(text: str) -> str | None:
    r"""The body of `EmailMessage.read().replies[0]` for a normalised text; None when that reply
    starts with a quote header (the caller then has no new text).

    The library searches its header and signature patterns at every character; both can only
    match at a few places, so they are tried only there (`re.match` at a position gives what
    `re.search` would find there). About six times faster; tests/test_quotes.py checks that
    it agrees with the library on every text the tests and the public corpus have.
    - Every header alternative starts with `^` (MULTILINE): only line starts are tried. The
      library cuts the first reply at `text.find(header)` of the first match's first non-empty
      group; if nothing but blanks stands before it, every reply it keeps carries a header.
    - Every signature alternative starts with `\s*^`, `\n` or `^`: a match begins at a line
      start or inside a run of white space that holds a line break. The signature runs from
      there to the end: the library's pattern ends in `(.|\s)*`, which eats the rest one
      character at a time, so `_SIGNATURE_START` is that pattern without it.
    """
    found = _first_match(_PATTERNS.HEADER_REGEX, text, _line_starts(text))
    if found is not None:
        header = next(group for group in found.groups() if group)
        position = text.find(header)
        if not text[:position].strip():
            return None
        text = text[:position]
    body = text.strip()
    signature = _first_match(_SIGNATURE_START, text, _signature_starts(text))
    if signature is not None and text[signature.start():].strip():
        body = body.replace(text[signature.start():].strip(), "")
    return body.strip()


def _signature_start() -> re.Pattern[str]:
    """The library's signature pattern `((...)(.|\\s)*)` without its tail."""
    pattern, tail = _PATTERNS.SIGNATURE_REGEX.pattern, r"(.|\s)*)"
    if not (pattern.startswith("((") and pattern.endswith(tail)):
        raise ImportError(f"mail-parser-reply's signature pattern changed shape: {pattern[:80]!r}...")
    return re.compile(pattern[1:-len(tail)], _PATTERNS.SIGNATURE_REGEX.flags)


_SIGNATURE_START: Final = _signature_start()
_LINE_BREAK: Final = re.compile(r"\n")
_BREAKING_SPACE: Final = re.compile(r"\n\s*")  # a literal first: the engine skips to each line break


def _line_starts(text: str) -> list[int]:
    return [0, *(match.end() for match in _LINE_BREAK.finditer(text))]


def _signature_starts(text: str) -> list[int]:
    """0 and every position in or just after a run of white space that holds a line break."""
    starts = [0]
    for match in _BREAKING_SPACE.finditer(text):
        begin = match.start()
        while begin > starts[-1] + 1 and text[begin - 1].isspace():  # rare: lines come stripped
            begin -= 1
        starts.extend(range(max(begin, starts[-1] + 1), match.end() + 1))
    return starts


def _first_match(pattern: re.Pattern[str], text: str, starts: list[int]) -> re.Match[str] | None:
    """`pattern.search(text)` when no match can begin anywhere but at `starts` (ascending)."""
    for start in starts:
        found = pattern.match(text, start)
        if found is not None:
            return found
    return None


def _shield_long_lines(text: str) -> tuple[str, list[str]]:
    """Replace long lines by placeholders before the library sees them.

    mail-parser-reply's English "On ... wrote:" pattern is quadratic in the length of a line
    starting with "On" (a 50 kB line took 40 s); no header or signature line is that long.
    """
    hidden: list[str] = []
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if len(line) > _ATTRIBUTION_MAX:
            lines[index] = f"\ue000{len(hidden)}\ue001"
            hidden.append(line.strip())
    return "\n".join(lines), hidden


def _unshield(match: re.Match[str], hidden: list[str]) -> str:
    """The hidden line for a placeholder; a look-alike the sender typed stays as it was."""
    index = int(match.group(1))
    return hidden[index] if index < len(hidden) else match.group(0)
