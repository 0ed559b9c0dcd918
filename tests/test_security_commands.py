"""Who may make a mail change a ticket (issue 4, test plan B1-B8), through the whole pipeline.

`ACCEPT THE ESTIMATE` authorises paid work: it runs only when its real owner wrote it, to
the reply token we sent them, with our MTA's DMARC pass for their domain, and only once.
Everything else is kept as an unverified internal note, audited, and the address on file
(never the sender of the refused mail) is asked once to confirm.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from maildesk.models import ConsumedToken, Message
from tests.mailbuilder import make_mail, quoted
from tests.security_desk import FastDesk, desk, prepare  # noqa: F401 (fixtures)
from tests.test_flows import AGENT, ANNA, BOSS, DUE, EVE, PETER, open_ticket

MTA = "mx.desk.example"
KATE = "kate@acme.example"  # a second responsible representative of ACME
ATTACKER = "mallory@evil.example"


def estimate(desk: FastDesk) -> None:
    key = open_ticket(desk)
    desk.reply(AGENT, key, f"ESTIMATE 3h DUE {DUE}")


@pytest.fixture(scope="module")
def prepared_var(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test starts from SD-1, estimated at 3 hours and waiting for Boss, ACME's responsible."""
    return prepare(tmp_path_factory, then=estimate)


def estimated(desk: FastDesk) -> str:
    """The ticket waiting for ACME's responsible representative to accept a 3-hour estimate."""
    assert desk.ticket("SD-1")["status"] == "ESTIMATED"
    return "SD-1"


def request_to(desk: FastDesk, address: str) -> dict[str, Any]:
    return desk.mails_to(address, "estimate_request")[-1]


def answer(desk: FastDesk, request: dict[str, Any], body: str, *, sender: str = BOSS, dmarc: str | None = "pass",
           from_header: str | None = None, headers: dict[str, str] | None = None, **options: Any) -> str:
    """Answer a notification as a mail client does (to its token Reply-To, in its thread);
    `from_header` replaces the From line as written, for forged and confusing ones."""
    all_headers = dict(headers or {})
    if dmarc is not None:
        all_headers = {"Authentication-Results": f"{MTA}; dmarc={dmarc} header.from={sender.split('@')[1]}",
                       **all_headers}
    options.setdefault("to", request["reply_to"])
    options.setdefault("in_reply_to", request["message_id"])
    raw = make_mail(sender, f"Re: {request['subject']}", body, headers=all_headers, **options)
    if from_header is not None:
        raw = re.sub(rb"(?m)^From: [^\r\n]*", lambda _: b"From: " + from_header.encode(), raw, count=1)
    return desk.ingest(raw)


def accepted(desk: FastDesk, key: str) -> int:
    """Billable authorisations: applied moves to ESTIMATE ACCEPTED."""
    return sum(1 for event in desk.ticket(key)["events"]
               if event["outcome"] == "applied" and event["to_status"] == "ESTIMATE ACCEPTED")


def unverified_events(desk: FastDesk, key: str) -> list[dict[str, Any]]:
    return [event for event in desk.ticket(key)["events"] if event["outcome"] == "unverified"]


def unverified_notes(desk: FastDesk) -> list[Message]:
    return desk.rows(Message, Message.unverified == True)  # noqa: E712 (SQL)


# B1 -------------------------------------------------------------------------------------------

SPOOFS = [
    pytest.param({"to": "support@desk.example", "in_reply_to": "", "dmarc": "fail"}, "no_token", id="no token, dmarc=fail"),
    pytest.param({"to": "support@desk.example", "in_reply_to": "", "dmarc": None}, "no_token", id="no token, no A-R"),
    pytest.param({"to": "support@desk.example", "in_reply_to": "", "dmarc": None,
                  "headers": {"Authentication-Results": f"{MTA}; spf=softfail smtp.mailfrom=acme.example"}}, "no_token",
                 id="no token, spf=softfail"),
    pytest.param({"dmarc": "fail"}, "dmarc=fail", id="the owner's token, dmarc=fail"),
]


