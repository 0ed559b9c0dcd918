"""The test servers themselves work: if these fail, every integration test's verdict is suspect."""

from __future__ import annotations

import smtplib
import socket
from email.utils import make_msgid

import pytest
import sqlalchemy

from tests.servers import DovecotServer, PostgresServer, SmtpSink, free_port

pytestmark = pytest.mark.servers


def mail(subject: str = "Printer", message_id: str | None = None) -> bytes:
    message_id = message_id or make_msgid(domain="client.test")
    return (f"From: anna@acme.example\r\nTo: support@desk.example\r\nSubject: {subject}\r\n"
            f"Message-ID: {message_id}\r\n\r\nIt does not print.\r\n").encode()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# --------------------------------------------------------------------------- Dovecot


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_dovecot_append_then_fetch_and_move_is_offered_after_login(dovecot: DovecotServer) -> None:
    dovecot.reset()
    raw = mail("Append and fetch")
    uid = dovecot.append("INBOX", raw)
    assert uid is not None and dovecot.folder_uids("INBOX") == [uid]
    assert dovecot.fetch("INBOX", uid) == raw
    assert dovecot.count("INBOX") == 1 and dovecot.count("Processed") == 0
    with dovecot.client() as imap:
        capabilities = imap.capabilities()
        assert b"MOVE" in capabilities and b"UIDPLUS" in capabilities
        imap.select_folder("INBOX")
        imap.move([uid], "Processed")
    assert (dovecot.count("INBOX"), dovecot.count("Processed")) == (0, 1)
    assert dovecot.messages("Processed") == [raw]


def test_dovecot_folders_users_and_reset(dovecot: DovecotServer) -> None:
    dovecot.reset()
    dovecot.create_folder("Extra")
    dovecot.append("Extra", mail())
    assert "Extra" in dovecot.folders()
    dovecot.add_user("agent", "pw2")
    dovecot.append("INBOX", mail(), user="agent")
    assert dovecot.count("INBOX", user="agent") == 1 and dovecot.count("INBOX") == 0
    with pytest.raises(Exception, match="(?i)authentication failed"):
        with dovecot.client("agent", "wrong"):
            pass
    dovecot.reset()
    assert dovecot.folders() == ["INBOX", "Processed", "Quarantine"] and dovecot.count("Processed") == 0


def test_dovecot_lmtp_delivers_into_the_same_mailbox(dovecot: DovecotServer) -> None:
    if dovecot.lmtp_port is None:
        pytest.skip("dovecot-lmtpd not installed")
    dovecot.reset()
    assert dovecot.deliver_lmtp(["Support@desk.example"], mail("over LMTP")) == {}
    [stored] = dovecot.messages("INBOX")
    assert b"Subject: over LMTP" in stored


