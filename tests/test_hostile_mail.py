"""Broken and hostile mail (issue 4, test plan C2, C9, E1-E3, E5-E8): every message ends
processed or quarantined with a reason, nothing is lost or doubled, no message stops the
loop, and nothing from a mail becomes a header, a template, a path or an unpacked archive."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import re
import resource
import sqlite3
import subprocess
import sys
import textwrap
import time
import zipfile
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.policy import SMTP
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maildesk.handle import MailHandler
from maildesk.models import Attachment, InboxItem, InboxRaw, OutboxItem, Ticket
from maildesk.notify import Notifier
from maildesk.compose import build_message
from maildesk.process import MAX_ATTEMPTS
from tests.daemon_harness import DaemonProcess, wait_until
from tests.desk import Desk, standard_people
from tests.mailbuilder import make_mail
from tests.security_desk import FastDesk, desk, prepared_var  # noqa: F401 (fixtures)
from tests.test_flows import AGENT, ANNA, BOSS, PETER

REPO = Path(__file__).resolve().parents[1]
ANNA_AR = {"Authentication-Results": "mx.desk.example; dmarc=pass header.from=acme.example"}


def shared_dir() -> Path:
    """../shared beside the repository, or where MAILDESK_SHARED_DIR points."""
    override = os.environ.get("MAILDESK_SHARED_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared"


def states(desk: FastDesk) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in desk.rows(InboxItem):
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


# C2: duplicate, missing and colliding Message-IDs ---------------------------------------------


def test_shared_missing_and_repeated_message_ids_lose_nothing_and_double_nothing(desk: FastDesk) -> None:
    people = [ANNA, PETER, BOSS]
    shared = [make_mail(people[n % 3], f"Shared id {n}", f"Body {n}", to="support@desk.example",
                        message_id="<same@client.example>") for n in range(20)]
    missing = [re.sub(rb"Message-ID: [^\r\n]*\r\n", b"", make_mail(people[n % 3], f"No id {n}", f"Body {n}",
                                                                  to="support@desk.example")) for n in range(20)]
    same_second = [b"From: anna@acme.example\r\nTo: support@desk.example\r\nSubject: Printer\r\n"
                   b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n" + body for body in (b"First.\r\n", b"Second.\r\n")]
    distinct = shared + missing + same_second
    assert len(set(distinct)) == 42 and all(b"Message-ID" not in raw for raw in missing + same_second)
    for raw in distinct:
        desk.ingest(raw)
    for raw in distinct[::9]:  # five of them arrive again, byte for byte
        assert desk.ingest(raw) == "already stored"

    tickets = desk.rows(Ticket)
    assert len(tickets) == 42 and len(desk.rows(InboxItem)) == 42
    assert sorted(ticket.description for ticket in tickets) == sorted(
        [f"Body {n}" for n in range(20)] * 2 + ["First.", "Second."])
    assert len({ticket.thread_id for ticket in tickets}) >= 22  # made-up ids for the 22 mails without one


# C9: one poison message among a hundred good ones ----------------------------------------------


def test_a_message_that_breaks_the_parser_is_quarantined_at_once_and_the_others_go_on(desk: FastDesk) -> None:
    good = [make_mail([ANNA, PETER, BOSS][n % 3], f"Good {n}", f"Body {n}", to="support@desk.example")
            for n in range(100)]
    poison = b"From: anna@acme.example\r\nSubject: deep\r\n" + b"Content-Type: message/rfc822\r\n\r\n" * 2000
    pipeline = desk.pipe()
    ids = [stored.inbox_id for stored in pipeline.store_many(good[:50] + [poison] + good[50:], "pipe")]
    outcomes = pipeline.process_many(ids)
    assert [outcome.state for outcome in outcomes if outcome].count("processed") == 100
    assert outcomes[50] is not None and outcomes[50].state == "quarantined"
    assert "nested more than 50 deep" in outcomes[50].reason
    assert len(desk.rows(Ticket)) == 100


def test_a_message_that_fails_in_processing_is_retried_then_quarantined_without_blocking_the_others(
        desk: FastDesk, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: `MailHandler.new_ticket` raises for the one mail whose Message-ID is
    <poison@client.example> (a stand-in for any bug or constraint that breaks one message)."""
    real = MailHandler.new_ticket

    def breaks_on_the_poison(self: MailHandler, examined: Any, *args: Any, **kwargs: Any) -> Any:
        if examined.mail.message_id == "<poison@client.example>":
            raise RuntimeError("injected fault")
        return real(self, examined, *args, **kwargs)

    monkeypatch.setattr(MailHandler, "new_ticket", breaks_on_the_poison)
    good = [make_mail([ANNA, PETER, BOSS][n % 3], f"Good {n}", f"Body {n}", to="support@desk.example")
            for n in range(100)]
    poison = make_mail(ANNA, "Poison", "Breaks.", to="support@desk.example", message_id="<poison@client.example>")
    pipeline = desk.pipe()
    pipeline.store_many(good[:50] + [poison] + good[50:], "pipe")

    attempts = 0
    started = time.perf_counter()
    while pending := pipeline.pending_ids():  # what the daemon's loop and `maildesk inbox retry` run
        attempts += 1
        pipeline.process_many(pending)
        assert attempts <= MAX_ATTEMPTS
    assert time.perf_counter() - started < 30
    (row,) = desk.rows(InboxItem, InboxItem.message_id == "<poison@client.example>")
    assert (row.state, row.attempts) == ("quarantined", 3) and "RuntimeError: injected fault" in row.reason
    assert states(desk) == {"processed": 100, "quarantined": 1} and len(desk.rows(Ticket)) == 100

    monkeypatch.setattr(MailHandler, "new_ticket", real)  # the bug is fixed; the admin retries
    desk.pipeline = None
    output = desk.run("inbox", "retry", str(row.id))
    assert "processed SD-101" in output and len(desk.rows(Ticket)) == 101


