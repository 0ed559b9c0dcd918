"""How long the raw bytes of handled mail are kept: the one part of the database that only grows.

Every mail's raw bytes are kept (`inbox_raw`) so that nothing is ever lost before it is
handled, and so that kept mail can be processed again. Once a mail is `processed` or `ignored`,
its ticket holds what it said (messages, attachments); the raw bytes then only serve an audit.
With `MAILDESK_KEEP_RAW_DAYS` set, the daemon removes them that many days after the mail was
handled (after READY, then every ten minutes, up to 5,000 mails a time), and
`maildesk inbox prune --older-than DAYS` does it on demand. Failed, quarantined and held mail
is never pruned: it waits for `maildesk inbox retry`. The inbox row
stays, with its SHA-256, so the same mail arriving again is still recognised as a repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from maildesk import store
from maildesk.models import InboxItem, InboxRaw

PRUNED_STATES = ("processed", "ignored")
PRUNE_BATCH = 500  # rows a transaction: short enough not to hold a daemon's writers back


@dataclass(frozen=True)
class Pruned:
    """How many mails lost their raw bytes, and how many bytes that was."""

    mails: int
    raw_bytes: int


def prune_raw(engine: Engine, *, handled_before: datetime, max_batches: int | None = None) -> Pruned:
    """Remove the raw bytes of mail handled before `handled_before`, a batch per transaction;
    at most `max_batches` batches (the daemon's main loop must not stall: its watchdog)."""
    mails = raw_bytes = batches = 0
    while max_batches is None or batches < max_batches:
        with store.transaction(engine) as session:
            found = session.execute(_prunable(handled_before).order_by(InboxItem.id).limit(PRUNE_BATCH)).all()
            if found:
                session.execute(delete(InboxRaw).where(
                    InboxRaw.inbox_id.in_([row.id for row in found])))  # type: ignore[attr-defined]
        mails, raw_bytes, batches = mails + len(found), raw_bytes + sum(row.size for row in found), batches + 1
        if len(found) < PRUNE_BATCH:
            break
    return Pruned(mails, raw_bytes)


def prunable(engine: Engine, *, handled_before: datetime) -> Pruned:
    """What `prune_raw` would remove (`--dry-run`)."""
    found = _prunable(handled_before).subquery()
    with store.transaction(engine) as session:
        count, size = session.execute(select(func.count(), func.coalesce(func.sum(found.c.size), 0))).one()
    return Pruned(int(count), int(size))


def kept_raw_bytes(engine: Engine) -> int:
    """The raw bytes still kept, for the command's report."""
    with store.transaction(engine) as session:
        return int(session.execute(select(func.coalesce(func.sum(InboxItem.size), 0)).join(
            InboxRaw, InboxRaw.inbox_id == InboxItem.id)).scalar_one())  # type: ignore[arg-type]


def _prunable(handled_before: datetime):  # type: ignore[no-untyped-def]
    return (select(InboxItem.id, InboxItem.size)
            .join(InboxRaw, InboxRaw.inbox_id == InboxItem.id)  # type: ignore[arg-type]
            .where(InboxItem.state.in_(PRUNED_STATES),  # type: ignore[attr-defined]
                   InboxItem.processed_at < handled_before))  # type: ignore[operator]
