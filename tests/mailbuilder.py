"""Raw test mail, written the way real clients write it (the project's own test data)."""

from __future__ import annotations

import itertools
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from datetime import datetime, timezone

_counter = itertools.count(1)


def make_mail(sender: str, subject: str, body: str, *, to: str = "support@localhost", name: str = "",
              in_reply_to: str = "", references: str = "", message_id: str | None = None,
              charset: str = "utf-8", html: str = "", headers: dict[str, str] | None = None) -> bytes:
    """One RFC 5322 message as bytes; the body and subject are encoded in `charset`."""
    message = EmailMessage(policy=SMTP)
    message["From"] = formataddr((name, sender)) if name else sender
    message["To"] = to
    message["Subject"] = Header(subject, charset).encode() if charset != "utf-8" else subject
    message["Date"] = format_datetime(datetime(2026, 11, 26, 10, 0, next(_counter) % 60, tzinfo=timezone.utc))
    message["Message-ID"] = message_id or make_msgid(domain="client.example")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    if references or in_reply_to:
        message["References"] = references or in_reply_to
    for key, value in (headers or {}).items():
        message[key] = value
    message.set_content(body, charset=charset)
    if html:
        message.add_alternative(html, subtype="html", charset=charset)
    return message.as_bytes()


def quoted(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines())
