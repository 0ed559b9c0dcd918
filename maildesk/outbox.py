"""The outbox: claim due rows, build each MIME message, hand it to a transport, record the result.

A batch of rows is claimed and read by one conditional UPDATE ... RETURNING (status
pending -> sending), so that two daemons on one database never send the same row, and the
results of many sends are recorded in one transaction. A temporary failure reschedules with
exponential backoff until the retry deadline; a permanent one fails the recipient. The
transport is a folder of .eml files (`sent/`) until an SMTP host is configured.
"""

from __future__ import annotations

import binascii
import functools
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any, Protocol, Union, cast

from sqlalchemy import Row, bindparam, func, select, update
from sqlalchemy.engine import Engine

from maildesk import store
from maildesk.config import Settings
from maildesk.core.classify import LOOP_HEADER
from maildesk.models import OutboxItem, UTCDateTime
from maildesk.notify import header_safe
from maildesk.rows import typed_rows

log = logging.getLogger("maildesk.outbox")
SENDER_NAME = "Service Desk"
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)
CLAIM_LEASE = timedelta(minutes=10)
OutboxRow = Union[OutboxItem, "Row[Any]", tuple]  # a model instance, or the columns a claim returns (by name)


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


@dataclass(frozen=True)
class Envelope:
    """One message for a transport: whom it goes to, its bytes, and the Message-ID naming it."""

    recipients: list[str]
    message: bytes
    message_id: str


# A message handed over: per-recipient results, or why nobody could be reached.
Delivery = tuple[Envelope, Union[Mapping[str, RecipientResult], DeliveryError]]


class Transport(Protocol):
    def deliver_many(self, envelope_from: str, envelopes: Iterable[Envelope]) -> Iterator[Delivery]:
        """Hand over each envelope, taken from `envelopes` one at a time as the transport is ready
        for it; yields each one with its result once known (the order may differ). Every envelope
        taken is yielded, unless the transport raises."""
        ...

    def close(self) -> None: ...


def one_by_one(deliver: Callable[[str, list[str], bytes, str], Mapping[str, RecipientResult]],
               envelope_from: str, envelopes: Iterable[Envelope]) -> Iterator[Delivery]:
    """`deliver_many` for a transport that hands over one message at a time."""
    for envelope in envelopes:
        try:
            yield envelope, deliver(envelope_from, envelope.recipients, envelope.message, envelope.message_id)
        except DeliveryError as error:
            yield envelope, error


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

    def deliver_many(self, envelope_from: str, envelopes: Iterable[Envelope]) -> Iterator[Delivery]:
        return one_by_one(self.deliver, envelope_from, envelopes)

    def close(self) -> None:
        """Nothing to close: every write is complete when deliver returns."""


def build_message(item: OutboxItem, settings: Settings) -> EmailMessage:
    """The row's message as a stdlib EmailMessage, parsed from exactly the bytes that are sent
    (`message_bytes`): for tests and tools, never on the sending path."""
    return cast(EmailMessage, BytesParser(policy=SMTP).parsebytes(message_bytes(item, settings)))


