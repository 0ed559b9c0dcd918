"""The outbox: the queue of rendered mail in the database. Due rows are claimed, handed to a
sender (`delivery`: built and sent, in the send helper under `maildesk run`), and their
outcomes recorded.

A batch of rows is claimed and read by one conditional UPDATE ... RETURNING (status
pending -> sending), so that two daemons on one database never send the same row, and the
results of many sends are recorded in one transaction.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Engine

from maildesk import store
from maildesk.config import Settings
from maildesk.delivery import ClaimedRow, LocalSender, RowOutcome, Sender, Transport
from maildesk.models import OutboxItem, UTCDateTime
from maildesk.rows import typed_rows

log = logging.getLogger("maildesk.outbox")
CLAIM_LEASE = timedelta(minutes=10)


@dataclass(frozen=True)
class SendReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0


_OUTBOX = OutboxItem.__table__  # type: ignore[attr-defined]
_SEND_COLUMNS = [_OUTBOX.c[name] for name in ClaimedRow._fields]
# Results are written at least this often within a batch: a crash between sending and recording
# sends those rows again after the restart (same Message-ID), so the window stays short.
RECORD_EVERY_SECONDS = 0.5


def claim_due(engine: Engine, *, now: datetime, worker: str, limit: int = 100) -> list[int]:
    """Claim up to `limit` due rows for this worker; rows another worker holds are skipped."""
    return [row.id for row in _claim(engine, now=now, worker=worker, limit=limit)]


def _claim(engine: Engine, *, now: datetime, worker: str, limit: int) -> list[ClaimedRow]:
    """One conditional UPDATE ... RETURNING for the whole batch (SQLite 3.35+, PostgreSQL).

    `status = 'pending'` is checked again by the UPDATE itself, so a row another worker claimed
    meanwhile is not taken twice: on PostgreSQL the second UPDATE waits for the first one's row
    lock and then re-checks the condition (READ COMMITTED), and SKIP LOCKED lets it pass over
    rows being claimed rather than wait; SQLite's BEGIN IMMEDIATE serialises the claims.
    """
    with store.transaction(engine) as session:
        rows = typed_rows(_claim_statement(limit), {"now": now, "due": now, "worker": worker}, session=session)
    return sorted((ClaimedRow(*row) for row in rows), key=lambda row: row.id)  # RETURNING promises no order


@functools.lru_cache(maxsize=None)  # one per batch limit: the daemon uses one
def _claim_statement(limit: int) -> Any:
    """The claim, compiled once (building and compiling it per call cost 1.5 ms, the sender's
    batch of two included: it is on the way of every acknowledgement)."""
    moment = _OUTBOX.c.next_attempt_at.type
    due = (select(_OUTBOX.c.id).where(_OUTBOX.c.status == "pending",
                                      _OUTBOX.c.next_attempt_at <= bindparam("due", type_=moment))
           .order_by(_OUTBOX.c.id).limit(limit).with_for_update(skip_locked=True))
    return (update(_OUTBOX).where(_OUTBOX.c.id.in_(due), _OUTBOX.c.status == "pending")
            .values(status="sending", claimed_by=bindparam("worker"), claimed_at=bindparam("now", type_=moment))
            .returning(*_SEND_COLUMNS))


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


def send_due(engine: Engine, settings: Settings, sender: Transport | Sender, *, now: datetime,
             worker: str = "maildesk", limit: int = 100, stop: Callable[[], bool] | None = None) -> SendReport:
    """Send one batch of due rows; returns how many were sent, rescheduled and failed.

    One statement claims and reads the batch; the sender (a transport is used in this process)
    builds the messages and hands them over one after the other; results are recorded for many
    sends in one transaction (at least every RECORD_EVERY_SECONDS). When `stop()` turns true,
    the rows not yet handed over go back to pending untouched.
    """
    rows = _claim(engine, now=now, worker=worker, limit=limit)
    if not rows:
        return SendReport()
    attempts = _as_sender(settings, sender).attempt(rows, now=now, stop=stop)
    done: list[RowOutcome] = []
    recorded, last_record = 0, time.monotonic()
    try:
        for outcome in attempts.outcomes:
            done.append(outcome)
            if time.monotonic() - last_record >= RECORD_EVERY_SECONDS:
                _record(engine, done[recorded:])
                recorded, last_record = len(done), time.monotonic()
    finally:
        # Rows never handed over go back to pending. After an unexpected error the rows in hand
        # stay claimed: they may have been sent, so they wait for the lease like a crashed worker's.
        untouched = [row.id for row in rows[attempts.taken:]]
        if recorded < len(done) or untouched:
            _record(engine, done[recorded:], release=untouched)
    statuses = [outcome.values["status"] for outcome in done]
    return SendReport(statuses.count("sent"), statuses.count("pending"), statuses.count("failed"))


def _as_sender(settings: Settings, sender: Transport | Sender) -> Sender:
    """A transport alone is used in this process."""
    return sender if hasattr(sender, "attempt") else LocalSender(settings, sender)  # type: ignore[arg-type,return-value]


def send_one(engine: Engine, settings: Settings, transport: Transport | Sender, outbox_id: int, *, now: datetime,
             worker: str = "maildesk") -> str:
    """Claim and deliver this one row if it is due and pending; returns the row's status afterwards."""
    claim = (update(_OUTBOX).where(_OUTBOX.c.id == outbox_id, _OUTBOX.c.status == "pending")
             .values(status="sending", claimed_by=worker, claimed_at=now).returning(*_SEND_COLUMNS))
    with store.transaction(engine) as session:
        row = session.execute(claim).first()
        if row is None:
            return str(session.execute(select(_OUTBOX.c.status).where(_OUTBOX.c.id == outbox_id)).scalar_one())
    [outcome] = list(_as_sender(settings, transport).attempt([ClaimedRow(*row)], now=now, stop=None).outcomes)
    _record(engine, [outcome])
    return str(outcome.values["status"])


# One executemany for a batch of results. next_attempt_at and sent_at are only set when given
# (COALESCE keeps the old value), so every row of the batch fits the same statement.
_RECORD = (update(_OUTBOX).where(_OUTBOX.c.id == bindparam("b_id"))
           .values(status=bindparam("status"), attempts=bindparam("attempts"),
                   recipient_results=bindparam("recipient_results"), last_error=bindparam("last_error"),
                   claimed_by=None,
                   next_attempt_at=func.coalesce(bindparam("next_attempt_at", type_=UTCDateTime()),
                                                 _OUTBOX.c.next_attempt_at),
                   sent_at=func.coalesce(bindparam("sent_at", type_=UTCDateTime()), _OUTBOX.c.sent_at)))


def _record(engine: Engine, outcomes: list[RowOutcome], *, release: list[int] | None = None) -> None:
    """Store a batch of outcomes in one transaction; `release` rows go back to pending unattempted."""
    with store.transaction(engine) as session:
        if outcomes:
            session.execute(_RECORD, [outcome.values for outcome in outcomes])
        if release:
            session.execute(update(_OUTBOX).where(_OUTBOX.c.id.in_(release), _OUTBOX.c.status == "sending")
                            .values(status="pending", claimed_by=None))
    for outcome in outcomes:
        values = outcome.values
        log.info("outbox=%d message_id=%s status=%s attempts=%d%s", values["b_id"], outcome.message_id,
                 values["status"], values["attempts"],
                 f" error={values['last_error']!r}" if values["status"] != "sent" else "")


