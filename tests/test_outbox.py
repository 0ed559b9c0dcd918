"""The outbox without a server: the MIME bytes `message_bytes` builds, parsed back with the
stdlib, and the batch mechanics of `send_due` (one claiming statement, results recorded per
batch, a stop releasing what was not attempted)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, message_from_string, policy
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import select

from maildesk import outbox, store
from maildesk.config import Settings, load_settings
from maildesk.models import OutboxItem
from maildesk.compose import build_message, message_bytes
from maildesk.delivery import Delivery, DeliveryError, Envelope, FolderTransport, RecipientResult, one_by_one
from maildesk.outbox import claim_due, send_due

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
SUPPORT, BOUNCES = "support@desk.example", "bounces@desk.example"
LV_TEXT = ("Labdien, Jāni!\n\nMēs saņēmām jūsu pieprasījumu „Printeris nedrukā” un reģistrējām to"
           " ar numuru SD-7. Atbildiet uz šo vēstuli, lai to papildinātu.\n"
           ".rindiņa ar punktu\nFrom šeit\nbeigas ar atstarpi \n"
           + "garš vārds " * 20 + "\n\nAr cieņu,\nServisa dienests")
LV_HTML = "<p>Labdien, Jāni!</p>\n<p>Mēs saņēmām jūsu pieprasījumu <b>SD-7</b>.</p>" + "<p>ļ</p>" * 60
LONG_SUBJECT = ("[SD-7] Re: Printeris nedrukā — ļoti garš temats ar garumzīmēm un mīkstinājuma zīmēm, "
                "kas pārsniedz septiņdesmit astoņas rakstzīmes vienā rindā 🖨️")
HEADERS_IN_ORDER = ["From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Reply-To",
                    "Auto-Submitted", "X-Auto-Response-Suppress", "X-Maildesk-Loop", "MIME-Version", "Content-Type"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(environ={"MAILDESK_DATA_DIR": str(tmp_path / "var"), "MAILDESK_SUPPORT_ADDRESS": SUPPORT,
                                  "MAILDESK_BOUNCE_ADDRESS": BOUNCES, "MAILDESK_OUTBOX_RETRY_HOURS": "1"})


@pytest.fixture
def engine(settings: Settings) -> Engine:
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine)
    return engine


def item(**values: Any) -> OutboxItem:
    defaults: dict[str, Any] = dict(
        id=7, message_id="<sd-7.0123abcd@desk.example>", to_addresses=json.dumps(["anna@acme.example",
                                                                                  "boss@acme.example"]),
        subject=LONG_SUBJECT, in_reply_to="<orig-7@client.example>",
        references="<first-7@client.example> <orig-7@client.example>", reply_to="support+sd-7.tok@desk.example",
        body_text=LV_TEXT, body_html=LV_HTML, template="ticket_created", created_at=T0, next_attempt_at=T0)
    return OutboxItem(**{**defaults, **values})


def parse(raw: bytes) -> Any:
    return message_from_bytes(raw, policy=policy.default)


def normalised(text: str) -> str:
    text = text.replace("\r\n", "\n")
    return text if text.endswith("\n") else text + "\n"


def content(part: Any) -> str:
    """A text part's content with the wire's CRLF line ends as "\\n", as a reader shows it."""
    return str(part.get_content()).replace("\r\n", "\n")


def assert_well_formed(raw: bytes) -> None:
    """CRLF only, headers within 78 characters, bodies within 76, nothing but ASCII."""
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head
    assert all(len(line) <= 76 for line in body.split(b"\r\n")), body


def test_every_header_and_both_bodies_parse_back_with_the_stdlib(settings: Settings) -> None:
    row = item()
    raw = message_bytes(row, settings)
    assert_well_formed(raw)
    message = parse(raw)
    assert list(message.keys()) == HEADERS_IN_ORDER
    assert message["From"] == f"Service Desk <{SUPPORT}>"
    assert [address.addr_spec for address in message["To"].addresses] == ["anna@acme.example", "boss@acme.example"]
    assert str(message["Subject"]) == LONG_SUBJECT
    assert parsedate_to_datetime(message["Date"]) == T0
    assert message["Message-ID"] == "<sd-7.0123abcd@desk.example>"
    assert message["In-Reply-To"] == "<orig-7@client.example>"
    assert message["References"] == "<first-7@client.example> <orig-7@client.example>"
    assert message["Reply-To"] == "support+sd-7.tok@desk.example"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message["X-Maildesk-Loop"] == SUPPORT
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert (plain.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert plain.get_content_charset() == html.get_content_charset() == "utf-8"
    assert content(plain) == normalised(LV_TEXT)
    assert content(html) == normalised(LV_HTML)
    assert not message.defects and not plain.defects and not html.defects
    assert b"=C4=81" in raw  # Latvian letters travel quoted-printable, readable for the rest


def test_a_new_ticket_notice_without_html_is_one_plain_part_marked_auto_generated(settings: Settings) -> None:
    raw = message_bytes(item(in_reply_to="", references="", reply_to="", body_html="", subject="[SD-7] Printer",
                             body_text="We have your request.\nThank you."), settings)
    assert_well_formed(raw)
    message = parse(raw)
    assert "In-Reply-To" not in message and "References" not in message
    assert message["Auto-Submitted"] == "auto-generated" and message["Reply-To"] == SUPPORT
    assert b"\r\nSubject: [SD-7] Printer\r\n" in raw  # plain ASCII stays plain
    assert message.get_content_type() == "text/plain" and message["Content-Transfer-Encoding"] == "7bit"
    assert content(message) == "We have your request.\nThank you.\n"


@pytest.mark.parametrize("subject", [
    "=?utf-8?b?SGVsbG8=?= literally",  # looks like an encoded word: must not be decoded by readers
    "x" * 150,  # one word too long to fold
    "Printer\x01broken\x7f now",  # controls header_safe leaves become spaces
    "Ž" * 200,  # the longest subject header_safe lets through, all two-byte characters
    "a " * 98 + "end",
])
def test_awkward_subjects_read_back_as_written(settings: Settings, subject: str) -> None:
    raw = message_bytes(item(subject=subject), settings)
    assert_well_formed(raw)
    expected = " ".join(re.sub("[\x00-\x1f\x7f]", " ", subject).split())
    assert str(parse(raw)["Subject"]) == expected


def test_many_references_fold_between_ids_and_a_non_ascii_id_keeps_the_message_ascii(settings: Settings) -> None:
    ids = [f"<ref-{n}.{'a' * 20}@client.example>" for n in range(12)]
    raw = message_bytes(item(references=" ".join(ids), in_reply_to="<jānis-1@klients.example>"), settings)
    assert_well_formed(raw)
    message = parse(raw)
    assert message["References"].split() == ids
    assert str(message["In-Reply-To"]) == "<jānis-1@klients.example>"


def test_random_unicode_text_round_trips(settings: Settings) -> None:
    rng = random.Random(20261126)
    alphabet = "aāčēģīķļņšūžAĀČĒĢĪĶĻŅŠŪŽ .,;:-–—„”'\"<>&=?_\t🖨️é\u0301" + "x" * 10
    for n in range(200):
        subject = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 190)))
        text = "\n".join("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
                         for _ in range(rng.randint(1, 8)))
        html = "<p>" + text.replace("\n", "<br>") + "</p>"
        raw = message_bytes(item(subject=subject, body_text=text, body_html=html if n % 2 else ""), settings)
        assert_well_formed(raw)
        message = parse(raw)
        assert str(message["Subject"]) == " ".join(subject.split())
        body = message.get_body(("plain",))
        assert content(body) == normalised(text)
        if n % 2:
            assert content(message.get_body(("html",))) == normalised(html)


def test_build_message_is_the_sent_bytes_parsed(settings: Settings) -> None:
    row = item()
    message = build_message(row, settings)
    assert message["Message-ID"] == row.message_id and str(message["Subject"]) == LONG_SUBJECT
    assert content(message.get_body(("plain",))) == normalised(LV_TEXT)


def test_a_non_ascii_recipient_is_written_as_utf8_for_an_smtputf8_envelope(settings: Settings) -> None:
    raw = message_bytes(item(to_addresses=json.dumps(["jānis@acme.example"])), settings)
    assert "To: jānis@acme.example\r\n".encode() in raw
    to = message_from_string(raw.decode(), policy=policy.default)["To"]  # BytesParser keeps 8-bit as surrogates
    assert to.addresses[0].addr_spec == "jānis@acme.example"


# send_due: the batch mechanics


class Recording:
    """A transport that accepts everything, or refuses/raises for chosen Message-IDs."""

    def __init__(self, refuse: Mapping[str, RecipientResult] | None = None, explode: str = "") -> None:
        self.sent: list[tuple[str, list[str], bytes]] = []
        self.refuse = dict(refuse or {})
        self.explode = explode

    def deliver(self, envelope_from: str, recipients: list[str], message: bytes,
                message_id: str) -> dict[str, RecipientResult]:
        if message_id == self.explode:
            raise RuntimeError("a bug in the transport")
        if message_id in self.refuse:
            raise DeliveryError(self.refuse[message_id].detail, permanent=self.refuse[message_id].permanent)
        self.sent.append((envelope_from, recipients, message))
        return {recipient: RecipientResult(True, detail="250 ok") for recipient in recipients}

    def deliver_many(self, envelope_from: str, envelopes: Iterable[Envelope]) -> Iterator[Delivery]:
        return one_by_one(self.deliver, envelope_from, envelopes)

    def close(self) -> None:
        pass


def queue_rows(engine: Engine, count: int, *, due: datetime = T0, first: int = 0) -> list[int]:
    with store.transaction(engine) as session:
        rows = [OutboxItem(message_id=f"<n{n}@desk.example>", to_addresses=json.dumps([f"c{n}@acme.example"]),
                           subject=f"[SD-{n}] Printer", body_text="Hello", created_at=T0, next_attempt_at=due)
                for n in range(first, first + count)]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows if row.id is not None]


def rows_by_id(engine: Engine) -> dict[int, OutboxItem]:
    with store.transaction(engine) as session:
        return {row.id: row for row in session.exec(select(OutboxItem)).all() if row.id is not None}


def statements(engine: Engine) -> list[str]:
    """The first word of every statement SQLite runs from now on (SQLite's own trace: the claim
    runs on the DBAPI cursor, past SQLAlchemy's events); COMMITs and PRAGMAs left out."""
    seen: list[str] = []

    def trace(sql: str) -> None:
        word = sql.split()[0].upper()
        if word not in ("COMMIT", "PRAGMA"):
            seen.append(word)
    event.listen(engine, "connect", lambda dbapi_connection, _record: dbapi_connection.set_trace_callback(trace))
    engine.dispose()  # every connection from now on is a new one, traced
    return seen


def test_a_batch_is_claimed_in_one_statement_and_recorded_in_one(settings: Settings, engine: Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "RECORD_EVERY_SECONDS", 60.0)  # a slow machine must not add a record
    queue_rows(engine, 60)
    transport = Recording()
    seen = statements(engine)
    calls: list[bool] = []  # SQLAlchemy's executions: executemany or not
    event.listen(engine, "before_cursor_execute", lambda *args: calls.append(args[5]))
    report = send_due(engine, settings, transport, now=T0, worker="w", limit=50)
    assert report.sent == 50 and len(transport.sent) == 50
    # BEGIN IMMEDIATE, the claim ... RETURNING; BEGIN IMMEDIATE, the results (one row each)
    assert seen == ["BEGIN", "UPDATE", "BEGIN"] + ["UPDATE"] * 50, seen
    assert calls.count(True) == 1  # the 50 results in one executemany
    states = rows_by_id(engine)
    assert sorted(row.status for row in states.values()) == ["pending"] * 10 + ["sent"] * 50
    assert all(row.claimed_by is None and row.sent_at == T0 for row in states.values() if row.status == "sent")
    assert {sender for sender, _, _ in transport.sent} == {BOUNCES}


def test_results_are_recorded_during_a_long_batch_too(settings: Settings, engine: Engine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between sending and recording resends those rows: the window is kept short."""
    monkeypatch.setattr(outbox, "RECORD_EVERY_SECONDS", 0.0)
    ids = queue_rows(engine, 3)
    seen_at_send: list[list[str]] = []

    class Watching(Recording):
        def deliver(self, *args: Any) -> dict[str, RecipientResult]:
            seen_at_send.append([row.status for row in rows_by_id(engine).values()])
            return super().deliver(*args)

    assert send_due(engine, settings, Watching(), now=T0).sent == 3
    assert seen_at_send == [["sending"] * 3, ["sent", "sending", "sending"], ["sent", "sent", "sending"]]
    assert [row.status for row in rows_by_id(engine).values()] == ["sent"] * len(ids)


def test_claimed_and_future_rows_are_not_claimed_again(settings: Settings, engine: Engine) -> None:
    first = queue_rows(engine, 3)
    later = queue_rows(engine, 2, due=T0 + timedelta(hours=1), first=3)
    assert claim_due(engine, now=T0, worker="a") == first
    assert claim_due(engine, now=T0, worker="b") == []
    assert claim_due(engine, now=T0 + timedelta(hours=2), worker="b") == later
    assert {row.claimed_by for row in rows_by_id(engine).values()} == {"a", "b"}


def test_mixed_outcomes_in_one_batch_keep_their_own_state(settings: Settings, engine: Engine) -> None:
    ids = queue_rows(engine, 3)
    transport = Recording(refuse={"<n1@desk.example>": RecipientResult(False, False, "451 busy"),
                                  "<n2@desk.example>": RecipientResult(False, True, "550 no such user")})
    report = send_due(engine, settings, transport, now=T0)
    assert (report.sent, report.retried, report.failed) == (1, 1, 1)
    states = rows_by_id(engine)
    assert states[ids[0]].status == "sent" and states[ids[0]].next_attempt_at == T0
    assert states[ids[1]].status == "pending" and states[ids[1]].next_attempt_at == T0 + timedelta(minutes=1)
    assert states[ids[1]].sent_at is None and "451 busy" in states[ids[1]].last_error
    assert states[ids[2]].status == "failed" and "550" in states[ids[2]].last_error
    assert [row.attempts for row in states.values()] == [1, 1, 1]
    assert json.loads(states[ids[1]].recipient_results)["c1@acme.example"]["state"] == "deferred"


def test_a_stop_lets_the_message_in_hand_finish_and_releases_the_rest(settings: Settings, engine: Engine) -> None:
    ids = queue_rows(engine, 5)
    transport = Recording()
    report = send_due(engine, settings, transport, now=T0, stop=lambda: len(transport.sent) >= 2)
    assert report.sent == 2
    states = rows_by_id(engine)
    assert [states[outbox_id].status for outbox_id in ids] == ["sent", "sent", "pending", "pending", "pending"]
    assert all(states[outbox_id].attempts == 0 and states[outbox_id].claimed_by is None for outbox_id in ids[2:])


def test_an_unexpected_error_records_what_was_sent_and_holds_only_the_row_in_hand(
        settings: Settings, engine: Engine) -> None:
    ids = queue_rows(engine, 4)
    with pytest.raises(RuntimeError):
        send_due(engine, settings, Recording(explode="<n2@desk.example>"), now=T0, worker="w")
    states = rows_by_id(engine)
    assert [states[outbox_id].status for outbox_id in ids] == ["sent", "sent", "sending", "pending"]
    assert states[ids[2]].claimed_by == "w"  # it may have gone out: the lease decides, as after a crash


def test_the_folder_transport_writes_the_built_bytes(settings: Settings, engine: Engine) -> None:
    queue_rows(engine, 2)
    assert send_due(engine, settings, FolderTransport(settings.sent_dir), now=T0).sent == 2
    written = sorted(settings.sent_dir.glob("*.eml"))
    assert len(written) == 2 and parse(written[0].read_bytes())["X-Maildesk-Loop"] == SUPPORT


@pytest.mark.parametrize("length", [73, 74, 75, 76])
@pytest.mark.parametrize("blank", [" ", "\t"])
@pytest.mark.parametrize("last", [False, True])
def test_a_line_ending_in_white_space_stays_within_76_characters(settings: Settings, length: int, blank: str,
                                                                 last: bool) -> None:
    """quoted-printable encodes a line's last space or tab (=20, =09), which takes a line of 74
    or 75 characters past 76: it is broken softly before it."""
    line = "x" * length + blank
    text = line if last else line + "\nžurnāls"
    raw = message_bytes(item(body_text=text, body_html=""), settings)
    assert_well_formed(raw)
    assert content(parse(raw).get_body(("plain",))) == normalised(text)