def message_bytes(item: OutboxRow, settings: Settings) -> bytes:
    """The MIME message for a row, marked as automatic mail (RFC 3834) and loop-tagged.

    Built directly, not through `email.message.EmailMessage` (9 ms a message, the sender's
    largest cost): CRLF line ends, headers folded at 78 characters, a non-ASCII or unfoldable
    Subject as RFC 2047 base64 encoded words of whole characters, bodies in UTF-8 as 7bit when
    they are short-lined ASCII, else quoted-printable (lines of at most 76): the message is
    7-bit clean and needs no 8BITMIME. Only a non-ASCII address stays raw UTF-8 (RFC 6532):
    the envelope then asks for SMTPUTF8 anyway. tests/test_outbox.py parses the result back.
    """
    own = _own_headers(settings.support_address)
    lines = [own.sender, _fold("To", [address + "," for address in _addresses(item.to_addresses)]),
             _text_header("Subject", header_safe(item.subject)), "Date: " + format_datetime(item.created_at),
             _id_header("Message-ID", item.message_id)]
    if item.in_reply_to:
        lines.append(_id_header("In-Reply-To", item.in_reply_to))
    if item.references:
        lines.append(_id_header("References", item.references))
    lines.append(_fold("Reply-To", [_one_line(item.reply_to)]) if item.reply_to else own.reply_to)
    lines.append(own.replied if item.in_reply_to else own.generated)
    text_encoding, text = _body(item.body_text)
    if not item.body_html:
        lines += ['Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: " + text_encoding]
        return ("\r\n".join(lines) + "\r\n\r\n" + text).encode()
    html_encoding, html = _body(item.body_html)
    boundary = "=_md_" + secrets.token_hex(12)
    while boundary in text or boundary in html:  # "=_" never occurs in quoted-printable; 7bit text might
        boundary = "=_md_" + secrets.token_hex(12)
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    return "".join((
        "\r\n".join(lines), "\r\n\r\n",
        "--", boundary, '\r\nContent-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: ',
        text_encoding, "\r\n\r\n", text,
        "\r\n--", boundary, '\r\nContent-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: ',
        html_encoding, "\r\n\r\n", html,
        "\r\n--", boundary, "--\r\n")).encode()


MAX_LINE = 78  # RFC 5322 section 2.1.1: header lines SHOULD stay within 78 characters
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_NOT_7BIT_TEXT = re.compile("[^\t\n\x20-\x7e]")
_QP_OVERLONG = re.compile("^(.{74,75})(=09|=20)$", re.MULTILINE)


@dataclass(frozen=True)
class _OwnHeaders:
    sender: str
    reply_to: str
    generated: str
    replied: str


@functools.lru_cache(maxsize=8)
def _own_headers(support: str) -> _OwnHeaders:
    """The header lines that depend only on the support address, built once."""
    tail = f"X-Auto-Response-Suppress: All\r\n{_fold(LOOP_HEADER, [_one_line(support)])}\r\nMIME-Version: 1.0"
    return _OwnHeaders(sender="From: " + _one_line(formataddr((SENDER_NAME, support))),
                       reply_to=_fold("Reply-To", [_one_line(support)]),
                       generated="Auto-Submitted: auto-generated\r\n" + tail,
                       replied="Auto-Submitted: auto-replied\r\n" + tail)


def _one_line(value: str) -> str:
    """A header value from the database made one line with no controls (it never should need it)."""
    if value.isprintable() and "  " not in value and value == value.strip():
        return value
    return header_safe(value, limit=len(value))


def _addresses(to_addresses: str) -> list[str]:
    return [_one_line(address) for address in json.loads(to_addresses)]


def _fold(name: str, words: list[str]) -> str:
    """`name: words...` folded before a word at 78 characters; a trailing comma is dropped.

    A single word longer than a line (an address or Message-ID of 70+ characters) stays whole,
    as RFC 5322 allows up to 998."""
    if words and words[-1].endswith(","):
        words[-1] = words[-1][:-1]
    lines, line = [], name + ":"
    for word in words:
        if len(line) + 1 + len(word) > MAX_LINE and line != name + ":":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines)


def _id_header(name: str, value: str) -> str:
    """Message-ID, In-Reply-To, References: ids folded between ids; a non-ASCII id (possible in
    a mail we answer) as encoded words like the stdlib did, so the message stays 7-bit clean."""
    value = _one_line(value)
    if value.isascii():
        return _fold(name, value.split())
    return _encoded_header(name, value)