# E5: archive bombs ----------------------------------------------------------------------------


def nested_zip(levels: int = 3, width: int = 8, zeros: int = 10 * 1024 * 1024) -> bytes:
    """A 42.zip-style bomb: `width` copies of the level below per level, 10 MB of zeros at the
    bottom: 8**3 * 10 MB = 5 GB unpacked, a few kilobytes packed."""
    def archive(entries: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
        return buffer.getvalue()
    data = archive({"zeros.bin": bytes(zeros)})
    for level in range(levels):
        data = archive({f"level{level}-{n}.zip": data for n in range(width)})
    return data


def test_a_nested_zip_bomb_is_stored_opaque_and_never_unpacked(desk: FastDesk) -> None:
    bomb = nested_zip()
    message = EmailMessage(policy=SMTP)
    message["From"], message["To"], message["Subject"] = ANNA, "support@desk.example", "Logs attached"
    message["Message-ID"] = "<bomb@acme.example>"
    message.set_content("The logs.")
    message.add_attachment(bomb, maintype="application", subtype="zip", filename="42.zip")
    raw = message.as_bytes()
    desk.pipe()  # templates compiled before the clock starts

    before = resource.getrusage(resource.RUSAGE_SELF)
    outcome = desk.ingest(raw)
    after = resource.getrusage(resource.RUSAGE_SELF)

    assert outcome.startswith("processed")
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) <= 1.0
    (attachment,) = desk.rows(Attachment)
    assert attachment.filename == "42.zip" and attachment.size == len(bomb)
    files = [path for path in (desk.directory / "var" / "attachments").rglob("*") if path.is_file()]
    assert files == [desk.directory / "var" / "attachments" / attachment.stored_name]
    assert files[0].read_bytes() == bomb


# E6: header injection -------------------------------------------------------------------------

INJECTIONS = ["\r\nBcc: x@evil.example", "\nBcc: x@evil.example", "\rBcc: x@evil.example",
              "\u2028Bcc: x@evil.example", "\x00Bcc: x@evil.example", "\u2029To: y@evil.example",
              "\x85Cc: z@evil.example", "\x0bBcc: x@evil.example", "\r\n\r\n<html>body</html>",
              "\r\n To: folded@evil.example"]
EXPECTED_HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "Reply-To", "Auto-Submitted",
                    "X-Auto-Response-Suppress", "X-Maildesk-Loop", "MIME-Version", "Content-Type",
                    "Content-Transfer-Encoding", "In-Reply-To", "References"}


def assert_clean(raw: bytes, recipient: str) -> None:
    message = message_from_bytes(raw, policy=policy.default)
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert set(message.keys()) <= EXPECTED_HEADERS and len(message.keys()) == len(set(message.keys())), head
    assert message["To"] == recipient and "evil" not in message["To"]
    assert len(re.findall(r"^Subject:", head, re.MULTILINE)) == 1
    subject = str(message["Subject"])  # unfolded and decoded
    assert not re.search("[\x00-\x1f\x85\u2028\u2029]", subject) and len(subject) <= 200, repr(subject)
    assert message["Auto-Submitted"] in ("auto-replied", "auto-generated")  # A8's marks on all 1,000
    assert message["X-Auto-Response-Suppress"] == "All" and message["X-Maildesk-Loop"]


