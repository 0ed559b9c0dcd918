"""The machine-mail classifier: one row per signal and value (A1), real human mail, fuzzing (E9)."""

from __future__ import annotations

import time
from email import message_from_bytes
from email.header import decode_header, make_header
from email.policy import compat32
from email.utils import parseaddr
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk.core.classify import RULES, classify
from maildesk.core.mail import InboundMail

SUPPORT = "support@desk.example"
DOMAIN = "desk.example"
CORPUS = Path("/work/shared/corpus/public")


def mail(*headers: tuple[str, str], subject: str = "Printer on floor 3 is broken",
         sender: str = "anna@customer.example", message_id: str = "<CAF1234@mail.customer.example>",
         in_reply_to: str = "",
         references: tuple[str, ...] = ()) -> InboundMail:
    return InboundMail(message_id=message_id, subject=subject, from_address=sender, in_reply_to=in_reply_to,
                       references=references,
                       headers=(("From", sender), ("Subject", subject), ("Message-ID", message_id), *headers))


def kind_of(inbound: InboundMail) -> str:
    return classify(inbound, support_address=SUPPORT, own_domain=DOMAIN).kind


A_REPLY = {"in_reply_to": "<sd-12.abc@desk.example>"}

MACHINE_ROWS: list[tuple[str, InboundMail, str]] = [
    # §1.3 row 1: our own loop header
    ("own_loop", mail(("X-Maildesk-Loop", "desk.example")), "X-Maildesk-Loop"),
    ("own_loop", mail(("x-maildesk-loop", "")), "X-Maildesk-Loop"),
    # row 2: our Message-ID domain; our own address
    ("own_loop", mail(message_id="<sd-12.a1b2@desk.example>"), "Message-ID"),
    ("own_loop", mail(message_id="<sd-12.a1b2@DESK.EXAMPLE>"), "Message-ID"),
    ("own_loop", mail(sender=SUPPORT), "From"),
    # row 3: Auto-Submitted other than "no" (RFC 3834 §5, RFC 5436)
    ("auto_reply", mail(("Auto-Submitted", "auto-replied")), "Auto-Submitted"),
    ("auto_reply", mail(("Auto-Submitted", "auto-generated")), "Auto-Submitted"),
    ("auto_reply", mail(("Auto-Submitted", "auto-notified")), "Auto-Submitted"),
    ("auto_reply", mail(("Auto-Submitted", "Auto-Replied; owner-email=\"x@y.example\"")), "Auto-Submitted"),
    ("auto_reply", mail(("auto-submitted", "auto-replied (vacation)")), "Auto-Submitted"),
    ("auto_reply", mail(("Auto-Submitted", "vacation")), "Auto-Submitted"),
    # row 4 and 5: bounces
    ("bounce", mail(("Return-Path", "<>")), "Return-Path"),
    ("bounce", mail(("Return-Path", "< >")), "Return-Path"),
    ("bounce", mail(("Content-Type", "multipart/report; report-type=delivery-status; boundary=x")), "Content-Type"),
    ("bounce", mail(("Content-Type", "Multipart/Report; report-type=disposition-notification")), "Content-Type"),
    ("bounce", mail(("Content-Type", "multipart/report; report-type=feedback-report")), "Content-Type"),
    ("bounce", mail(("Content-Type", "multipart/report"), ("Auto-Submitted", "auto-replied")), "Content-Type"),
    ("bounce", mail(("X-Failed-Recipients", "gone@customer.example")), "X-Failed-Recipients"),
    # row 6: MAILER-DAEMON / postmaster senders
    ("bounce", mail(sender="mailer-daemon@mx.customer.example"), "From"),
    ("bounce", mail(sender="MAILER-DAEMON@mx.customer.example"), "From"),
    ("bounce", mail(sender="postmaster@customer.example"), "From"),
    ("bounce", mail(("Content-Type", "message/delivery-status")), "Content-Type"),
    # row 7: Precedence / X-Precedence
    ("auto_reply", mail(("Precedence", "auto_reply")), "Precedence"),
    ("bulk", mail(("Precedence", "bulk")), "Precedence"),
    ("bulk", mail(("Precedence", "Junk")), "Precedence"),
    ("bulk", mail(("Precedence", "list")), "Precedence"),
    ("bulk", mail(("X-Precedence", "bulk")), "X-Precedence"),
    ("auto_reply", mail(("X-Precedence", "auto_reply")), "X-Precedence"),
    # row 8: X-Autoreply / X-Autorespond
    ("auto_reply", mail(("X-Autoreply", "yes")), "X-Autoreply"),
    ("auto_reply", mail(("X-Autorespond", "Out of office")), "X-Autorespond"),
    ("auto_reply", mail(("X-Autoresponder", "")), "X-Autoresponder"),
    # row 9: X-Auto-Response-Suppress counts only with an Exchange rule loop header
    ("auto_reply", mail(("X-Auto-Response-Suppress", "All"), ("X-MS-Exchange-Inbox-Rules-Loop", "anna@x.example")),
     "X-MS-Exchange-Inbox-Rules-Loop"),
    # row 10: RFC 2369 / 2919 list headers
    ("bulk", mail(("List-Id", "<users.lists.example>")), "List-Id"),
    ("bulk", mail(("List-Unsubscribe", "<mailto:leave@lists.example>")), "List-Unsubscribe"),
    ("bulk", mail(("List-Post", "<mailto:users@lists.example>")), "List-Post"),
    ("bulk", mail(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")), "List-Unsubscribe-Post"),
    # rows 11-13
    ("auto_reply", mail(("X-Loop", "yes")), "X-Loop"),
    ("auto_reply", mail(("X-FC-Machinegenerated", "true")), "X-FC-Machinegenerated"),
    ("auto_reply", mail(("X-Ack", "no")), "X-Ack"),
    # out-of-office subjects, Latvian and English first
    ("auto_reply", mail(subject="Automatic reply: [SD-12] Printer"), "Subject"),
    ("auto_reply", mail(subject="Automātiskā atbilde: [SD-12] Printeris"), "Subject"),
    ("auto_reply", mail(subject="AUTOMĀTISKĀ ATBILDE: Re: Printeris"), "Subject"),
    ("auto_reply", mail(subject="Prombūtnē: Re: Printeris"), "Subject"),
    ("auto_reply", mail(subject="Prombutne: [sd-12] printeris"), "Subject"),
    ("auto_reply", mail(subject="Prombūtnē", **A_REPLY), "Subject"),
    ("auto_reply", mail(subject="Prombūtnes paziņojums: Atb: [SD-3] x"), "Subject"),
    ("auto_reply", mail(subject="Out of Office: Re: [SD-12] Printer"), "Subject"),
    ("auto_reply", mail(subject="Out of Office AutoReply: Printer [SD-12]"), "Subject"),
    ("auto_reply", mail(subject="Out of office", **A_REPLY), "Subject"),
    ("auto_reply", mail(subject="out of the office!", **A_REPLY), "Subject"),
    ("auto_reply", mail(subject="Autoreply: Re: Printer"), "Subject"),
    ("auto_reply", mail(subject="Auto-Reply: [SD-5] Printer"), "Subject"),
    ("auto_reply", mail(subject="Auto Response", **A_REPLY), "Subject"),
    ("auto_reply", mail(subject="Abwesenheitsnotiz: AW: [SD-12] Drucker"), "Subject"),
    ("auto_reply", mail(subject="Automatische Antwort: [SD-12] Drucker"), "Subject"),
    ("auto_reply", mail(subject="Réponse automatique : [SD-12] Imprimante"), "Subject"),
    ("auto_reply", mail(subject="Автоматический ответ: [SD-12] Принтер"), "Subject"),
    ("auto_reply", mail(subject="Автоответ: Re: Принтер"), "Subject"),
    ("auto_reply", mail(subject="Automatinis atsakymas: [SD-12] Spausdintuvas"), "Subject"),
    ("auto_reply", mail(subject="Automaatne vastus: [SD-12] Printer"), "Subject"),
]


@pytest.mark.parametrize("kind, inbound, header", MACHINE_ROWS,
                         ids=[f"{row[0]}-{row[2]}-{index}" for index, row in enumerate(MACHINE_ROWS)])
def test_every_machine_signal_gives_its_class_and_names_the_header(kind: str, inbound: InboundMail,
                                                                   header: str) -> None:
    result = classify(inbound, support_address=SUPPORT, own_domain=DOMAIN)
    assert (result.kind, result.is_machine) == (kind, True)
    assert result.reason.lower().startswith(header.lower())


HUMAN_ROWS: list[tuple[str, InboundMail]] = [
    ("plain mail", mail()),
    ("Auto-Submitted: no", mail(("Auto-Submitted", "no"))),
    ("Auto-Submitted: No (comment)", mail(("Auto-Submitted", "No (sent by a person)"))),
    ("Precedence: first-class", mail(("Precedence", "first-class"))),
    ("Precedence: normal", mail(("Precedence", "normal"))),
    ("X-Precedence: urgent", mail(("X-Precedence", "urgent"))),
    ("X-Auto-Response-Suppress alone (Outlook)", mail(("X-Auto-Response-Suppress", "All"))),
    ("X-Auto-Response-Suppress: DR, OOF", mail(("X-Auto-Response-Suppress", "DR, RN, NRN, OOF, AutoReply"))),
    ("Exchange rule loop header alone (a forwarding rule)", mail(("X-MS-Exchange-Inbox-Rules-Loop", "a@x.example"))),
    ("X-Loop with an address (procmail)", mail(("X-Loop", "anna@customer.example"))),
    ("X-Ack: yes", mail(("X-Ack", "yes"))),
    ("a Return-Path with an address", mail(("Return-Path", "<anna@customer.example>"))),
    ("multipart/mixed", mail(("Content-Type", "multipart/mixed; boundary=report"))),
    ("body mentions automatic", mail(subject="Automatic backups fail every night")),
    ("asks about out of office", mail(subject="Out of office not working")),
    ("asks about out of office, with colon", mail(subject="Out of office: how do I set it up?")),
    ("subject is just the topic", mail(subject="Out of office")),
    ("asks about autoreply", mail(subject="Autoreply settings in Outlook")),
    ("Automatic reply question", mail(subject="Automatic reply: how do I turn it off?")),
    ("reply to a thread about OOF", mail(subject="Re: Out of office", **A_REPLY)),
    ("Latvian question", mail(subject="Kā iestatīt prombūtnes paziņojumu?")),
    ("Latvian reply about absence", mail(subject="Atb: [SD-12] Prombūtnē līdz pirmdienai", **A_REPLY)),
    ("mentions auto reply later", mail(subject="[SD-12] Re: automatic reply loops")),
    ("postmaster-like name", mail(sender="postmaster.jones@customer.example")),
    ("mailer in name", mail(sender="mailer@customer.example")),
    ("agent on our domain with our Message-ID domain", mail(sender="agent@desk.example",
                                                            message_id="<1a2b@desk.example>")),
    ("Message-ID on a sub-domain of ours", mail(message_id="<x@mail.desk.example>")),
    ("Message-ID on a domain ending like ours", mail(message_id="<x@notdesk.example>")),
    ("list word in other headers", mail(("X-Mailing", "list"), ("Organization", "Bulk Ltd"))),
    ("reply-to noreply but from a person", mail(("Reply-To", "noreply@customer.example"))),
    ("a forum relaying a person from noreply@ (mikel/mail trailing_dot)", mail(sender="noreply@forum.example")),
    ("to a list but no list header", mail(("To", "all@customer.example"))),
    ("loop header of someone else", mail(("X-RT-Loop-Prevention", "other-rt"))),
]


@pytest.mark.parametrize("name, inbound", HUMAN_ROWS, ids=[row[0] for row in HUMAN_ROWS])
def test_human_mail_is_never_called_machine(name: str, inbound: InboundMail) -> None:
    result = classify(inbound, support_address=SUPPORT, own_domain=DOMAIN)
    assert (result.kind, result.is_machine) == ("human", False), result.reason


def test_the_most_specific_class_wins() -> None:
    both = mail(("Auto-Submitted", "auto-replied"), ("X-Maildesk-Loop", "desk"), ("List-Id", "<x>"))
    assert kind_of(both) == "own_loop"
    assert kind_of(mail(("Auto-Submitted", "auto-replied"), ("List-Id", "<x>"))) == "auto_reply"
    assert kind_of(mail(("Return-Path", "<>"), ("Auto-Submitted", "auto-replied"))) == "bounce"


def test_the_loop_header_name_is_configurable() -> None:
    inbound = mail(("X-Other-Loop", "1"))
    assert classify(inbound, support_address=SUPPORT, own_domain=DOMAIN, loop_header="X-Other-Loop").kind == "own_loop"
    assert kind_of(inbound) == "human"


def test_every_rule_has_a_known_kind() -> None:
    assert {rule.kind for rule in RULES} <= {"auto_reply", "bulk", "bounce", "own_loop"}


def _from_file(path: Path) -> InboundMail:
    """A rough stand-in for maildesk.parse: enough headers for the classifier."""
    message = message_from_bytes(path.read_bytes(), policy=compat32)
    headers = tuple((name, _decoded(value)) for name, value in message.items())
    sender = parseaddr(_decoded(message.get("From", "")))[1].lower()
    return InboundMail(message_id=_decoded(message.get("Message-ID", "")).strip(),
                       subject=_decoded(message.get("Subject", "")), from_address=sender,
                       in_reply_to=_decoded(message.get("In-Reply-To", "")), headers=headers)


def _decoded(value: object) -> str:
    try:
        return str(make_header(decode_header(str(value))))
    except Exception:
        return str(value)


HUMAN_FILES = sorted([*CORPUS.glob("talon/*.eml"), *CORPUS.glob("mikelmail/*plain_emails*.eml"),
                      *CORPUS.glob("mikelmail/*rfc2822*.eml")])
BOUNCE_FILES = sorted([*CORPUS.glob("flanker/*bounce_*.eml"), *CORPUS.glob("mikelmail/*multipart_report*.eml"),
                       *CORPUS.glob("nodemailer/*delivery-status*.eml"),
                       *CORPUS.glob("flanker/*disposition-notification*.eml")])


@pytest.mark.skipif(not HUMAN_FILES, reason="the public corpus is not on this machine")
def test_real_human_mail_from_the_public_corpus_is_never_called_machine() -> None:
    """A1: 0 false machine verdicts on the talon replies and the mikel/mail plain and RFC 2822 mails."""
    assert len(HUMAN_FILES) >= 30
    verdicts = {path.name: classify(_from_file(path), support_address=SUPPORT, own_domain=DOMAIN)
                for path in HUMAN_FILES}
    assert {name: verdict.reason for name, verdict in verdicts.items() if verdict.is_machine} == {}


@pytest.mark.skipif(not BOUNCE_FILES, reason="the public corpus is not on this machine")
def test_real_bounces_from_the_public_corpus_are_machine_mail() -> None:
    """A6: every DSN fixture, broken ones included, is recognised as a bounce."""
    assert len(BOUNCE_FILES) >= 10
    verdicts = {path.name: classify(_from_file(path), support_address=SUPPORT, own_domain=DOMAIN)
                for path in BOUNCE_FILES}
    assert {name: verdict.kind for name, verdict in verdicts.items() if verdict.kind != "bounce"} == {}


_HEADER_NAMES = st.sampled_from(["Auto-Submitted", "Precedence", "X-Precedence", "List-Id", "Return-Path",
                                 "Content-Type", "Message-ID", "X-Maildesk-Loop", "X-Autoreply", "X-Loop",
                                 "X-Auto-Response-Suppress", "X-MS-Exchange-Inbox-Rules-Loop", "From", "Subject"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.one_of(_HEADER_NAMES, st.text(max_size=30)), st.text(max_size=200)), max_size=12),
       st.text(max_size=300), st.text(max_size=80), st.text(max_size=80), st.text(max_size=40))
def test_fuzzing_the_classifier_raises_nothing(headers: list[tuple[str, str]], subject: str,
                                                           sender: str, message_id: str, own_domain: str) -> None:
    """E9: random headers, subjects and addresses; 0 exceptions."""
    inbound = InboundMail(message_id=message_id, subject=subject, from_address=sender, headers=tuple(headers),
                          in_reply_to=message_id)
    result = classify(inbound, support_address=sender, own_domain=own_domain)
    assert result.kind in ("human", "auto_reply", "bulk", "bounce", "own_loop")


def test_the_classifier_takes_well_under_ten_milliseconds_per_mail() -> None:
    """E9's time budget, measured on 1,000 large human mails (the slowest case: every rule runs)."""
    headers = tuple((f"X-Header-{number}", "value " * 50) for number in range(100))
    mails = [mail(*headers, subject="Out of office: " + "x" * 5000) for _ in range(1000)]
    started = time.perf_counter()
    for inbound in mails:
        assert kind_of(inbound) == "human"
    assert (time.perf_counter() - started) / len(mails) < 0.01
