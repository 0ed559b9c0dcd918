"""The pipeline: a saved inbox row -> parse -> route -> commands -> decisions -> store + notify.

Parsing and examining a mail need no database (`parse_worker`, `examine`: in the parse helper
for a batch); what is left here does.

Transports call `store_raw` first (raw bytes committed before anything else happens) and
then `process_inbox_item`. Each message is handled in one transaction: the ticket change,
its events, its messages and its outbox rows commit together with the inbox row's new
state. A message that breaks is rolled back, marked failed with its reason and retried
later; after MAX_ATTEMPTS it is quarantined. Nothing is dropped and nothing stops the loop.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import getaddresses
from enum import Enum
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from maildesk import rows, sla, spool, store
from maildesk.config import Settings
from maildesk.core.mail import InboundMail
from maildesk.core.route import NewTicket, Reply, Route, route, subject_key, thread_ids
from maildesk.examine import Examined, Examiner
from maildesk.handle import Handled, MailHandler
from maildesk.models import InboxItem, InboxRaw, utcnow
from maildesk.notify import Notifier
from maildesk.parse_worker import MAX_ATTEMPTS, InProcessParser, Parsed, ProcessParser
from maildesk.reference import ReferenceCache
from maildesk.render import Renderer, default_templates_dir
from maildesk.verify import Sender

log = logging.getLogger("maildesk.process")
CLAIM_LEASE = timedelta(minutes=10)
GROUP_ROWS = 50  # rows per pipeline transaction on a backlog; a stop waits for at most one group (~0.2 s)
# ... and at most this much raw mail a group (a bigger mail goes alone). Two groups are in hand at
# once, with their copies for the parse helper: twelve 40 MB mails in a group took the daemon
# and its helper to 1.17 GiB, past the unit's MemoryMax=1G (bench/memory.py, e-daemon).
GROUP_BYTES = 64 * 1024 * 1024


class State(str, Enum):
    NEW = "new"
    PROCESSING = "processing"
    PROCESSED = "processed"
    HELD = "held"
    IGNORED = "ignored"
    FAILED = "failed"
    QUARANTINED = "quarantined"


RETRYABLE = (State.NEW.value, State.FAILED.value)


@dataclass(frozen=True)
class Stored:
    inbox_id: int
    new: bool


@dataclass(frozen=True)
class Prepared:
    """A batch claimed and handed to the parser, waiting for `Pipeline.finish`."""

    inbox_ids: list[int]  # as asked for, in order
    unique: list[int]  # the rows claimed, each once
    attempts: dict[int, int]
    senders: list[str]  # a guess from each raw header, to load the users in one query
    parsed: Iterator[Parsed]
    started: float


@dataclass(frozen=True)
class Outcome:
    inbox_id: int
    state: str
    ticket: str | None
    reason: str
    message_id: str
    milliseconds: float


class Pipeline:
    """Everything a transport needs to turn raw mail into tickets and outbox rows."""

    def __init__(self, settings: Settings, engine: Engine, *, renderer: Renderer | None = None,
                 clock: Callable[[], datetime] = utcnow, worker: str = "maildesk",
                 parser: InProcessParser | ProcessParser | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.worker = worker
        self.parser = parser or InProcessParser()
        self.reference = ReferenceCache(engine)
        self.notifier = Notifier(settings, renderer or Renderer(default_templates_dir(), settings.template_cache_dir))
        self.handler = MailHandler(settings, self.notifier)
        self.examiner = Examiner.of(settings)

    def store_raw(self, raw: bytes, source: str) -> Stored:
        """Save the raw bytes (idempotent by SHA-256); raises on a database failure."""
        return self.store_many([raw], source)[0]

    def store_many(self, raws: list[bytes], source: str) -> list[Stored]:
        """Save a batch of raw messages in one transaction; each result says whether it was new.

        Idempotent by SHA-256: a message seen before (a re-fetch after a crash, an MTA
        retry) keeps its row. Raises on a database failure, so the transport acknowledges nothing.
        """
        digests = [hashlib.sha256(raw).hexdigest() for raw in raws]
        try:
            return self._store_new(raws, digests, source)
        except IntegrityError:  # another worker stored one of them meanwhile: one at a time
            return [self._store_new([raw], [digest], source)[0] for raw, digest in zip(raws, digests)]

    def _store_new(self, raws: list[bytes], digests: list[str], source: str) -> list[Stored]:
        now = self.clock()
        with store.transaction(self.engine) as session:
            distinct = list(dict.fromkeys(digests))
            known: dict[str, int] = {str(digest): int(inbox_id) for digest, inbox_id in rows.all_rows(
                _known_statement(len(distinct)), rows.numbered_values("sha", distinct), session=session)}
            fresh: dict[str, int] = {}
            raw_rows: list[dict[str, object]] = []
            for raw, digest in zip(raws, digests):
                if digest not in known and digest not in fresh:
                    fresh[digest] = rows.insert_one(InboxItem, {
                        "received_at": now, "source": source, "sha256": digest, "size": len(raw),
                        "message_id": quick_message_id(raw), "state": State.NEW.value, "reason": "", "attempts": 0,
                        "sender": ""}, session=session)
                    raw_rows.append({"inbox_id": fresh[digest], "raw": raw})
            rows.insert_many(InboxRaw, raw_rows, session=session)
            results = []
            for digest in digests:
                if digest in known:
                    results.append(Stored(known[digest], new=False))
                else:
                    results.append(Stored(fresh[digest], new=not any(r.inbox_id == fresh[digest] for r in results)))
            return results

    def warm_up(self) -> None:
        """Load what the first mail would otherwise wait for (0.4-0.9 s): every template, and
        the business calendar of every service level, holiday tables included."""
        self.notifier.renderer.load_all()
        now = self.clock()
        with store.transaction(self.engine) as session:
            self.reference.prime(session)
            for name in sorted({self.settings.default_service_level, *session.info["levels"]}):
                try:
                    sla.calendar_for(sla.level_named(name, session=session, settings=self.settings), now,
                                     session=session)
                except sla.SlaError as error:  # the mail that needs it reports it as before
                    log.warning("service level %s cannot be loaded: %s", name, error)

    def state_of(self, inbox_id: int) -> tuple[str, str]:
        """The row's state and reason (what a transport needs to file the original)."""
        with store.transaction(self.engine) as session:
            item = session.get(InboxItem, inbox_id)
            assert item is not None
            return item.state, item.reason

    def ingest(self, raw: bytes, source: str) -> Outcome | None:
        """Store and process one message; None when it was already stored and handled."""
        stored = self.store_raw(raw, source)
        return self.process_many([stored.inbox_id], raws={stored.inbox_id: raw})[0]

    def claim(self, inbox_ids: list[int]) -> list[int]:
        """Take rows for processing; rows another worker has, or that are done, are left out."""
        with store.transaction(self.engine) as session:
            claimed = self._claim(inbox_ids, session=session)
        return [inbox_id for inbox_id in inbox_ids if inbox_id in claimed]

    def _claim(self, inbox_ids: list[int], *, session: Session) -> dict[int, int]:
        """The rows taken, with their attempts so far (this one counted).

        One conditional UPDATE: correct on SQLite and PostgreSQL alike, so two daemons never
        process the same row (a crashed worker's claim expires after CLAIM_LEASE). Core, not
        the ORM's bulk UPDATE, which costs milliseconds.
        """
        now = self.clock()
        values = rows.numbered_values("id", inbox_ids)
        values.update(worker=self.worker, now=now, lease_expired=now - CLAIM_LEASE)
        return {int(row[0]): int(row[1]) for row in rows.all_rows(_claim_statement(len(inbox_ids)), values,
                                                                   session=session)}

    def process_inbox_item(self, inbox_id: int) -> Outcome | None:
        """Process one stored row end to end; never raises for a bad message."""
        return self.process_many([inbox_id])[0]

    def process_many(self, inbox_ids: list[int], *, raws: dict[int, bytes] | None = None) -> list[Outcome | None]:
        """Claim, parse and process stored rows (`prepare`, then `finish`).

        A message that breaks is rolled back alone and marked failed (quarantined after
        MAX_ATTEMPTS); the others go on. None for a row that was not ours to process. `raws`
        are bytes the caller already holds for some of the rows (they are not read back).
        """
        return self.finish(self.prepare(inbox_ids, raws=raws))

    def prepare(self, inbox_ids: list[int], *, raws: dict[int, bytes] | None = None) -> Prepared:
        """Claim and read the rows in one transaction and hand them to the parser at once.

        With a parse helper the mails are parsed while the caller still finishes the batch
        before (a backlog prepares group n+1, then finishes group n), so neither process waits
        for the other at a batch's start. Every prepared batch must be finished or released.
        """
        held = raws or {}
        with store.transaction(self.engine) as session:  # claimed and read in one transaction
            attempts = self._claim(inbox_ids, session=session) if inbox_ids else {}
            missing = [inbox_id for inbox_id in attempts if inbox_id not in held]
            read = {int(inbox_id): bytes(raw) for inbox_id, raw in rows.all_rows(
                _raw_statement(len(missing)), rows.numbered_values("id", missing), session=session)} if missing else {}
        started = time.perf_counter()
        unique = list(dict.fromkeys(inbox_id for inbox_id in inbox_ids if inbox_id in attempts))  # a mail twice
        raw_bytes = [held.get(inbox_id) or read.pop(inbox_id, b"") for inbox_id in unique]  # in a folder: once
        del read  # the parser has its copies; the big ones need not stay here meanwhile
        senders = [quick_sender(raw) for raw in raw_bytes]
        parsed = self.parser.parse_many(raw_bytes, [attempts[inbox_id] for inbox_id in unique], self.examiner)
        return Prepared(inbox_ids, unique, attempts, senders, iter(parsed), started)

    def finish(self, prepared: Prepared) -> list[Outcome | None]:
        """Process a prepared batch in one transaction (`_process_batch`); one result per row asked for."""
        if not prepared.unique:
            return [None] * len(prepared.inbox_ids)
        # The first mail parsed before the transaction begins: it takes SQLite's write lock, which
        # the outbox sender and the LMTP listener need too, and the helper may still be at work.
        parsed = itertools.chain([next(prepared.parsed)], prepared.parsed)
        handled: list[Parsed] = []
        try:
            with store.transaction(self.engine) as session:
                self.reference.prime(session)
                store.preload_users(prepared.senders, session=session)
                outcomes = self._process_batch(prepared.unique, _noted(parsed, handled), prepared.attempts, session,
                                               prepared.started)
        finally:  # attachments not kept (no ticket, a failure: a retry spools them again)
            spool.discard(attachment for mail in handled if not isinstance(mail, tuple)
                          for attachment in mail.attachments)
        for outcome in outcomes.values():
            _log_outcome(outcome)
        return [outcomes.get(inbox_id) for inbox_id in prepared.inbox_ids]

    def release(self, prepared: Prepared) -> int:
        """Give back the claims of a batch that will not be finished (the batch before it failed),
        so that the next poll takes its rows at once instead of after the claim's lease."""
        if not prepared.unique:
            return 0
        with store.transaction(self.engine) as session:
            values = rows.numbered_values("id", prepared.unique)
            values.update(worker=self.worker)
            return len(rows.all_rows(_release_statement(len(prepared.unique)), values, session=session))

    def _process_batch(self, inbox_ids: list[int], parsed: Iterator[Parsed], attempts: dict[int, int],
                       session: Session, started: float) -> dict[int, Outcome]:
        """Every mail of the batch inside one savepoint; when one of them raises, the batch is
        rolled back and handled again with a savepoint per mail, so only the broken one fails.

        A savepoint per mail cost 16 % of processing, and mails that raise are rare (a bug, a
        database error): the batch then pays twice, once. A batch of one needs no savepoint.
        """
        if len(inbox_ids) == 1:
            return {inbox_ids[0]: self._process_alone(inbox_ids[0], next(parsed), attempts[inbox_ids[0]], session,
                                                      started)}
        mails: list[Parsed] = []
        outcomes: dict[int, Outcome] = {}
        try:
            with session.begin_nested():
                for inbox_id, mail in zip(inbox_ids, parsed):
                    mails.append(mail)
                    outcomes[inbox_id] = self._process_unguarded(inbox_id, mail, attempts[inbox_id], session,
                                                                 started)
            return outcomes
        except Exception as error:
            log.warning("a mail of a batch of %d failed (%s: %s); handling the batch again one mail at a time",
                        len(inbox_ids), type(error).__name__, error)
            self._forget_session_objects(session)
        mails.extend(parsed)
        return {inbox_id: self._process_one(inbox_id, mail, attempts[inbox_id], session, started)
                for inbox_id, mail in zip(inbox_ids, mails)}

    def _process_one(self, inbox_id: int, mail: Parsed, attempts: int, session: Session,
                     started: float) -> Outcome:
        """One mail in its own savepoint: if it raises it alone is rolled back and marked failed."""
        if isinstance(mail, tuple):
            return self._process_unguarded(inbox_id, mail, attempts, session, started)
        try:
            with session.begin_nested():
                return self._process_unguarded(inbox_id, mail, attempts, session, started)
        except Exception as error:
            return self._failed(inbox_id, mail, error, attempts, session, started)

    def _process_alone(self, inbox_id: int, mail: Parsed, attempts: int, session: Session,
                       started: float) -> Outcome:
        """The only mail of its transaction (LMTP, IDLE, `ingest`): if it raises, the whole
        transaction is rolled back, as its savepoint would have been, and the failure is written
        in a new one. SAVEPOINT and RELEASE cost 1 ms of the 12 a lone mail takes."""
        if isinstance(mail, tuple):
            return self._process_unguarded(inbox_id, mail, attempts, session, started)
        try:
            return self._process_unguarded(inbox_id, mail, attempts, session, started)
        except Exception as error:
            session.rollback()  # the transaction held this mail's writes and reads only
            return self._failed(inbox_id, mail, error, attempts, session, started)

    def _failed(self, inbox_id: int, examined: Examined, error: Exception, attempts: int, session: Session,
                started: float) -> Outcome:
        message_id = examined.mail.message_id
        log.exception("message %s failed", message_id or f"inbox:{inbox_id}", exc_info=error)
        self._forget_session_objects(session)
        return self._mark_failed(inbox_id, f"{type(error).__name__}: {error}", attempts >= MAX_ATTEMPTS,
                                 message_id, session, started)

    def _process_unguarded(self, inbox_id: int, parsed: Parsed, attempts: int, session: Session,
                           started: float) -> Outcome:
        if isinstance(parsed, tuple):
            reason, quarantine = parsed
            return self._mark_failed(inbox_id, reason, quarantine, "", session, started)
        handled = self._handle(parsed, inbox_id, session)
        mail = parsed.mail
        rows.update_by_id(InboxItem, inbox_id, dict(
            state=handled.state, reason=handled.reason[:2000], processed_at=self.clock(),
            ticket_id=handled.ticket_id, sender=mail.from_address[:320], claimed_by=None), session=session)
        return Outcome(inbox_id, handled.state, handled.ticket_key, handled.reason, mail.message_id,
                       (time.perf_counter() - started) * 1000)

    def _forget_session_objects(self, session: Session) -> None:
        """After a savepoint rolled back: a ticket row it held may come back under the same id
        for the next mail, so no object of the batch may stay in the session (all are flushed)."""
        session.expunge_all()
        store.forget_cached(session=session)
        self.reference.prime(session)

    def _mark_failed(self, inbox_id: int, reason: str, quarantine: bool, message_id: str, session: Session,
                     started: float) -> Outcome:
        state = State.QUARANTINED.value if quarantine else State.FAILED.value
        rows.update_by_id(InboxItem, inbox_id, dict(state=state, reason=reason[:2000], claimed_by=None),
                          session=session)
        return Outcome(inbox_id, state, None, reason, message_id, (time.perf_counter() - started) * 1000)

    def _handle(self, examined: Examined, inbox_id: int, session: Session) -> Handled:
        """Route the examined mail, then hand it to the handler for its route."""
        now = self.clock()
        mail, classification, sender = examined.mail, examined.classification, examined.sender
        if classification.kind == "own_loop":
            return Handled(State.IGNORED.value, f"own mail coming back ({classification.reason})")
        decision = self._route(mail, sender, session=session)
        ticket = store.find_ticket(decision.key, session=session) if isinstance(decision, Reply) else None
        address = sender.identity.address or mail.from_address
        user = store.find_user(address, session=session) if address else None
        if classification.is_machine:
            return self.handler.machine_mail(examined, inbox_id, ticket, user, session=session, now=now)
        if user is None or not sender.evidence.from_trusted:
            return self.handler.unknown_sender(mail, inbox_id, sender, session=session, now=now)
        if ticket is not None:
            return self.handler.reply(examined, inbox_id, ticket, user, session=session, now=now)
        new_type = decision.type if isinstance(decision, NewTicket) else None
        return self.handler.new_ticket(examined, inbox_id, user, new_type, session=session, now=now)

    def _route(self, mail: InboundMail, sender: Sender, *, session: Session) -> Route:
        """The core's routing rule, given what only the database knows: which keys exist, and
        which ticket the threading headers belong to (looked up only when needed)."""
        claims = sender.evidence.claims
        token_key = claims.ticket if claims is not None and store.find_ticket(claims.ticket, session=session) else None
        subject = subject_key(mail.subject, self.settings.ticket_prefix)
        subject_known = subject is not None and store.find_ticket(subject, session=session) is not None
        header_key = None
        if not token_key and not subject_known:
            header_key = store.ticket_key_by_message_ids(thread_ids(mail.in_reply_to, mail.references),
                                                         session=session)
        return route(mail.subject, self.settings.ticket_prefix, header_key, key_by_token=token_key,
                     exists=lambda key: subject_known and key == subject)

    def release_own_claims(self) -> int:
        """Rows this worker had claimed when it died go back to the queue at once."""
        with store.transaction(self.engine) as session:
            result = session.execute(update(InboxItem).where(InboxItem.state == State.PROCESSING.value,
                                                             InboxItem.claimed_by == self.worker)
                                     .values(state=State.NEW.value, claimed_by=None))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def raw_sizes(self, inbox_ids: list[int]) -> dict[int, int]:
        """The raw size of each row, to group stored rows as a backlog is (`groups`)."""
        with store.transaction(self.engine) as session:
            found = {int(row_id): size for row_id, size in session.execute(select(InboxItem.id, InboxItem.size).where(
                InboxItem.id.in_(inbox_ids)))}  # type: ignore[union-attr]
        return {inbox_id: int(found.get(inbox_id) or 0) for inbox_id in inbox_ids}

    def pending_ids(self, *, states: tuple[str, ...] = RETRYABLE, limit: int = 1000) -> list[int]:
        with store.transaction(self.engine) as session:
            rows = session.exec(select(InboxItem.id).where(InboxItem.state.in_(states))  # type: ignore[call-overload, attr-defined]
                                .order_by(InboxItem.id).limit(limit)).all()
        return [row[0] for row in rows]


