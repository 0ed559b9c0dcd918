"""Who wrote a mail: the From header, parsed strictly, before any permission is checked.

Identity comes from `From` only, never from Reply-To or Sender (GitLab #349329 let an
attacker act as anyone through Reply-To). The parse is our own, on purpose: Python
3.11.7's `email.utils.getaddresses` turns `alice@customer.example)<attacker@evil.example>`
into three addresses (CVE-2023-27043), so its answer cannot decide who may accept an
estimate. We accept the few shapes real mail clients write (RFC 5322 §3.4 without the
obsolete syntax):

    alice@customer.example
    <alice@customer.example>
    Alice Bērziņa <alice@customer.example>
    "Bērziņa, Alice" <alice@customer.example>

and report everything else as not trusted, with the reason. A display name that holds
another address (`"alice@customer.example" <attacker@evil.example>`) is what a person
reads instead of the real address, so it makes the mail untrusted; so do comments,
quoted or non-ASCII local parts, domain literals, group syntax and a bare address with
a comment. Header values may arrive with encoded words already decoded, so a display name
may hold commas or parentheses; only an '@' in it matters. The caller keeps an untrusted
mail (as an unverified note) but runs no command from it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from email.header import decode_header, make_header

MAX_FROM_LENGTH = 998
MAX_ADDRESS = 254
MAX_LOCAL = 64

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})+"
_ADDR_SPEC = re.compile(rf"(?P<local>{_LOCAL})@(?P<domain>{_DOMAIN})")
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_NAME_ADDR = re.compile(rf'(?P<name>{_QUOTED}|[^"<>]*?)\s*<\s*(?P<addr>[^<>]*?)\s*>')
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")
_DISPLAY_WORD_BREAK = re.compile(r"[\s<>\"(),;:\[\]]+")


@dataclass(frozen=True)
class Identity:
    """The sender's address (lower case) when one could be read, and whether to trust it.

    `address` may be set while `trusted` is False (for example when the display name
    shows a different address): the mail can be filed under that address, but no command
    in it runs on the strength of the From header.
    """

    address: str | None
    trusted: bool
    reason: str


def sender_identity(from_header_values: list[str]) -> Identity:
    """The identity the From header(s) prove, or the reason they prove none; never raises."""
    values = [value for value in from_header_values if isinstance(value, str)]
    if not values:
        return Identity(None, False, "no From header")
    if len(values) > 1 or len(values) != len(from_header_values):
        return Identity(None, False, "several From headers")
    return _parse_from(values[0])


def _parse_from(raw: str) -> Identity:
    value = re.sub(r"\r?\n(?=[ \t])", "", raw)
    if _CONTROL.search(value):
        return Identity(None, False, "control character in From")
    value = value.strip(" \t")
    if not value:
        return Identity(None, False, "empty From header")
    if len(value) > MAX_FROM_LENGTH:
        return Identity(None, False, "From header too long")
    if _ADDR_SPEC.fullmatch(value):
        return _checked_address(value, "")
    match = _NAME_ADDR.fullmatch(value)
    if match is None:
        return Identity(None, False, _why_unparseable(value))
    address, name = match.group("addr"), match.group("name").strip()
    if not _ADDR_SPEC.fullmatch(address):
        return Identity(None, False, _why_bad_address(address))
    return _checked_address(address, _display_text(name))


def _checked_address(address: str, display: str) -> Identity:
    """A syntactically valid addr-spec, then the checks on lengths and the display name.

    The display name may repeat the address itself (`alice@x.example <alice@x.example>`,
    common from web forms) and may hold commas or parentheses once decoded (`Bērziņš,
    Jānis`); any other '@' in it is an address a person would read instead of the real one.
    """
    local, _, _domain = address.rpartition("@")
    lowered = address.lower()
    if len(local) > MAX_LOCAL or len(address) > MAX_ADDRESS:
        return Identity(None, False, "address too long (RFC 5321 §4.5.3.1)")
    if any("@" in word and word.strip(".'") != lowered for word in _DISPLAY_WORD_BREAK.split(display.lower())):
        return Identity(lowered, False, "display name shows another address")
    return Identity(lowered, True, "ok")


def _display_text(name: str) -> str:
    """The display name as a person sees it: unquoted, encoded words decoded, NFKC.

    NFKC turns look-alikes such as the full-width commercial at (U+FF20) into '@', so a
    name made to look like an address is caught like a plain one.
    """
    text = _unescape(name[1:-1]) if name.startswith('"') and name.endswith('"') and len(name) >= 2 else name
    if _ENCODED_WORD.search(text):
        text = _decode_words(text)
    return unicodedata.normalize("NFKC", text)


def _decode_words(text: str) -> str:
    """RFC 2047 decoding that never raises: undecodable words are kept as written."""
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, ValueError, UnicodeError, AssertionError):
        return text


def _unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted)


def _why_unparseable(value: str) -> str:
    """A precise reason for the shapes attackers use, for the audit log."""
    outside_quotes = re.sub(_QUOTED, '""', value)
    if "(" in outside_quotes or ")" in outside_quotes:
        return "comment or parenthesis in From"
    if "," in outside_quotes or outside_quotes.count("<") > 1:
        return "several addresses in From"
    if ":" in outside_quotes and ";" in outside_quotes:
        return "group syntax in From"
    if re.search(r'"[^"]*"\s*@', value):
        return "quoted local part"
    if outside_quotes.count("@") > 1:
        return "several @ in From"
    if "<" not in value:
        return _why_bad_address(value)
    return "unparseable From"


def _why_bad_address(address: str) -> str:
    if not address:
        return "empty address"
    if any(ord(char) > 127 for char in address):
        return "non-ASCII address (IDN or SMTPUTF8)"
    if address.startswith('"'):
        return "quoted local part"
    if "[" in address:
        return "domain literal"
    if address.count("@") > 1:
        return "several @ in address"
    if "(" in address or ")" in address:
        return "comment or parenthesis in From"
    return "invalid address"
