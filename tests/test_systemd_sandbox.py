"""The daemon's every system call, mapping, socket and write against the sandbox of
`systemd/maildesk.service` (test_systemd_boot.py boots the unit itself, which shows that it
runs, not which calls a path the test did not take would make).

The unit allows the system calls of `@system-service` minus `@privileged @resources` (any other
fails with EPERM), sets `MemoryDenyWriteExecute=yes` (no memory both writable and executable)
and `RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX`, and leaves only the state directory
writable (`ProtectSystem=strict`, `ProtectHome=yes`). Here `maildesk run` runs under strace,
on IMAP and SMTP (a backlog with an attachment, then IDLE; the parse and send helpers, the WAL
checkpointer, a SIGTERM stop) and on the LMTP listener (SQLite, and PostgreSQL), and every call its processes made must
pass all four. The groups are expanded by this machine's `systemd-analyze syscall-filter`: the
sets the installed systemd applies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import SMTP
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess, wait_until
from tests.mailbuilder import make_mail
from tests.servers import ensure_packages, free_port
from tests.test_daemon import add_people, imap_env

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "maildesk.service"
# A module edited since `make setup` compiled the checkout would have its bytecode written there:
# harmless under the unit (the write fails, Python goes on), but the check below would report it.
NO_BYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}

pytestmark = pytest.mark.servers


@pytest.fixture(autouse=True, scope="module")
def tools() -> None:
    """strace, and systemd-analyze for the groups' contents: installed when we are root on Debian."""
    ensure_packages(shutil.which("systemd-analyze") is None, ["systemd"], "systemd-analyze")
    ensure_packages(shutil.which("strace") is None, ["strace"], "strace")


# strace -f -o FILE: "PID name(args) = result", a call split by another process's call as
# "PID name(args <unfinished ...>" and "PID <... name resumed>...".
_CALL = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)")
_SUCCEEDED = re.compile(r"\)\s+= 0$")  # not an execve missing along PATH
_SOCKET_FAMILY = re.compile(r"^\d+\s+socket(?:pair)?\((AF_[A-Z0-9]+)")
# Calls that change the file system, and where their paths are: a path is the first argument,
# or the second after AT_FDCWD; rename and link also write the last. (A path relative to another
# directory descriptor, as in shutil.rmtree, is not read: the check can miss, never misreport.)
_WRITING = re.compile(r'^\d+\s+(open|openat|mkdir|mkdirat|rmdir|unlink|unlinkat|rename|renameat2?|link|linkat|'
                      r'symlink|symlinkat|truncate|chmod|fchmodat|utimensat)\((?:AT_FDCWD, )?"([^"]*)"(.*)')
_OPEN_FOR_WRITING = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC")
# What MemoryDenyWriteExecute=yes refuses: a mapping both writable and executable, and making
# existing memory executable (systemd's seccomp rule refuses any mprotect asking for PROT_EXEC).
_WRITE_EXECUTE = re.compile(r"^\d+\s+(?:mmap\(.*PROT_WRITE\|PROT_EXEC|(?:pkey_)?mprotect\(.*PROT_EXEC)")


def syscall_group(name: str) -> set[str]:
    """The system calls of a `SystemCallFilter=` group, nested groups expanded."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        calls |= syscall_group(entry) if entry.startswith("@") else {entry}
    return calls


def unit_filter() -> tuple[list[str], list[str]]:
    """The unit's allowed and denied groups, read from its SystemCallFilter= lines."""
    allowed: list[str] = []
    denied: list[str] = []
    for line in UNIT.read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            (denied if value.startswith("~") else allowed).extend(value.lstrip("~").split())
    return allowed, denied


def allowed_calls() -> set[str]:
    allowed, denied = unit_filter()
    assert allowed and denied, "the unit lost its SystemCallFilter= lines"
    permitted = set().union(*(syscall_group(group) for group in allowed))
    return permitted - set().union(*(syscall_group(group) for group in denied))


def allowed_families() -> set[str]:
    """The unit's RestrictAddressFamilies= (any other socket fails with EAFNOSUPPORT)."""
    lines = [line for line in UNIT.read_text().splitlines() if line.startswith("RestrictAddressFamilies=")]
    assert len(lines) == 1, "the unit lost its RestrictAddressFamilies= line"
    return set(lines[0].split("=", 1)[1].split())


def root_only_calls() -> set[str]:
    """Calls made here only because the tests run as root: SQLite gives a new -wal or -shm file
    the database's owner (`fchown`) when geteuid() is 0, and the unit's DynamicUser= never is."""
    return {"fchown"} if os.geteuid() == 0 else set()


