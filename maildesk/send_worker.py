"""Sending beside the daemon: claimed outbox rows are built into messages and handed to SMTP in a
helper process.

Flow: ... -> outbox (the daemon's sender thread claims a batch) -> **build and SMTP, here** ->
outcomes -> outbox (the same thread records them). The daemon's own process does everything else
under one interpreter lock, and on a backlog it is the one that is busy: building a message
(headers, quoted-printable bodies) and talking SMTP took it ~0.4 ms a delivery. In the helper
that work runs on the other core, and the sender thread only claims and records, in the daemon's
turns for SQLite's write lock (a helper writing the database itself would wait for that lock
with SQLite's sleeping busy handler, and fall behind a backlog).

The helper owns the one SMTP connection and keeps it open between batches. A stop reaches it
between two messages; a helper that dies leaves its batch claimed, so those rows are sent again
after the claim's lease, like a crashed daemon's, and a new helper takes the next batch.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, TimeoutError
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from typing import Any

from maildesk.config import Settings
from maildesk.helper_process import start_helper
from maildesk.delivery import Attempts, ClaimedRow, LocalSender, RowOutcome, Sender, Transport, attempt_rows
from maildesk.smtp import SmtpTransport, transport_for

log = logging.getLogger("maildesk.send_worker")
STOP_CHECK_SECONDS = 0.1  # how soon a stop of the daemon reaches a helper in the middle of a batch


class _Helper:
    """What the helper process holds between batches (one per process, set by `_start`)."""

    settings: Settings
    transport: SmtpTransport
    stop: Any  # a multiprocessing Event shared with the daemon


def _start(parent: int, settings: Settings, stop: Any) -> None:
    start_helper(parent)
    _Helper.settings, _Helper.transport, _Helper.stop = settings, SmtpTransport(settings), stop


def _attempt_batch(rows: list[ClaimedRow], now: datetime) -> tuple[list[RowOutcome], int]:
    """In the helper: every row's outcome, and how many rows were taken before a stop."""
    attempts = attempt_rows(_Helper.settings, _Helper.transport, rows, now=now, stop=_Helper.stop.is_set)
    return list(attempts.outcomes), attempts.taken


def _close() -> None:
    """In the helper: QUIT the SMTP connection."""
    _Helper.transport.close()


class SendWorker:
    """A `Sender` whose building and SMTP run in one helper process (spawned, like the parse helper)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._pool: ProcessPoolExecutor | None = None
        self._started: Future[int] | None = None

    def start(self) -> None:
        """Start the helper now; it imports its modules while the daemon warms up."""
        self._started = self._executor().submit(int)

    def wait_started(self) -> None:
        started, self._started = self._started, None
        if started is not None:
            started.result()

    def attempt(self, rows: list[ClaimedRow], *, now: datetime, stop: Callable[[], bool] | None) -> Attempts:
        """Hand the batch to the helper; its outcomes once it is done. All rows count as taken
        until the helper says how far it got, so a helper that dies leaves them claimed."""
        self._stop.clear()
        try:
            future = self._executor().submit(_attempt_batch, rows, now)
        except BrokenProcessPool:  # the helper died after the last batch: a new one takes this one
            self._discard()
            future = self._executor().submit(_attempt_batch, rows, now)
        attempts = Attempts(iter(()), taken=len(rows))
        attempts.outcomes = self._outcomes(future, attempts, stop)
        return attempts

    def _outcomes(self, future: Future[tuple[list[RowOutcome], int]], attempts: Attempts,
                  stop: Callable[[], bool] | None) -> Iterator[RowOutcome]:
        while True:
            try:
                outcomes, attempts.taken = future.result(timeout=STOP_CHECK_SECONDS)
                break
            except TimeoutError:
                if stop is not None and stop():
                    self._stop.set()  # the helper finishes the message in hand and takes no more
            except BrokenProcessPool:
                log.error("the send helper died; its batch of %d row(s) waits for the claim's lease", attempts.taken)
                self._discard()
                raise
        yield from outcomes

    def close(self) -> None:
        """QUIT the SMTP connection and end the helper."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            pool.submit(_close).result(timeout=self.settings.smtp_timeout_seconds + 5)
        except (BrokenProcessPool, TimeoutError, OSError):
            pass
        pool.shutdown(wait=True, cancel_futures=True)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=self._context, initializer=_start,
                                             initargs=(os.getpid(), self.settings, self._stop))
        return self._pool

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def sender_for(settings: Settings, transport: Transport | None = None) -> Sender:
    """SMTP in a helper process (MAILDESK_SEND_PROCESS); else in this process, and always for the
    sent/ folder (the embedded default) or a `transport` given."""
    if transport is None and settings.smtp_configured and settings.send_process:
        return SendWorker(settings)
    return LocalSender(settings, transport or transport_for(settings))
