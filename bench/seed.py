"""Seed a desk with a long history by plain SQL, for (f): 1M tickets and what they leave behind.

A desk that has run for years holds, per ticket, at least the opening mail (an inbox row and a
message), the acknowledgement (an outbox row) and the ticket itself; the pipeline's lookups
(thread by Message-ID, "did we answer this sender lately", the ticket by key) run against
those tables, so all four are seeded, one row each per ticket. Events are not seeded: they
are only read per ticket through their ticket_id index. Inbox rows get no `inbox_raw` row (a
real one holds the whole mail; 1M of them would be ~20 GB on disk); since schema 0005 the bytes
live apart from the inbox rows, so scans of `inbox` cost the same either way.

The INSERTs are built from `PRAGMA table_info`, so a column added by a later migration gets a
type-shaped filler instead of breaking the seed. Rows come from a recursive CTE inside SQLite
(no Python loop per row). Tickets SD-1..SD-n keep the corpus's numbering: ticket k <= the
number of corpus originals belongs to the sender of original k and is OPEN (replies in the
corpus say [SD-k] and thread onto it as they would have); older-looking ones cycle through the
corpus senders and are mostly closed.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from common import SUPPORT_ADDRESS, CorpusMail

# Per table: column -> SQL expression over the CTE row (k, address, org_id, at).
TICKETS = {
    "id": "k", "key": "'SD-' || k", "type": "'Service Request'", "summary": "'Seeded ticket ' || k",
    "description": "'Seeded by bench/seed.py'",
    "status": "CASE WHEN k <= :open_until THEN 'OPEN' WHEN k % 10 = 0 THEN 'OPEN' "
              "WHEN k % 10 = 1 THEN 'WAITING FOR CUSTOMER' ELSE 'CLOSED' END",
    "reporter": "address", "organisation_id": "org_id", "holder": "'agents'", "channel": "'email'",
    "thread_id": "'<seed.' || k || '@seed.example>'", "created_at": "at", "updated_at": "at",
    "status_changed_at": "at", "estimate_version": "0",
}
INBOX = {
    "id": "k", "received_at": "at", "source": "'imap'", "sha256": "printf('seed%060d', k)",
    "message_id": "'<seed.' || k || '@seed.example>'", "size": "0", "state": "'processed'",
    "reason": "'new ticket'", "attempts": "1", "processed_at": "at", "ticket_id": "k", "sender": "address",
}
MESSAGES = {
    "id": "k", "ticket_id": "k", "direction": "'in'", "message_id": "'<seed.' || k || '@seed.example>'",
    "in_reply_to": "''", "sender": "address", "subject": "'Seeded ticket ' || k",
    "new_text": "'Seeded by bench/seed.py'", "full_text": "'Seeded by bench/seed.py'", "internal": "0",
    "unverified": "0", "inbox_id": "k", "created_at": "at",
}
OUTBOX = {
    "id": "k", "ticket_id": "k", "message_id": f"'<seed-ack.' || k || '@{SUPPORT_ADDRESS.partition('@')[2]}>'",
    "in_reply_to": "'<seed.' || k || '@seed.example>'", "references": "'<seed.' || k || '@seed.example>'",
    "to_addresses": "'[\"' || address || '\"]'", "reply_to": f"'{SUPPORT_ADDRESS}'",
    "subject": "'[SD-' || k || '] Seeded ticket'", "template": "'ticket_created'", "language": "'lv'",
    "body_text": "'Seeded acknowledgement'", "body_html": "''", "status": "'sent'", "attempts": "1",
    "next_attempt_at": "at", "last_error": "''", "recipient_results": "'{}'", "sent_at": "at", "created_at": "at",
}
ORDER = (("tickets", TICKETS), ("inbox", INBOX), ("messages", MESSAGES), ("outbox", OUTBOX))


TABLES = tuple(table for table, _columns in ORDER)


def seed_history(path: Path, engine: Any, mails: list[CorpusMail], *, tickets: int,
                 tables: tuple[str, ...] = TABLES) -> dict[str, Any]:
    """Insert `tickets` tickets with one row each in the other `tables`; returns timings.

    `tables` lets a run seed less (tickets and messages only, say) to see which table's size
    costs what; tickets are always seeded.
    """
    engine.dispose()  # no pooled connection may hold the database while we write in bulk
    started = time.perf_counter()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-524288")  # 512 MiB: index pages stay in memory
        owners = _owners(connection, mails)
        timings: dict[str, float] = {}
        for table, columns in ORDER:
            if table != "tickets" and table not in tables:
                continue
            if table == "messages" and "inbox" not in tables:
                columns = {**columns, "inbox_id": "NULL"}
            table_started = time.perf_counter()
            connection.execute("BEGIN")
            connection.execute(_insert(connection, table, columns), {"n": tickets, "open_until": owners})
            connection.execute("COMMIT")
            timings[table] = round(time.perf_counter() - table_started, 1)
            print(f"seeded {tickets:,} rows into {table} in {timings[table]:.1f} s")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    seconds = time.perf_counter() - started
    size = path.stat().st_size / 1e6
    print(f"seeding took {seconds:.1f} s; database {size:.0f} MB")
    return {"seed_seconds": round(seconds, 1), "seed_tables": timings, "seeded_tickets": tickets,
            "database_mb": round(size)}


def _owners(connection: sqlite3.Connection, mails: list[CorpusMail]) -> int:
    """Temp tables mapping ticket numbers to reporters; returns how many follow the corpus.

    `owner` holds the sender of corpus original k for ticket k; `cycle` the senders in a ring
    for every other ticket. Organisations are looked up by the sender's domain (one per domain).
    """
    organisations = {name: org_id for org_id, name in connection.execute("SELECT id, name FROM organisations")}
    originals = [mail.sender for mail in mails if mail.kind == "orig"]
    senders = sorted({mail.sender for mail in mails})
    connection.execute("CREATE TEMP TABLE owner (k INTEGER PRIMARY KEY, address TEXT, org_id INTEGER)")
    connection.execute("CREATE TEMP TABLE cycle (n INTEGER PRIMARY KEY, address TEXT, org_id INTEGER)")
    connection.executemany("INSERT INTO owner VALUES (?, ?, ?)", [
        (k, sender, organisations.get(sender.rpartition("@")[2])) for k, sender in enumerate(originals, 1)])
    connection.executemany("INSERT INTO cycle VALUES (?, ?, ?)", [
        (n, sender, organisations.get(sender.rpartition("@")[2])) for n, sender in enumerate(senders)])
    return len(originals)


def _insert(connection: sqlite3.Connection, table: str, known: dict[str, str]) -> str:
    """INSERT ... SELECT over a recursive CTE of k = 1..:n, every NOT NULL column filled."""
    names: list[str] = []
    values: list[str] = []
    for _cid, name, kind, notnull, default, _pk in connection.execute(f'PRAGMA table_info("{table}")'):
        if name in known:
            names.append(name)
            values.append(known[name])
        elif notnull and default is None:
            names.append(name)
            values.append(_filler(str(kind)))
    columns = ", ".join(f'"{name}"' for name in names)
    return (f"WITH RECURSIVE seq(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM seq WHERE k < :n), "
            f"rows AS (SELECT seq.k AS k, coalesce(owner.address, cycle.address) AS address, "
            f"coalesce(owner.org_id, cycle.org_id) AS org_id, "
            # older tickets look older: one per ~30 s going back from 2026-01-01
            f"strftime('%Y-%m-%d %H:%M:%S', '2026-01-01', '-' || ((:n - seq.k) * 30) || ' seconds') AS at "
            f"FROM seq LEFT JOIN owner ON owner.k = seq.k JOIN cycle ON cycle.n = seq.k % (SELECT count(*) FROM cycle)) "
            f'INSERT INTO "{table}" ({columns}) SELECT {", ".join(values)} FROM rows')


def _filler(kind: str) -> str:
    """A value of the right shape for a NOT NULL column this seed does not know about."""
    kind = kind.upper()
    if "INT" in kind or "BOOL" in kind or "NUM" in kind or "REAL" in kind:
        return "0"
    if "DATE" in kind or "TIME" in kind:
        return "at"
    if "BLOB" in kind:
        return "x''"
    return "''"
