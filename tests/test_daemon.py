"""`maildesk run` as an admin runs it: embedded defaults, IMAP + SMTP, signals, SIGKILL chaos."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
from pathlib import Path

import pytest

from maildesk import store
from maildesk.directory import add_organisation, add_user
from maildesk.models import utcnow

from tests.daemon_harness import DaemonProcess, wait_until
from tests.mailbuilder import make_mail
from tests.servers import free_port

pytestmark = pytest.mark.servers


def sent_files(workdir: Path) -> list[Path]:
    return sorted((workdir / "var" / "sent").glob("*.eml"))


def query(workdir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(workdir / "var" / "maildesk.db") as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture
def embedded(tmp_path: Path):
    daemon = DaemonProcess({"MAILDESK_LMTP_PORT": str(free_port()), "MAILDESK_LANGUAGE": "en"}, tmp_path)
    assert daemon.maildesk("db", "upgrade").returncode == 0
    assert daemon.maildesk("demo-users").returncode == 0
    yield daemon
    daemon.close()


def test_the_embedded_defaults_turn_a_test_mail_into_a_ticket_and_an_acknowledgement(embedded) -> None:
    embedded.start()
    assert any(message.startswith("STATUS=incoming mail: LMTP listener") for message in embedded.messages)
    sent = embedded.maildesk("send-test", "--from", "demo@example.com")
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(sent_files(embedded.workdir)) >= 2, 20, what="acknowledgement in var/sent/")
    tickets = json.loads(embedded.maildesk("ticket", "list", "--json").stdout)
    assert [ticket["status"] for ticket in tickets] == ["OPEN"]
    acknowledgement = [path for path in sent_files(embedded.workdir) if b"To: demo@example.com" in path.read_bytes()]
    assert acknowledgement and f"[{tickets[0]['key']}]".encode() in acknowledgement[0].read_bytes()
    assert embedded.stop(signal.SIGTERM) == 0
    assert not (embedded.workdir / "var" / "maildesk.db-wal").exists()  # checkpointed and removed at the stop
    assert "STOPPING=1" in embedded.messages + embedded.notify.recv(4096).decode().split("\n")
    log = embedded.log.read_text()
    assert "stopped" in log and f"ticket={tickets[0]['key']}" in log and "outcome=processed" in log
    assert " mail.log " not in log  # aiosmtpd's lines for each LMTP command stay out of the journal


def test_a_wrong_setting_stops_start_up_naming_it(tmp_path: Path) -> None:
    daemon = DaemonProcess({"MAILDESK_LMTP_PORT": "70000"}, tmp_path)
    result = daemon.maildesk("run")
    daemon.close()
    assert result.returncode == 78 and "MAILDESK_LMTP_PORT" in result.stderr


def imap_env(dovecot, smtp_sink, **extra: str) -> dict[str, str]:
    return {"MAILDESK_IMAP_HOST": "127.0.0.1", "MAILDESK_IMAP_PORT": str(dovecot.port),
            "MAILDESK_IMAP_USER": dovecot.user, "MAILDESK_IMAP_PASSWORD": dovecot.password,
            "MAILDESK_IMAP_SSL": "false", "MAILDESK_SMTP_HOST": "127.0.0.1", "MAILDESK_SMTP_PORT": str(smtp_sink.port),
            "MAILDESK_SUPPORT_ADDRESS": "support@desk.example", "MAILDESK_LANGUAGE": "en", **extra}


def add_people(daemon: DaemonProcess, customers: list[str]) -> None:
    """The schema by `maildesk db upgrade`, then the people in one transaction (fast for many)."""
    assert daemon.maildesk("db", "upgrade").returncode == 0
    engine = store.make_engine(f"sqlite:///{daemon.workdir / 'var' / 'maildesk.db'}")
    with store.transaction(engine) as session:
        add_organisation("ACME", session=session, domains=[], language=None, service_level=None)
        for address in customers:
            add_user(address, session=session, name="Customer", now=utcnow(), organisation="ACME", agent=False,
                     responsible=False, language=None)
        add_user("agent@desk.example", session=session, name="Agent", now=utcnow(), organisation=None, agent=True,
                 responsible=False, language=None)
    engine.dispose()


def test_imap_to_ticket_to_smtp_end_to_end(tmp_path: Path, dovecot, smtp_sink) -> None:
    dovecot.reset()
    daemon = DaemonProcess(imap_env(dovecot, smtp_sink), tmp_path)
    add_people(daemon, ["anna@acme.example"])
    try:
        daemon.start()
        dovecot.append("INBOX", make_mail("anna@acme.example", "Printer", "It is broken.", to="support@desk.example"))
        wait_until(lambda: any("anna@acme.example" in m.recipients for m in smtp_sink.messages), 20,
                   what="acknowledgement at the SMTP receiver")
        acknowledgement = next(m for m in smtp_sink.messages if "anna@acme.example" in m.recipients)
        assert b"[SD-1]" in acknowledgement.raw
        wait_until(lambda: dovecot.count("Processed") == 1 and dovecot.count("INBOX") == 0, 20,
                   what="the original in Processed")
        reply_to = acknowledgement.parsed()["Reply-To"]
        dovecot.append("INBOX", make_mail("anna@acme.example", "Re: Printer", "Also the scanner.",
                                          to=reply_to, in_reply_to=acknowledgement.message_id))
        wait_until(lambda: dovecot.count("Processed") == 2, 20, what="the reply processed")
        tickets = json.loads(daemon.maildesk("ticket", "list", "--json").stdout)
        assert len(tickets) == 1
        detail = json.loads(daemon.maildesk("ticket", "show", "SD-1", "--json").stdout)
        assert [m["new_text"] for m in detail["messages"] if m["direction"] == "in"][-1] == "Also the scanner."
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path: Path, dovecot, smtp_sink) -> None:
    """C1: a backlog of 200 mails; the daemon is killed 6 times at random moments and restarted.

    The mails come from 50 customers (4 each), under the acknowledgement rate limit."""
    dovecot.reset()
    customers = [f"c{n}@acme.example" for n in range(50)]
    daemon = DaemonProcess(imap_env(dovecot, smtp_sink, MAILDESK_IMAP_BATCH_SIZE="20"), tmp_path)
    add_people(daemon, customers)
    with dovecot.client() as client:
        for n in range(200):
            client.append("INBOX", make_mail(customers[n % 50], f"Request {n}", f"Body {n}", to="support@desk.example",
                                             message_id=f"<request-{n}@client.example>"))
    rng = random.Random(20261126)
    try:
        for _ in range(6):
            daemon.start()
            processed_before = dovecot.count("Processed")
            wait_until(lambda: dovecot.count("Processed") > processed_before or dovecot.count("INBOX") == 0, 30,
                       interval=rng.uniform(0.01, 0.2), what="progress before the kill")
            daemon.kill()
        daemon.start()
        wait_until(lambda: dovecot.count("INBOX") == 0, 120, what="the backlog drained")
        wait_until(lambda: query(tmp_path, "select count(*) from outbox where status != 'sent'")[0][0] == 0, 60,
                   what="the outbox drained")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert dovecot.count("Processed") == 200
    assert query(tmp_path, "select count(*), count(distinct message_id) from inbox where state = 'processed'") == [
        (200, 200)]
    assert query(tmp_path, "select count(*) from tickets")[0][0] == 200
    outbox_ids = [row[0] for row in query(tmp_path, "select message_id from outbox")]
    assert len(outbox_ids) == len(set(outbox_ids)) == 400  # an acknowledgement and an announcement each
    at_sink = [message.message_id for message in smtp_sink.messages]
    assert set(at_sink) == set(outbox_ids)
