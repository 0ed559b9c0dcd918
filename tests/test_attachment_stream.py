"""Big attachments stay in the raw bytes at parse time and are decoded in chunks into the store.

`maildesk.parse` cuts big base64 leaf bodies out before the stdlib builds its tree, and hands
them over as `core.mail.Base64Body`; `spool` decodes those a megabyte at a time into a file and
`MailHandler.save_attachment` moves it to its content address. These tests fail if either side
breaks: the file on disk must be the attachment, its SHA-256 and size recorded, and the mail's
text the same as without cutting.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import maildesk.spool
from maildesk import parse
from maildesk.base64_pieces import decoded_pieces
from maildesk.core.mail import Attachment, Base64Body
from maildesk.handle import MailHandler
from maildesk.parse import parse_mail
from maildesk.spool import STALE_SECONDS, discard, keep, spool, sweep
from tests.desk import Desk, standard_people

BODY = "Labdien,\n\nžurnāli pielikumā.\n\nAr cieņu,\nAnna\n"


def mail_with(files: dict[str, bytes], body: str = BODY) -> bytes:
    message = EmailMessage()
    message["From"] = "Anna <anna@klients.lv>"
    message["To"] = "support@desk.example"
    message["Subject"] = "Žurnāli"
    message["Message-ID"] = "<big@klients.lv>"
    message.set_content(body)
    for name, data in files.items():
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return message.as_bytes()


def uncut(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(parse, "CUT_MIN_BYTES", len(raw) + 1)
        return parse_mail(raw)


def save(attachment: Attachment, directory: Path) -> Any:
    """Spooled (as where the mail is parsed), then kept with its row (as in the mail's transaction)."""
    handler = MailHandler(SimpleNamespace(attachments_dir=directory), notifier=None)  # type: ignore[arg-type]
    (spooled,) = spool([attachment], directory)
    return handler.save_attachment(spooled, message_id=7)


def test_a_big_attachment_stays_in_the_raw_bytes_and_the_mail_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)  # more than one 1 MiB chunk, not a multiple of 3
    small = b"small file\n"
    raw = mail_with({"logs.tar.gz": data, "small.txt": small})
    mail, whole = parse_mail(raw), uncut(raw, monkeypatch)
    big = mail.attachments[0]
    assert isinstance(big.content, Base64Body) and big.content.raw is raw
    assert isinstance(whole.attachments[0].content, bytes)
    assert (big.filename, big.content_type) == ("logs.tar.gz", "application/octet-stream")
    assert big.payload == data and big.size == len(data) and b"".join(big.chunks(1000)) == data
    assert mail.attachments[1].content == small
    assert (mail.text, mail.new_text, mail.html, mail.headers, mail.defects) == \
        (whole.text, whole.new_text, whole.html, whole.headers, whole.defects)
    assert mail.new_text == "Labdien,\n\nžurnāli pielikumā."
    assert [(a.filename, a.content_type, a.payload) for a in mail.attachments] == \
        [(a.filename, a.content_type, a.payload) for a in whole.attachments]


def test_a_streamed_attachment_is_stored_byte_for_byte_with_its_sha256_and_size(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 1)
    attachment = parse_mail(mail_with({"dump.bin": data})).attachments[0]
    assert isinstance(attachment.content, Base64Body)
    row = save(attachment, tmp_path)
    digest = hashlib.sha256(data).hexdigest()
    assert (row.sha256, row.size, row.stored_name, row.filename) == (digest, len(data), f"{digest[:2]}/{digest}",
                                                                   "dump.bin")
    assert (tmp_path / row.stored_name).read_bytes() == data
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [tmp_path / row.stored_name]
    again = save(attachment, tmp_path)  # the same file again: stored once, no temporary left
    assert again.stored_name == row.stored_name
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [tmp_path / row.stored_name]


