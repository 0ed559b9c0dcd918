"""The LMTP listener (LMTP -> inbox) with a real LMTP client (smtplib.LMTP) on 127.0.0.1.

smtplib's `data()` reads one reply; RFC 2033 gives one per accepted recipient, so the
tests read the rest with `getreply()`, as an MTA does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from maildesk import lmtp, store
from maildesk.config import Settings, load_settings
from maildesk.lmtp import LmtpServer, read_message_data
from maildesk.models import InboxItem, InboxRaw
from maildesk.process import Pipeline
from tests.mailbuilder import make_mail

SUPPORT, HELPDESK, ANNA = "support@desk.example", "helpdesk@desk.example", "anna@acme.example"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    settings = load_settings(env_file=env_file, environ={
        "MAILDESK_DATA_DIR": str(tmp_path / "var"), "MAILDESK_SUPPORT_ADDRESS": SUPPORT,
        "MAILDESK_LANGUAGE": "en", "MAILDESK_LMTP_HOST": "127.0.0.1", "MAILDESK_MAX_MESSAGE_BYTES": "4096"})
    return dataclasses.replace(settings, lmtp_port=0)  # the OS picks a free port


@pytest.fixture
def engine(settings: Settings) -> Engine:
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine)
    return engine


class Listener:
    """A running LmtpServer and what it handed to `on_stored`."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.stored: list[int] = []
        self.server = LmtpServer(settings, pipeline, on_stored=self.stored.append)

    def client(self) -> smtplib.LMTP:
        client = smtplib.LMTP("127.0.0.1", self.server.port, timeout=10)
        client.ehlo()  # LHLO for smtplib.LMTP
        return client


@pytest.fixture
def listener(settings: Settings, engine: Engine) -> Iterator[Listener]:
    listener = Listener(settings, Pipeline(settings, engine))
    listener.server.start()
    yield listener
    listener.server.stop()


def deliver(client: smtplib.LMTP, raw: bytes, recipients: list[str]) -> list[tuple[int, bytes]]:
    """MAIL, RCPT per recipient, DATA; returns the per-recipient replies to DATA."""
    assert client.mail(ANNA)[0] == 250
    for recipient in recipients:
        assert client.rcpt(recipient)[0] == 250
    return [client.data(raw), *(client.getreply() for _ in recipients[1:])]


def inbox_rows(engine: Engine) -> list[InboxItem]:
    with store.transaction(engine) as session:
        return list(session.execute(select(InboxItem).order_by(InboxItem.id)).scalars())


def test_a_mail_for_two_recipients_is_stored_before_both_get_250(listener: Listener, engine: Engine) -> None:
    raw = make_mail(ANNA, "Printer does not print", "The printer is broken.", to=SUPPORT)
    with listener.client() as client:
        replies = deliver(client, raw, [SUPPORT, HELPDESK])
        rows = inbox_rows(engine)  # read before the session ends: the 250s promised a commit
    [item] = rows
    assert replies == [(250, f"2.0.0 stored as inbox {item.id}".encode())] * 2
    assert (item.source, item.state) == ("lmtp", "new")
    with store.transaction(engine) as session:
        assert session.get(InboxRaw, item.id).raw == raw  # type: ignore[union-attr]
    assert listener.stored == [item.id]