@pytest.mark.parametrize(("spoof", "reason"), SPOOFS)
def test_a_spoofed_from_on_accept_the_estimate_is_refused_and_only_the_owner_is_asked_once(
        desk: FastDesk, spoof: dict[str, Any], reason: str) -> None:
    key = estimated(desk)
    request = request_to(desk, BOSS)
    before = len(desk.mails_to(BOSS))
    for _ in range(2):
        answer(desk, request, "ACCEPT THE ESTIMATE", **spoof)
    ticket = desk.ticket(key)
    assert ticket["status"] == "ESTIMATED" and accepted(desk, key) == 0 and desk.rows(ConsumedToken) == []
    events = unverified_events(desk, key)
    assert len(events) == 2 and all(event["actor"] == BOSS and reason in event["reason"] for event in events)
    new_mail = desk.mails_to(BOSS)[before:]
    assert [row["template"] for row in new_mail] == ["confirm_request"]  # one, however often it is tried
    assert not desk.mails_to(BOSS, "command_refused")
    assert len(unverified_notes(desk)) == 2 and all(note.internal for note in unverified_notes(desk))


def test_after_a_refusal_the_owner_confirms_by_answering_the_confirmation_request(desk: FastDesk) -> None:
    key = estimated(desk)
    answer(desk, request_to(desk, BOSS), "ACCEPT THE ESTIMATE", to="support@desk.example", in_reply_to="",
           dmarc="fail")
    confirmation = desk.mails_to(BOSS, "confirm_request")[-1]
    answer(desk, confirmation, "ACCEPT THE ESTIMATE")
    assert desk.ticket(key)["status"] == "ESTIMATE ACCEPTED" and accepted(desk, key) == 1


# B2 -------------------------------------------------------------------------------------------


def test_a_forwarded_estimate_request_answered_by_a_colleague_does_not_accept_it(desk: FastDesk) -> None:
    desk.run("user", "add", KATE, "--name", "Kate", "--org", "ACME", "--responsible", "--language", "en")
    key = estimated(desk)
    desk.reply(AGENT, key, f"ESTIMATE 3h DUE {DUE}")  # the estimate again, now to Kate too
    forwarded = request_to(desk, BOSS)  # Boss forwards his request; Kate answers it with Boss's token
    answer(desk, forwarded, "ACCEPT THE ESTIMATE\n\nGo ahead.", sender=KATE)
    ticket = desk.ticket(key)
    assert ticket["status"] == "ESTIMATED" and accepted(desk, key) == 0
    event = unverified_events(desk, key)[-1]
    assert event["actor"] == KATE and "not_yours" in event["reason"]
    note = [message for message in ticket["messages"] if message["direction"] == "in"][-1]
    assert note["from"] == KATE and note["internal"] and "Go ahead." in note["new_text"]
    assert [row["template"] for row in desk.mails_to(KATE)][-1] == "confirm_request"
    assert not [row for row in desk.mails_to(BOSS) if row["template"] == "confirm_request"]
    answer(desk, request_to(desk, KATE), "ACCEPT THE ESTIMATE", sender=KATE)  # her own request works
    assert accepted(desk, key) == 1


# B3 -------------------------------------------------------------------------------------------


def test_a_valid_token_and_a_verified_sender_accept_once_and_replays_are_no_ops(desk: FastDesk) -> None:
    key = estimated(desk)
    request = request_to(desk, BOSS)
    raw = make_mail(BOSS, f"Re: {request['subject']}", "ACCEPT THE ESTIMATE", to=request["reply_to"],
                    in_reply_to=request["message_id"],
                    headers={"Authentication-Results": f"{MTA}; dmarc=pass header.from=acme.example"})
    assert desk.ingest(raw).startswith("processed")
    assert desk.ticket(key)["status"] == "ESTIMATE ACCEPTED"
    sent = len(desk.outbox())

    assert desk.ingest(raw) == "already stored"  # the original APPENDed again
    replay = answer(desk, request, "ACCEPT THE ESTIMATE")  # the same text with a new Message-ID
    assert "token_consumed" in replay

    assert accepted(desk, key) == 1 and len(desk.rows(ConsumedToken)) == 1
    assert len(desk.outbox()) == sent
    assert any(event["reason"].startswith("token_consumed") for event in desk.ticket(key)["events"])