def test_a_thousand_header_injection_attempts_add_no_header(desk: FastDesk) -> None:
    rng = random.Random(6)
    settings = desk.settings
    for n in range(1000):
        attack = INJECTIONS[n % len(INJECTIONS)]
        prefix = "x" * rng.choice([0, 5, 60, 190, 400])
        subject = f"[SD-{n}] {prefix}{attack}" + (attack if n % 3 == 0 else "") + " tail"
        item = OutboxItem(id=n, message_id=f"<n{n}@desk.example>", to_addresses=json.dumps([ANNA]),
                          subject=subject, template="comment", body_text=f"Hello{attack}", reply_to="",
                          in_reply_to="" if n % 2 else "<customer@acme.example>",
                          created_at=datetime(2026, 11, 26, tzinfo=timezone.utc))
        assert_clean(build_message(item, settings).as_bytes(), ANNA)


def encoded(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def test_injections_in_real_subjects_and_names_reach_no_outgoing_header(desk: FastDesk) -> None:
    for n, attack in enumerate(INJECTIONS):
        raw = make_mail(ANNA, f"placeholder {n}", "Body.", to="support@desk.example", headers=ANNA_AR)
        raw = raw.replace(f"Subject: placeholder {n}".encode(), b"Subject: " + encoded(f"Printer{attack}").encode())
        name_attack = attack.replace("@evil.example", "-evil")  # an address in a name is refused outright
        raw = raw.replace(b"From: anna@acme.example", b"From: " + encoded(f"Anna{name_attack}").encode()
                          + b" <anna@acme.example>")
        desk.ingest(raw)
        stranger = make_mail(f"s{n}@elsewhere.example", "x", "Who?", to="support@desk.example")
        desk.ingest(stranger.replace(b"Subject: x", b"Subject: " + encoded(f"Hello{attack}").encode())
                    .replace(f"From: s{n}@elsewhere.example".encode(), b"From: " + encoded(f"Eve{name_attack}").encode()
                             + f" <s{n}@elsewhere.example>".encode()))
    rows = desk.rows(OutboxItem)
    assert {row.template for row in rows} >= {"ticket_created", "ticket_announced", "unknown_sender"}
    assert sum("Printer" in row.subject and "Bcc" in row.subject for row in rows) >= 5  # the attack got this far
    for row in rows:
        assert_clean(build_message(row, desk.settings).as_bytes(), json.loads(row.to_addresses)[0])


# E7: template injection -----------------------------------------------------------------------

TEMPLATE_ATTACKS = ["{{ 7*7 }}", "{% for x in range(10**9) %}x{% endfor %}", "<script>alert(1)</script>",
                    "{{ ''.__class__.__mro__ }}", "{# comment #}", "${7*7}"]


def test_template_injection_in_a_subject_and_body_renders_literally_and_escaped(desk: FastDesk) -> None:
    summary = " ".join(TEMPLATE_ATTACKS[:2])
    body = "\n".join(TEMPLATE_ATTACKS)
    desk.pipe()
    started = time.perf_counter()
    desk.mail(ANNA, summary, body)
    assert time.perf_counter() - started < 2  # nothing ran a billion-step loop
    desk.reply(AGENT, "SD-1", body)  # a comment to Anna, with the text in it
    rows = desk.rows(OutboxItem)
    assert {row.template for row in rows} >= {"ticket_created", "ticket_announced", "comment"}
    texts = [row.body_text for row in rows]
    assert all("{{ 7*7 }}" in text and "49 x" not in text for text in texts)
    assert all("<class" not in text and "xxxxxxxx" not in text for text in texts)
    comment = next(row for row in rows if row.template == "comment")
    for attack in TEMPLATE_ATTACKS:
        assert attack in comment.body_text
    for row in rows:
        assert "<script>" not in row.body_html and "{{ 7*7 }}" in row.body_html
        assert ("&lt;script&gt;" in row.body_html) == ("<script>" in row.body_text)
    acknowledgement = next(row for row in rows if row.template == "ticket_created")
    assert "{{ 7*7 }}" in acknowledgement.subject


# E8: hostile attachment names ------------------------------------------------------------------

HOSTILE_NAMES = ["../../etc/passwd", "..\\..\\windows\\win.ini", "/etc/shadow", "report\x00.pdf.exe",
                 "invoice\u202efdp.exe", "x" * 300 + ".txt", ".", "..", "~/.ssh/authorized_keys",
                 "con", "a/../../../../tmp/evil.sh"]


def test_hostile_attachment_names_are_data_and_files_stay_inside_the_data_directory(
        desk: FastDesk, tmp_path: Path) -> None:
    message = EmailMessage(policy=SMTP)
    message["From"], message["To"], message["Subject"] = ANNA, "support@desk.example", "Files"
    message["Message-ID"] = "<files@acme.example>"
    message.set_content("Attached.")
    for n, name in enumerate(HOSTILE_NAMES):
        message.add_attachment(f"content {n}".encode(), maintype="application", subtype="octet-stream",
                               filename=name)
    assert desk.ingest(message.as_bytes()).startswith("processed")

    attachments = desk.rows(Attachment)
    assert len(attachments) == len(HOSTILE_NAMES)
    store = (desk.directory / "var" / "attachments").resolve()
    for attachment in attachments:
        assert re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{64}", attachment.stored_name)
        assert (store / attachment.stored_name).resolve().is_relative_to(store)
    names = [attachment.filename for attachment in attachments]
    assert any("passwd" in name for name in names) and any("\u202e" in name for name in names)
    assert all(len(name) <= 300 for name in names)
    var = (desk.directory / "var").resolve()
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert all(path.resolve().is_relative_to(var) or path.suffix == ".env" for path in written), written
    traversals = [tmp_path / "etc" / "passwd", tmp_path / "windows" / "win.ini", tmp_path.parent / "tmp" / "evil.sh",
                  tmp_path / "var" / "authorized_keys"]
    assert not any(path.exists() for path in traversals)


# E2: adversarial structures, each measured in a process of its own -----------------------------

HEAD = (b"From: Anna <anna@acme.example>\r\nTo: support@desk.example\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
        b"Authentication-Results: mx.desk.example; dmarc=pass header.from=acme.example\r\n")


def nested_multipart(levels: int) -> bytes:
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (n, n)
                       for n in range(levels))
    closing = b"".join(b"\r\n--b%d--" % n for n in reversed(range(levels)))
    return HEAD + b"Subject: nested multipart\r\n" + opening + b"Content-Type: text/plain\r\n\r\nhi" + closing + b"\r\n"


