"""Real servers on 127.0.0.1 for tests and benchmarks: Dovecot, PostgreSQL and an SMTP sink.

Why real servers: the bugs that lose or duplicate mail live in the protocol edges (UIDPLUS,
MOVE, TRYCREATE, 4xx/5xx replies, connections that die); fakes would agree with our own
assumptions. Every server here is a private instance in a temporary directory on a free port,
started and stopped by this module, so a clean machine needs no hand steps.

Use as a pytest plugin (``pytest_plugins = ["tests.servers"]``) for the fixtures ``dovecot``
(session), ``postgres`` (session), ``pg_url`` (a fresh database per test) and ``smtp_sink``
(per test), or import the classes directly (benchmarks in ``bench/``).

Missing Dovecot or PostgreSQL binaries are installed with apt-get when we are root and apt-get
exists (the CI machine); otherwise the fixture skips, naming the package to install.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import glob
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "DovecotServer", "PostgresServer", "SmtpSink", "ReceivedMessage", "ServerError",
    "free_port", "wait_for_port", "ensure_packages",
    "dovecot", "postgres", "pg_url", "smtp_sink",
]

LOCALHOST = "127.0.0.1"
STANDARD_FOLDERS = ("INBOX", "Processed", "Quarantine")


class ServerError(RuntimeError):
    """A test server could not be installed, started or stopped; the message says why."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    aiosmtpd cannot listen on port 0 (its readiness probe needs the real port), and servers that
    restart must come back on the same port, so ports are chosen up front.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, *, host: str = LOCALHOST,
                  process: subprocess.Popen[bytes] | None = None, what: str = "server") -> None:
    """Poll-connect until something accepts on host:port, or raise ServerError at the deadline.

    Polling the port (not a pid file) is the readiness signal that matters to a client. If the
    server process exits meanwhile, fail at once instead of waiting out the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as error:
            last = error
        if process is not None and process.poll() is not None:
            raise ServerError(f"{what} exited with status {process.returncode} before listening on {host}:{port}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not listen on {host}:{port} within {timeout}s ({last})")
        time.sleep(0.02)  # a short poll interval; there is no event to wait on for "port open"


_apt_lock = threading.Lock()
_apt_updated = False


def ensure_packages(missing: bool, packages: Sequence[str], what: str) -> None:
    """Install `packages` with apt-get when `missing`, if we may; else skip the test.

    Installing needs root and apt-get (the CI machine and fresh dev boxes). Anywhere else the
    caller gets a pytest skip naming the command to run, never a confusing failure. A failed
    install is an error, not a skip: CI must not go green by skipping the server tests.
    """
    global _apt_updated
    if not missing:
        return
    hint = f"{what} not installed: apt-get install {' '.join(packages)}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(hint)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _apt_lock:
        commands = [] if _apt_updated else [["apt-get", "update"]]
        commands.append(["apt-get", "install", "-y", "--no-install-recommends", *packages])
        for command in commands:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
            if result.returncode != 0:
                raise ServerError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
            if command[1] == "update":
                _apt_updated = True


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- Dovecot


class DovecotServer:
    """A private Dovecot (IMAP, and LMTP when installed) in its own temporary directory.

    Mail lives under ``DIR/mail/<user>/Maildir`` owned by uid nobody (Dovecot refuses to store
    mail as root), so DIR is made world-traversable: pytest's ``tmp_path`` would not be.
    """

    def __init__(self, user: str = "support", password: str = "secret", *, port: int | None = None,
                 lmtp: bool = True) -> None:
        ensure_packages(shutil.which("dovecot") is None, ["dovecot-imapd", "dovecot-lmtpd"], "Dovecot")
        self.user = user
        self.password = password
        self.port = port or free_port()
        self.lmtp_enabled = lmtp and Path("/usr/lib/dovecot/lmtp").exists()
        self.lmtp_port: int | None = free_port() if self.lmtp_enabled else None
        self.dir = Path(tempfile.mkdtemp(prefix="maildesk-dovecot-"))
        self.dir.chmod(0o755)
        self.mail_dir = self.dir / "mail"
        self.mail_dir.mkdir()
        self.users_file = self.dir / "users"
        self.log_path = self.dir / "dovecot.log"
        self.config_path = self.dir / "dovecot.conf"
        self._passwords: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self._prepare_ownership()
            self.add_user(user, password)
            self.config_path.write_text(self._config())
            self.start()
            for folder in STANDARD_FOLDERS[1:]:
                self.create_folder(folder)
        except BaseException:
            self.close()  # the error already carries the log tail; leave no directory behind
            raise

    # ----- configuration

    def _prepare_ownership(self) -> None:
        """As root, mail is stored as nobody:nogroup; otherwise as ourselves."""
        if os.geteuid() == 0:
            import grp
            import pwd
            self._mail_uid = pwd.getpwnam("nobody").pw_uid
            self._mail_gid = grp.getgrnam("nogroup").gr_gid
            os.chown(self.mail_dir, self._mail_uid, self._mail_gid)
        else:
            self._mail_uid, self._mail_gid = os.getuid(), os.getgid()

    def _config(self) -> str:
        d = self.dir
        protocols = "imap lmtp" if self.lmtp_enabled else "imap"
        unprivileged = ""
        if os.geteuid() != 0:  # per the checked notes: run every service as ourselves, no chroots
            import grp
            import pwd
            me = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            unprivileged = (f"default_internal_user = {me}\ndefault_internal_group = {group}\n"
                            f"default_login_user = {me}\n")
        lmtp = ""
        if self.lmtp_enabled:
            lmtp = ("service lmtp {\n  inet_listener lmtp {\n"
                    f"    address = {LOCALHOST}\n    port = {self.lmtp_port}\n  }}\n}}\n")
        no_chroot = "  chroot =\n" if os.geteuid() != 0 else ""
        return f"""# Private test instance written by tests/servers.py
