"""`maildesk run`: one process wiring a mail source, the pipeline, the outbox sender and timers.

The source is the IMAP poller (when MAILDESK_IMAP_HOST is set) or the LMTP listener. The
main thread processes what the listener stored, drives `schedule` timers and pings the
systemd watchdog; a sender thread claims and records the outbox as soon as work is queued,
its messages built and sent over SMTP in a helper process (`send_worker`); with SQLite, a
thread checkpoints the write-ahead log (`maildesk.wal`). Two helper processes beside it parse
mail (`parse_worker`, with IMAP) and send it. SIGTERM or SIGINT lets the message (or the group
of stored messages) in hand finish, then everything stops cleanly.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import FrameType

import schedule
from sqlalchemy.engine import Engine, make_url

from maildesk import spool
from maildesk.config import Settings
from maildesk.delivery import Sender
from maildesk.models import utcnow
from maildesk.outbox import release_stale_claims, send_due
from maildesk.parse_worker import ProcessParser, parser_for
from maildesk.process import GROUP_ROWS, Pipeline, groups
from maildesk.retention import prune_raw
from maildesk.sdnotify import Notifier, watchdog_interval
from maildesk.send_worker import SendWorker, sender_for
from maildesk.timers import sweep
from maildesk.wal import start_checkpointer

log = logging.getLogger("maildesk.daemon")
IDLE_WAKE_SECONDS = 1.0
OUTBOX_RECHECK_SECONDS = 15.0
PRUNE_BATCHES = 10  # a run of MAILDESK_KEEP_RAW_DAYS: 5,000 mails at most
# The poller parses and stores mail in pure Python while the sender mostly waits on SMTP replies.
# Each time the sender's thread lets go of the interpreter (every socket send and reply, every
# database call) it gets it back only when the busy thread is made to yield: after the switch
# interval, 5 ms by default, eight or more times a message. 0.5 ms keeps the sender near its
# rate alone and costs the poller little (measured with bench/sender.py --busy).
SWITCH_INTERVAL_SECONDS = 0.0005
# Outbox rows claimed at a time. Each claim and each record waits for the poller's transaction of
# the moment (SQLite's one write lock); 300 instead of 100 kept a backlog's acknowledgements
# flowing (bench (b): 2757-2876 of 3000 delivered before the INBOX was empty, against ~2300), and
# the send helper still returns outcomes every 50 (`send_worker.SEND_CHUNK`).
SEND_BATCH = 300


@dataclass
class Signals:
    """Events shared by the daemon's threads: stop everything, or send the outbox now."""

    stop: threading.Event = field(default_factory=threading.Event)
    outbox: threading.Event = field(default_factory=threading.Event)


