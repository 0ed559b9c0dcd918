"""maildesk installed as the README's "Installing on a server" says, under a real systemd.

The other unit tests read the unit file (`systemd-analyze`) or trace the daemon against its
sandbox by hand; this one boots systemd itself, in a container (`systemd-nspawn`) whose root is
this machine's own, seen through an overlay so that nothing here changes. Inside, it follows the
README step by step: `make setup` in /opt/maildesk with the system's python3, the settings file
copied from `config.example.env` and edited as an admin would, the three secret files,
`systemd/maildesk-admin` for the schema and the people, `systemctl enable --now maildesk`. Then
a customer's mail goes through the unit as it ships (Type=notify, DynamicUser, credentials, the
whole sandbox) to the Dovecot and SMTP sink of the tests, which the container reaches on this
machine's 127.0.0.1. Needs root (mounts, the container); installs `systemd-container`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.daemon_harness import wait_until
from tests.mailbuilder import make_mail
from tests.servers import ServerError, ensure_packages

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")
INIT = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
NOT_COPIED = {".venv", "var", ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".compiled"}
# The one change to the shipped unit: a watchdog short enough to watch the pings arrive.
WATCHDOG_DROP_IN = "[Service]\nWatchdogSec=4\n"
DYNAMIC_UIDS = range(61184, 65520)  # systemd's range for DynamicUser=

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(os.geteuid() != 0, reason="booting systemd in a container needs root (mounts, namespaces)"),
]


class Container:
    """systemd booted by systemd-nspawn on an overlay of `/` (upper layer in a tmpfs)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.log = base.parent / "nspawn.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def mount(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", "size=2g,mode=0755", "tmpfs", str(self.base)])
        for name in ("upper", "work", "root"):
            (self.base / name).mkdir()
        _run(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir=/,upperdir={self.base / 'upper'},workdir={self.base / 'work'}", str(self.root)])
        (self.root / "etc" / "machine-id").write_text(secrets.token_hex(16) + "\n")  # not the host's journal

    def boot(self) -> None:
        """To basic.target: the services this machine has enabled (Dovecot, PostgreSQL) stay down."""
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["systemd-nspawn", "--quiet", f"--directory={self.root}", "--register=no", "--keep-unit",
                 "--boot", "--", "systemd.unit=basic.target"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.leader = int(wait_until(self._init_pid, 30, what=f"systemd in the container ({self.log})"))
        # systemctl answers once PID 1 has its socket up; --wait then waits for the boot to end
        state = str(wait_until(lambda: self.run("systemctl", "is-system-running", "--wait", check=False,
                                                timeout=120).stdout.strip(), 30, interval=0.1,
                               what="the container's systemd to answer"))
        if state not in ("running", "degraded"):
            raise ServerError(f"the container's systemd is {state!r}: {self.log.read_text(errors='replace')[-3000:]}")

    def _init_pid(self) -> int:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ServerError(f"systemd-nspawn exited {self.process.returncode}: "
                              f"{self.log.read_text(errors='replace')[-3000:]}")
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].decode()
                if command in INIT:
                    return int(child)
        return 0

    def run(self, *command: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """A command inside the container, as root at its console would run it."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8", **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
        result = subprocess.run(["nsenter", f"--target={self.leader}", "--all", "env", "-i",
                                 *(f"{key}={value}" for key, value in env.items()), *command],
                                capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        output = self.run("systemctl", "show", unit, *(f"--property={name}" for name in properties)).stdout
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def journal(self, unit: str) -> list[dict[str, str]]:
        output = self.run("journalctl", "--unit", unit, "--output=json", "--no-pager").stdout
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for mount in (self.root, self.base):
            subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)


def _run(command: Sequence[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ServerError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


def _not_copied(folder: str, names: list[str]) -> set[str]:
    """What a fresh clone does not have: a developer's venv, data, caches, benchmark output."""
    skipped = {name for name in names if name in NOT_COPIED}
    return skipped | ({"out"} if Path(folder).name == "bench" else set())


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    ensure_packages(shutil.which("systemd-nspawn") is None, ["systemd-container"], "systemd-nspawn")
    ensure_packages(not any(Path(init).exists() for init in INIT), ["systemd"], "systemd")
    ensure_packages(subprocess.run([str(SYSTEM_PYTHON), "-c", "import ensurepip"], capture_output=True).returncode != 0,
                    ["python3-venv"], "the system python3's venv")
    machine = Container(tmp_path_factory.mktemp("nspawn") / "overlay")
    try:
        machine.mount()
        shutil.copytree(ROOT, machine.root / "opt" / "maildesk", ignore=_not_copied, symlinks=True)
        machine.boot()
        setup = machine.run("make", "-C", "/opt/maildesk", "setup", check=False, timeout=600)
        assert setup.returncode == 0, f"make setup in the container:\n{setup.stdout[-2000:]}\n{setup.stderr[-3000:]}"
        yield machine
    finally:
        machine.close()


def install_settings(machine: Container, changes: dict[str, str]) -> None:
    """config.example.env with the lines an admin edits; everything else as shipped."""
    lines = (ROOT / "config.example.env").read_text().splitlines()
    edited = [next((f"{name}={value}" for name, value in changes.items() if line.startswith(f"{name}=")), line)
              for line in lines]
    assert len([line for line in edited if line not in lines]) == len(changes), "a setting missing in the example"
    (machine.root / "etc" / "maildesk" / "maildesk.env").write_text("\n".join(edited) + "\n")


def test_installed_as_the_readme_says_the_unit_runs_the_desk(container: Container, dovecot, smtp_sink) -> None:
    machine = container
    imap_user, imap_password = "desk-boot", f"Imap-{secrets.token_hex(8)}"
    dovecot.add_user(imap_user, imap_password)
    secret_key = secrets.token_urlsafe(48)
    config = machine.root / "etc" / "maildesk"
    config.mkdir(mode=0o755)
    for name, value in (("secret-key", secret_key), ("imap-password", imap_password), ("smtp-password", "")):
        (config / name).write_text(value)
        (config / name).chmod(0o400)
    install_settings(machine, {
        "MAILDESK_ENVIRONMENT": "production", "MAILDESK_SUPPORT_ADDRESS": "support@desk.example",
        "MAILDESK_LANGUAGE": "en", "MAILDESK_IMAP_HOST": "127.0.0.1", "MAILDESK_IMAP_PORT": str(dovecot.port),
        "MAILDESK_IMAP_USER": imap_user, "MAILDESK_IMAP_SSL": "false", "MAILDESK_SMTP_HOST": "127.0.0.1",
        "MAILDESK_SMTP_PORT": str(smtp_sink.port), "MAILDESK_MAX_MESSAGE_BYTES": "65536"})
    units = machine.root / "etc" / "systemd" / "system"
    shutil.copy(ROOT / "systemd" / "maildesk.service", units / "maildesk.service")
    (units / "maildesk.service.d").mkdir()
    (units / "maildesk.service.d" / "watchdog.conf").write_text(WATCHDOG_DROP_IN)
    machine.run("systemctl", "daemon-reload")

    admin = "/opt/maildesk/systemd/maildesk-admin"
    assert "database ready: sqlite:////var/lib/maildesk/maildesk.db" in machine.run(admin, "db", "upgrade").stdout
    machine.run(admin, "org", "add", "ACME", "--domain", "acme.example")
    machine.run(admin, "user", "add", "anna@acme.example", "--name", "Anna", "--org", "ACME")
    machine.run(admin, "user", "add", "agent@desk.example", "--name", "Agent", "--agent")

    machine.run("systemctl", "enable", "--now", "maildesk")  # returns once maildesk said READY=1
    unit = machine.show("maildesk", "ActiveState", "MainPID", "StatusText", "NRestarts")
    assert unit["ActiveState"] == "active" and unit["NRestarts"] == "0"
    assert "incoming mail: IMAP" in unit["StatusText"]
    status = dict(line.split(":", 1) for line in machine.run("cat", f"/proc/{unit['MainPID']}/status").stdout.splitlines())
    uid = int(status["Uid"].split()[0])
    assert uid in DYNAMIC_UIDS and status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    assert int(status["CapEff"].strip(), 16) == 0

    dovecot.append("INBOX", make_mail("anna@acme.example", "Printer", "It does not print.",
                                      to="support@desk.example", message_id="<boot-1@acme.example>"), user=imap_user)
    wait_until(lambda: any("anna@acme.example" in m.recipients for m in smtp_sink.messages), 30,
               what="the acknowledgement at the SMTP sink")
    acknowledgement = next(m for m in smtp_sink.messages if "anna@acme.example" in m.recipients)
    assert b"[SD-1]" in acknowledgement.raw and acknowledgement.parsed()["In-Reply-To"] == "<boot-1@acme.example>"
    wait_until(lambda: _count(dovecot, "Processed", imap_user) == 1, 30, what="the original in Processed")
    dovecot.append("INBOX", make_mail("anna@acme.example", "Logs", "x" * 100_000, to="support@desk.example",
                                      message_id="<boot-big@acme.example>"), user=imap_user)
    wait_until(lambda: _count(dovecot, "Quarantine", imap_user) == 1, 30, what="the mail over the limit quarantined")
    # the admin's check on the live server: the IMAP password comes from the credentials
    checked = machine.run(admin, "check").stdout.splitlines()
    assert [line.split()[:2] for line in checked] == [["ok", "database"], ["ok", "IMAP"], ["ok", "SMTP"]], checked
    # the parse and send helpers run in the unit, as its user
    helpers = machine.run(str(SYSTEM_PYTHON), "-c", _PROCESSES_OF_UID.format(uid=uid)).stdout.split()
    assert len(helpers) >= 3, helpers

    before = int(machine.show("maildesk", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
    wait_until(lambda: int(machine.show("maildesk", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
               > before, 10, interval=0.5, what="a WATCHDOG=1 ping")

    journal = machine.journal("maildesk")
    (processed,) = [entry for entry in journal if "outcome=processed" in entry.get("MESSAGE", "")]
    assert processed["MESSAGE"].startswith("INFO maildesk.process message_id=<boot-1@acme.example>")
    assert processed["PRIORITY"] == "6"
    (quarantined,) = [entry for entry in journal if "outcome=quarantined" in entry.get("MESSAGE", "")]
    assert quarantined["MESSAGE"].startswith("WARNING maildesk.imap message_id=<boot-big@acme.example>")
    assert quarantined["PRIORITY"] == "4"  # from maildesk's <4> prefix; journald's own default is 6
    everything = "\n".join(str(entry.get("MESSAGE", "")) for entry in journal)
    assert imap_password not in everything and secret_key not in everything
    assert "send a test mail" not in everything and "Ctrl-C" not in everything  # no hints for a terminal

    # killed: systemd starts it again (Restart=on-failure), and it goes on from where it was
    machine.run("systemctl", "kill", "--signal=SIGKILL", "maildesk")
    wait_until(lambda: machine.show("maildesk", "NRestarts", "ActiveState") == {"NRestarts": "1", "ActiveState": "active"},
               30, interval=0.2, what="the restart after SIGKILL")
    dovecot.append("INBOX", make_mail("anna@acme.example", "Scanner", "Neither does the scanner.",
                                      to="support@desk.example", message_id="<boot-2@acme.example>"), user=imap_user)
    wait_until(lambda: sum("anna@acme.example" in m.recipients for m in smtp_sink.messages) == 2, 30,
               what="the second acknowledgement")
    assert b"[SD-2]" in [m for m in smtp_sink.messages if "anna@acme.example" in m.recipients][-1].raw

    # stopped: SIGTERM, the message in hand finished, a clean exit
    machine.run("systemctl", "stop", "maildesk", timeout=60)
    stopped = machine.show("maildesk", "ActiveState", "Result", "ExecMainStatus")
    assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert "INFO maildesk.daemon stopped" in [entry.get("MESSAGE") for entry in machine.journal("maildesk")]
    # the service and maildesk-admin wrote the state directory as one user, and only for it
    owners = machine.run("find", "/var/lib/private/maildesk", "-printf", "%U %m %p\\n").stdout.splitlines()
    assert {line.split()[0] for line in owners} == {str(uid)}, owners
    assert [line for line in owners if not line.split()[1].endswith("00")] == [], owners

    # a wrong setting: one line naming it, exit 78, and no restart loop (RestartPreventExitStatus=78)
    install_settings(machine, {"MAILDESK_ENVIRONMENT": "production", "MAILDESK_IMAP_PORT": "imap"})
    assert machine.run("systemctl", "start", "maildesk", check=False).returncode != 0
    failed = machine.show("maildesk", "ActiveState", "SubState", "ExecMainStatus")
    assert failed == {"ActiveState": "failed", "SubState": "failed", "ExecMainStatus": "78"}
    assert any(entry.get("MESSAGE", "").startswith("maildesk: configuration error: MAILDESK_IMAP_PORT:")
               for entry in machine.journal("maildesk"))


def _count(dovecot, folder: str, user: str) -> int:
    try:
        return dovecot.count(folder, user=user)
    except Exception:  # the folder is created by the first MOVE
        return 0


# Run inside the container: the PIDs of the processes of one user (the service's, its helpers).
_PROCESSES_OF_UID = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = open(f"/proc/{{pid}}/status").read()
    except OSError:
        continue
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    if uid == "{uid}":
        print(pid)
"""

