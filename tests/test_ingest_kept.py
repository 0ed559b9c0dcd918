"""`maildesk ingest` keeps everything: the public corpus, odd charsets, and broken mail."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from email.header import Header
from pathlib import Path

import pytest

from tests.desk import Desk, standard_people
from tests.mailbuilder import make_mail

SHARED = Path(os.environ.get("MAILDESK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
CORPUS = SHARED / "corpus" / "public"
KEPT_STATES = {"processed", "held", "ignored", "quarantined", "failed"}


@pytest.fixture
def sqlite_people(tmp_path: Path) -> Desk:
    desk = Desk(tmp_path)
    standard_people(desk)
    return desk


def inbox(desk: Desk) -> list[tuple]:
    with sqlite3.connect(desk.directory / "var" / "maildesk.db") as connection:
        return connection.execute("select sha256, raw, state, reason from inbox join inbox_raw on inbox_id = id "
                                  "order by id").fetchall()


def test_every_public_corpus_message_is_kept_with_its_raw_bytes(sqlite_people: Desk) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"public corpus not found at {CORPUS} (put ../shared beside the repository or set "
                    "MAILDESK_SHARED_DIR)")
    files = sorted(path for path in CORPUS.rglob("*") if path.is_file() and not path.name.startswith("."))
    assert len(files) > 150
    output = sqlite_people.run("ingest", *map(str, files))
    assert output.count("\n") == len(files)
    rows = {sha: (raw, state, reason) for sha, raw, state, reason in inbox(sqlite_people)}
    for path in files:
        data = path.read_bytes()
        raw, state, reason = rows[hashlib.sha256(data).hexdigest()]
        assert raw == data, path.name
        assert state in KEPT_STATES, (path.name, state)
        if state in ("failed", "quarantined", "held", "ignored"):
            assert reason, path.name


CHARSET_CASES = ["utf-8", "windows-1257", "iso-8859-13"]


@pytest.mark.parametrize("charset", CHARSET_CASES)
def test_latvian_in_every_customer_charset_is_stored_without_mojibake(sqlite_people: Desk, charset: str) -> None:
    sqlite_people.mail("anna@acme.example", "Pārskats par rēķiniem", "Lūdzu, sagatavojiet pārskatu. Paldies!",
                       charset=charset)
    ticket = sqlite_people.json("ticket", "list")[-1]
    detail = sqlite_people.ticket(ticket["key"])
    assert detail["summary"] == "Pārskats par rēķiniem"
    assert detail["description"] == "Lūdzu, sagatavojiet pārskatu. Paldies!"


@pytest.mark.parametrize("charset", ["windows-1257", "utf-8"])
def test_raw_8bit_headers_are_decoded(sqlite_people: Desk, charset: str) -> None:
    body = "Jānis Bērziņš, janis@acme.example".encode(charset)
    raw = (b"From: Anna <anna@acme.example>\r\nTo: support@desk.example\r\n"
           b"Subject: " + "Jauns Service Desk lietotājs".encode(charset) + b"\r\n"
           b"Message-ID: <raw8bit-" + charset.encode() + b"@acme.example>\r\n"
           b"Authentication-Results: mx.desk.example; dmarc=pass header.from=acme.example\r\n"
           b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body + b"\r\n")
    sqlite_people.ingest(raw)
    ticket = sqlite_people.json("ticket", "list")[-1]
    detail = sqlite_people.ticket(ticket["key"])
    assert (detail["summary"], detail["type"]) == ("Jauns Service Desk lietotājs", "Add New Users")
    assert "Jānis Bērziņš" in detail["description"]


def test_an_encoded_word_subject_in_windows_1257_is_a_new_user_request(sqlite_people: Desk) -> None:
    subject = Header("Jauns Service Desk lietotājs", "windows-1257").encode()
    raw = make_mail("boss@acme.example", "placeholder", "liga@acme.example Līga Ozola", to="support@desk.example",
                    headers={"Authentication-Results": "mx.desk.example; dmarc=pass header.from=acme.example"})
    sqlite_people.ingest(raw.replace(b"Subject: placeholder", b"Subject: " + subject.encode()))
    assert sqlite_people.json("ticket", "list")[-1]["type"] == "Add New Users"


def test_a_message_that_cannot_be_parsed_is_kept_and_quarantined_with_its_reason(sqlite_people: Desk) -> None:
    garbage = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 4  # an Outlook .msg, not RFC 5322
    assert "quarantined" in sqlite_people.ingest(garbage)
    (sha, raw, state, reason), = [row for row in inbox(sqlite_people) if row[1] == garbage]
    assert state == "quarantined" and reason.startswith("cannot parse")
    listed = sqlite_people.json("inbox", "list", "--state", "quarantined")
    assert listed[0]["reason"] == reason


def test_ingest_exits_75_when_a_message_cannot_be_stored(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    with sqlite3.connect(tmp_path / "var" / "maildesk.db") as connection:
        connection.execute("drop table inbox")
    output = desk.ingest(make_mail("anna@acme.example", "x", "y"), expect=75)
    assert "not stored" in output


def test_ingest_exits_75_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    desk.env["MAILDESK_DATABASE_URL"] = "sqlite:////dev/null/maildesk.db"
    output = desk.ingest(make_mail("anna@acme.example", "x", "y"), expect=75)
    assert output.startswith("maildesk: nothing stored:")


def test_held_mail_from_a_new_user_is_processed_on_retry(sqlite_people: Desk) -> None:
    sqlite_people.mail("newbie@acme.example", "Printer", "Broken")
    (held,) = sqlite_people.json("inbox", "list", "--state", "held")
    sqlite_people.run("user", "add", "newbie@acme.example", "--name", "New Bie", "--org", "ACME")
    assert "processed SD-1" in sqlite_people.run("inbox", "retry", str(held["id"]))
    assert sqlite_people.json("ticket", "list")[0]["reporter"] == "newbie@acme.example"
