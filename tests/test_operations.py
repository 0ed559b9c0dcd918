"""The admin's operations commands: `maildesk check`, `outbox retry`, `inbox retry --all`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess
from tests.desk import Desk, standard_people
from tests.servers import free_port

pytestmark = pytest.mark.servers


def servers_env(dovecot, smtp_sink, **changes: str) -> dict[str, str]:
    env = {"IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(dovecot.port), "IMAP_USER": dovecot.user,
           "IMAP_PASSWORD": dovecot.password, "IMAP_SSL": "false", "SMTP_HOST": "127.0.0.1",
           "SMTP_PORT": str(smtp_sink.port)}
    env.update(changes)
    return {f"MAILDESK_{key}": value for key, value in env.items()}


def check(tmp_path: Path, env: dict[str, str], expect: int) -> str:
    desk = Desk(tmp_path)
    desk.env.update(env)
    return desk.run("check", expect=expect)


def test_check_passes_when_everything_answers(tmp_path: Path, dovecot, smtp_sink) -> None:
    output = check(tmp_path, servers_env(dovecot, smtp_sink), 0)
    assert [line.split()[0] for line in output.splitlines()] == ["ok", "ok", "ok"]


def test_check_names_a_wrong_imap_password_without_showing_it(tmp_path: Path, dovecot, smtp_sink) -> None:
    output = check(tmp_path, servers_env(dovecot, smtp_sink, IMAP_PASSWORD="wrong-Pa55word"), 1)
    assert "FAIL IMAP" in output and "login failed" in output and dovecot.user in output
    assert "wrong-Pa55word" not in output


def test_check_names_an_unreachable_smtp_host(tmp_path: Path, dovecot, smtp_sink) -> None:
    port = free_port()
    output = check(tmp_path, servers_env(dovecot, smtp_sink, SMTP_PORT=str(port)), 1)
    assert f"FAIL SMTP 127.0.0.1:{port}" in output
    assert output.startswith("ok   database")


def test_check_names_a_bad_database_url(tmp_path: Path, dovecot, smtp_sink) -> None:
    port = free_port()
    env = servers_env(dovecot, smtp_sink, DATABASE_URL=f"postgresql+psycopg://maildesk:s3cret@127.0.0.1:{port}/x")
    output = check(tmp_path, env, 1)
    assert output.startswith("FAIL database postgresql+psycopg://maildesk:***@127.0.0.1")
    assert "s3cret" not in output


def maildesk_process(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """The command as an admin or systemd starts it (its entry point turns errors into lines)."""
    env = {"PATH": os.environ["PATH"], **{f"MAILDESK_{key}": value for key, value in settings.items()}}
    return subprocess.run([sys.executable, "-m", "maildesk", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


def test_a_data_folder_that_cannot_be_written_is_named_not_a_traceback(tmp_path: Path) -> None:
    """As under the unit with MAILDESK_DATA_DIR outside its state directory (ProtectSystem=strict)."""
    (tmp_path / "not-a-folder").write_text("")
    for command in (("db", "upgrade"), ("run",)):
        result = maildesk_process(tmp_path, *command, DATA_DIR=str(tmp_path / "not-a-folder" / "var"))
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"maildesk: cannot open the database sqlite:///{tmp_path}/not-a-folder/var/")
        assert "MAILDESK_DATA_DIR" in result.stderr and "Traceback" not in result.stderr


def test_a_database_server_that_is_down_is_named_without_its_password(tmp_path: Path) -> None:
    """`maildesk run` exits 1 (the unit restarts it: the server may come back), not 78."""
    url = f"postgresql+psycopg://maildesk:s3cret@127.0.0.1:{free_port()}/maildesk"
    result = maildesk_process(tmp_path, "run", DATABASE_URL=url)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("maildesk: cannot open the database postgresql+psycopg://maildesk:***@127.0.0.1")
    assert "MAILDESK_DATABASE_URL" in result.stderr and "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_check_counts_a_running_maildesk_on_the_lmtp_port_as_working(tmp_path: Path) -> None:
    """`maildesk-admin check` on a live server: the port is taken by the service itself."""
    port = free_port()
    daemon = DaemonProcess({"MAILDESK_LMTP_PORT": str(port)}, tmp_path)
    assert daemon.maildesk("db", "upgrade").returncode == 0
    try:
        daemon.start()
        result = daemon.maildesk("check")
        assert result.returncode == 0, result.stdout
        assert f"ok   LMTP listener 127.0.0.1:{port}" in result.stdout
    finally:
        daemon.close()


def test_check_names_another_program_on_the_lmtp_port(tmp_path: Path, smtp_sink) -> None:
    desk = Desk(tmp_path)
    desk.env["MAILDESK_LMTP_PORT"] = str(smtp_sink.port)
    output = desk.run("check", expect=1)
    assert f"FAIL LMTP listener 127.0.0.1:{smtp_sink.port}: cannot listen on 127.0.0.1:{smtp_sink.port}: " \
           "Address already in use by another program (220 " in output


def test_check_refuses_a_wrong_setting_by_name(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    desk.env["MAILDESK_SMTP_PORT"] = "smtp"
    assert "MAILDESK_SMTP_PORT" in desk.run("check", expect=78)


def test_a_failed_outbox_mail_is_sent_again_on_retry(tmp_path: Path, smtp_sink) -> None:
    desk = Desk(tmp_path, smtp_host="127.0.0.1", smtp_port=str(smtp_sink.port))
    standard_people(desk)
    desk.mail("anna@acme.example", "Printer", "Broken")
    smtp_sink.refuse_recipients({"anna@acme.example": 550})
    desk.run("outbox", "send")
    (failed,) = [row for row in desk.outbox() if row["status"] == "failed"]
    assert failed["to"] == ["anna@acme.example"] and "550" in failed["last_error"]
    smtp_sink.refuse_recipients({})
    desk.run("outbox", "retry", str(failed["id"]))
    desk.run("outbox", "send")
    assert {row["status"] for row in desk.outbox()} == {"sent"}
    assert any("anna@acme.example" in message.recipients for message in smtp_sink.messages)


def test_inbox_retry_all_reprocesses_held_mail(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    standard_people(desk)
    desk.mail("new1@acme.example", "One", "x")
    desk.mail("new2@acme.example", "Two", "y")
    for address in ("new1@acme.example", "new2@acme.example"):
        desk.run("user", "add", address, "--name", "New", "--org", "ACME")
    output = desk.run("inbox", "retry", "--all")
    assert output.count("processed SD-") == 2
    assert desk.json("inbox", "list", "--state", "held") == []


def test_inbox_retry_all_goes_in_groups_of_bounded_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A desk with many big kept mails must not read them all into memory at once."""
    from maildesk import process
    from maildesk.process import Pipeline
    desk = Desk(tmp_path)
    standard_people(desk)
    for number in range(5):
        desk.mail(f"new{number}@acme.example", f"Request {number}", "x" * 500)
    for number in range(5):
        desk.run("user", "add", f"new{number}@acme.example", "--name", "New", "--org", "ACME")
    sizes = sorted(row["size"] for row in desk.json("inbox", "list", "--state", "held"))
    monkeypatch.setattr(process, "GROUP_BYTES", 2 * sizes[-1])  # two mails a group (never three)
    assert 3 * sizes[0] > 2 * sizes[-1]
    groups: list[int] = []
    process_many = Pipeline.process_many
    monkeypatch.setattr(Pipeline, "process_many",
                        lambda pipeline, ids, **options: groups.append(len(ids)) or process_many(pipeline, ids, **options))
    output = desk.run("inbox", "retry", "--all")
    assert output.count("processed SD-") == 5 and groups == [2, 2, 1]


def test_poll_once_fetches_and_processes_what_is_there(tmp_path: Path, dovecot, smtp_sink) -> None:
    from tests.mailbuilder import make_mail
    dovecot.reset()
    desk = Desk(tmp_path)
    desk.env.update(servers_env(dovecot, smtp_sink))
    standard_people(desk)
    for n in range(3):
        dovecot.append("INBOX", make_mail("anna@acme.example", f"Request {n}", "Body", to="support@desk.example"))
    output = desk.run("poll", "--once")
    assert "fetched 3, new 3, processed 3" in output and "moved 3" in output
    assert len(desk.json("ticket", "list")) == 3 and dovecot.count("Processed") == 3
    assert "fetched 0" in desk.run("poll", "--once")


def test_poll_once_reports_an_unreachable_server_in_one_line(tmp_path: Path, dovecot, smtp_sink) -> None:
    desk = Desk(tmp_path)
    desk.env.update(servers_env(dovecot, smtp_sink, IMAP_PORT=str(free_port())))
    output = desk.run("poll", "--once", expect=1)
    assert output.startswith("maildesk: ") and "Traceback" not in output