def test_bytes_and_streamed_payloads_are_stored_alike(tmp_path: Path) -> None:
    data = os.urandom(40000)
    streamed = save(Attachment("a.bin", "application/octet-stream",
                               Base64Body(base64.encodebytes(data), 0, len(base64.encodebytes(data)))), tmp_path / "s")
    in_memory = save(Attachment("a.bin", "application/octet-stream", data), tmp_path / "m")
    assert (streamed.sha256, streamed.size, streamed.stored_name) == \
        (in_memory.sha256, in_memory.size, in_memory.stored_name)


def test_base64_with_stray_characters_is_decoded_as_mail_clients_do(tmp_path: Path) -> None:
    data = os.urandom(30000)
    text = base64.encodebytes(data)
    broken = text[:1000] + b"!*" + text[1000:]  # stray characters: mail clients skip them
    body = Base64Body(broken, 0, len(broken))
    assert body.decode() == data
    assert b"".join(decoded_pieces(body, 700)) == data  # still piece by piece: no decoding of it whole
    with pytest.raises(ValueError):
        b"".join(body.chunks(700))  # the exact path is strict
    row = save(Attachment("x.bin", "application/octet-stream", body), tmp_path)
    assert (tmp_path / row.stored_name).read_bytes() == data and row.size == len(data)
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [tmp_path / row.stored_name]


def test_base64_that_stops_at_padding_midway_is_stored_as_mail_clients_decode_it(tmp_path: Path) -> None:
    first, second = base64.encodebytes(b"ab"), base64.encodebytes(os.urandom(30000))
    text = first + second  # "YWI=" and then more: the stdlib's lenient decoder stops at the "="
    body = Base64Body(text, 0, len(text))
    for pieces in (decoded_pieces(body, 700), body.chunks(700)):
        with pytest.raises(ValueError):
            b"".join(pieces)
    row = save(Attachment("x.bin", "application/octet-stream", body), tmp_path)
    assert (tmp_path / row.stored_name).read_bytes() == body.decode() == b"ab"
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [tmp_path / row.stored_name]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), width=st.sampled_from([4, 60, 76, 77, 3000]),
       newline=st.sampled_from([b"\n", b"\r\n"]), size=st.integers(1, 400))
def test_well_formed_base64_of_any_line_width_streams_to_its_bytes(data: bytes, width: int, newline: bytes,
                                                                   size: int) -> None:
    encoded = base64.b64encode(data)
    text = newline.join(encoded[i:i + width] for i in range(0, len(encoded), width)) + newline
    raw = b"headers\r\n\r\n" + text + b"--boundary--\r\n"
    body = Base64Body(raw, len(b"headers\r\n\r\n"), len(b"headers\r\n\r\n") + len(text))
    assert b"".join(decoded_pieces(body, size)) == b"".join(body.chunks(size)) == data == body.decode()


@settings(max_examples=500, deadline=None)
@given(text=st.lists(st.sampled_from([b"QUJD", b"A", b"Q", b"+/", b"=", b"==", b"\r\n", b"\n", b" ", b"\t", b"*",
                                      b"\xff", b"-_"]), max_size=60).map(b"".join),
       size=st.integers(1, 50))
def test_any_base64_text_streams_to_what_decode_gives_or_says_it_cannot(text: bytes, size: int) -> None:
    body = Base64Body(text, 0, len(text))
    for pieces in (decoded_pieces, Base64Body.chunks):
        try:
            streamed = b"".join(pieces(body, size))
        except ValueError:
            continue  # the store then decodes it whole: the test above shows that path
        assert streamed == body.decode()