def _text_header(name: str, value: str) -> str:
    """Unstructured text: plain and folded when that is exact and fits, else encoded words.

    Control characters become spaces. Text that looks like an encoded word ("=?...?=") is
    encoded too, or a reader would decode what the customer wrote literally."""
    if _CONTROL.search(value):
        value = " ".join(_CONTROL.sub(" ", value).split())
    if value.isascii() and "=?" not in value:
        folded = _fold(name, value.split(" "))
        if all(len(line) <= MAX_LINE for line in folded.split("\r\n")):
            return folded
    return _encoded_header(name, value)


def _encoded_header(name: str, value: str) -> str:
    """RFC 2047 "B" encoded words of UTF-8, each of whole characters (section 5), one a line:
    the first fits beside the header name, the others beside the folding space."""
    data = value.encode()
    room = MAX_LINE - len(name) - 2 - len("=?utf-8?b??=")
    chunk = max(room // 4 * 3, 3)
    words, start = [], 0
    while start < len(data):
        end = min(start + chunk, len(data))
        while end < len(data) and end > start + 1 and data[end] & 0xC0 == 0x80:
            end -= 1  # never split a multi-byte character
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode() + "?=")
        start = end
        chunk = (MAX_LINE - 1 - len("=?utf-8?b??=")) // 4 * 3
    return name + ": " + "\r\n ".join(words or ["=?utf-8?b??="])


def _body(text: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, CRLF body ending in a line break) for UTF-8 text."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if text.isascii() and not _NOT_7BIT_TEXT.search(text) and max(map(len, text.split("\n"))) <= 76:
        return "7bit", text.replace("\n", "\r\n")
    encoded = binascii.b2a_qp(text.encode(), istext=True).decode("ascii")  # soft line breaks at 76
    # b2a_qp lets a line ending in whitespace reach 77 or 78 once the space or tab is encoded:
    # break softly before that last one.
    if "=20\n" in encoded or "=09\n" in encoded or encoded.endswith(("=20", "=09")):  # else nothing to break
        encoded = _QP_OVERLONG.sub("\\1=\n\\2", encoded)
    return "quoted-printable", encoded.replace("\n", "\r\n")


def folder_transport(settings: Settings) -> FolderTransport:
    return FolderTransport(settings.sent_dir)


@dataclass(frozen=True)
class SendReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0


_OUTBOX = OutboxItem.__table__  # type: ignore[attr-defined]
# What sending a row needs, returned by the claiming UPDATE itself: claim and read are one statement.
_SEND_COLUMNS = [_OUTBOX.c[name] for name in (
    "id", "message_id", "in_reply_to", "references", "to_addresses", "reply_to", "subject", "body_text",
    "body_html", "attempts", "recipient_results", "created_at")]
# Results are written at least this often within a batch: a crash between sending and recording
# sends those rows again after the restart (same Message-ID), so the window stays short.
RECORD_EVERY_SECONDS = 0.5


def claim_due(engine: Engine, *, now: datetime, worker: str, limit: int = 100) -> list[int]:
    """Claim up to `limit` due rows for this worker; rows another worker holds are skipped."""
    return [row.id for row in _claim(engine, now=now, worker=worker, limit=limit)]


def _claim(engine: Engine, *, now: datetime, worker: str, limit: int) -> list[Any]:
    """One conditional UPDATE ... RETURNING for the whole batch (SQLite 3.35+, PostgreSQL).

    `status = 'pending'` is checked again by the UPDATE itself, so a row another worker claimed
    meanwhile is not taken twice: on PostgreSQL the second UPDATE waits for the first one's row
    lock and then re-checks the condition (READ COMMITTED), and SKIP LOCKED lets it pass over
    rows being claimed rather than wait; SQLite's BEGIN IMMEDIATE serialises the claims.
    """
    with store.transaction(engine) as session:
        rows = typed_rows(_claim_statement(limit), {"now": now, "due": now, "worker": worker}, session=session)
    return sorted(rows, key=lambda row: row.id)  # RETURNING promises no order


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


