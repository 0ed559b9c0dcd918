"""Run `maildesk run` as a real process for tests: start, wait for readiness, signal, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "") -> object:
    """Poll `condition` until it is truthy or `timeout` passes (then AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


class DaemonProcess:
    """`maildesk run` in a subprocess with its own environment and a systemd notify socket."""

    def __init__(self, env: dict[str, str], workdir: Path, wrapper: tuple[str, ...] = ()) -> None:
        self.env = {**os.environ, **env}
        self.workdir = workdir
        self.wrapper = wrapper  # a command the daemon runs under (strace ...)
        self.process: subprocess.Popen[bytes] | None = None
        self.notify_dir = Path(tempfile.mkdtemp(prefix="notify-"))
        self.notify_path = self.notify_dir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self.log = workdir / "daemon.log"

    def maildesk(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "maildesk", *args], env=self.env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        """Spawn the daemon and wait for this run's READY=1 (not one an earlier run sent)."""
        self.messages.clear()
        env = {**self.env, "NOTIFY_SOCKET": str(self.notify_path)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*self.wrapper, sys.executable, "-m", "maildesk", "run"], env=env,
                                            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        self.wait_for_notify("READY=1", 30)

    def wait_for_notify(self, field: str, timeout: float) -> None:
        def seen() -> bool:
            try:
                self.messages.extend(self.notify.recv(4096).decode().split("\n"))
            except (socket.timeout, BlockingIOError):
                pass
            if self.process is not None and self.process.poll() is not None and field not in self.messages:
                raise AssertionError(f"daemon exited {self.process.returncode}: {self.log.read_text()[-3000:]}")
            return field in self.messages
        wait_until(seen, timeout, interval=0, what=field)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the daemon (not the wrapper it runs under) and return its exit status."""
        assert self.process is not None
        os.kill(self.daemon_pid(), sig)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def daemon_pid(self) -> int:
        """The daemon's process id: the wrapper's only child when there is a wrapper."""
        assert self.process is not None
        if not self.wrapper:
            return self.process.pid
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, f"{self.wrapper[0]} has children {children}"
        return int(children[0])

    def kill(self) -> None:
        if self.process is not None:
            if self.wrapper and self.process.poll() is None:
                try:
                    os.kill(self.daemon_pid(), signal.SIGKILL)
                except (AssertionError, OSError):  # already gone
                    pass
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None

    def close(self) -> None:
        self.kill()
        self.notify.close()
