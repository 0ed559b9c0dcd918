"""An outbox row -> the MIME message that is sent (... -> outbox -> **compose** -> SMTP).

The message is built directly, not through `email.message.EmailMessage` (9 ms a message, once
the sender's largest cost). It needs no database, so it runs where the message is sent: in the
send helper (`send_worker`) under `maildesk run`.
"""

from __future__ import annotations

import binascii
import functools
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from typing import Protocol, cast

from maildesk.config import Settings
from maildesk.core.classify import LOOP_HEADER

SENDER_NAME = "Service Desk"
UNSAFE_HEADER_CHARACTERS = re.compile("[\r\n\x00\u2028\u2029]+")
MAX_HEADER_TEXT = 200


class MessageRow(Protocol):
    """The outbox columns a message is built from (an `OutboxItem`, or a claimed row)."""

    message_id: str
    in_reply_to: str
    references: str
    to_addresses: str
    reply_to: str
    subject: str
    body_text: str
    body_html: str
    created_at: datetime


def header_safe(text: str, limit: int = MAX_HEADER_TEXT) -> str:
    """Text from a mail made safe for an outgoing header: one line, no NUL, capped."""
    return " ".join(UNSAFE_HEADER_CHARACTERS.sub(" ", text).split())[:limit]


def build_message(item: MessageRow, settings: Settings) -> EmailMessage:
    """The row's message as a stdlib EmailMessage, parsed from exactly the bytes that are sent
    (`message_bytes`): for tests and tools, never on the sending path."""
    return cast(EmailMessage, BytesParser(policy=SMTP).parsebytes(message_bytes(item, settings)))


def message_bytes(item: MessageRow, settings: Settings) -> bytes:
    """The MIME message for a row, marked as automatic mail (RFC 3834) and loop-tagged.

    Built directly, not through `email.message.EmailMessage` (9 ms a message, the sender's
    largest cost): CRLF line ends, headers folded at 78 characters, a non-ASCII or unfoldable
    Subject as RFC 2047 base64 encoded words of whole characters, bodies in UTF-8 as 7bit when
    they are short-lined ASCII, else quoted-printable (lines of at most 76): the message is
    7-bit clean and needs no 8BITMIME. Only a non-ASCII address stays raw UTF-8 (RFC 6532):
    the envelope then asks for SMTPUTF8 anyway. tests/test_outbox.py parses the result back.
    """
    own = _own_headers(settings.support_address)
    lines = [own.sender, _fold("To", [address + "," for address in _addresses(item.to_addresses)]),
             _text_header("Subject", header_safe(item.subject)), "Date: " + format_datetime(item.created_at),
             _id_header("Message-ID", item.message_id)]
    if item.in_reply_to:
        lines.append(_id_header("In-Reply-To", item.in_reply_to))
    if item.references:
        lines.append(_id_header("References", item.references))
    lines.append(_fold("Reply-To", [_one_line(item.reply_to)]) if item.reply_to else own.reply_to)
    lines.append(own.replied if item.in_reply_to else own.generated)
    text_encoding, text = _body(item.body_text)
    if not item.body_html:
        lines += ['Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: " + text_encoding]
        return ("\r\n".join(lines) + "\r\n\r\n" + text).encode()
    html_encoding, html = _body(item.body_html)
    boundary = "=_md_" + secrets.token_hex(12)
    while boundary in text or boundary in html:  # "=_" never occurs in quoted-printable; 7bit text might
        boundary = "=_md_" + secrets.token_hex(12)
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    return "".join((
        "\r\n".join(lines), "\r\n\r\n",
        "--", boundary, '\r\nContent-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: ',
        text_encoding, "\r\n\r\n", text,
        "\r\n--", boundary, '\r\nContent-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: ',
        html_encoding, "\r\n\r\n", html,
        "\r\n--", boundary, "--\r\n")).encode()


MAX_LINE = 78  # RFC 5322 section 2.1.1: header lines SHOULD stay within 78 characters
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_NOT_7BIT_TEXT = re.compile("[^\t\n\x20-\x7e]")
_QP_OVERLONG = re.compile("^(.{74,75})(=09|=20)$", re.MULTILINE)


@dataclass(frozen=True)
class _OwnHeaders:
    sender: str
    reply_to: str
    generated: str
    replied: str


@functools.lru_cache(maxsize=8)
def _own_headers(support: str) -> _OwnHeaders:
    """The header lines that depend only on the support address, built once."""
    tail = f"X-Auto-Response-Suppress: All\r\n{_fold(LOOP_HEADER, [_one_line(support)])}\r\nMIME-Version: 1.0"
    return _OwnHeaders(sender="From: " + _one_line(formataddr((SENDER_NAME, support))),
                       reply_to=_fold("Reply-To", [_one_line(support)]),
                       generated="Auto-Submitted: auto-generated\r\n" + tail,
                       replied="Auto-Submitted: auto-replied\r\n" + tail)


def _one_line(value: str) -> str:
    """A header value from the database made one line with no controls (it never should need it)."""
    if value.isprintable() and "  " not in value and value == value.strip():
        return value
    return header_safe(value, limit=len(value))


def _addresses(to_addresses: str) -> list[str]:
    return [_one_line(address) for address in json.loads(to_addresses)]


def _fold(name: str, words: list[str]) -> str:
    """`name: words...` folded before a word at 78 characters; a trailing comma is dropped.

    A single word longer than a line (an address or Message-ID of 70+ characters) stays whole,
    as RFC 5322 allows up to 998."""
    if words and words[-1].endswith(","):
        words[-1] = words[-1][:-1]
    lines, line = [], name + ":"
    for word in words:
        if len(line) + 1 + len(word) > MAX_LINE and line != name + ":":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines)