def nested_messages(levels: int) -> bytes:
    inner = b"".join(b"Content-Type: message/rfc822\r\n\r\nFrom: x%d@acme.example\r\nSubject: %d\r\n" % (n, n)
                     for n in range(levels))
    return HEAD + b"Subject: nested messages\r\n" + inner + b"Content-Type: text/plain\r\n\r\nhi\r\n"


def many_parts(count: int) -> bytes:
    parts = b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % n for n in range(count))
    return HEAD + b'Subject: many parts\r\nContent-Type: multipart/mixed; boundary="p"\r\n\r\n' + parts + b"--p--\r\n"


ADVERSARIAL: dict[str, tuple[bytes, str]] = {  # name -> (mail, expected state or "" for either)
    "2,000 nested multiparts": (nested_multipart(2000), "quarantined"),
    "2,000 nested message/rfc822": (nested_messages(2000), "quarantined"),
    "10,000 parts": (many_parts(10_000), "quarantined"),
    "1 MB header line": (HEAD + b"Subject: long\r\nX-Long: " + b"a" * 1_000_000 + b"\r\n\r\nbody\r\n", "processed"),
    "1 MB subject": (HEAD + b"Subject: " + b"word " * 200_000 + b"\r\n\r\nbody\r\n", "processed"),
    "20,000 semicolons": (HEAD + b"Subject: semicolons\r\nContent-Type: text/plain" + b";" * 20_000
                          + b"\r\n\r\nbody\r\n", "processed"),
    "20,000 encoded-words": (HEAD + b"Subject: " + b" ".join([b"=?utf-8?q?a=C4=81?="] * 20_000) + b"\r\n\r\nbody\r\n",
                             "quarantined"),
    "bad-charset encoded-words": (HEAD + b"Subject: =?x-unknown?q?abc?= =?utf-8?b?!!!?= =?utf-8?q?=FF=FE?= "
                                  b"=?utf-7?b?K0FHRS0=?= =?iso-2022-jp?b?GyRCJCIbKEI=?=\r\n\r\nbody\r\n", "processed"),
    "no boundary lines": (HEAD + b'Subject: no boundaries\r\nContent-Type: multipart/mixed; boundary="gone"\r\n\r\n'
                          b"text without any boundary\r\n", "processed"),
    "no final boundary": (HEAD + b'Subject: no final\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
                          b"--b\r\nContent-Type: text/plain\r\n\r\nfirst\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
                          b"second, and the end never comes", "processed"),
    "NUL bytes in the body": (HEAD + b"Subject: nul\r\n\r\nbe\x00fore\x00\x00after\r\n", "processed"),
    "NUL bytes in a header": (HEAD + b"Subject: nul\x00here\r\n\r\nbody\r\n", "quarantined"),
    "8-bit garbage headers": (HEAD.replace(b"Anna", b"An\xff\xfe\x80na") + b"Subject: \xc0\xc1\xf5\xff\x80 bytes\r\n"
                              b"X-Junk: \x81\x82\x83\r\n\r\nbody\r\n", "processed"),
    "Outlook [..] Message-ID": (HEAD + b"Subject: outlook\r\nMessage-ID: [12345.6789@outlook.example]\r\n"
                                b"References: <a@b> [c@d]\r\n\r\nbody\r\n", "processed"),
    "5,000 nested comments": (HEAD.replace(b"From: Anna <anna@acme.example>",
                                           b"From: anna@acme.example " + b"(" * 5000 + b")" * 5000)
                              + b"Subject: comments\r\n\r\nbody\r\n", ""),
    "10,000 references": (HEAD + b"Subject: refs\r\nReferences: " + b" ".join(b"<r%d@x.example>" % n
                                                                               for n in range(10_000))
                          + b"\r\n\r\nbody\r\n", "processed"),
    "20,000 recipients": (HEAD.replace(b"To: support@desk.example", b"To: support@desk.example, " + b", ".join(
        b"u%d@x.example" % n for n in range(20_000))) + b"Subject: recipients\r\n\r\nbody\r\n", "processed"),
}