def test_an_approval_of_a_changed_estimate_is_refused(desk: FastDesk) -> None:
    key = estimated(desk)
    old = request_to(desk, BOSS)
    desk.reply(AGENT, key, f"ESTIMATE 5h DUE {DUE}")
    assert len(desk.mails_to(BOSS, "estimate_request")) == 2
    answer(desk, old, "ACCEPT THE ESTIMATE")
    assert accepted(desk, key) == 0 and "estimate_changed" in unverified_events(desk, key)[-1]["reason"]
    answer(desk, request_to(desk, BOSS), "ACCEPT THE ESTIMATE")
    assert accepted(desk, key) == 1 and desk.ticket(key)["estimate_minutes"] == 300


# B4, B5, B6 spot checks (the full tables are unit tests) --------------------------------------

FORGED_RESULTS = [
    pytest.param([f"{MTA}; dmarc=fail header.from=acme.example", f"{MTA}; dmarc=pass header.from=acme.example"],
                 id="a forged pass below our fail"),
    pytest.param(["mx.evil.example; dmarc=pass header.from=acme.example"], id="another authserv-id"),
    pytest.param([f"{MTA}; dmarc=pass header.from=evil.example"], id="a pass for another domain"),
    pytest.param([f"{MTA}; dkim=pass header.d=acme.example.evil.example"], id="a look-alike signing domain"),
    pytest.param([f"{MTA} dmarc=pass header.from=acme.example"], id="malformed"),
]


@pytest.mark.parametrize("results", FORGED_RESULTS)
def test_forged_authentication_results_accept_nothing(desk: FastDesk, results: list[str]) -> None:
    key = estimated(desk)
    answer(desk, request_to(desk, BOSS), "ACCEPT THE ESTIMATE", dmarc=None,
           headers={f"Authentication-Results": results[0]} if len(results) == 1 else {})
    if len(results) > 1:  # two headers of one name: written into the raw mail as an MTA would
        request = request_to(desk, BOSS)
        raw = make_mail(BOSS, f"Re: {request['subject']}", "ACCEPT THE ESTIMATE", to=request["reply_to"],
                        in_reply_to=request["message_id"])
        lines = b"".join(b"Authentication-Results: " + value.encode() + b"\r\n" for value in results)
        desk.ingest(lines + raw)
    assert accepted(desk, key) == 0 and desk.ticket(key)["status"] == "ESTIMATED"


def test_an_authentication_result_inside_an_attached_mail_counts_for_nothing(desk: FastDesk) -> None:
    key = estimated(desk)
    request = request_to(desk, BOSS)
    inner = make_mail(BOSS, "old", "x", headers={"Authentication-Results": f"{MTA}; dmarc=pass header.from=acme.example"})
    message = EmailMessage(policy=SMTP)
    message["From"], message["To"], message["Subject"] = BOSS, request["reply_to"], f"Re: {request['subject']}"
    message["Message-ID"], message["In-Reply-To"] = "<attached@acme.example>", request["message_id"]
    message.set_content("ACCEPT THE ESTIMATE")
    message.add_attachment(inner, maintype="message", subtype="rfc822")
    desk.ingest(message.as_bytes())
    assert accepted(desk, key) == 0


def tampered(token_address: str) -> list[str]:
    local, _, domain = token_address.partition("@")
    base, _, token = local.partition("+")
    mac = token[-24:]
    flips = [token[:-24] + mac[:i] + ("a" if mac[i] != "a" else "b") + mac[i + 1:] for i in range(0, 24, 6)]
    others = [token.replace(".e", ".r", 1), token.replace(".e1.", ".e2.", 1), token[:-1], token[:-24] + "a" * 24,
              token.replace("sd-1.", "sd-2.", 1)]
    return [f"{base}+{candidate}@{domain}" for candidate in flips + others]


def test_tampered_tokens_accept_nothing(desk: FastDesk) -> None:
    key = estimated(desk)
    request = request_to(desk, BOSS)
    for address in tampered(request["reply_to"]):
        assert address != request["reply_to"]
        answer(desk, request, "ACCEPT THE ESTIMATE", to=address, in_reply_to="")
    assert accepted(desk, key) == 0 and desk.ticket(key)["status"] == "ESTIMATED"
    assert len(unverified_events(desk, key)) == len(tampered(request["reply_to"]))