instance_name = maildesk-test-{d.name}
base_dir = {d}/run
state_dir = {d}/state
protocols = {protocols}
listen = {LOCALHOST}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
auth_verbose = yes
# Tests try wrong passwords on purpose: answer failed logins at once.
auth_failure_delay = 0
log_path = {self.log_path}
mail_location = maildir:~/Maildir
{unprivileged}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.users_file}
}}
userdb {{
  driver = static
  args = uid={self._mail_uid} gid={self._mail_gid} home={self.mail_dir}/%u
}}
service imap-login {{
{no_chroot}  inet_listener imap {{
    address = {LOCALHOST}
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
# No anvil auth penalty (2-15 s delays per IP after a failed login): the auth process cannot
# use this socket, so Dovecot disables the penalty; wrong-password tests stay fast.
service anvil {{
{no_chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{lmtp}"""

    def add_user(self, user: str, password: str) -> None:
        """Add (or change) an IMAP user; Dovecot re-reads the passwd-file when it changes."""
        if not re.fullmatch(r"[a-z0-9._-]+", user) or ":" in password or "\n" in password:
            raise ValueError(f"unsupported test user or password: {user!r}")
        self._passwords[user] = password
        lines = "".join(f"{name}:{{PLAIN}}{secret}\n" for name, secret in self._passwords.items())
        temporary = self.users_file.with_suffix(".tmp")
        temporary.write_text(lines)
        temporary.chmod(0o644)
        temporary.replace(self.users_file)  # atomic: a concurrent login never sees half a file
        if self.running:
            self._wait_for_login(user, password)

    def _wait_for_login(self, user: str, password: str, timeout: float = 10.0) -> None:
        """Poll until Dovecot accepts the new credentials.

        Dovecot re-reads the passwd-file at most once per second (it compares the mtime, which has
        one-second resolution), so a login right after the change may still see the old file.
        """
        from imapclient import IMAPClient
        from imapclient.exceptions import LoginError

        deadline = time.monotonic() + timeout
        while True:
            imap = IMAPClient(LOCALHOST, port=self.port, ssl=False, timeout=10)
            try:
                imap.login(user, password)
                imap.logout()
                return
            except LoginError:
                imap.shutdown()
                if time.monotonic() > deadline:
                    raise ServerError(f"Dovecot did not accept the new login for {user!r} within {timeout}s")
            time.sleep(0.05)  # nothing to wait on: Dovecot reloads the file on its own schedule

    # ----- process control

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the master in the foreground (-F) and wait until IMAP (and LMTP) accept."""
        if self.running:
            return
        log = (self.dir / "dovecot.stderr").open("ab")
        self._process = subprocess.Popen(["dovecot", "-F", "-c", str(self.config_path)],
                                         stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_for_port(self.port, process=self._process, what="Dovecot IMAP")
            if self.lmtp_port is not None:
                wait_for_port(self.lmtp_port, process=self._process, what="Dovecot LMTP")
        except ServerError as error:
            self.stop()
            raise ServerError(f"{error}\n{_tail(self.dir / 'dovecot.stderr')}{_tail(self.log_path)}") from None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the master and wait for it (it stops its children first, ~1 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same ports with the same mail (models a server restart)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and delete the directory with all mail."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----- IMAP helpers

    @contextmanager
    def client(self, user: str | None = None, password: str | None = None) -> Iterator[Any]:
        """A logged-in imapclient.IMAPClient (plaintext: the test port has no TLS)."""
        from imapclient import IMAPClient

        user = user or self.user
        password = password if password is not None else self._passwords[user]
        imap = IMAPClient(LOCALHOST, port=self.port, ssl=False, timeout=10)
        try:
            imap.login(user, password)
            yield imap
        finally:
            try:
                imap.logout()
            except Exception:  # the server may be gone (restart tests): just drop the socket
                try:
                    imap.shutdown()
                except Exception:
                    pass

    def create_folder(self, folder: str, user: str | None = None) -> None:
        """Create a folder if it does not exist yet."""
        with self.client(user) as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)

    def folders(self, user: str | None = None) -> list[str]:
        with self.client(user) as imap:
            return sorted(name for _flags, _delimiter, name in imap.list_folders())

    def append(self, folder: str, raw: bytes, user: str | None = None, flags: Sequence[str] = ()) -> int | None:
        """APPEND a raw message; returns its UID from APPENDUID (UIDPLUS)."""
        with self.client(user) as imap:
            answer = imap.append(folder, raw, flags=tuple(flags))
        match = re.search(rb"APPENDUID \d+ (\d+)", answer if isinstance(answer, bytes) else str(answer).encode())
        return int(match.group(1)) if match else None

    def count(self, folder: str, user: str | None = None) -> int:
        """Number of messages in a folder (STATUS MESSAGES; no SELECT, so flags stay untouched)."""
        with self.client(user) as imap:
            return int(imap.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])

    def folder_uids(self, folder: str, user: str | None = None) -> list[int]:
        """UIDs in a folder, ascending."""
        with self.client(user) as imap:
            imap.select_folder(folder, readonly=True)
            return sorted(imap.search("ALL"))

    def fetch(self, folder: str, uid: int, user: str | None = None) -> bytes:
        """The raw bytes of one message, read without setting \\Seen."""
        with self.client(user) as imap:
            imap.select_folder(folder, readonly=True)
            return bytes(imap.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"])

    def messages(self, folder: str, user: str | None = None) -> list[bytes]:
        """All raw messages in a folder, in UID order."""
        with self.client(user) as imap:
            imap.select_folder(folder, readonly=True)
            uids = sorted(imap.search("ALL"))
            data = imap.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [bytes(data[uid][b"BODY[]"]) for uid in uids]

    def reset(self, user: str | None = None) -> None:
        """Empty the mailbox: delete extra folders, expunge all mail, recreate the standard folders.

        The session-scoped server is shared, so tests start from a known state this way instead
        of paying for a new instance.
        """
        with self.client(user) as imap:
            names = [name for _flags, _delimiter, name in imap.list_folders()]
            for name in sorted(names, key=len, reverse=True):  # children before parents
                if name.upper() != "INBOX" and name not in STANDARD_FOLDERS:
                    imap.delete_folder(name)
            for name in STANDARD_FOLDERS:
                if not imap.folder_exists(name):
                    imap.create_folder(name)
                imap.select_folder(name)
                uids = imap.search("ALL")
                if uids:
                    imap.delete_messages(uids)
                    imap.expunge()
                imap.close_folder()

    def deliver_lmtp(self, recipients: Sequence[str], raw: bytes, sender: str = "sender@example.test") -> dict[str, Any]:
        """Deliver over LMTP like an MTA would (needs dovecot-lmtpd); returns refused recipients."""
        if self.lmtp_port is None:
            raise ServerError("LMTP is not available: apt-get install dovecot-lmtpd")
        with smtplib.LMTP(LOCALHOST, self.lmtp_port, timeout=10) as lmtp:
            return dict(lmtp.sendmail(sender, list(recipients), raw))

    def __repr__(self) -> str:
        return f"DovecotServer(imap={LOCALHOST}:{self.port}, lmtp={self.lmtp_port}, dir={self.dir})"


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server binaries (Debian keeps them off PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda path: int(re.findall(r"/(\d+)/bin", path)[0]))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 with fsync off (tests do not need durability).

    As root the cluster runs as user postgres (PostgreSQL refuses root), so the temp directory
    is handed to postgres; the socket directory lives inside it, away from /var/run.
    """

    def __init__(self, *, port: int | None = None) -> None:
        ensure_packages(_postgres_bin_dir() is None, ["postgresql"], "PostgreSQL")
        bin_dir = _postgres_bin_dir()
        assert bin_dir is not None
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="maildesk-pg-"))
        self.data_dir = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.log_path = self.dir / "postgres.log"
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            for path in (self.dir, self.socket_dir):
                shutil.chown(path, "postgres", "postgres")
        try:
            self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                      "--locale=C.UTF-8", "--no-sync")
            self.start()
        except BaseException:
            self.close()
            raise

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if result.returncode != 0:
            raise ServerError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}"
                              f"\n{_tail(self.log_path)}")
        return result.stdout

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def start(self) -> None:
        """pg_ctl start -w: returns once the server accepts connections."""
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses={LOCALHOST} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options, "-w", "-t", "60",
                  "start")
        wait_for_port(self.port, what="PostgreSQL")

    def stop(self) -> None:
        """Fast shutdown (disconnects clients), waiting until it is down (models an outage)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL for a database on this cluster (driver psycopg 3)."""
        return f"postgresql+psycopg://postgres@{LOCALHOST}:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=LOCALHOST, port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"unsupported database name {name!r}")
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database even if a test left connections open (WITH FORCE, PostgreSQL 13+)."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"unsupported database name {name!r}")
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __repr__(self) -> str:
        return f"PostgresServer({LOCALHOST}:{self.port}, dir={self.dir})"


# --------------------------------------------------------------------------- SMTP sink


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the sink accepted (250 after DATA): the envelope and the exact bytes."""

    envelope_from: str
    recipients: list[str]
    raw: bytes
    message_id: str | None
    peer: Any = None
    received_at: float = field(default_factory=time.time)

    # aiosmtpd Envelope-style names, so code written against either spelling works.
    @property
    def mail_from(self) -> str:
        return self.envelope_from

    @property
    def rcpt_tos(self) -> list[str]:
        return self.recipients

    @property
    def content(self) -> bytes:
        return self.raw

    def parsed(self) -> Any:
        """The message as an email.message.EmailMessage (modern policy)."""
        return email.parser.BytesParser(policy=email.policy.default).parsebytes(self.raw)


def _reply(code: int, text: str) -> str:
    """An SMTP reply line with an enhanced status code matching the class of `code`."""
    enhanced = {4: "4.3.0", 5: "5.0.0"}.get(code // 100, "2.0.0")
    if code == 550:
        enhanced = "5.1.1"
    return f"{code} {enhanced} {text}"


class _FaultyHandler:
    """aiosmtpd handler: applies the injected faults, then keeps what it accepts."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when no handler takes EHLO
        if self.sink.pipelining:  # aiosmtpd reads pipelined commands in order; it only never says so
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        sink = self.sink
        with sink._lock:
            code = sink._refused.get(address.lower())
            if code is None and sink._fail_stage == "rcpt" and sink._fail_remaining > 0:
                sink._fail_remaining -= 1
                code = sink._fail_code
        if code is not None:
            return _reply(code, f"refused by test sink: <{address}>")
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        sink = self.sink
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        message_id = _message_id(bytes(raw))
        with sink._lock:
            code = sink._refused_messages.get(message_id or "")
            if code is None and sink._fail_stage == "data" and sink._fail_remaining > 0:
                sink._fail_remaining -= 1
                code = sink._fail_code
            stall = sink._stall_seconds if sink._stall_remaining > 0 else 0.0
            sink._stall_remaining = max(0, sink._stall_remaining - 1)
            drop = sink._drop_remaining > 0 or message_id in sink._dropped_messages
            sink._drop_remaining = max(0, sink._drop_remaining - 1)
        if code is not None:
            return _reply(code, "test sink: injected failure")
        if stall:
            await asyncio.sleep(stall)  # inside the server's loop: models a server that hangs
        sink._store(ReceivedMessage(envelope_from=envelope.mail_from or "", recipients=list(envelope.rcpt_tos),
                                    raw=bytes(raw), message_id=message_id, peer=session.peer))
        if drop:
            server.transport.abort()  # stored, but the client never sees 250: the D4 duplicate window
        return "250 OK: queued by test sink"


def _message_id(raw: bytes) -> str | None:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    value = headers.get("Message-ID")
    return str(value).strip() if value is not None else None


def _chunked_data_controller() -> type:
    from aiosmtpd.controller import Controller

    from maildesk.lmtp import ChunkedData

    class ChunkedDataController(Controller):  # type: ignore[misc]
        def factory(self) -> Any:
            return ChunkedData(self.handler, **self.SMTP_kwargs)

    return ChunkedDataController


class SmtpSink:
    """An SMTP server on 127.0.0.1 that keeps every accepted message and can misbehave on demand.

    Faults (all thread-safe, settable while a client is connected):
    - ``fail_next(n, code=451, stage="data")``: the next n DATA (or RCPT) commands get `code`;
    - ``refuse_recipients({addr: 550})``: those recipients are refused at RCPT until cleared;
    - ``refuse_messages({message_id: 451})``: those messages get `code` at the end of DATA;
    - ``drop_after_data(n)``: store the next n messages but cut the connection before "250";
    - ``drop_after_messages({message_id})``: the same for those messages;
    - ``stall_next(n, seconds)``: hold the reply to the next n DATA commands;
    - ``stop()`` / ``start()``: the receiver goes down and comes back on the same port.
    ``auth=(user, password)`` offers AUTH PLAIN/LOGIN without TLS, to test wrong passwords.
    ``pipelining=True`` offers PIPELINING (RFC 2920) in its EHLO answer, as Postfix and Exim do.
    ``chunked_data=True`` reads DATA as the LMTP listener does (`maildesk.lmtp.ChunkedData`): for
    the benchmarks, whose receiving end should cost what a real MTA costs, not aiosmtpd's
    1.9 ms of CPU a message. The tests keep aiosmtpd's own reader, independent of maildesk's.
    """

    def __init__(self, *, port: int | None = None, auth: tuple[str, str] | None = None,
                 hostname: str = "sink.test", chunked_data: bool = False, pipelining: bool = False) -> None:
        self.port = port or free_port()
        self.pipelining = pipelining
        self.auth = auth
        self.chunked_data = chunked_data
        self.hostname = hostname
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._messages: list[ReceivedMessage] = []
        self._fail_remaining = 0
        self._fail_code = 451
        self._fail_stage = "data"
        self._refused: dict[str, int] = {}
        self._refused_messages: dict[str, int] = {}
        self._dropped_messages: set[str] = set()
        self._drop_remaining = 0
        self._stall_remaining = 0
        self._stall_seconds = 0.0
        self.auth_attempts: list[tuple[str, bool]] = []
        self._controller: Any = None

    # ----- lifecycle

    def start(self) -> None:
        """Listen (again) on the same port; a new Controller each time, as aiosmtpd expects."""
        from aiosmtpd.controller import Controller

        if self._controller is not None:
            return
        options: dict[str, Any] = {}
        if self.auth is not None:
            options.update(authenticator=self._authenticate, auth_require_tls=False)
        controller_class = _chunked_data_controller() if self.chunked_data else Controller
        controller = controller_class(_FaultyHandler(self), hostname=LOCALHOST, port=self.port,
                                      server_hostname=self.hostname, ready_timeout=10, **options)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and drop open connections (the receiver is down)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        assert self.auth is not None
        good = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.auth[0].encode(), self.auth[1].encode())
        login = data.login.decode(errors="replace") if isinstance(data, LoginPassword) else "?"
        with self._lock:
            self.auth_attempts.append((login, good))
        return AuthResult(success=good, handled=False)

    # ----- received mail

    def _store(self, message: ReceivedMessage) -> None:
        with self._arrived:
            self._messages.append(message)
            self._arrived.notify_all()

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the accepted messages, in arrival order."""
        with self._lock:
            return list(self._messages)

    def message_ids(self) -> list[str | None]:
        return [message.message_id for message in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until at least `count` messages arrived; AssertionError after `timeout` seconds."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._messages) >= count, timeout):
                raise AssertionError(f"SMTP sink got {len(self._messages)} message(s), "
                                     f"expected {count} within {timeout}s")
            return list(self._messages)

    def clear(self) -> None:
        """Forget received messages and all faults."""
        with self._lock:
            self._messages.clear()
            self.auth_attempts.clear()
        self.clear_faults()

    # ----- faults

    def fail_next(self, n: int, code: int = 451, stage: str = "data") -> None:
        """Answer `code` to the next `n` DATA commands (stage="data") or RCPT commands (stage="rcpt")."""
        if stage not in ("data", "rcpt") or not 400 <= code <= 599:
            raise ValueError("stage must be 'data' or 'rcpt' and code a 4xx/5xx")
        with self._lock:
            self._fail_remaining, self._fail_code, self._fail_stage = n, code, stage

    def refuse_recipients(self, refusals: dict[str, int]) -> None:
        """Refuse these recipients at RCPT with the given codes (replaces earlier refusals)."""
        with self._lock:
            self._refused = {address.lower(): code for address, code in refusals.items()}

    def refuse_messages(self, refusals: dict[str, int]) -> None:
        """Answer these Message-IDs' end of data with the given codes (replaces earlier ones): a
        fault for one message in the middle of a pipelined batch."""
        with self._lock:
            self._refused_messages = dict(refusals)

    def drop_after_messages(self, message_ids: set[str]) -> None:
        """Keep these Message-IDs' messages but close the connection before their final reply."""
        with self._lock:
            self._dropped_messages = set(message_ids)

    def drop_after_data(self, n: int = 1) -> None:
        """Keep the next `n` messages but close the connection before the final reply."""
        with self._lock:
            self._drop_remaining = n

    def stall_next(self, n: int, seconds: float) -> None:
        """Delay the reply to the next `n` DATA commands by `seconds` (client timeouts)."""
        with self._lock:
            self._stall_remaining, self._stall_seconds = n, seconds

    def clear_faults(self) -> None:
        with self._lock:
            self._fail_remaining = self._drop_remaining = self._stall_remaining = 0
            self._refused, self._refused_messages, self._dropped_messages = {}, {}, set()

    def __repr__(self) -> str:
        return f"SmtpSink({LOCALHOST}:{self.port}, running={self.running}, messages={len(self._messages)})"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """One Dovecot for the session (user ``support``/``secret``); call ``reset()`` for a clean mailbox."""
    server = DovecotServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session; use ``pg_url`` for a database per test."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session cluster, dropped (with force) after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    if not postgres.running:  # a previous outage test may have left it stopped
        postgres.start()
    url = postgres.create_database(name)
    yield url
    if postgres.running:
        postgres.drop_database(name)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A running SMTP sink on a free port, stopped after the test."""
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