MEASURE = textwrap.dedent("""
    import json, os, resource, sys, time
    from pathlib import Path
    from maildesk import store
    from maildesk.config import load_settings
    from maildesk.process import Pipeline

    def peak_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    settings = load_settings(Path(sys.argv[1]), environ=os.environ)
    pipeline = Pipeline(settings, store.make_engine(settings.database_url))
    pipeline.ingest(Path(sys.argv[2]).read_bytes(), "pipe")  # templates compiled, caches warm
    for path in sys.argv[3:]:
        raw = Path(path).read_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS for this mail
        except OSError:
            pass
        started = time.perf_counter()
        outcome = pipeline.ingest(raw, "pipe")
        seconds = time.perf_counter() - started
        print(json.dumps({"case": Path(path).stem, "seconds": seconds, "peak_mb": peak_mb(),
                          "state": outcome.state, "reason": outcome.reason}), flush=True)
""")


def test_adversarial_structures_are_each_handled_in_five_seconds_under_300_mb(desk: FastDesk, tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    paths = []
    for n, (name, (raw, _)) in enumerate(ADVERSARIAL.items()):
        paths.append(cases / f"{n:02d}.eml")
        paths[-1].write_bytes(raw.replace(b"\r\nTo:", b"\r\nMessage-ID: <e2-%d@acme.example>\r\nTo:" % n, 1)
                              if b"Message-ID" not in raw else raw)
    warm_up = cases / "warm-up.eml"
    warm_up.write_bytes(make_mail(PETER, "Warm up", "Hello.", to="support@desk.example"))
    (tmp_path / "empty.env").write_text("")
    result = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "empty.env"), str(warm_up),
                             *map(str, paths)], env={**os.environ, **desk.env}, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(measured) == len(ADVERSARIAL)
    for (name, (_, expected)), figures in zip(ADVERSARIAL.items(), measured):
        print(f"E2 {name}: {figures['seconds']:.2f} s, peak {figures['peak_mb']:.0f} MB, {figures['state']}: "
              f"{figures['reason'][:80]}")
        assert figures["seconds"] <= 5 and figures["peak_mb"] < 300, (name, figures)
        assert figures["state"] in ("processed", "held", "quarantined"), (name, figures)
        assert figures["state"] == expected or not expected, (name, figures)
        assert figures["reason"], name


def test_a_reply_with_hundreds_of_references_still_threads_by_the_newest(desk: FastDesk) -> None:
    desk.mail(ANNA, "Printer", "Broken.")
    acknowledgement = desk.mails_to(ANNA, "ticket_created")[0]
    references = " ".join(f"<old-{n}@client.example>" for n in range(300)) + " " + acknowledgement["message_id"]
    raw = make_mail(ANNA, "About my printer", "It works again.", to="support@desk.example", references=references,
                    headers=ANNA_AR)
    assert desk.ingest(raw).startswith("processed SD-1")
    assert len(desk.rows(Ticket)) == 1


# E1 and E3: the public corpus, its mutants and a 60 MB mail through the daemon -----------------


def corpus_files() -> list[Path]:
    corpus = shared_dir() / "corpus" / "public"
    return sorted(path for path in corpus.rglob("*") if path.is_file() and not path.name.endswith(".gitattributes"))