CONFUSIONS = [
    pytest.param(f"{BOSS})<{ATTACKER}>", id="CVE-2023-27043"),
    pytest.param(f'"{BOSS}" <{ATTACKER}>', id="an address in the display name"),
    pytest.param(f"=?utf-8?q?boss=40acme=2Eexample?= <{ATTACKER}>", id="an encoded address in the name"),
    pytest.param(f"{BOSS}, {ATTACKER}", id="two addresses"),
    pytest.param(f"{BOSS}\r\nFrom: {ATTACKER}", id="two From headers"),
    pytest.param(f"Boss <{BOSS.replace('a', 'а', 1)}>", id="a Cyrillic look-alike"),
]


@pytest.mark.parametrize("from_header", CONFUSIONS)
def test_address_parser_confusions_accept_nothing(desk: FastDesk, from_header: str) -> None:
    key = estimated(desk)
    answer(desk, request_to(desk, BOSS), "ACCEPT THE ESTIMATE", from_header=from_header)
    assert accepted(desk, key) == 0 and desk.ticket(key)["status"] == "ESTIMATED"
    assert not desk.mails_to(ATTACKER)


# B7 -------------------------------------------------------------------------------------------


def test_reply_to_and_sender_never_make_the_identity(desk: FastDesk) -> None:
    key = estimated(desk)
    request = request_to(desk, BOSS)
    answer(desk, request, "ACCEPT THE ESTIMATE", sender=PETER, headers={"Reply-To": BOSS, "Sender": BOSS})
    assert accepted(desk, key) == 0
    refused = desk.ticket(key)["events"][-1]
    assert (refused["actor"], refused["outcome"]) == (PETER, "refused")  # Peter is no responsible representative
    desk.mail(ATTACKER, f"Re: [{key}]", "ACCEPT THE ESTIMATE", headers={"Reply-To": BOSS, "Sender": BOSS})
    assert accepted(desk, key) == 0
    assert [row["template"] for row in desk.mails_to(ATTACKER)] == ["unknown_sender"]
    assert not desk.mails_to(BOSS, "unknown_sender")


def test_a_new_request_with_a_victims_reply_to_is_filed_under_the_writer(desk: FastDesk) -> None:
    mails_to_anna = desk.mails_to(ANNA)
    desk.mail(EVE, "Please delete all our data", "Now.", headers={"Reply-To": ANNA})
    ticket = desk.json("ticket", "list")[-1]
    assert ticket["reporter"] == EVE and desk.ticket(ticket["key"])["organisation"] == "Other Ltd"
    assert desk.mails_to(ANNA) == mails_to_anna and desk.mails_to(EVE, "ticket_created")


# B8 -------------------------------------------------------------------------------------------

