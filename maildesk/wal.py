"""SQLite's write-ahead log, checkpointed by a thread of the daemon instead of by a commit.

By default the commit that takes the log past 1000 pages copies them into the database and
syncs it: 25-30 ms, once every dozen mails with attachments, spent inside an LMTP answer or
a ticket's processing. The daemon (and `poll --once`, through `checkpoints_in_background`)
hands that work to `WalCheckpointer`, which copies what
the log holds once a second while the others keep writing (a PASSIVE checkpoint waits for
no one). Connections still checkpoint themselves as a backstop, but only past
`BACKSTOP_PAGES`, should the thread fall behind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger("maildesk.wal")
INTERVAL_SECONDS = 1.0
BACKSTOP_PAGES = 20_000  # 80 MB of log with 4 KiB pages


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def defer_checkpoints(engine: Engine) -> None:
    """From now on the engine's connections leave checkpoints to `WalCheckpointer`.

    Connections already pooled are closed so that every connection gets the setting."""
    event.listen(engine, "connect", _raise_autocheckpoint)
    engine.dispose()


def _raise_autocheckpoint(connection: object, _record: object) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
    cursor.close()


class WalCheckpointer:
    """Checkpoints the log every `interval` seconds on a connection of its own until `stop`."""

    def __init__(self, engine: Engine, stop: threading.Event, interval: float = INTERVAL_SECONDS) -> None:
        self.engine = engine
        self.stop = stop
        self.interval = interval

    def run(self) -> None:
        connection = self.engine.raw_connection()
        try:
            while not self.stop.wait(self.interval):
                self.checkpoint(connection)
            self.checkpoint(connection)
        finally:
            connection.close()

    @staticmethod
    def checkpoint(connection: object) -> tuple[int, int, int]:
        """One PASSIVE checkpoint: (busy, pages in the log, pages copied), or (1, -1, -1) on an error."""
        try:
            cursor = connection.cursor()  # type: ignore[attr-defined]
            try:
                busy, logged, copied = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                cursor.close()
        except Exception:  # a full disk or a locked file must not end the thread: the backstop still works
            log.exception("WAL checkpoint failed; trying again in a moment")
            return 1, -1, -1
        return int(busy), int(logged), int(copied)


def start_checkpointer(engine: Engine, stop: threading.Event) -> threading.Thread | None:
    """With SQLite: the engine's connections leave checkpoints to a `WalCheckpointer` thread,
    started here and ended by `stop`. None for other databases."""
    if not is_sqlite(engine):
        return None
    defer_checkpoints(engine)
    thread = threading.Thread(target=WalCheckpointer(engine, stop).run, name="wal-checkpoint", daemon=True)
    thread.start()
    return thread


@contextmanager
def checkpoints_in_background(engine: Engine) -> Iterator[None]:
    """While the block runs, a `WalCheckpointer` thread checkpoints for the engine (SQLite only)."""
    stop = threading.Event()
    thread = start_checkpointer(engine, stop)
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