def own_mails() -> list[bytes]:
    """Mail from known customers (so the ticket path meets the mutants too): attachments, HTML."""
    mails = []
    for n in range(10):
        message = EmailMessage(policy=SMTP)
        message["From"], message["To"] = f"Anna Bērziņa <{ANNA}>", "support@desk.example"
        message["Subject"] = f"Pārskats {n}: printeris nedrukā"
        message["Message-ID"] = f"<own-{n}@acme.example>"
        message["Authentication-Results"] = ANNA_AR["Authentication-Results"]
        message.set_content(f"Labdien!\n\nPrinteris {n} nedrukā.\n")
        message.add_alternative(f"<p>Labdien!</p><p>Printeris <b>{n}</b> nedrukā.</p>", subtype="html")
        message.add_attachment(bytes(range(256)) * 20, maintype="application", subtype="pdf", filename=f"log{n}.pdf")
        mails.append(message.as_bytes())
    return mails


def mutants(sources: list[bytes], count: int, seed: int = 20261126) -> list[bytes]:
    """`count` broken variants of `sources`, the same every run: each applies one mutation."""
    rng = random.Random(seed)

    def head_and_body(raw: bytes) -> tuple[bytes, bytes]:
        head, _, body = raw.partition(b"\r\n\r\n") if b"\r\n\r\n" in raw else raw.partition(b"\n\n")
        return head, body

    def truncate(raw: bytes) -> bytes:
        return raw[:rng.randrange(1, max(2, len(raw)))]

    def flip_bytes(raw: bytes) -> bytes:
        data = bytearray(raw)
        for _ in range(rng.randrange(1, 50)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)

    def drop_boundaries(raw: bytes) -> bytes:
        return re.sub(rb"(?m)^--[^\r\n]*\r?\n", b"", raw)

    def duplicate_headers(raw: bytes) -> bytes:
        head, body = head_and_body(raw)
        return head + b"\r\n" + head + b"\r\n\r\n" + body

    def garbage_in_headers(raw: bytes) -> bytes:
        head, body = head_and_body(raw)
        lines = head.split(b"\n")
        for _ in range(5):
            index = rng.randrange(len(lines))
            lines[index] += bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 40)))
        return b"\n".join(lines) + b"\r\n\r\n" + body

    def nul_in_body(raw: bytes) -> bytes:
        head, body = head_and_body(raw)
        cut = rng.randrange(len(body) + 1)
        return head + b"\r\n\r\n" + body[:cut] + b"\x00" * rng.randrange(1, 100) + body[cut:]

    def bare_line_endings(raw: bytes) -> bytes:
        return raw.replace(b"\r\n", rng.choice([b"\r", b"\n", b"\n\r"]))

    def no_blank_line(raw: bytes) -> bytes:
        head, body = head_and_body(raw)
        return head + b"\r\n" + body

    def huge_header(raw: bytes) -> bytes:
        return b"X-Huge: " + b"x" * rng.randrange(10_000, 200_000) + b"\r\n" + raw

    def drop_from(raw: bytes) -> bytes:
        return re.sub(rb"(?im)^from:[^\r\n]*\r?\n", b"", raw)

    def shuffle_lines(raw: bytes) -> bytes:
        lines = raw.split(b"\n")
        start = rng.randrange(len(lines))
        block = lines[start:start + 30]
        rng.shuffle(block)
        return b"\n".join(lines[:start] + block + lines[start + 30:])

    def bad_content_type(raw: bytes) -> bytes:
        value = rng.choice([b"multipart/mixed", b'multipart/mixed; boundary=""', b"message/rfc822",
                            b"text/plain; charset=x-no-such-charset", b"multipart/report; boundary=\x00",
                            b"application/octet-stream; name=" + b"a" * 5000])
        return re.sub(rb"(?im)^content-type:[^\r\n]*", b"Content-Type: " + value, raw, count=1)

    operations = [truncate, flip_bytes, drop_boundaries, duplicate_headers, garbage_in_headers, nul_in_body,
                  bare_line_endings, no_blank_line, huge_header, drop_from, shuffle_lines, bad_content_type]
    return [operations[n % len(operations)](sources[rng.randrange(len(sources))]) for n in range(count)]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dovecot: Any) -> Iterator[tuple[DaemonProcess, FastDesk]]:
    """`maildesk run` polling the test Dovecot (IMAP only, outgoing mail to var/sent/), with the
    standard people; the FastDesk beside it reads the same database."""
    dovecot.reset()
    directory = tmp_path_factory.mktemp("daemon")
    desk = FastDesk(directory)
    standard_people(desk)
    env = {**desk.env, "MAILDESK_IMAP_HOST": "127.0.0.1", "MAILDESK_IMAP_PORT": str(dovecot.port),
           "MAILDESK_IMAP_USER": dovecot.user, "MAILDESK_IMAP_PASSWORD": dovecot.password,
           "MAILDESK_IMAP_SSL": "false", "MAILDESK_IMAP_POLL_SECONDS": "2"}
    process = DaemonProcess(env, directory)
    process.start()
    yield process, desk
    try:
        assert process.stop() == 0
    finally:
        process.close()
        desk.close()