def test_a_body_that_hides_a_boundary_is_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base64 part whose text holds a line starting with "--" is parsed by the stdlib as it is."""
    raw = mail_with({"a.bin": os.urandom(60000)})
    boundary = raw.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    head, _, rest = raw.rpartition(b"\n--" + boundary + b"--")
    hidden = head + b"\n--not-a-boundary" + b"\n--" + boundary + b"--" + rest
    assert parse._scan(raw)[1] and not parse._scan(hidden)[1]
    assert parse_mail(hidden).attachments[0].payload == uncut(hidden, monkeypatch).attachments[0].payload


def test_a_big_base64_text_body_is_still_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    body = "Labdien,\n" + "rindiņa ar garumzīmēm\n" * 2000
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "anna@klients.lv", "support@desk.example", "x"
    message.set_content(body, cte="base64")
    raw = message.as_bytes()
    assert parse._scan(raw)[1]
    mail = parse_mail(raw)
    assert mail.text == body and mail.text == uncut(raw, monkeypatch).text and not mail.attachments


@pytest.mark.parametrize("length", [3000, 3001, 3002])  # no padding, "==", "="
def test_base64_as_mail_programs_write_it_never_needs_the_exact_path(length: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """76-character lines, CRLF, padding at the end: every piece goes to the vectorised decoder."""
    data = os.urandom(length)
    text = base64.encodebytes(data).replace(b"\n", b"\r\n")
    body = Base64Body(text, 0, len(text))
    monkeypatch.setattr(Base64Body, "chunks", lambda *args, **kwargs: pytest.fail("the exact path was taken"))
    pieces = list(decoded_pieces(body, 1000))
    assert len(pieces) == 5 and b"".join(pieces) == data


# Spooled where the mail is parsed, kept or discarded where it is stored ---------------------------


def files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def test_attachments_of_a_ticket_are_kept_and_those_of_held_mail_leave_no_file(tmp_path: Path) -> None:
    desk = Desk(tmp_path / "desk")
    standard_people(desk)
    data = os.urandom(300_000)  # big enough to be cut out of the parse tree and streamed
    store = tmp_path / "desk" / "var" / "attachments"
    stranger = mail_with({"held.bin": os.urandom(50_000)}).replace(b"anna@klients.lv", b"nobody@stranger.example")
    assert "held" in desk.ingest(stranger)
    assert files_under(store) == []  # spooled while parsed, discarded: the mail got no ticket
    customer = mail_with({"logs.bin": data}).replace(b"anna@klients.lv", b"anna@acme.example")
    assert "SD-1" in desk.ingest(customer)
    digest = hashlib.sha256(data).hexdigest()
    assert files_under(store) == [store / digest[:2] / digest]  # kept at its content address, no temporary left
    assert (store / digest[:2] / digest).read_bytes() == data
    assert json.loads(desk.run("ticket", "show", "SD-1", "--json"))["key"] == "SD-1"


def test_spooling_that_fails_midway_leaves_no_temporary_file(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(body: Base64Body) -> Any:
        yield b"a first megabyte"
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(maildesk.spool, "decoded_pieces", disk_full)
    text = base64.encodebytes(b"second")
    with pytest.raises(OSError, match="No space"):
        spool([Attachment("a.bin", "application/octet-stream", b"first"),
               Attachment("b.bin", "application/octet-stream", Base64Body(text, 0, len(text)))], tmp_path)
    assert files_under(tmp_path) == []


def test_a_discarded_file_is_gone_and_a_kept_one_is_stored_once(tmp_path: Path) -> None:
    first, second, other = spool([Attachment("a", "text/plain", b"same"), Attachment("b", "text/plain", b"same"),
                                  Attachment("c", "text/plain", b"other")], tmp_path)
    assert keep(first, tmp_path) == keep(second, tmp_path) == first.stored_name
    assert keep(first, tmp_path) == first.stored_name  # kept again (a batch handled twice): still there
    discard([first, second, other])
    assert files_under(tmp_path) == [tmp_path / first.stored_name]


def test_the_sweep_removes_only_temporary_files_older_than_an_hour(tmp_path: Path) -> None:
    old, new = spool([Attachment("a", "text/plain", b"left by a crash"), Attachment("b", "text/plain", b"in use")],
                     tmp_path)
    os.utime(old.path, (time.time() - STALE_SECONDS - 60,) * 2)
    assert sweep(tmp_path) == 1
    assert files_under(tmp_path) == [Path(new.path)]
    assert sweep(tmp_path / "nowhere") == 0