_ADDRESS_TEXT = r'[^<>"@,;:()\[\]\\\s]+@[^<>"@,;:()\[\]\\\s]+'
_PLAIN_FROM = re.compile(rf'[^<>"@,;:()\[\]\\]*<({_ADDRESS_TEXT})>|({_ADDRESS_TEXT})')


def quick_sender(raw: bytes) -> str:
    """The From address from the raw header, lower-cased: a guess that only warms the user cache
    (the parsed mail's address is what counts)."""
    value = _quick_header(raw, b"from:")
    if not value or "(" in value or len(value) > 500:  # comments recurse in the stdlib: leave odd ones to parse
        return ""
    plain = _PLAIN_FROM.fullmatch(value)  # `Name <address>` or `address`: the stdlib's strict parse costs 30 µs
    if plain is not None:
        return (plain.group(1) or plain.group(2)).lower()
    return getaddresses([value])[0][1].lower()


def _quick_header(raw: bytes, name: bytes) -> str:
    head = raw[:65536].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    for line in head.splitlines():
        if line[:len(name)].lower() == name:
            return line[len(name):].strip().decode("ascii", "replace")
    return ""


@functools.lru_cache(maxsize=None)  # one per batch size: a few hundred at most
def _claim_statement(count: int) -> Any:
    """UPDATE ... RETURNING that claims `count` rows (one parameter per id: compiled once per count)."""
    inbox = InboxItem.__table__  # type: ignore[attr-defined]
    at = inbox.c.claimed_at.type
    return (update(inbox)
            .where(inbox.c.id.in_(rows.numbered("id", count, inbox.c.id.type)))
            .where(or_(inbox.c.state.in_([bindparam(f"retry_{state}", state) for state in RETRYABLE]),
                       (inbox.c.state == bindparam("processing", State.PROCESSING.value))
                       & (inbox.c.claimed_at < bindparam("lease_expired", type_=at))))
            .values(state=bindparam("claimed_state", State.PROCESSING.value), claimed_by=bindparam("worker"),
                    claimed_at=bindparam("now", type_=at), attempts=inbox.c.attempts + 1)
            .returning(inbox.c.id, inbox.c.attempts))