def append_all(dovecot: Any, raws: list[bytes]) -> None:
    with dovecot.client() as imap:
        for raw in raws:
            imap.append("INBOX", raw)


def daemon_memory(process: DaemonProcess, field: str) -> float:
    assert process.process is not None
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc status")


@pytest.mark.servers
def test_the_public_corpus_and_200_mutants_through_the_daemon_crash_nothing_and_lose_nothing(
        daemon: tuple[DaemonProcess, FastDesk], dovecot: Any) -> None:
    """E1: every file of ../shared/corpus/public, ten mails from customers, and 200 seeded mutants
    of them, APPENDed to the INBOX the running daemon polls."""
    files = corpus_files()
    if not files:
        pytest.skip(f"the public corpus is not at {shared_dir() / 'corpus' / 'public'} (set MAILDESK_SHARED_DIR)")
    process, desk = daemon
    public = [raw for raw in map(Path.read_bytes, files) if raw.strip()]  # IMAP cannot hold an empty mail
    small = [raw for raw in public if len(raw) < 100_000] + own_mails()
    broken = [raw for raw in mutants(small, 210) if raw.strip()][:200]
    appended = public + own_mails() + broken
    append_all(dovecot, appended)

    wait_until(lambda: dovecot.count("INBOX") == 0, 90, interval=0.5, what="the INBOX emptied")
    assert process.process is not None and process.process.poll() is None  # still running: 0 crashes
    assert dovecot.count("Processed") + dovecot.count("Quarantine") == len(appended)
    rows = desk.rows(InboxItem)
    filed = dovecot.messages("Processed") + dovecot.messages("Quarantine")  # as the server serves them (CRLF)
    assert {row.sha256 for row in rows} == {hashlib_sha256(raw) for raw in filed}  # each has its row, once
    counts = states(desk)
    assert set(counts) <= {"processed", "held", "ignored", "quarantined"}, counts
    assert all(row.reason for row in rows if row.state in ("quarantined", "held", "ignored"))
    quarantined_public = [row for row in rows[:len(public)] if row.state == "quarantined"]  # appended first
    assert len(quarantined_public) <= 0.05 * len(public), [row.reason for row in quarantined_public]
    log = process.log.read_text(errors="replace")
    assert "Traceback" not in log and " failed" not in log.replace("failed 0", "")
    print(f"E1: {len(appended)} appended ({len(public)} public, {len(broken)} mutants); {counts}; "
          f"{len(quarantined_public)} public quarantined")