SUPPORT_LINE = "On Thu, 26 Nov 2026 at 10:00, Service Desk <support@desk.example> wrote:"
NOT_COMMANDS: list[tuple[str, dict[str, Any]]] = [
    ("quoted", {"body": quoted("ACCEPT THE ESTIMATE")}),
    ("quoted below a greeting", {"body": "Thanks\n\n" + quoted("ACCEPT THE ESTIMATE")}),
    ("quoted twice", {"body": "Hi\n\n>> ACCEPT THE ESTIMATE"}),
    ("quoted with spaces", {"body": "Hi\n\n> > ACCEPT THE ESTIMATE"}),
    ("below an attribution line", {"body": f"Ok\n\n{SUPPORT_LINE}\n> ACCEPT THE ESTIMATE"}),
    ("below a Latvian attribution", {"body": "Skatīt zemāk\n\n2026. gada 26. novembris 10:00, Service Desk "
                                             "<support@desk.example> rakstīja:\n> APSTIPRINĀT NOVĒRTĒJUMU"}),
    ("below Original Message", {"body": "See below\n\n-----Original Message-----\nFrom: Service Desk\n\n"
                                        "ACCEPT THE ESTIMATE"}),
    ("below an Outlook header block", {"body": "See below\n\nFrom: Service Desk <support@desk.example>\n"
                                               "Sent: Thursday, 26 November 2026 10:00\nTo: Boss\nSubject: SD-1\n\n"
                                               "ACCEPT THE ESTIMATE"}),
    ("in a forwarded message", {"body": "FYI\n\n---------- Forwarded message ---------\nFrom: Service Desk "
                                        "<support@desk.example>\nDate: Thu, 26 Nov 2026\nSubject: SD-1\n\n"
                                        "ACCEPT THE ESTIMATE"}),
    ("in the signature", {"body": "Thanks\n-- \nACCEPT THE ESTIMATE"}),
    ("inside a sentence", {"body": "I cannot ACCEPT THE ESTIMATE yet."}),
    ("after the first three lines", {"body": "Hello\nOne question\nAnother one\nACCEPT THE ESTIMATE"}),
    ("in the subject only", {"body": "Thanks.", "subject": "ACCEPT THE ESTIMATE"}),
    ("hidden HTML: display none", {"html": '<div style="display:none">ACCEPT THE ESTIMATE</div><p>Thanks</p>'}),
    ("hidden HTML: font size 0", {"html": '<p><span style="font-size:0">ACCEPT THE ESTIMATE</span>Thanks</p>'}),
    ("hidden HTML: visibility", {"html": '<p style="visibility: hidden">ACCEPT THE ESTIMATE</p><p>Ok</p>'}),
    ("hidden HTML: hidden attribute", {"html": "<p hidden>ACCEPT THE ESTIMATE</p><p>Ok</p>"}),
    ("HTML blockquote", {"html": f"<p>Ok</p><p>{SUPPORT_LINE}</p><blockquote>ACCEPT THE ESTIMATE</blockquote>"}),
    ("HTML script", {"html": "<script>ACCEPT THE ESTIMATE</script><p>Ok</p>"}),
    ("an attached text file", {"body": "See the file.", "attachment": b"ACCEPT THE ESTIMATE\n"}),
]


def b8_mail(request: dict[str, Any], body: str = "", subject: str = "", html: str = "",
            attachment: bytes = b"") -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"], message["To"] = BOSS, request["reply_to"]
    message["Subject"] = subject or f"Re: {request['subject']}"
    message["Message-ID"] = f"<b8-{abs(hash((body, subject, html)))}@acme.example>"
    message["In-Reply-To"] = request["message_id"]
    message["Authentication-Results"] = f"{MTA}; dmarc=pass header.from=acme.example"
    if html:
        message.set_content(html, subtype="html")
    else:
        message.set_content(body)
    if attachment:
        message.add_attachment(attachment, maintype="text", subtype="plain", filename="approval.txt")
    return message.as_bytes()


def test_commands_in_quoted_forwarded_or_hidden_text_are_never_executed(desk: FastDesk) -> None:
    key = estimated(desk)
    request = request_to(desk, BOSS)
    for name, parts in NOT_COMMANDS:
        desk.ingest(b8_mail(request, **parts))
        assert desk.ticket(key)["status"] == "ESTIMATED", name
    assert len(NOT_COMMANDS) == 20 and accepted(desk, key) == 0 and desk.rows(ConsumedToken) == []
    assert not desk.mails_to(BOSS, "command_refused")


TOP_LINE_VARIANTS = ["accept the estimate", "  Accept   The Estimate.", "ACCEPT THE ESTIMATE!",
                     "\n\n\nAPSTIPRINAT NOVERTEJUMU", "apstiprināt novērtējumu\nPaldies, Jānis",
                     "Hello,\nACCEPT THE ESTIMATE\n\n" + quoted("older text")]


@pytest.mark.parametrize("body", TOP_LINE_VARIANTS)
def test_case_and_whitespace_variants_of_a_top_line_command_are_recognised(desk: FastDesk, body: str) -> None:
    key = estimated(desk)
    desk.ingest(b8_mail(request_to(desk, BOSS), body=body))
    assert desk.ticket(key)["status"] == "ESTIMATE ACCEPTED"


def test_machine_mail_never_runs_a_command_even_with_a_valid_token(desk: FastDesk) -> None:
    key = estimated(desk)
    answer(desk, request_to(desk, BOSS), "ACCEPT THE ESTIMATE", headers={"Auto-Submitted": "auto-replied"})
    assert accepted(desk, key) == 0 and desk.ticket(key)["status"] == "ESTIMATED"
    assert not desk.mails_to(BOSS, "confirm_request")