@functools.lru_cache(maxsize=None)  # one per batch size: a few hundred at most
def _release_statement(count: int) -> Any:
    """UPDATE ... RETURNING that hands `count` rows claimed by one worker back to the queue."""
    inbox = InboxItem.__table__  # type: ignore[attr-defined]
    return (update(inbox)
            .where(inbox.c.id.in_(rows.numbered("id", count, inbox.c.id.type)))
            .where(inbox.c.state == bindparam("processing", State.PROCESSING.value))
            .where(inbox.c.claimed_by == bindparam("worker"))
            .values(state=bindparam("new_state", State.NEW.value), claimed_by=None,
                    attempts=inbox.c.attempts - 1)  # the claim counted an attempt that never ran
            .returning(inbox.c.id))


@functools.lru_cache(maxsize=None)  # one per batch size: a few hundred at most
def _known_statement(count: int) -> Any:
    """The ids of inbox rows with any of `count` SHA-256 digests."""
    inbox = InboxItem.__table__  # type: ignore[attr-defined]
    return select(inbox.c.sha256, inbox.c.id).where(
        inbox.c.sha256.in_(rows.numbered("sha", count, inbox.c.sha256.type)))


@functools.lru_cache(maxsize=None)  # one per batch size: a few hundred at most
def _raw_statement(count: int) -> Any:
    """The raw bytes of `count` inbox rows."""
    raw = InboxRaw.__table__  # type: ignore[attr-defined]
    return select(raw.c.inbox_id, raw.c.raw).where(
        raw.c.inbox_id.in_(rows.numbered("id", count, raw.c.inbox_id.type)))


