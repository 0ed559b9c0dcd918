"""What the admin's operations commands do: check the setup, inspect and retry kept mail.

The command line prints; these functions only look and change, so tests call them directly.
"""

from __future__ import annotations

import json
import smtplib
import socket
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine

from maildesk import smtp, store
from maildesk.config import Settings
from maildesk.models import InboxItem, OutboxItem, utcnow


@dataclass(frozen=True)
class CheckResult:
    name: str
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_database(settings: Settings) -> CheckResult:
    url = store.safe_url(settings.database_url)
    try:
        engine = store.make_engine(settings.database_url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        store.check_ready(engine)
    except store.DatabaseNotReady as error:
        return CheckResult(f"database {url}", str(error))
    except Exception as error:  # every driver error means the same to the admin: not reachable
        return CheckResult(f"database {url}", f"cannot use the database: {store.problem_of(settings.database_url, error)}")
    return CheckResult(f"database {url}", None)


def check_all(settings: Settings) -> list[CheckResult]:
    """The database, then IMAP (or the LMTP port) and SMTP, each with what failed."""
    results = [check_database(settings)]
    if settings.imap_configured:
        from maildesk import imap
        results.append(CheckResult(f"IMAP {settings.imap_host}:{settings.imap_port}",
                                   imap.check_connection(settings)))
    else:
        results.append(CheckResult(f"LMTP listener {settings.lmtp_host}:{settings.lmtp_port}",
                                   _port_free(settings.lmtp_host, settings.lmtp_port)))
    if settings.smtp_configured:
        results.append(CheckResult(f"SMTP {settings.smtp_host}:{settings.smtp_port}", smtp.check_connection(settings)))
    else:
        results.append(CheckResult(f"outgoing mail folder {settings.sent_dir}", _writable(settings)))
    return results


def _port_free(host: str, port: int) -> str | None:
    """None when the daemon could listen there, or when a running maildesk already does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            from maildesk.lmtp import LMTP_IDENT  # only here: aiosmtpd would cost every command 80 ms to import
            greeting = _greeting(host, port)
            if LMTP_IDENT in greeting:
                return None  # the service is up and listening: the setting works
            held = f" by another program ({greeting})" if greeting else ""
            return f"cannot listen on {host}:{port}: {error.strerror}{held}"
    return None


def _greeting(host: str, port: int) -> str:
    """The first line a server on that port says, '' when none answers."""
    try:
        with socket.create_connection((host, port), timeout=5) as connection:
            return connection.makefile("rb").readline(300).decode("ascii", "replace").strip()
    except OSError:
        return ""


def _writable(settings: Settings) -> str | None:
    try:
        settings.sent_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.sent_dir / ".maildesk-check"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        return f"cannot write to {settings.sent_dir}: {error.strerror}"
    return None


def inbox_rows(engine: Engine, state: str | None) -> list[dict[str, object]]:
    query = select(InboxItem.id, InboxItem.received_at, InboxItem.source, InboxItem.state, InboxItem.reason,
                   InboxItem.attempts, InboxItem.message_id, InboxItem.sender, InboxItem.size).order_by(InboxItem.id)
    if state:
        query = query.where(InboxItem.state == state)
    with store.transaction(engine) as session:
        return [{"id": row.id, "received_at": row.received_at.isoformat(), "source": row.source, "state": row.state,
                 "reason": row.reason, "attempts": row.attempts, "message_id": row.message_id, "sender": row.sender,
                 "size": row.size} for row in session.execute(query)]


RETRY_STATES = ("failed", "quarantined", "held")


def requeue_inbox(engine: Engine, inbox_id: int | None) -> dict[int, int]:
    """Put kept mail (failed, quarantined or held) back in the queue with fresh attempts; the rows
    put back, in id order, with their raw sizes (to be processed in groups of bounded bytes)."""
    condition = InboxItem.state.in_(RETRY_STATES) & (InboxItem.size > 0)  # type: ignore[attr-defined]
    if inbox_id is not None:
        condition = condition & (InboxItem.id == inbox_id)
    with store.transaction(engine) as session:
        sizes = {int(row_id): int(size) for row_id, size in session.execute(
            select(InboxItem.id, InboxItem.size).where(condition).order_by(InboxItem.id))}
        if sizes:
            session.execute(update(InboxItem).where(InboxItem.id.in_(list(sizes)))  # type: ignore[union-attr]
                            .values(state="new", attempts=0, claimed_by=None))
    return sizes


def requeue_outbox(engine: Engine, outbox_id: int) -> bool:
    """A failed outbox row is tried again now (a fixed address, a server back up): its refused
    recipients get a new attempt, those already delivered are not mailed twice."""
    with store.transaction(engine) as session:
        item = session.get(OutboxItem, outbox_id)
        if item is None or item.status not in ("failed", "pending"):
            return False
        results = json.loads(item.recipient_results or "{}")
        item.recipient_results = json.dumps({address: result for address, result in results.items()
                                             if result.get("state") == "delivered"})
        item.status, item.next_attempt_at, item.created_at, item.claimed_by = "pending", utcnow(), utcnow(), None
        session.add(item)
        return True


def send_test_mail(settings: Settings, sender: str, subject: str, body: str) -> str:
    """Deliver one mail to the running LMTP listener, as an MTA would; returns its Message-ID."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = settings.support_address
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    message.set_content(body)
    with smtplib.LMTP(settings.lmtp_host, settings.lmtp_port, timeout=30) as client:
        client.send_message(message)
    return str(message["Message-ID"])