def test_dovecot_restart_keeps_mail_and_port() -> None:
    server = DovecotServer()  # its own instance: a restart must not disturb the shared one
    try:
        raw = mail("Survives restart")
        server.append("INBOX", raw)
        port = server.port
        server.stop()
        assert refused(port)
        server.start()
        assert server.port == port and server.messages("INBOX") == [raw]
        server.restart()
        assert server.count("INBOX") == 1
    finally:
        server.close()


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_accepts_sqlalchemy_and_databases_are_separate(postgres: PostgresServer, pg_url: str) -> None:
    assert pg_url.startswith(f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/test_")
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.begin() as connection:
            assert connection.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1
            connection.execute(sqlalchemy.text("CREATE TABLE t (id int)"))
    finally:
        engine.dispose()
    other = sqlalchemy.create_engine(postgres.create_database("servers_other_db"))
    try:
        with other.connect() as connection:  # a second database does not see the first one's table
            assert connection.execute(sqlalchemy.text("SELECT to_regclass('t')")).scalar_one() is None
    finally:
        other.dispose()
        postgres.drop_database("servers_other_db")


def test_postgres_stop_and_start_model_an_outage(postgres: PostgresServer, pg_url: str) -> None:
    engine = sqlalchemy.create_engine(pg_url, pool_pre_ping=True)
    try:
        postgres.stop()
        with pytest.raises(sqlalchemy.exc.OperationalError):
            with engine.connect():
                pass
        postgres.start()
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
        if not postgres.running:
            postgres.start()


# --------------------------------------------------------------------------- SMTP sink


def send(sink: SmtpSink, recipients: list[str], raw: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
        return client.sendmail("bounces@desk.example", recipients, raw)


def test_sink_receives_a_message(smtp_sink: SmtpSink) -> None:
    message_id = make_msgid(domain="desk.example")
    raw = mail(message_id=message_id)
    assert send(smtp_sink, ["anna@acme.example"], raw) == {}
    [received] = smtp_sink.wait_for(1, timeout=5)
    assert received.envelope_from == "bounces@desk.example"
    assert received.recipients == ["anna@acme.example"]
    assert received.message_id == message_id and received.raw == raw
    assert received.parsed()["Subject"] == "Printer"


def test_fail_next_gives_451_twice_then_250(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next(2)
    for _ in range(2):
        with pytest.raises(smtplib.SMTPDataError) as failure:
            send(smtp_sink, ["anna@acme.example"], mail())
        assert failure.value.smtp_code == 451
    assert smtp_sink.messages == []
    assert send(smtp_sink, ["anna@acme.example"], mail()) == {}
    assert len(smtp_sink.wait_for(1, timeout=5)) == 1


def test_fail_next_at_rcpt(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next(1, code=452, stage="rcpt")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as failure:
        send(smtp_sink, ["anna@acme.example"], mail())
    assert failure.value.recipients["anna@acme.example"][0] == 452
    assert send(smtp_sink, ["anna@acme.example"], mail()) == {}


def test_a_refused_recipient_gets_550_and_the_other_gets_the_mail(smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse_recipients({"Boss@acme.example": 550})
    refusals = send(smtp_sink, ["anna@acme.example", "boss@acme.example"], mail())
    assert refusals["boss@acme.example"][0] == 550
    [received] = smtp_sink.wait_for(1, timeout=5)
    assert received.recipients == ["anna@acme.example"]


def test_sink_stop_and_start_on_the_same_port(smtp_sink: SmtpSink) -> None:
    port = smtp_sink.port
    smtp_sink.stop()
    with pytest.raises(OSError):
        send(smtp_sink, ["anna@acme.example"], mail())
    smtp_sink.start()
    assert smtp_sink.port == port
    assert send(smtp_sink, ["anna@acme.example"], mail()) == {}
    smtp_sink.wait_for(1, timeout=5)


def test_wait_for_times_out_with_a_clear_message(smtp_sink: SmtpSink) -> None:
    with pytest.raises(AssertionError, match="got 0 message"):
        smtp_sink.wait_for(1, timeout=0.2)


def test_drop_after_data_keeps_the_message_but_the_client_sees_no_reply(smtp_sink: SmtpSink) -> None:
    smtp_sink.drop_after_data(1)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(smtp_sink, ["anna@acme.example"], mail())
    assert len(smtp_sink.wait_for(1, timeout=5)) == 1


def test_stall_next_makes_the_client_time_out(smtp_sink: SmtpSink) -> None:
    smtp_sink.stall_next(1, seconds=3)
    with smtplib.SMTP("127.0.0.1", smtp_sink.port, timeout=0.5) as client:
        with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
            client.sendmail("bounces@desk.example", ["anna@acme.example"], mail())


def test_sink_with_auth_rejects_a_wrong_password() -> None:
    with SmtpSink(auth=("desk", "right")) as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("desk", "wrong")
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            client.login("desk", "right")
            client.sendmail("bounces@desk.example", ["anna@acme.example"], mail())
        sink.wait_for(1, timeout=5)
        # smtplib's login() tries each offered mechanism (PLAIN, then LOGIN) before giving up
        assert sink.auth_attempts[-1] == ("desk", True)
        assert all(attempt == ("desk", False) for attempt in sink.auth_attempts[:-1])
