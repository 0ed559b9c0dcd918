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
from maildesk.delivery import Attempts, ClaimedRow, LocalSender, RowOutcome, Sender, Transport, attempt_rows
from maildesk.helper_process import start_helper
from maildesk.smtp import SmtpTransport, transport_for

log = logging.getLogger("maildesk.send_worker")
STOP_CHECK_SECONDS = 0.1  # how soon a stop of the daemon reaches a helper in the middle of a batch
# Rows a helper task sends before their outcomes come back to be recorded: a crash between sending
# and recording sends them again, so the window stays short even when the daemon claims many.
SEND_CHUNK = 50


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
        """Hand the batch to the helper in chunks of SEND_CHUNK, each queued at once (the helper
        sends them back to back over its connection); each chunk's outcomes as soon as it is done.
        Rows count as taken until the helper says how far it got, so a helper that dies leaves
        them claimed."""
        self._stop.clear()
        chunks = [rows[start:start + SEND_CHUNK] for start in range(0, len(rows), SEND_CHUNK)]
        try:
            futures = [self._executor().submit(_attempt_batch, chunk, now) for chunk in chunks]
        except BrokenProcessPool:  # the helper died after the last batch: a new one takes this one
            self._discard()
            futures = [self._executor().submit(_attempt_batch, chunk, now) for chunk in chunks]
        attempts = Attempts(iter(()), taken=len(rows))
        attempts.outcomes = self._outcomes(chunks, futures, attempts, stop)
        return attempts

    def _outcomes(self, chunks: list[list[ClaimedRow]], futures: list[Future[tuple[list[RowOutcome], int]]],
                  attempts: Attempts, stop: Callable[[], bool] | None) -> Iterator[RowOutcome]:
        before = 0  # rows of the chunks done
        for chunk, future in zip(chunks, futures):
            outcomes, taken = self._result(future, stop)
            yield from outcomes
            if taken < len(chunk):  # a stop: the rest of the batch was never handed over
                attempts.taken = before + taken
                return
            before += len(chunk)

    def _result(self, future: Future[tuple[list[RowOutcome], int]],
                stop: Callable[[], bool] | None) -> tuple[list[RowOutcome], int]:
        while True:
            try:
                return future.result(timeout=STOP_CHECK_SECONDS)
            except TimeoutError:
                if stop is not None and stop():
                    self._stop.set()  # the helper finishes the message in hand and takes no more
            except BrokenProcessPool:
                log.error("the send helper died; the rows it had wait for the claim's lease")
                self._discard()
                raise

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