def hashlib_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@pytest.mark.servers
def test_a_60_mb_mail_is_never_fetched_and_leaves_the_daemons_memory_alone(
        daemon: tuple[DaemonProcess, FastDesk], dovecot: Any) -> None:
    """E3: MAILDESK_MAX_MESSAGE_BYTES is 40 MB by default; RFC822.SIZE is checked before BODY[]."""
    process, desk = daemon
    wait_until(lambda: dovecot.count("INBOX") == 0, 60, interval=0.5, what="an idle daemon")
    quarantined = dovecot.count("Quarantine")
    peak_before = daemon_memory(process, "VmHWM")
    huge = make_mail(ANNA, "The whole disk image", "Attached.", to="support@desk.example",
                     message_id="<huge@acme.example>") + b"x" * (60 * 1024 * 1024)
    append_all(dovecot, [huge])
    del huge
    wait_until(lambda: dovecot.count("Quarantine") == quarantined + 1, 60, interval=0.5,
               what="the 60 MB mail in Quarantine")
    assert dovecot.count("INBOX") == 0
    assert daemon_memory(process, "VmHWM") < peak_before + 50
    (row,) = desk.rows(InboxItem, InboxItem.message_id == "<huge@acme.example>")
    assert row.state == "quarantined" and "exceeds MAILDESK_MAX_MESSAGE_BYTES" in row.reason
    assert desk.rows(InboxRaw, InboxRaw.inbox_id == row.id) == []  # never fetched, so no bytes stored
    assert row.size > 60 * 1024 * 1024


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_nul_bytes_in_a_body_a_name_or_a_file_name_still_make_a_ticket_on_every_database(
        database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """PostgreSQL text cannot hold NUL: the parse stage replaces it, or such mail would fail three times."""
    people = Desk(tmp_path, database_url=request.getfixturevalue("pg_url") if database == "postgresql" else None)
    standard_people(people)
    message = EmailMessage(policy=SMTP)
    message["From"], message["To"], message["Subject"] = "anna@acme.example", "support@desk.example", "Printer"
    message["Message-ID"] = "<nul@acme.example>"
    message.set_content("The printer\x00 prints\x00 nothing.")
    message.add_attachment(b"log", maintype="application", subtype="octet-stream", filename="log.txt")
    raw = message.as_bytes().replace(b"From: anna@acme.example", b"From: =?utf-8?q?Anna=00B?= <anna@acme.example>")
    people.ingest(raw.replace(b'filename="log.txt"', b'filename="log\x00.txt"'))
    (row,) = people.json("inbox", "list")
    assert row["state"] == "processed", row["reason"]
    assert people.ticket("SD-1")["description"] == "The printer\ufffd prints\ufffd nothing."

    people.ingest(b"From: anna@acme.example\r\nSubject: x\r\nMessage-ID: <a\x00b@x>\r\n\r\nbody\r\n")  # exit 0: stored
    row = people.json("inbox", "list")[-1]
    assert row["state"] == "quarantined" and "NUL bytes in the header" in row["reason"] and row["message_id"] == "<ab@x>"


def break_notify_for_the_poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection after the ticket row is written: notifying about the ticket whose
    summary is "Poison" raises."""
    real = Notifier.notify

    def breaks_on_the_poison(self: Notifier, ticket: Any, *args: Any, **kwargs: Any) -> Any:
        if ticket.summary == "Poison":
            raise RuntimeError("injected fault after the ticket row")
        return real(self, ticket, *args, **kwargs)

    monkeypatch.setattr(Notifier, "notify", breaks_on_the_poison)


def test_a_message_that_fails_after_its_ticket_was_written_leaves_the_next_ticket_unharmed(
        desk: FastDesk, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failing mail's ticket row is rolled back with its savepoint; the next mail of the same
    batch gets the id that row had (SQLite reuses it) and must still become a ticket."""
    break_notify_for_the_poison(monkeypatch)
    mails = [make_mail(ANNA, "Good 1", "One.", to="support@desk.example"),
             make_mail(PETER, "Poison", "Breaks.", to="support@desk.example"),
             make_mail(BOSS, "Good 2", "Two.", to="support@desk.example")]
    pipeline = desk.pipe()
    outcomes = pipeline.process_many([stored.inbox_id for stored in pipeline.store_many(mails, "pipe")])
    assert [outcome.state for outcome in outcomes if outcome] == ["processed", "failed", "processed"]
    assert sorted(ticket.summary for ticket in desk.rows(Ticket)) == ["Good 1", "Good 2"]
    # the batch ran twice (all in one savepoint, then one per mail): nothing of the first run stayed
    told = [(row.ticket_id, row.template, row.to_addresses) for row in desk.rows(OutboxItem)]
    assert len(told) == len(set(told)) and {row[1] for row in told} >= {"ticket_created"}
    assert sorted(template for _, template, _ in told).count("ticket_created") == 2


def test_a_lone_message_that_fails_after_its_ticket_was_written_leaves_nothing_but_its_failure(
        desk: FastDesk, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mail processed alone (LMTP, IDLE, `ingest`) runs without a savepoint: its failure rolls
    back the whole transaction, then is recorded in a new one."""
    break_notify_for_the_poison(monkeypatch)
    pipeline = desk.pipe()
    stored = pipeline.store_many([make_mail(PETER, "Poison", "Breaks.", to="support@desk.example"),
                                  make_mail(ANNA, "Good", "Fine.", to="support@desk.example")], "pipe")
    (poisoned,) = pipeline.process_many([stored[0].inbox_id])
    (good,) = pipeline.process_many([stored[1].inbox_id])
    assert poisoned is not None and (poisoned.state, poisoned.ticket) == ("failed", None)
    assert "RuntimeError: injected fault after the ticket row" in poisoned.reason
    assert good is not None and good.state == "processed"
    assert [ticket.summary for ticket in desk.rows(Ticket)] == ["Good"]
    assert {row.ticket_id for row in desk.rows(OutboxItem)} == {desk.rows(Ticket)[0].id}
    (row,) = desk.rows(InboxItem, InboxItem.id == stored[0].inbox_id)
    assert (row.state, row.attempts, row.claimed_by) == ("failed", 1, None)