@dataclass
class Trace:
    calls: set[str]  # the names of the system calls made
    write_execute: list[str]  # the lines MemoryDenyWriteExecute= would refuse
    programs: int  # the execve calls: the daemon, and each helper spawned
    families: set[str]  # the address families of the sockets opened
    written: set[str]  # the paths created, opened for writing, renamed, removed (as given)


def traced_calls(path: Path) -> Trace:
    trace = Trace(set(), [], 0, set(), set())
    for line in path.read_text(errors="replace").splitlines():
        match = _CALL.match(line)
        if match:
            trace.calls.add(match.group(1))
            trace.programs += match.group(1) == "execve" and _SUCCEEDED.search(line) is not None
        if _WRITE_EXECUTE.match(line):
            trace.write_execute.append(line)
        writing = _WRITING.match(line)
        if writing and (not writing.group(1).startswith("open") or _OPEN_FOR_WRITING.search(writing.group(3))):
            trace.written.add(writing.group(2))
            if writing.group(1).startswith(("rename", "link", "symlink")):
                trace.written.update(re.findall(r'"([^"]*)"', writing.group(3))[-1:])
        family = _SOCKET_FAMILY.match(line)
        if family:
            trace.families.add(family.group(1))
    return trace


def test_the_units_filter_is_read_and_its_groups_expanded() -> None:
    permitted = allowed_calls()
    assert {"read", "sendto", "futex", "fsync", "pwrite64", "clone3"} <= permitted
    assert not {"setuid", "chown", "setrlimit", "sched_setaffinity", "reboot"} & permitted
    assert allowed_families() == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_a_trace_gives_the_calls_programs_sockets_writes_and_write_execute_mappings(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    trace.write_text("5 openat(AT_FDCWD, \"/etc/ld.so.cache\", O_RDONLY|O_CLOEXEC) = 3\n"
                     "6 mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0 <unfinished ...>\n"
                     "5 setpriority(PRIO_PROCESS, 0, 5) = 0\n"
                     "6 <... mmap resumed>) = 0x7f0000000000\n"
                     "7 mprotect(0x7f0000000000, 4096, PROT_READ|PROT_EXEC) = 0\n"
                     "7 mprotect(0x7f0000001000, 4096, PROT_READ) = 0\n"
                     "8 mmap(NULL, 4096, PROT_READ|PROT_EXEC, MAP_PRIVATE|MAP_DENYWRITE, 3, 0) = 0x7f0000002000\n"
                     "8 mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_SHARED|MAP_ANONYMOUS, -1, 0) = 0x7f1\n"
                     "9 execve(\"/usr/bin/python3\", [\"python3\"], 0x7ffd /* 20 vars */ <unfinished ...>\n"
                     "9 <... execve resumed>)             = 0\n"
                     "9 execve(\"/usr/local/bin/python3\", [\"python3\"], 0x7ffd /* 20 vars */) = -1 ENOENT\n"
                     "5 openat(AT_FDCWD, \"var/a.part\", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 7\n"
                     "5 rename(\"var/a.part\", \"var/attachments/a\" <unfinished ...>\n"
                     "5 mkdir(\"/etc/maildesk\", 0777) = -1 EEXIST (File exists)\n"
                     "5 unlinkat(AT_FDCWD, \"/dev/shm/sem.x\", 0) = 0\n"
                     "5 socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE) = 4\n"
                     "5 socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, [5, 6]) = 0\n"
                     "7 +++ exited with 0 +++\n")
    found = traced_calls(trace)
    assert found.calls == {"openat", "mmap", "mprotect", "setpriority", "execve", "socket", "socketpair", "rename",
                           "mkdir", "unlinkat"}
    assert found.families == {"AF_NETLINK", "AF_UNIX"}
    assert found.written == {"var/a.part", "var/attachments/a", "/etc/maildesk", "/dev/shm/sem.x"}
    assert [line.split("(")[0] for line in found.write_execute] == ["7 mprotect", "8 mmap"]
    assert found.programs == 1


def with_attachment(raw: bytes) -> bytes:
    """The mail with a small PDF attached (spooled by the parse helper, kept by the daemon)."""
    message = BytesParser(policy=SMTP).parsebytes(raw)
    message.make_mixed()
    message.add_attachment(b"%PDF-1.4 " + bytes(range(256)) * 40, maintype="application", subtype="pdf",
                           filename="invoice.pdf")
    return message.as_bytes()


def assert_inside_the_sandbox(path: Path, programs: int, workdir: Path) -> None:
    """Every call of the trace allowed by the unit; `programs` processes (execve) were traced.

    ProtectSystem=strict and ProtectHome=yes leave the daemon its data folder (`var/` here, the
    unit's StateDirectory=) and /dev/shm (multiprocessing's semaphores) to write in."""
    trace = traced_calls(path)
    writable = (workdir / "var", Path("/dev/shm"), Path("/dev/null"))
    outside_state = {written for written in trace.written
                     if not any(Path(os.path.normpath(workdir / written)).is_relative_to(place) for place in writable)}
    assert not outside_state, f"ProtectSystem=strict would refuse writing {sorted(outside_state)}"
    assert trace.written, "the trace saw nothing written, not even in the data folder"
    assert trace.programs >= programs, f"{trace.programs} programs traced: a helper was not"
    assert {"clone3", "sendto"} <= trace.calls, "the trace misses the threads or the sockets"
    outside = trace.calls - allowed_calls() - root_only_calls()
    assert not outside, f"system calls the unit's SystemCallFilter= would refuse (EPERM): {sorted(outside)}"
    assert not trace.write_execute, f"MemoryDenyWriteExecute=yes would refuse: {trace.write_execute[:3]}"
    assert "AF_INET" in trace.families or "AF_UNIX" in trace.families, "the trace saw no socket opened"
    assert trace.families <= allowed_families(), f"RestrictAddressFamilies= would refuse {trace.families}"


def test_the_daemon_on_imap_and_smtp_stays_inside_the_units_sandbox(tmp_path: Path, dovecot, smtp_sink) -> None:
    dovecot.reset()
    trace = tmp_path / "strace.log"
    customers = [f"customer{number}@acme.example" for number in range(6)]
    daemon = DaemonProcess(imap_env(dovecot, smtp_sink, MAILDESK_IMAP_BATCH_SIZE="3", **NO_BYTECODE), tmp_path,
                           wrapper=("strace", "-f", "-qq", "-o", str(trace)))
    add_people(daemon, customers)
    try:
        for number, customer in enumerate(customers[:5]):  # a backlog: batches of 3 go to the parse helper
            mail = make_mail(customer, f"Printer {number}", "It is broken.", to="support@desk.example")
            dovecot.append("INBOX", with_attachment(mail) if number == 1 else mail)
        daemon.start()
        wait_until(lambda: dovecot.count("Processed") == 5, 120, what="the backlog processed")
        dovecot.append("INBOX", make_mail(customers[5], "Scanner", "It jams.", to="support@desk.example"))  # IDLE
        wait_until(lambda: dovecot.count("Processed") == 6, 120, what="the mail that came during IDLE")
        wait_until(lambda: len({m.recipients[0] for m in smtp_sink.messages} & set(customers)) == 6, 120,
                   what="an acknowledgement to each customer")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert list((tmp_path / "var" / "attachments").rglob("*")), "the attachment was not kept"
    # the daemon, multiprocessing's resource tracker, the parse helper, the send helper
    assert_inside_the_sandbox(trace, programs=4, workdir=tmp_path)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_daemon_on_lmtp_stays_inside_the_units_sandbox(tmp_path: Path, database: str,
                                                           request: pytest.FixtureRequest) -> None:
    trace = tmp_path / "strace.log"
    env = {"MAILDESK_LMTP_PORT": str(free_port()), "MAILDESK_LANGUAGE": "en", **NO_BYTECODE}
    if database == "postgresql":  # libpq's calls too
        env["MAILDESK_DATABASE_URL"] = request.getfixturevalue("pg_url")
    daemon = DaemonProcess(env, tmp_path, wrapper=("strace", "-f", "-qq", "-o", str(trace)))
    try:
        assert daemon.maildesk("db", "upgrade").returncode == 0
        assert daemon.maildesk("demo-users").returncode == 0
        daemon.start()
        assert daemon.maildesk("send-test", "--from", "demo@example.com").returncode == 0
        wait_until(lambda: len(list((tmp_path / "var" / "sent").glob("*.eml"))) >= 2, 120,
                   what="the acknowledgement in var/sent/")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert (tmp_path / "var" / "maildesk.db").exists() == (database == "sqlite")
    assert_inside_the_sandbox(trace, programs=1, workdir=tmp_path)  # one mail at a time: parsed and sent in the daemon