def _id_header(name: str, value: str) -> str:
    """Message-ID, In-Reply-To, References: ids folded between ids; a non-ASCII id (possible in
    a mail we answer) as encoded words like the stdlib did, so the message stays 7-bit clean."""
    value = _one_line(value)
    if value.isascii():
        return _fold(name, value.split())
    return _encoded_header(name, value)


def _text_header(name: str, value: str) -> str:
    """Unstructured text: plain and folded when that is exact and fits, else encoded words.

    Control characters become spaces. Text that looks like an encoded word ("=?...?=") is
    encoded too, or a reader would decode what the customer wrote literally."""
    if _CONTROL.search(value):
        value = " ".join(_CONTROL.sub(" ", value).split())
    if value.isascii() and "=?" not in value:
        folded = _fold(name, value.split(" "))
        if all(len(line) <= MAX_LINE for line in folded.split("\r\n")):
            return folded
    return _encoded_header(name, value)


def _encoded_header(name: str, value: str) -> str:
    """RFC 2047 "B" encoded words of UTF-8, each of whole characters (section 5), one a line:
    the first fits beside the header name, the others beside the folding space."""
    data = value.encode()
    room = MAX_LINE - len(name) - 2 - len("=?utf-8?b??=")
    chunk = max(room // 4 * 3, 3)
    words, start = [], 0
    while start < len(data):
        end = min(start + chunk, len(data))
        while end < len(data) and end > start + 1 and data[end] & 0xC0 == 0x80:
            end -= 1  # never split a multi-byte character
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode() + "?=")
        start = end
        chunk = (MAX_LINE - 1 - len("=?utf-8?b??=")) // 4 * 3
    return name + ": " + "\r\n ".join(words or ["=?utf-8?b??="])


def _body(text: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, CRLF body ending in a line break) for UTF-8 text."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if text.isascii() and not _NOT_7BIT_TEXT.search(text) and max(map(len, text.split("\n"))) <= 76:
        return "7bit", text.replace("\n", "\r\n")
    encoded = binascii.b2a_qp(text.encode(), istext=True).decode("ascii")  # soft line breaks at 76
    # b2a_qp lets a line ending in whitespace reach 77 or 78 once the space or tab is encoded:
    # break softly before that last one.
    if "=20\n" in encoded or "=09\n" in encoded or encoded.endswith(("=20", "=09")):  # else nothing to break
        encoded = _QP_OVERLONG.sub("\\1=\n\\2", encoded)
    return "quoted-printable", encoded.replace("\n", "\r\n")