def send_due(engine: Engine, settings: Settings, transport: Transport, *, now: datetime,
             worker: str = "maildesk", limit: int = 100, stop: Callable[[], bool] | None = None) -> SendReport:
    """Send one batch of due rows; returns how many were sent, rescheduled and failed.

    One statement claims and reads the batch; the transport takes the messages one after the
    other (over one connection, pipelined where the server allows it); results are recorded for
    many sends in one transaction (at least every RECORD_EVERY_SECONDS). When `stop()` turns
    true, the rows not yet handed over go back to pending untouched.
    """
    rows = _claim(engine, now=now, worker=worker, limit=limit)
    in_hand: dict[str, _Attempt] = {}  # handed over, result not known yet; by Message-ID (unique)
    done: list[_Outcome] = []
    taken, recorded, last_record = 0, 0, time.monotonic()

    def envelopes() -> Iterator[Envelope]:
        nonlocal taken
        for row in rows:
            if stop is not None and stop():
                return
            taken += 1
            attempt = _attempt_for(settings, row)
            if attempt.envelope is None:
                done.append(_outcome_of(settings, attempt, attempt.problem, now=now))
                continue
            in_hand[row.message_id] = attempt
            yield attempt.envelope

    try:
        for envelope, result in transport.deliver_many(settings.bounce_address, envelopes()):
            done.append(_outcome_of(settings, in_hand.pop(envelope.message_id), result, now=now))
            if time.monotonic() - last_record >= RECORD_EVERY_SECONDS:
                _record(engine, done[recorded:])
                recorded, last_record = len(done), time.monotonic()
    finally:
        # Rows never handed over go back to pending. After an unexpected error the rows in hand
        # stay claimed: they may have been sent, so they wait for the lease like a crashed worker's.
        untouched = [row.id for row in rows[taken:]]
        if recorded < len(done) or untouched:
            _record(engine, done[recorded:], release=untouched)
    statuses = [outcome.values["status"] for outcome in done]
    return SendReport(statuses.count("sent"), statuses.count("pending"), statuses.count("failed"))


def send_one(engine: Engine, settings: Settings, transport: Transport, outbox_id: int, *, now: datetime,
             worker: str = "maildesk") -> str:
    """Claim and deliver this one row if it is due and pending; returns the row's status afterwards."""
    claim = (update(_OUTBOX).where(_OUTBOX.c.id == outbox_id, _OUTBOX.c.status == "pending")
             .values(status="sending", claimed_by=worker, claimed_at=now).returning(*_SEND_COLUMNS))
    with store.transaction(engine) as session:
        row = session.execute(claim).first()
        if row is None:
            return str(session.execute(select(_OUTBOX.c.status).where(_OUTBOX.c.id == outbox_id)).scalar_one())
    attempt = _attempt_for(settings, row)
    result: Mapping[str, RecipientResult] | DeliveryError | None = attempt.problem
    if attempt.envelope is not None:
        for _envelope, result in transport.deliver_many(settings.bounce_address, [attempt.envelope]):
            pass
    outcome = _outcome_of(settings, attempt, result, now=now)
    _record(engine, [outcome])
    return str(outcome.values["status"])


@dataclass(frozen=True)
class _Outcome:
    """One attempt's new column values for its row, and the line to log once they are stored."""

    values: dict[str, Any]
    message_id: str


@dataclass(frozen=True)
class _Attempt:
    """A claimed row about to be handed over: what earlier attempts left, the recipients still
    waiting, and the envelope, or (no envelope) why the message cannot be built."""

    row: Any
    previous: dict[str, dict[str, str]]
    waiting: list[str]
    envelope: Envelope | None
    problem: DeliveryError | None = None


