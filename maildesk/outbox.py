"""The outbox: claim due rows, build each MIME message, hand it to a transport, record the result.

Rows are claimed with a conditional update (status pending -> sending) so that two
daemons on one database never send the same row. A temporary failure reschedules with
exponential backoff until the retry deadline; a permanent one fails the recipient. The
transport is a folder of .eml files (`sent/`) until an SMTP host is configured.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from maildesk import store
from maildesk.config import Settings
from maildesk.models import OutboxItem
from maildesk.notify import LOOP_HEADER, header_safe

log = logging.getLogger("maildesk.outbox")
SENDER_NAME = "Service Desk"
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)
CLAIM_LEASE = timedelta(minutes=10)


@dataclass(frozen=True)
class RecipientResult:
    """What happened to one recipient: delivered, or refused temporarily or for good."""

    delivered: bool
    permanent: bool = False
    detail: str = ""


class DeliveryError(Exception):
    """The whole message could not be handed over; `permanent` says whether to retry."""

    def __init__(self, detail: str, *, permanent: bool) -> None:
        super().__init__(detail)
        self.permanent = permanent


class Transport(Protocol):
    def deliver(self, envelope_from: str, recipients: list[str], message: bytes,
                message_id: str) -> Mapping[str, RecipientResult]: ...

    def close(self) -> None: ...


class FolderTransport:
    """Writes each message to `folder/<message-id>.eml`: the embedded default, and for tests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def deliver(self, envelope_from: str, recipients: list[str], message: bytes,
                message_id: str) -> dict[str, RecipientResult]:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9._@-]", "_", message_id.strip("<>"))[:150] + ".eml"
        temporary = self.folder / (name + ".part")
        temporary.write_bytes(message)
        temporary.replace(self.folder / name)
        return {recipient: RecipientResult(True, detail=f"written to {name}") for recipient in recipients}

    def close(self) -> None:
        """Nothing to close: every write is complete when deliver returns."""


def build_message(item: OutboxItem, settings: Settings) -> EmailMessage:
    """The MIME message for a row, marked as automatic mail (RFC 3834) and loop-tagged."""
    message = EmailMessage(policy=SMTP)
    message["From"] = formataddr((SENDER_NAME, settings.support_address))
    message["To"] = ", ".join(store.outbox_recipients(item))
    message["Subject"] = header_safe(item.subject)
    message["Date"] = format_datetime(item.created_at)
    message["Message-ID"] = item.message_id
    if item.in_reply_to:
        message["In-Reply-To"] = item.in_reply_to
    if item.references:
        message["References"] = item.references
    message["Reply-To"] = item.reply_to or settings.support_address
    message["Auto-Submitted"] = "auto-replied" if item.in_reply_to else "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message[LOOP_HEADER] = settings.support_address
    message.set_content(item.body_text)
    if item.body_html:
        message.add_alternative(item.body_html, subtype="html")
    return message


def folder_transport(settings: Settings) -> FolderTransport:
    return FolderTransport(settings.sent_dir)


@dataclass(frozen=True)
class SendReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0


def claim_due(engine: Engine, *, now: datetime, worker: str, limit: int = 100) -> list[int]:
    """Claim up to `limit` due rows for this worker; rows another worker holds are skipped."""
    with store.transaction(engine) as session:
        due = [row[0] for row in session.execute(
            select(OutboxItem.id).where(OutboxItem.status == "pending", OutboxItem.next_attempt_at <= now)
            .order_by(OutboxItem.id).limit(limit))]
    claimed = []
    for outbox_id in due:
        with store.transaction(engine) as session:
            result = session.execute(update(OutboxItem).where(OutboxItem.id == outbox_id,
                                                              OutboxItem.status == "pending")
                                     .values(status="sending", claimed_by=worker, claimed_at=now))
            if result.rowcount == 1:  # type: ignore[attr-defined]
                claimed.append(outbox_id)
    return claimed