class Daemon:
    def __init__(self, settings: Settings, engine: Engine, *, sender: Sender | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.worker = settings.worker_id
        # The LMTP listener's mail is parsed here: a group of what came meanwhile is small, and a
        # helper would be one more process for a setup that needs none.
        self.parser = parser_for(settings.parse_processes if settings.imap_configured else 0)
        self.pipeline = Pipeline(settings, engine, clock=clock, worker=self.worker, parser=self.parser)
        self.sender = sender or sender_for(settings)
        self.signals = Signals()
        self.stored: queue.Queue[int] = queue.Queue()
        self.systemd = Notifier()
        self.scheduler = schedule.Scheduler()
        self._threads: list[threading.Thread] = []
        self._source_stop: Callable[[], None] = lambda: None

    def describe(self) -> list[str]:
        """What the daemon will do, in words for the admin (no secrets)."""
        settings = self.settings
        source = (f"IMAP {settings.imap_user}@{settings.imap_host}:{settings.imap_port} folder {settings.imap_folder}"
                  if settings.imap_configured else f"LMTP listener on {settings.lmtp_host}:{settings.lmtp_port}")
        sink = (f"SMTP {settings.smtp_host}:{settings.smtp_port}" if settings.smtp_configured
                else f"the folder {settings.sent_dir}/ (no MAILDESK_SMTP_HOST set)")
        return [f"incoming mail: {source}", f"outgoing mail: {sink}",
                f"database: {make_url(settings.database_url).render_as_string(hide_password=True)}"]

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: finishing the message in hand, then stopping", signal.Signals(signum).name)
            self.signals.stop.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def start(self) -> None:
        """Start the source and the sender; returns at once (run() then drives the main loop)."""
        helper = self.parser if isinstance(self.parser, ProcessParser) else None  # IMAP only, see __init__
        if helper is not None:
            helper.start()  # it imports its modules while this process warms up
        if isinstance(self.sender, SendWorker):
            self.sender.start()
        checkpointer = start_checkpointer(self.engine, self.signals.stop)  # before any thread holds a connection
        if checkpointer is not None:
            self._threads.append(checkpointer)
        self._recover()
        self.pipeline.warm_up()
        if helper is not None:
            helper.wait_started()
        if isinstance(self.sender, SendWorker):
            self.sender.wait_started()
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_SECONDS))
        self._start_source()
        self._start_thread(self._sender_loop, "outbox-sender")
        self.scheduler.every(1).minutes.do(self._minutely)
        if self.settings.keep_raw_days:
            self.scheduler.every(10).minutes.do(self._prune_raw)
        interval = watchdog_interval()
        if interval:
            self.scheduler.every(max(int(interval), 1)).seconds.do(self.systemd.watchdog)
        gc.collect()
        gc.freeze()  # what start-up built lives as long as the daemon: no full collection walks it again
        self.systemd.ready("; ".join(self.describe()))

    def run(self) -> None:
        """The main loop until a stop signal: process stored mail, run timers, ping the watchdog."""
        self.start()
        try:
            if self.settings.keep_raw_days:
                self._prune_raw()  # after READY: a first prune of a long history takes its time
            while not self.signals.stop.is_set():
                self._process_stored(timeout=IDLE_WAKE_SECONDS)
                self.scheduler.run_pending()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.systemd.stopping()
        self.signals.stop.set()
        self._source_stop()
        self._process_stored(timeout=0)
        self.signals.outbox.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.sender.close()
        self.parser.close()
        self.engine.dispose()  # with SQLite the last connection closed checkpoints the log and removes it
        log.info("stopped")

    def _start_source(self) -> None:
        if self.settings.imap_configured:
            from maildesk.imap import ImapPoller
            poller = ImapPoller(self.settings, self.pipeline, stop_event=self.signals.stop,
                                on_progress=lambda _done, _total: self.signals.outbox.set())
            self._start_thread(poller.run_forever, "imap-poller")
            self._source_stop = poller.close
            return
        from maildesk.lmtp import LmtpServer
        server = LmtpServer(self.settings, self.pipeline, on_stored=self.stored.put)
        server.start()
        self._source_stop = server.stop

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _process_stored(self, *, timeout: float) -> None:
        """Process what the LMTP listener stored: a mail alone as soon as it comes, and what came
        meanwhile in groups, as a backlog is processed (one transaction a group, `groups`). A
        stop lets the group in hand finish; rows not reached stay stored for the next start."""
        try:
            waiting = [self.stored.get(timeout=timeout) if timeout else self.stored.get_nowait()]
        except queue.Empty:
            return
        # With IMAP only retries and recovered rows come here, one at a time: the poller may meet
        # the same rows in the mailbox, and it files a mail only once it processed the row itself,
        # so a whole group claimed here would leave its mails in INBOX until the next poll.
        most = 1 if self.settings.imap_configured else GROUP_ROWS
        while waiting:
            with contextlib.suppress(queue.Empty):
                while len(waiting) < most:
                    waiting.append(self.stored.get_nowait())
            for group in groups(waiting, self.pipeline.raw_sizes(waiting)) if len(waiting) > 1 else [waiting]:
                self.pipeline.process_many(group)
                self.signals.outbox.set()
                if self.signals.stop.is_set():
                    return
            waiting = []
            with contextlib.suppress(queue.Empty):
                waiting.append(self.stored.get_nowait())

    def _sender_loop(self) -> None:
        """Deliver due outbox rows whenever work is queued, and every few seconds for retries.

        Batch after batch while mail is sent; a stop lets the message in hand finish, and the
        rows not yet attempted wait in the outbox for the next start."""
        stopping = self.signals.stop.is_set
        while True:
            self.signals.outbox.wait(timeout=OUTBOX_RECHECK_SECONDS)
            self.signals.outbox.clear()
            try:
                while not stopping() and send_due(self.engine, self.settings, self.sender, now=self.clock(),
                                                  worker=self.worker, stop=stopping, limit=SEND_BATCH).sent:
                    pass
            except Exception:
                log.exception("outbox sender failed; retrying shortly")
            if stopping():
                return

    def _minutely(self) -> None:
        """Housekeeping that is safe to run twice: stale claims, failed mail to retry, service-level timers."""
        now = self.clock()
        release_stale_claims(self.engine, now=now)
        for inbox_id in self.pipeline.pending_ids():
            self.stored.put(inbox_id)
        sweep(self.engine, self.settings, self.pipeline.notifier, now=now)
        self.signals.outbox.set()

    def _prune_raw(self) -> None:
        """MAILDESK_KEEP_RAW_DAYS: the raw bytes of mail handled longer ago than that go, ten
        batches at a time, so a long history is pruned over several runs between the mail."""
        days = self.settings.keep_raw_days
        pruned = prune_raw(self.engine, handled_before=self.clock() - timedelta(days=days), max_batches=PRUNE_BATCHES)
        if pruned.mails:
            log.info("removed the raw bytes of %d mail%s handled over %d days ago (%.1f MB; MAILDESK_KEEP_RAW_DAYS)",
                     pruned.mails, "" if pruned.mails == 1 else "s", days, pruned.raw_bytes / 1e6)

    def _recover(self) -> None:
        """After a crash: this worker's claims are released, attachment files of mail it was
        parsing are removed, and stored mail is processed now."""
        self.pipeline.release_own_claims()
        spool.sweep(self.settings.attachments_dir)
        release_stale_claims(self.engine, now=self.clock(), worker=self.worker)
        for inbox_id in self.pipeline.pending_ids():
            self.stored.put(inbox_id)
        sweep(self.engine, self.settings, self.pipeline.notifier, now=self.clock())
