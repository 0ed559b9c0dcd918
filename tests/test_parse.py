"""maildesk.parse: raw bytes -> InboundMail, or ParseError for what is no mail at all."""

from __future__ import annotations

import base64
import os
import quopri
from datetime import datetime, timezone
from email.header import Header
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildesk import parse
from maildesk.core.mail import InboundMail
from maildesk.parse import ParseError, html_to_text, parse_mail

DATA = Path(__file__).parent / "data" / "mail"
SUBJECT = "Jauns Service Desk lietotājs"
BODY = "Pārskats par šo nedēļu: viss kārtībā."
NAME = "Jānis Bērziņš"
CHARSETS = ("utf-8", "windows-1257", "iso-8859-13")


def shared_corpus() -> Path:
    """The public corpus beside the repo (../shared), or where MAILDESK_SHARED_DIR points."""
    shared = os.environ.get("MAILDESK_SHARED_DIR")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return base / "corpus"


def raw_mail(headers: list[bytes], body: bytes = b"Labdien\r\n", *, content_type: bytes | None = None,
             encoding: bytes | None = None) -> bytes:
    """A single-part message from header lines and body bytes, as a client would send it."""
    lines = list(headers)
    if not any(line.lower().startswith(b"from:") for line in headers):
        lines.insert(0, b"From: Anna <anna@klients.lv>")
    lines += [b"To: support@desk.example", b"Date: Thu, 26 Nov 2026 10:00:00 +0200",
              b"Message-ID: <m1@klients.lv>", b"MIME-Version: 1.0"]
    if content_type:
        lines.append(b"Content-Type: " + content_type)
    if encoding:
        lines.append(b"Content-Transfer-Encoding: " + encoding)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def encoded_word(text: str, charset: str) -> bytes:
    return Header(text, charset).encode().encode("ascii")


# Charsets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("charset", CHARSETS)
def test_encoded_word_subject_and_name_decode_in_each_customer_charset(charset: str) -> None:
    raw = raw_mail([b"From: " + encoded_word(NAME, charset) + b" <janis@klients.lv>",
                    b"Subject: " + encoded_word(SUBJECT, charset)])
    mail = parse_mail(raw)
    assert (mail.subject, mail.from_name, mail.from_address) == (SUBJECT, NAME, "janis@klients.lv")
    assert mail.header("Subject") == SUBJECT


@pytest.mark.parametrize("charset", CHARSETS)
def test_raw_8bit_subject_and_name_decode_in_each_customer_charset(charset: str) -> None:
    raw = raw_mail([b"From: " + NAME.encode(charset) + b" <Janis@Klients.LV>",
                    b"Subject: " + SUBJECT.encode(charset)])
    mail = parse_mail(raw)
    assert (mail.subject, mail.from_name, mail.from_address) == (SUBJECT, NAME, "janis@klients.lv")


def test_raw_8bit_windows_1257_header_is_reported_as_a_defect_but_utf8_is_not() -> None:
    legacy = parse_mail(raw_mail([b"Subject: " + SUBJECT.encode("windows-1257")]))
    modern = parse_mail(raw_mail([b"Subject: " + SUBJECT.encode("utf-8")]))
    assert "8-bit Subject header bytes decoded as windows-1257" in legacy.defects
    assert not [defect for defect in modern.defects if defect.startswith("8-bit")]


@pytest.mark.parametrize("charset", CHARSETS)
@pytest.mark.parametrize("transfer", ["8bit", "quoted-printable", "base64"])
def test_body_decodes_in_its_declared_charset(charset: str, transfer: str) -> None:
    data = (BODY + "\r\n").encode(charset)
    body = {"8bit": data, "quoted-printable": quopri.encodestring(data), "base64": base64.encodebytes(data)}
    raw = raw_mail([b"Subject: " + encoded_word(SUBJECT, charset)], body[transfer],
                   content_type=b"text/plain; charset=" + charset.encode(), encoding=transfer.encode())
    mail = parse_mail(raw)
    assert mail.text.strip() == BODY
    assert mail.new_text == BODY