def test_the_same_mail_delivered_twice_is_stored_once(listener: Listener, engine: Engine,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    raw = make_mail(ANNA, "Printer does not print", "The printer is broken.", to=SUPPORT)
    with caplog.at_level(logging.INFO, logger="maildesk.lmtp"), listener.client() as client:
        first = deliver(client, raw, [SUPPORT])
        again = deliver(client, raw, [SUPPORT])
    assert first == again and len(inbox_rows(engine)) == 1
    # the new mail's line comes when it is processed; the repeat, never processed, gets one here
    stored = [record.getMessage() for record in caplog.records if "stored from LMTP" in record.getMessage()]
    assert len(stored) == 1 and stored[0].endswith("(already stored)")


def test_when_the_database_cannot_store_every_recipient_gets_451_and_nothing_is_kept(
        settings: Settings, engine: Engine, tmp_path: Path) -> None:
    database = settings.database_url.split("///", 1)[1]
    read_only = create_engine(f"sqlite:///file:{database}?mode=ro&uri=true")  # a real write failure
    listener = Listener(settings, Pipeline(settings, read_only))
    listener.server.start()
    try:
        raw = make_mail(ANNA, "Printer does not print", "The printer is broken.", to=SUPPORT)
        with listener.client() as client:
            replies = deliver(client, raw, [SUPPORT, HELPDESK])
    finally:
        listener.server.stop()
    assert replies == [(451, b"4.3.0 cannot store the message, try again later")] * 2
    assert inbox_rows(engine) == [] and listener.stored == []


def data_lines(raw: bytes) -> bytes:
    """A CRLF message as a client sends it after the 354: dot-stuffed, ended by a lone dot."""
    return raw.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n"


def test_sessions_past_the_data_budget_wait_before_the_354_holding_nothing(
        settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Postfix opens many LMTP sessions at once; their messages must not all be in memory."""
    monkeypatch.setattr(lmtp, "DATA_BUDGET_BYTES", settings.max_message_bytes)  # room for one at a time
    listener = Listener(settings, Pipeline(settings, engine))
    listener.server.start()
    first_raw, second_raw = (make_mail(ANNA, f"Request {n}", "It is broken.", to=SUPPORT) for n in (1, 2))
    try:
        with listener.client() as first, listener.client() as second:
            for client in (first, second):
                assert client.mail(ANNA)[0] == 250 and client.rcpt(SUPPORT)[0] == 250
            first.putcmd("data")
            assert first.getreply()[0] == 354  # the first session holds the only slot
            second.putcmd("data")
            second_reply: list[tuple[int, bytes]] = []
            waiting = threading.Thread(target=lambda: second_reply.append(second.getreply()))
            waiting.start()
            waiting.join(0.5)  # a 354 now would mean two messages in memory at once
            assert second_reply == []
            first.send(data_lines(first_raw))
            assert first.getreply()[0] == 250
            waiting.join(10)
            assert second_reply and second_reply[0][0] == 354  # the slot passed on
            second.send(data_lines(second_raw))
            assert second.getreply()[0] == 250
    finally:
        listener.server.stop()
    assert len(inbox_rows(engine)) == 2


def test_a_mail_over_the_size_limit_is_refused_with_552_per_recipient(listener: Listener, engine: Engine) -> None:
    raw = make_mail(ANNA, "A big attachment", "line of text\n" * 1000, to=SUPPORT)
    assert len(raw) > 4096
    with listener.client() as client:
        replies = deliver(client, raw, [SUPPORT, HELPDESK])
        assert client.noop()[0] == 250  # the session is still in step: no reply is left unread
    assert [code for code, _ in replies] == [552, 552]
    assert inbox_rows(engine) == [] and listener.stored == []


def test_a_client_announcing_a_size_over_the_limit_is_refused_at_mail_from(listener: Listener) -> None:
    raw = make_mail(ANNA, "A big attachment", "line of text\n" * 1000, to=SUPPORT)
    with listener.client() as client, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail(ANNA, [SUPPORT], raw)  # smtplib sends SIZE= because the LHLO reply offers it
    assert refused.value.smtp_code == 552


def test_the_listener_speaks_lmtp_not_smtp(listener: Listener) -> None:
    with smtplib.SMTP("127.0.0.1", listener.server.port, timeout=10) as client:
        assert client.ehlo()[0] == 500


def test_dot_lines_and_a_long_line_arrive_as_the_client_wrote_them(listener: Listener, engine: Engine) -> None:
    raw = (f"From: {ANNA}\r\nTo: {SUPPORT}\r\nSubject: Dots\r\nMessage-ID: <dots@acme.example>\r\n\r\n"
           ".\r\n..two dots\r\n.starts with a dot\r\nthe end.\r\n\r\n" + "x" * 3000 + "\r\n.").encode()
    with listener.client() as client:
        [reply] = deliver(client, raw, [SUPPORT])  # smtplib stuffs the dots, the listener removes them
    assert reply[0] == 250
    [item] = inbox_rows(engine)
    with store.transaction(engine) as session:
        assert session.get(InboxRaw, item.id).raw == raw + b"\r\n"  # type: ignore[union-attr]


def unstuffed_line_by_line(wire: bytes) -> bytes:
    """RFC 5321 section 4.5.2 the slow way: split at CRLF, stop at ".", drop each line's first dot."""
    lines, content = wire.split(b"\r\n"), []
    for line in lines:
        if line == b".":
            return b"".join(content)
        content.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
    raise AssertionError("no end of data")


def feed_and_read(wire: bytes, piece: int, limit: int, size_limit: int | None) -> bytes | None:
    async def run() -> bytes | None:
        reader = asyncio.StreamReader(limit=limit)
        for start in range(0, len(wire), piece):
            reader.feed_data(wire[start:start + piece])
        reader.feed_data(b"NOOP\r\n")  # the next command must stay unread
        reader.feed_eof()  # a reader that misses the end fails instead of waiting forever
        content = await read_message_data(reader, size_limit)
        assert await reader.readuntil(b"\r\n") == b"NOOP\r\n"
        return content
    return asyncio.run(run())


message_lines = st.lists(st.binary(max_size=12).map(lambda line: line.replace(b"\n", b"")).filter(
    lambda line: not line.endswith(b"\r")) | st.sampled_from([b"", b".", b"..", b".x", b"\r", b"a\rb"]),
    max_size=12)


@hypothesis_settings(max_examples=400, deadline=None)
@given(message_lines, st.integers(min_value=1, max_value=9), st.integers(min_value=4, max_value=40))
def test_the_data_reader_unstuffs_as_the_line_by_line_rule_in_any_read_pieces(
        lines: list[bytes], piece: int, limit: int) -> None:
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    wire = b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"
    expected = unstuffed_line_by_line(wire)
    assert expected == b"".join(line + b"\r\n" for line in lines)
    assert feed_and_read(wire, piece, limit, None) == expected


def test_the_data_reader_reads_an_oversized_message_to_its_end_and_returns_none() -> None:
    wire = b"line\r\n" * 100 + b".\r\n"
    assert feed_and_read(wire, 64, 1024, size_limit=599) is None
    assert feed_and_read(wire, 64, 1024, size_limit=600) == b"line\r\n" * 100
