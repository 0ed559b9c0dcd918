"""The writers of one process take turns at SQLite's write lock, in the order they asked.

Where it sits: `store.make_engine` puts every SQLite transaction of the engine through
`WriterTurns` (taken at BEGIN, given back when the connection returns to the pool).

Why: a writer that finds the lock taken sleeps and retries (SQLite's busy handler: 1, 2, 5 ...
up to 100 ms between tries), and a thread that commits and begins again at once, like the
poller working through a backlog in 50-mail transactions, wins nearly every time. The outbox
sender then waited for the whole backlog: of 3000 acknowledgements queued while 2000 mails
were processed, 500 left during those 15 s and the rest after. With turns in arrival order, a
writer of this process waits for at most the transaction in progress. Writers in other
processes (the command line, a second daemon) still meet SQLite's own lock and busy timeout.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

log = logging.getLogger("maildesk.turns")


class WriterTurns:
    """A first-come, first-served lock held by a database connection (any hashable owner).

    The owner taking it again while holding it is let through (one connection, several
    transactions); a writer that waited `timeout` seconds goes ahead without its turn, so a
    mistake can only slow writers down to SQLite's own locking, never stop them.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._guard = threading.Lock()
        self._holder: object | None = None
        self._waiting: deque[tuple[object, threading.Lock]] = deque()

    def take(self, owner: object) -> bool:
        """Wait for `owner`'s turn; False when it went ahead after the timeout instead."""
        with self._guard:
            if self._holder is None or self._holder is owner:
                self._holder = owner
                return True
            signal = threading.Lock()
            signal.acquire()
            entry = (owner, signal)
            self._waiting.append(entry)
        if signal.acquire(timeout=self.timeout):
            return True
        with self._guard:
            if self._holder is owner:  # handed over just as the wait ran out
                return True
            self._waiting.remove(entry)
        log.warning("a database writer waited %.0f s for its turn; going ahead on SQLite's own lock", self.timeout)
        return False

    def give_back(self, owner: object) -> None:
        """End `owner`'s turn (nothing happens when it holds none); the next in line gets it."""
        with self._guard:
            if self._holder is not owner:
                return
            if self._waiting:
                self._holder, signal = self._waiting.popleft()
                signal.release()
            else:
                self._holder = None

    @property
    def waiting(self) -> int:
        """How many writers are in line (for tests and diagnostics)."""
        with self._guard:
            return len(self._waiting)