@pytest.mark.parametrize(("declared", "actual", "defect"), [
    (None, "windows-1257", "body part 0 with no charset decoded as windows-1257"),
    (None, "utf-8", "body part 0 with no charset decoded as utf-8"),
    ("utf-8", "windows-1257", "body part 0 with charset utf-8 decoded as windows-1257"),
    ("us-ascii", "windows-1257", "body part 0 with charset us-ascii decoded as windows-1257"),
    ("iso-8859-1", "utf-8", "body part 0 with charset iso-8859-1 decoded as utf-8"),
    ("x-unknown-charset", "utf-8", "body part 0 with charset x-unknown-charset decoded as utf-8"),
])
def test_a_missing_or_wrong_body_charset_falls_back_to_utf8_then_windows_1257(
        declared: str | None, actual: str, defect: str) -> None:
    content_type = b"text/plain" + (b"; charset=" + declared.encode() if declared else b"")
    raw = raw_mail([b"Subject: x"], BODY.encode(actual), content_type=content_type, encoding=b"8bit")
    mail = parse_mail(raw)
    assert mail.text == BODY
    assert defect in mail.defects


def test_an_ascii_body_without_charset_is_no_defect() -> None:
    mail = parse_mail(raw_mail([b"Subject: x"], b"Labdien", content_type=b"text/plain"))
    assert mail.text == "Labdien"
    assert not [defect for defect in mail.defects if defect.startswith("body part")]


# Addresses, identifiers, date, headers ------------------------------------------------------


def test_addresses_are_bare_and_lower_case_and_names_are_decoded() -> None:
    raw = raw_mail([b"From: \"B\xc4\x93rzi\xc5\x86a, Anna\" <Anna.Berzina@Klients.LV>",
                    b"Cc: Ilze <ILZE@klients.lv>, peteris@KLIENTS.lv, Ilze <ilze@klients.lv>",
                    b"Subject: x"])
    mail = parse_mail(raw)
    assert mail.from_address == "anna.berzina@klients.lv"
    assert mail.from_name == "Bērziņa, Anna"
    assert mail.to == ("support@desk.example",)
    assert mail.cc == ("ilze@klients.lv", "peteris@klients.lv")


def test_message_ids_keep_their_brackets_and_references_split_on_whitespace() -> None:
    raw = raw_mail([b"Subject: x", b"In-Reply-To:\r\n  <note-2@desk.example>  ",
                    b"References: <open-1@desk.example>\r\n\t<note-2@desk.example>"]).replace(
        b"Message-ID: <m1@klients.lv>", b"Message-ID:  <CAF+x=y@mail.gmail.com> ")
    mail = parse_mail(raw)
    assert mail.message_id == "<CAF+x=y@mail.gmail.com>"
    assert mail.in_reply_to == "<note-2@desk.example>"
    assert mail.references == ("<open-1@desk.example>", "<note-2@desk.example>")


def test_a_missing_message_id_stays_empty_and_is_a_defect() -> None:
    raw = raw_mail([b"Subject: x"]).replace(b"Message-ID: <m1@klients.lv>\r\n", b"")
    mail = parse_mail(raw)
    assert mail.message_id == ""
    assert "missing Message-ID" in mail.defects


def test_the_date_is_timezone_aware_and_a_missing_one_is_none() -> None:
    dated = parse_mail(raw_mail([b"Subject: x"]))
    undated = parse_mail(raw_mail([b"Subject: x"]).replace(b"Date: Thu, 26 Nov 2026 10:00:00 +0200\r\n", b""))
    assert dated.date == datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)
    assert undated.date is None
    assert "missing Date header" in undated.defects


def test_headers_are_all_kept_decoded_in_their_original_order() -> None:
    raw = raw_mail([b"Received: from a by b", b"Received: from c by d", b"Auto-Submitted: auto-replied",
                    b"Subject: " + encoded_word(SUBJECT, "utf-8"), b"X-Long: one\r\n two"])
    mail = parse_mail(raw)
    names = [name for name, _ in mail.headers]
    assert names == ["From", "Received", "Received", "Auto-Submitted", "Subject", "X-Long", "To", "Date",
                     "Message-ID", "MIME-Version"]
    assert mail.header_values("received") == ["from a by b", "from c by d"]
    assert mail.header("Subject") == SUBJECT
    assert mail.header("X-Long") == "one two"