def _noted(items: Iterator[Parsed], seen: list[Parsed]) -> Iterator[Parsed]:
    """`items`, each also appended to `seen` as it is taken."""
    for item in items:
        seen.append(item)
        yield item


def quick_message_id(raw: bytes) -> str:
    """The Message-ID header from the raw bytes, for logs before the mail is parsed."""
    return _quick_header(raw, b"message-id:").replace("\x00", "")[:1000]  # PostgreSQL text: no NUL


def _log_outcome(outcome: Outcome) -> None:
    log.info("message_id=%s inbox=%d ticket=%s outcome=%s ms=%.1f%s", outcome.message_id or "-",
             outcome.inbox_id, outcome.ticket or "-", outcome.state, outcome.milliseconds,
             f" reason={outcome.reason!r}" if outcome.state in ("failed", "quarantined", "held") else "")


def groups(keys: list[int], sizes: dict[int, int]) -> Iterator[list[int]]:
    """Rows (by any key: inbox id, IMAP UID) in the groups a backlog is processed in: at most
    GROUP_ROWS rows and GROUP_BYTES of raw mail each, in the order given."""
    return chunks_by_size(keys, sizes, GROUP_BYTES, most=GROUP_ROWS)


def chunks_by_size(keys: list[int], sizes: dict[int, int], budget: int,
                   most: int | None = None) -> Iterator[list[int]]:
    """Consecutive groups of keys whose sizes add up to at most `budget` (a bigger one goes
    alone), of at most `most` keys each."""
    chunk: list[int] = []
    total = 0
    for key in keys:
        if chunk and (total + sizes[key] > budget or len(chunk) == most):
            yield chunk
            chunk, total = [], 0
        chunk.append(key)
        total += sizes[key]
    if chunk:
        yield chunk
