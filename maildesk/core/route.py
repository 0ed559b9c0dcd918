"""Where an incoming mail belongs: a new ticket, a reply to a ticket, or nowhere.

The subject token `[SD-123]` wins (after decoding, anywhere in the subject); otherwise the
threading headers (In-Reply-To, then References) are looked up among stored Message-IDs by
the caller, which passes the key it found. Everything else opens a ticket.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

NEW_USER_SUBJECTS = ("jauns service desk lietotajs", "new service desk user")


@dataclass(frozen=True)
class NewTicket:
    type: str | None = None


@dataclass(frozen=True)
class Reply:
    key: str
    by: str  # "token", "subject" or "headers"


@dataclass(frozen=True)
class Ignore:
    reason: str


Route = NewTicket | Reply | Ignore


def subject_key(subject: str, prefix: str) -> str | None:
    """`SD-123` from a subject such as `Re: AW: [sd-123] Printer`, None when absent."""
    match = re.search(r"\[\s*" + re.escape(prefix) + r"\s*-\s*(\d{1,12})\s*\]", subject, re.IGNORECASE)
    return f"{prefix}-{int(match.group(1))}" if match else None


def thread_ids(in_reply_to: str, references: tuple[str, ...]) -> tuple[str, ...]:
    """Message-IDs to look up, most specific first (In-Reply-To, then newest reference)."""
    ordered = [in_reply_to.strip()] if in_reply_to.strip() else []
    ordered.extend(reference for reference in reversed(references) if reference not in ordered)
    return tuple(ordered)


def is_new_user_request(subject: str) -> bool:
    """The process's own subject for a new-user request, in Latvian or English."""
    folded = unicodedata.normalize("NFKD", subject)
    folded = "".join(char for char in folded if not unicodedata.combining(char)).casefold()
    folded = " ".join(folded.split())
    return any(phrase in folded for phrase in NEW_USER_SUBJECTS)


def route(subject: str, prefix: str, key_by_headers: str | None, *, from_ourselves: bool = False,
          key_by_token: str | None = None, exists: Callable[[str], bool] = lambda key: True) -> Route:
    """Decide the route: a verified reply token first, then the subject token of a ticket that
    `exists`, then the ticket the threading headers point at; anything else is a new ticket."""
    if from_ourselves:
        return Ignore("mail from our own address")
    if key_by_token:
        return Reply(key_by_token, "token")
    key = subject_key(subject, prefix)
    if key and exists(key):
        return Reply(key, "subject")
    if key_by_headers:
        return Reply(key_by_headers, "headers")
    return NewTicket("Add New Users" if is_new_user_request(subject) else None)