def test_an_encoded_line_break_in_a_header_cannot_start_a_new_header() -> None:
    mail = parse_mail(raw_mail([b"Subject: =?utf-8?q?Hi=0D=0ABcc=3A_x=40evil=2Eexample?="]))
    assert mail.subject == "Hi  Bcc: x@evil.example"
    assert "\n" not in mail.subject and "\r" not in mail.subject


# Bodies -------------------------------------------------------------------------------------


def test_text_comes_from_the_plain_part_and_html_from_the_html_part() -> None:
    mail = parse_mail((DATA / "attachments.eml").read_bytes())
    assert mail.text == "Pielikumā pārskats un arhīvs.\n"
    assert mail.html == "<p>Pielikumā pārskats un arhīvs.</p>\n"
    assert mail.subject == "Pārskats ar pielikumiem"


def test_html_only_mail_gets_readable_text_without_hidden_parts_or_the_quote() -> None:
    mail = parse_mail((DATA / "gmail-html-only-reply-lv.eml").read_bytes())
    assert mail.text.startswith("Paldies,\nviss strādā & der.\n\nOtra rindkopa\n")
    assert "> ACCEPT THE SOLUTION" in mail.text
    assert "ESTIMATE" not in mail.text and "color" not in mail.text
    assert mail.new_text == "Paldies,\nviss strādā & der.\n\nOtra rindkopa"
    assert "<blockquote" in mail.html
    assert mail.references == ("<sd-7-open@desk.example>", "<sd-7-note@desk.example>")


@pytest.mark.parametrize(("html", "text"), [
    ("a<br>b<br/>c", "a\nb\nc"),
    ("<p>one</p><p>two</p>", "one\n\ntwo"),
    ("<div>one</div><div>two</div>", "one\ntwo"),
    ("<div><div>one</div></div><p>two</p>three", "one\n\ntwo\n\nthree"),
    ("one<br><br>two", "one\n\ntwo"),
    ("<b>bold</b> and <i>italic</i>", "bold and italic"),
    ("&lt;tag&gt; &amp; &#257; &nbsp;x", "<tag> & ā x"),
    ("<span hidden>no</span>yes", "yes"),
    ("<div style='visibility: hidden'>no</div>yes", "yes"),
    ("<style>.a{}</style><script>x()</script><title>t</title>yes", "yes"),
    ("<ul><li>one<li>two</ul>", "- one\n- two"),
    ("<blockquote>quoted<br>more</blockquote>", "> quoted\n> more"),
    ("<div>unclosed <b>bold", "unclosed bold"),
])
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_outlook_latvian_reply_in_raw_windows_1257_keeps_only_the_new_text() -> None:
    mail = parse_mail((DATA / "outlook-lv-reply-windows-1257.eml").read_bytes())
    assert mail.subject == "RE: [SD-8] Jauns Service Desk lietotājs"
    assert mail.from_name == "Jānis Bērziņš"
    assert "Tēma: [SD-8] Pārskats" in mail.text
    assert mail.new_text == "ACCEPT THE ESTIMATE\nLūdzu sāciet darbu."
    assert mail.cc == ("ilze@klients.lv",)


# Attachments --------------------------------------------------------------------------------


def test_attachments_are_decoded_bytes_with_the_senders_filenames_and_archives_stay_packed() -> None:
    mail = parse_mail((DATA / "attachments.eml").read_bytes())
    found = {attachment.filename: attachment for attachment in mail.attachments}
    assert set(found) == {"Pārskats.pdf", "../../etc/arhivs.zip", "log.txt"}
    assert found["Pārskats.pdf"].payload == (DATA / "attachment.pdf.bin").read_bytes()
    assert found["Pārskats.pdf"].content_type == "application/pdf"
    assert found["../../etc/arhivs.zip"].payload == (DATA / "attachment.zip.bin").read_bytes()
    assert found["log.txt"].payload.startswith(b"ACCEPT THE SOLUTION")