def release_stale_claims(engine: Engine, *, now: datetime, worker: str | None = None) -> int:
    """Rows left in `sending` by a worker that died go back to pending: after the lease, or
    at once when `worker` (the restarting daemon itself) held them."""
    stale = OutboxItem.claimed_at < now - CLAIM_LEASE
    if worker is not None:
        stale = stale | (OutboxItem.claimed_by == worker)
    with store.transaction(engine) as session:
        result = session.execute(update(OutboxItem).where(OutboxItem.status == "sending", stale)
                                 .values(status="pending", claimed_by=None))
        return int(result.rowcount)  # type: ignore[attr-defined]


def send_due(engine: Engine, settings: Settings, transport: Transport, *, now: datetime,
             worker: str = "maildesk", limit: int = 100) -> SendReport:
    """Send every due row once; returns how many were sent, rescheduled and failed."""
    sent = retried = failed = 0
    for outbox_id in claim_due(engine, now=now, worker=worker, limit=limit):
        outcome = send_one(engine, settings, transport, outbox_id, now=now)
        sent += outcome == "sent"
        retried += outcome == "pending"
        failed += outcome == "failed"
    return SendReport(sent, retried, failed)


def send_one(engine: Engine, settings: Settings, transport: Transport, outbox_id: int, *, now: datetime) -> str:
    """Deliver one claimed row and record the outcome; returns the row's new status."""
    with store.transaction(engine) as session:
        item = session.get(OutboxItem, outbox_id)
        assert item is not None
        previous = json.loads(item.recipient_results or "{}")
        waiting = [address for address in store.outbox_recipients(item)
                   if previous.get(address, {}).get("state") not in ("delivered", "refused")]
        message = build_message(item, settings).as_bytes()
    try:
        results = dict(transport.deliver(settings.bounce_address, waiting, message, item.message_id))
    except DeliveryError as error:
        results = {address: RecipientResult(False, error.permanent, str(error)) for address in waiting}
    return _record(engine, settings, outbox_id, previous, results, now=now)


def _record(engine: Engine, settings: Settings, outbox_id: int, previous: dict[str, dict[str, str]],
            results: Mapping[str, RecipientResult], *, now: datetime) -> str:
    merged = dict(previous)
    for address, result in results.items():
        state = "delivered" if result.delivered else ("refused" if result.permanent else "deferred")
        merged[address] = {"state": state, "detail": result.detail[:500], "at": now.isoformat()}
    with store.transaction(engine) as session:
        item = session.get(OutboxItem, outbox_id)
        assert item is not None
        item.attempts += 1
        item.recipient_results = json.dumps(merged)
        item.claimed_by = None
        deferred = [address for address, value in merged.items() if value["state"] == "deferred"]
        refused = [address for address, value in merged.items() if value["state"] == "refused"]
        deadline = item.created_at + timedelta(hours=settings.outbox_retry_hours)
        if deferred and now < deadline:
            item.status = "pending"
            item.next_attempt_at = min(now + retry_delay(item.attempts), deadline)
            item.last_error = "; ".join(f"{address}: {merged[address]['detail']}" for address in deferred)[:2000]
        elif deferred or (refused and len(refused) == len(merged)):
            item.status = "failed"
            item.last_error = "; ".join(f"{address}: {value['detail']}" for address, value in merged.items()
                                        if value["state"] != "delivered")[:2000]
        else:
            item.status, item.sent_at = "sent", now
            item.last_error = "; ".join(f"{address}: {merged[address]['detail']}" for address in refused)[:2000]
        session.add(item)
        log.info("outbox=%d message_id=%s status=%s attempts=%d%s", outbox_id, item.message_id, item.status,
                 item.attempts, f" error={item.last_error!r}" if item.status != "sent" else "")
        return item.status


def retry_delay(attempts: int) -> timedelta:
    """1, 2, 4, 8 ... minutes, at most an hour: exponential backoff for temporary failures."""
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), LONGEST_RETRY)