def _attempt_for(settings: Settings, row: OutboxRow) -> _Attempt:
    """Build one claimed row's message for the recipients still waiting; nothing is written here."""
    previous: dict[str, dict[str, str]] = json.loads(row.recipient_results or "{}")
    waiting = [address for address in json.loads(row.to_addresses)
               if previous.get(address, {}).get("state") not in ("delivered", "refused")]
    try:
        message = message_bytes(row, settings)
    except Exception as error:  # a bug, not a delivery problem: waiting would not make it go away
        log.exception("outbox=%d message_id=%s: the message cannot be built", row.id, row.message_id)
        return _Attempt(row, previous, waiting, None,
                        DeliveryError(f"the message cannot be built: {error!r}", permanent=True))
    return _Attempt(row, previous, waiting, Envelope(waiting, message, row.message_id))


def _outcome_of(settings: Settings, attempt: _Attempt, result: Mapping[str, RecipientResult] | DeliveryError | None,
                *, now: datetime) -> _Outcome:
    """The row's new values after the transport's answer (a DeliveryError holds for every recipient)."""
    if result is None or isinstance(result, DeliveryError):
        error = result or DeliveryError("the transport gave no result", permanent=False)
        results: Mapping[str, RecipientResult] = {address: RecipientResult(False, error.permanent, str(error))
                                                  for address in attempt.waiting}
    else:
        results = result
    return _Outcome(_outcome(settings, attempt.row, attempt.previous, results, now=now), attempt.row.message_id)


def _outcome(settings: Settings, row: OutboxRow, previous: dict[str, dict[str, str]],
             results: Mapping[str, RecipientResult], *, now: datetime) -> dict[str, Any]:
    """The row's new values: per-recipient results merged, then sent, retried with backoff
    until the deadline, or failed."""
    merged = dict(previous)
    for address, result in results.items():
        state = "delivered" if result.delivered else ("refused" if result.permanent else "deferred")
        merged[address] = {"state": state, "detail": result.detail[:500], "at": now.isoformat()}
    attempts = row.attempts + 1
    values: dict[str, Any] = {"b_id": row.id, "attempts": attempts, "recipient_results": json.dumps(merged),
                              "next_attempt_at": None, "sent_at": None}
    deferred = [address for address, value in merged.items() if value["state"] == "deferred"]
    refused = [address for address, value in merged.items() if value["state"] == "refused"]
    deadline = row.created_at + timedelta(hours=settings.outbox_retry_hours)
    if deferred and now < deadline:
        values["status"] = "pending"
        values["next_attempt_at"] = min(now + retry_delay(attempts), deadline)
        values["last_error"] = "; ".join(f"{address}: {merged[address]['detail']}" for address in deferred)[:2000]
    elif deferred or (refused and len(refused) == len(merged)):
        values["status"] = "failed"
        values["last_error"] = "; ".join(f"{address}: {value['detail']}" for address, value in merged.items()
                                         if value["state"] != "delivered")[:2000]
    else:
        values["status"], values["sent_at"] = "sent", now
        values["last_error"] = "; ".join(f"{address}: {merged[address]['detail']}" for address in refused)[:2000]
    return values


# One executemany for a batch of results. next_attempt_at and sent_at are only set when given
# (COALESCE keeps the old value), so every row of the batch fits the same statement.
_RECORD = (update(_OUTBOX).where(_OUTBOX.c.id == bindparam("b_id"))
           .values(status=bindparam("status"), attempts=bindparam("attempts"),
                   recipient_results=bindparam("recipient_results"), last_error=bindparam("last_error"),
                   claimed_by=None,
                   next_attempt_at=func.coalesce(bindparam("next_attempt_at", type_=UTCDateTime()),
                                                 _OUTBOX.c.next_attempt_at),
                   sent_at=func.coalesce(bindparam("sent_at", type_=UTCDateTime()), _OUTBOX.c.sent_at)))


def _record(engine: Engine, outcomes: list[_Outcome], *, release: list[int] | None = None) -> None:
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


def retry_delay(attempts: int) -> timedelta:
    """1, 2, 4, 8 ... minutes, at most an hour: exponential backoff for temporary failures."""
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), LONGEST_RETRY)