def test_a_named_inline_text_attachment_is_not_part_of_the_text() -> None:
    mail = parse_mail((DATA / "attachments.eml").read_bytes())
    assert "ACCEPT" not in mail.text and "ACCEPT" not in mail.new_text


# Refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "empty message"),
    (b"  \r\n\r\n", "empty message"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "Outlook .msg"),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "first line is no header field"),
    (b"Subject: no sender\r\n\r\nbody", "no From header"),
    (b"From: Anna\r\nSubject: x\r\n\r\nbody", "no usable From address"),
    (b"From: a@b.lv c@d.lv\r\nSubject: x\r\n\r\nbody", "no usable From address"),
    (b"From: a@b.lv\r\nX-Bin: \x00\x01\r\n\r\nbody", "NUL bytes"),
])
def test_what_is_no_mail_raises_parse_error_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_mail(raw)


def test_a_from_with_its_only_address_unbracketed_is_accepted_with_a_defect() -> None:
    mail = parse_mail(raw_mail([b"From: Big Bug bb@bug.com", b"Subject: x"]))
    assert mail.from_address == "bb@bug.com"
    assert "malformed From header; its only address taken as the sender" in mail.defects


def test_any_failure_inside_the_parser_becomes_parse_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(raw: bytes, cuts: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(parse, "_tree", explode)
    with pytest.raises(ParseError, match="RecursionError"):
        parse_mail(raw_mail([b"Subject: x"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from([b"", b"From: a@b.lv\r\n", b"From: a@b.lv\r\nContent-Type: "
                                                 b"multipart/mixed; boundary=x\r\n\r\n--x\r\n"]))
def test_arbitrary_bytes_give_a_mail_or_a_parse_error(tail: bytes, head: bytes) -> None:
    try:
        result = parse_mail(head + tail)
    except ParseError as error:
        assert str(error)
    else:
        assert isinstance(result, InboundMail) and "@" in result.from_address


def test_every_public_corpus_file_gives_a_mail_or_a_parse_error() -> None:
    corpus = shared_corpus() / "public"
    if not corpus.is_dir():
        pytest.skip(f"shared corpus not found at {corpus} (set MAILDESK_SHARED_DIR to its parent)")
    files = sorted(path for path in corpus.rglob("*") if path.is_file())
    outcomes: dict[str, int] = {"mail": 0, "refused": 0}
    for path in files:
        try:
            result = parse_mail(path.read_bytes())
        except ParseError:
            outcomes["refused"] += 1
        else:
            assert isinstance(result, InboundMail), path
            outcomes["mail"] += 1
    assert sum(outcomes.values()) == len(files) > 100
    assert outcomes["mail"] > outcomes["refused"]


@pytest.mark.parametrize("header", [b"To: Anna <anna@klients.lv> <other@klients.lv>",  # first To: parsed whole
                                    b"Reply-To: Anna anna@klients.lv"])  # only checked
def test_a_broken_address_header_seen_before_is_reported_again(header: bytes) -> None:
    """Address headers are remembered between mails (mail-parser's parser takes ~100 µs a
    header); a mail whose broken header was seen before must still say so."""
    raw = raw_mail([header])
    parse._remembered_addresses.cache_clear()
    first, again = parse_mail(raw), parse_mail(raw)
    assert parse._remembered_addresses.cache_info().hits >= 1
    assert first == again and "MIME: AddressHeaderDefect" in again.defects


def test_a_long_address_header_is_parsed_but_not_remembered() -> None:
    recipients = ", ".join(f"Person {number} <person{number}@klients.lv>" for number in range(200))
    assert len(recipients) > parse.ADDRESS_CACHE_CHARACTERS
    parse._remembered_addresses.cache_clear()
    mail = parse_mail(raw_mail([b"Cc: " + recipients.encode()]))
    assert len(mail.cc) == 200 and mail.cc[-1] == "person199@klients.lv"
    assert parse._remembered_addresses.cache_info().currsize == 2  # From and To only
