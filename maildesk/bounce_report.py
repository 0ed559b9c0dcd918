"""A bounce's delivery status notification (RFC 3464) read from the parsed message tree.

Where it sits in the flow: `parse` calls it for a `multipart/report` mail (in the parse helper),
and the handler uses the result to mark the outbox mail that bounced and to note it on its
ticket. Only what the report states is read: the recipients whose `Action:` is `failed`, their
status and diagnostic, and the Message-ID of the returned original (a `message/rfc822` part or
a `text/rfc822-headers` part, as Postfix, Exchange and Gmail send them). A report without a
returned Message-ID cannot be matched to a mail of ours, and gives none.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import HeaderParser

from maildesk.core.mail import DeliveryReport, FailedRecipient

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_ADDRESS_TYPE = re.compile(r"^\s*[A-Za-z0-9-]+\s*;\s*")  # "rfc822; " before the address
_REPORT_TYPES = ("message/delivery-status", "message/global-delivery-status")
_LONGEST_DIAGNOSTIC = 500


def delivery_report(message: Message) -> DeliveryReport | None:
    """The report of a `multipart/report` message tree, or None when it holds nothing to match."""
    failed: list[FailedRecipient] = []
    original = ""
    for part in message.walk():
        kind = part.get_content_type()
        if kind in _REPORT_TYPES:
            failed += _failed_recipients(part)
        elif kind in ("message/rfc822", "message/global") and not original:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                original = _message_id(str(inner[0].get("message-id", "")))
        elif kind == "text/rfc822-headers" and not original:
            headers = HeaderParser().parsestr(_text(part), headersonly=True)
            original = _message_id(str(headers.get("message-id", "")))
    return DeliveryReport(original, tuple(failed)) if original and failed else None


def _failed_recipients(part: Message) -> list[FailedRecipient]:
    """The per-recipient field blocks (every block after the first) whose Action is `failed`."""
    blocks = part.get_payload()
    if not isinstance(blocks, list):
        return []
    failed = []
    for block in blocks[1:]:
        if not isinstance(block, Message) or str(block.get("action", "")).strip().lower() != "failed":
            continue
        address = _ADDRESS_TYPE.sub("", str(block.get("final-recipient") or block.get("original-recipient") or ""))
        if address.strip():
            diagnostic = " ".join(_ADDRESS_TYPE.sub("", str(block.get("diagnostic-code", ""))).split())
            failed.append(FailedRecipient(address.strip().strip("<>").lower(), str(block.get("status", "")).strip(),
                                          diagnostic[:_LONGEST_DIAGNOSTIC]))
    return failed


def _message_id(value: str) -> str:
    found = _MESSAGE_ID.search(value)
    return found.group(0) if found else ""


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(part.get_payload())
