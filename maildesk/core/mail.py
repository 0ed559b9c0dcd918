"""The only mail types the core sees: built by `maildesk.parse`, read by routing and commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Attachment:
    """One attached file; `filename` is the sender's name for it, kept as data only."""

    filename: str
    content_type: str
    payload: bytes

    @property
    def size(self) -> int:
        return len(self.payload)


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

    def header(self, name: str) -> str:
        """The first value of a header, '' when absent (names compare case-insensitively)."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return ""

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


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
