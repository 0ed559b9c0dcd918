"""What every helper process beside the daemon does first (the parse and the send helpers).

Helpers are started by multiprocessing's spawn (the daemon has threads, which a fork would copy
mid-flight) and end with the daemon.
"""

from __future__ import annotations

import os
import signal
import threading
import time

PARENT_CHECK_SECONDS = 1.0


def start_helper(parent: int) -> None:
    """Ctrl-C in a terminal reaches every process of the group: the daemon finishes its work and
    closes the helpers itself, so a helper ignores SIGINT (else each printed a KeyboardInterrupt
    traceback and died under the batch in hand)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)


def _exit_with_parent(parent: int) -> None:
    """Leave when the daemon is gone. A helper holds both ends of its task queue, so a daemon
    killed with SIGKILL would otherwise leave it waiting forever (systemd ends the whole control
    group, a terminal or a test harness does not)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
