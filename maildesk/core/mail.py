"""The only mail types the core sees: built by `maildesk.parse`, read by routing and commands."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime
from typing import Final

_NOT_BASE64: Final = re.compile(rb"[^A-Za-z0-9+/]")
_WHITESPACE: Final = b" \t\r\n"
_TRAILING_PADDING: Final = re.compile(rb"=[= \t\r\n]*")
CHUNK: Final = 1 << 20


def lenient_base64(data: bytes | memoryview) -> bytes | None:
    """Decode base64 as mail clients do: stray characters skipped, missing padding forgiven;
    None when even that fails."""
    try:
        return base64.b64decode(data)  # the common case, and fast; it already skips line breaks
    except (binascii.Error, ValueError):
        pass
    cleaned = _NOT_BASE64.sub(b"", bytes(data))
    cleaned = cleaned[: len(cleaned) - len(cleaned) % 4] if len(cleaned) % 4 == 1 else cleaned
    try:
        return base64.b64decode(cleaned + b"=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class Base64Body:
    """A base64 body left where it is in the raw message, `raw[start:end]`, decoded when read.

    The parser hands big attachments over like this, so a 25 MiB file never exists as one
    base64 string plus one decoded copy: `chunks()` decodes a megabyte at a time (what the
    attachment store writes), `decode()` everything at once (what `Attachment.payload` gives).
    """

    raw: bytes
    start: int
    end: int

    def chunks(self, size: int = CHUNK, start: int | None = None) -> Iterator[bytes]:
        """The decoded bytes in pieces of `size` characters (from `raw[start:]` when given, the
        text before it decoded already in whole groups of four), together what `decode()`
        gives; ValueError when the text is not plain base64 (stray characters, padding before
        the end), which only `decode()` forgives.

        White space is removed and up to three characters carried over between pieces.
        `maildesk.base64_pieces` decodes well-formed bodies faster and comes here for the rest.
        """
        position = self.start if start is None else start
        view = memoryview(self.raw)
        carry = b""
        padding_is_trailing = self.padding_only_at_the_end(position, self.end)
        for offset in range(position, self.end, size):
            last = offset + size >= self.end
            clean = carry + bytes(view[offset:min(offset + size, self.end)]).translate(None, _WHITESPACE)
            usable = len(clean) if last else len(clean) - len(clean) % 4
            piece, carry = clean[:usable], clean[usable:]
            if not last and not padding_is_trailing and b"=" in piece:
                raise ValueError("padding before the end of the base64 text")
            try:
                yield binascii.a2b_base64(piece, strict_mode=True)
            except binascii.Error as error:
                raise ValueError(f"not plain base64: {error}") from error

    def padding_only_at_the_end(self, position: int, stop: int) -> bool:
        """No '=' in `raw[position:stop]`, or only '=' and white space from the first one to
        the end of the body. Padding anywhere else makes the stdlib stop decoding there, which
        a piece cannot know."""
        padding = self.raw.find(b"=", position, stop)
        return padding < 0 or (stop == self.end and _TRAILING_PADDING.fullmatch(self.raw, padding, stop) is not None)

    def decode(self) -> bytes:
        """All of it, decoded as `lenient_base64` does (b'' when even that fails)."""
        return lenient_base64(memoryview(self.raw)[self.start:self.end]) or b""


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient a delivery status notification (RFC 3464) says was not reached."""

    address: str
    status: str  # the enhanced status code, 5.1.1
    diagnostic: str  # what the refusing server said, as far as the report gives it


@dataclass(frozen=True)
class DeliveryReport:
    """What a bounce says: which of our mails (its Message-ID) did not reach whom."""

    original_message_id: str
    failed: tuple[FailedRecipient, ...]


@dataclass(frozen=True)
class Attachment:
    """One attached file; `filename` is the sender's name for it, kept as data only.

    `content` is the decoded bytes, or for a big base64 part the `Base64Body` still inside
    the raw message; `payload` always gives bytes, `chunks()` gives them piece by piece.
    """

    filename: str
    content_type: str
    content: bytes | Base64Body = b""

    @property
    def payload(self) -> bytes:
        return self.content if isinstance(self.content, bytes) else self.content.decode()

    @property
    def size(self) -> int:
        if isinstance(self.content, bytes):
            return len(self.content)
        try:
            return sum(len(piece) for piece in self.content.chunks())
        except ValueError:
            return len(self.content.decode())

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The payload piece by piece (ValueError from a `Base64Body` that is not plain base64)."""
        if isinstance(self.content, bytes):
            yield self.content
        else:
            yield from self.content.chunks(size)


@dataclass(frozen=True)
class InboundMail:
    """A parsed incoming message.

    Addresses are lower-case bare addresses (`anna@example.lv`). `text` is the whole
    plain-text body (derived from HTML when there is no text part); `new_text` is what
    the sender wrote in this mail, with quoted replies and signatures removed: only it
    counts for commands. `headers` keeps every header as decoded (name, value) pairs
    in their original order, for the classifier and authentication results.
    """

    message_id: str
    subject: str
    from_address: str
    from_name: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    date: datetime | None = None
    text: str = ""
    new_text: str = ""
    html: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[Attachment, ...] = ()
    defects: tuple[str, ...] = field(default=())
    report: DeliveryReport | None = None  # a bounce's delivery status notification, when it has one

    def header(self, name: str) -> str:
        """The first value of a header, '' when absent (names compare case-insensitively)."""
        values = self._by_name.get(name.lower())
        return values[0] if values else ""

    def header_values(self, name: str) -> list[str]:
        return list(self._by_name.get(name.lower(), ()))

    @cached_property
    def _by_name(self) -> dict[str, list[str]]:
        """Values by lower-case header name: classifying and verifying ask for dozens of headers."""
        index: dict[str, list[str]] = {}
        for key, value in self.headers:
            index.setdefault(key.lower(), []).append(value)
        return index


@dataclass(frozen=True)
class OutgoingMail:
    """A notification ready for the outbox: everything needed to build the MIME message."""

    to: tuple[str, ...]
    subject: str
    body_text: str
    body_html: str
    message_id: str
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    reply_to: str = ""
