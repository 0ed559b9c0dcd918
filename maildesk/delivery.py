"""Handing outbox messages over, and what each attempt means for its row.

Flow: ... -> outbox (claims a batch) -> **delivery** (each row built by `compose` and handed to a
transport, its outcome worked out) -> outbox (records the outcomes). A transport takes envelopes
and answers per recipient: a folder of .eml files (`sent/`, the embedded default) or SMTP
(`smtp`). A temporary failure reschedules with exponential backoff until the retry deadline; a
permanent one fails the recipient. Nothing here touches the database, so under `maildesk run`
it runs in the send helper (`send_worker`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Union

from maildesk.compose import message_bytes
from maildesk.config import Settings

log = logging.getLogger("maildesk.delivery")
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)


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


def folder_transport(settings: Settings) -> FolderTransport:
    return FolderTransport(settings.sent_dir)


class ClaimedRow(NamedTuple):
    """What sending a row needs, returned by the claiming UPDATE itself (claim and read are one
    statement); a plain tuple, so that it travels to the send helper (`send_worker`) as it is."""

    id: int
    message_id: str
    in_reply_to: str
    references: str
    to_addresses: str
    reply_to: str
    subject: str
    body_text: str
    body_html: str
    attempts: int
    recipient_results: str
    created_at: datetime


@dataclass(frozen=True)
class RowOutcome:
    """One attempt's new column values for its row, and the line to log once they are stored."""

    values: dict[str, Any]
    message_id: str


class Attempts:
    """A batch being handed over: each row's outcome as it is known (`outcomes`), and how many of
    the rows, in order, were taken so far (`taken`): those after it were never handed over."""

    def __init__(self, outcomes: Iterator[RowOutcome], taken: int = 0) -> None:
        self.outcomes = outcomes
        self.taken = taken


class Sender(Protocol):
    """Builds and hands over claimed rows: `LocalSender` in this process, `send_worker.SendWorker`
    in a helper process."""

    def attempt(self, rows: list[ClaimedRow], *, now: datetime, stop: Callable[[], bool] | None) -> Attempts: ...

    def close(self) -> None: ...


class LocalSender:
    """Builds each message and hands it to `transport`, in the calling thread."""

    def __init__(self, settings: Settings, transport: Transport) -> None:
        self.settings = settings
        self.transport = transport

    def attempt(self, rows: list[ClaimedRow], *, now: datetime, stop: Callable[[], bool] | None) -> Attempts:
        return attempt_rows(self.settings, self.transport, rows, now=now, stop=stop)

    def close(self) -> None:
        self.transport.close()


def attempt_rows(settings: Settings, transport: Transport, rows: list[ClaimedRow], *, now: datetime,
                 stop: Callable[[], bool] | None = None) -> Attempts:
    """Build each row's message and hand them to the transport one after the other (pipelined
    over one connection where it can); nothing is written here. When `stop()` turns true, the
    rows not yet taken are left alone."""
    unbuilt: list[RowOutcome] = []
    in_hand: dict[str, _Attempt] = {}  # handed over, result not known yet; by Message-ID (unique)

    def envelopes() -> Iterator[Envelope]:
        for row in rows:
            if stop is not None and stop():
                return
            attempts.taken += 1
            attempt = _attempt_for(settings, row)
            if attempt.envelope is None:
                assert attempt.problem is not None
                unbuilt.append(_outcome_of(settings, attempt, attempt.problem, now=now))
                continue
            in_hand[row.message_id] = attempt
            yield attempt.envelope

    def outcomes() -> Iterator[RowOutcome]:
        for envelope, result in transport.deliver_many(settings.bounce_address, envelopes()):
            yield from _drained(unbuilt)
            yield _outcome_of(settings, in_hand.pop(envelope.message_id), result, now=now)
        yield from _drained(unbuilt)

    attempts = Attempts(outcomes())
    return attempts


def _drained(items: list[RowOutcome]) -> list[RowOutcome]:
    """The items, the list emptied."""
    taken, items[:] = items[:], []
    return taken


@dataclass(frozen=True)
class _Attempt:
    """A claimed row about to be handed over: what earlier attempts left, the recipients still
    waiting, and the envelope, or (no envelope) why the message cannot be built."""

    row: Any
    previous: dict[str, dict[str, str]]
    waiting: list[str]
    envelope: Envelope | None
    problem: DeliveryError | None = None


def _attempt_for(settings: Settings, row: ClaimedRow) -> _Attempt:
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


def _outcome_of(settings: Settings, attempt: _Attempt, result: Mapping[str, RecipientResult] | DeliveryError, *,
                now: datetime) -> RowOutcome:
    """The row's new values after the transport's answer (a DeliveryError holds for every recipient)."""
    if isinstance(result, DeliveryError):
        results: Mapping[str, RecipientResult] = {address: RecipientResult(False, result.permanent, str(result))
                                                  for address in attempt.waiting}
    else:
        results = result
    return RowOutcome(_outcome(settings, attempt.row, attempt.previous, results, now=now), attempt.row.message_id)


def _outcome(settings: Settings, row: ClaimedRow, previous: dict[str, dict[str, str]],
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


def retry_delay(attempts: int) -> timedelta:
    """1, 2, 4, 8 ... minutes, at most an hour: exponential backoff for temporary failures."""
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), LONGEST_RETRY)
