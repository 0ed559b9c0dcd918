"""Machine mail and loops (issue 4, test plan A1-A4, A6-A9): auto-replies, bounces, list mail
and our own mail coming back never get an answer, never open or change a ticket, and every
mail we send is marked so that other systems do not answer it either."""

from __future__ import annotations

import re
from collections.abc import Callable
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from maildesk.models import Event, Message, OutboxItem
from maildesk.notify import NEVER_MAIL
from maildesk.compose import build_message
from tests.desk import Desk
from tests.mailbuilder import make_mail
from tests.security_desk import BOT, FastDesk, desk, prepared_var  # noqa: F401 (fixtures)
from tests.test_flows import AGENT, ANNA, BOSS, DUE, EVE, PETER, open_ticket

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "public"


def inbox(desk: FastDesk) -> list[dict[str, Any]]:
    return desk.json("inbox", "list")


def statuses(desk: FastDesk, key: str) -> list[str]:
    return [event["to_status"] for event in desk.ticket(key)["events"] if event["outcome"] == "applied"]


# A1 through the pipeline ----------------------------------------------------------------------

MACHINE_HEADERS = [
    ("auto_reply", {"Auto-Submitted": "auto-replied"}),
    ("auto_reply", {"Auto-Submitted": "auto-generated"}),
    ("auto_reply", {"X-Autoreply": "yes"}),
    ("auto_reply", {"X-Autorespond": "Out of office"}),
    ("auto_reply", {"Precedence": "auto_reply"}),
    ("bulk", {"Precedence": "bulk"}),
    ("bulk", {"Precedence": "junk"}),
    ("bulk", {"Precedence": "list"}),
    ("bulk", {"List-Id": "<printers.acme.example>"}),
    ("bulk", {"List-Unsubscribe": "<mailto:leave@acme.example>"}),
    ("bounce", {"Return-Path": "<>"}),
]


def test_machine_mail_to_a_ticket_is_kept_as_a_note_with_its_class_and_changes_nothing(desk: FastDesk) -> None:
    key = open_ticket(desk)
    before = desk.outbox()
    for kind, headers in MACHINE_HEADERS:
        desk.mail(ANNA, f"Re: [{key}] Printer does not print", "RESOLVE\nACCEPT THE SOLUTION\nI am away.",
                  headers=headers)
        ticket = desk.ticket(key)
        assert ticket["status"] == "OPEN" and desk.outbox() == before, headers
        note = ticket["messages"][-1]
        assert note["direction"] == "in" and note["internal"], headers
        assert ticket["events"][-1]["outcome"] == "ignored", headers
        assert ticket["events"][-1]["reason"].startswith(kind), headers


def test_machine_mail_without_a_ticket_opens_none_and_is_logged_with_its_class(desk: FastDesk) -> None:
    for n, (kind, headers) in enumerate(MACHINE_HEADERS):
        desk.mail(ANNA, f"Printer {n} does not print", "The printer is broken.", headers=headers)
        row = inbox(desk)[-1]
        assert row["state"] == "ignored" and row["reason"].startswith(kind), headers
    assert desk.json("ticket", "list") == [] and desk.outbox() == []


@pytest.mark.parametrize("headers", [{"Auto-Submitted": "no"}, {"Precedence": "first-class"},
                                     {"X-Auto-Response-Suppress": "All"}, {}])
def test_human_mail_with_harmless_markers_still_opens_a_ticket(desk: FastDesk, headers: dict[str, str]) -> None:
    desk.mail(ANNA, "Automatic replies do not work", "Our automatic reply is not sent automatically.",
              headers=headers)
    assert [ticket["summary"] for ticket in desk.json("ticket", "list")] == ["Automatic replies do not work"]
    assert desk.mails_to(ANNA, "ticket_created")


# A2: an auto-responder without RFC 3834 headers ----------------------------------------------


def ping_pong(desk: FastDesk, bot: str, answer: Callable[[dict[str, Any]], bytes], rounds: int) -> int:
    """The bot answers every mail it gets, round after round (one round ~ 20 s of a 10-minute
    run; the bot answers at once). Returns how many mails it answered."""
    answered: set[int] = set()
    for _ in range(rounds):
        waiting = [row for row in desk.mails_to(bot) if row["id"] not in answered]
        if not waiting:
            break
        for row in waiting:
            answered.add(row["id"])
            desk.ingest(answer(row))
    return len(answered)


def evil_reply(row: dict[str, Any], *, to_reply_to: bool = True, thread: bool = True) -> bytes:
    """The evil bot: no RFC 3834 header, `Re:` and our subject, the same text every time."""
    return make_mail(BOT, f"Re: {row['subject']}", "I am out of the office until Monday.",
                     to=row["reply_to"] if to_reply_to else "support@desk.example",
                     in_reply_to=row["message_id"] if thread else "",
                     headers={"Authentication-Results": "mx.desk.example; dmarc=pass header.from=acme.example"})


@pytest.mark.parametrize("variant", ["to the reply address", "to the support address without threading"])
def test_an_evil_auto_responder_gets_at_most_one_acknowledgement_in_ten_minutes(desk: FastDesk, variant: str) -> None:
    desk.mail(BOT, "Printer does not print", "It is broken.")
    answered = ping_pong(desk, BOT, lambda row: evil_reply(row, to_reply_to=variant.startswith("to the reply"),
                                                          thread=variant.startswith("to the reply")), rounds=30)
    assert answered <= 1
    assert len(desk.mails_to(BOT)) <= 1
    tickets = desk.json("ticket", "list")
    assert len(tickets) == 1
    assert statuses(desk, tickets[0]["key"]).count("REOPENED") == 0


def test_an_evil_auto_responder_of_an_unknown_sender_gets_one_answer_a_day(desk: FastDesk) -> None:
    stranger = "stranger@elsewhere.example"

    def answer(row: dict[str, Any]) -> bytes:
        return make_mail(stranger, f"Re: {row['subject']}", "I am away.", to=row["reply_to"],
                         in_reply_to=row["message_id"])

    desk.ingest(make_mail(stranger, "Hello", "Can you help?", to="support@desk.example"))
    assert ping_pong(desk, stranger, answer, rounds=30) == 1
    assert desk.json("ticket", "list") == []
    assert len(desk.mails_to(stranger)) == 1


def test_a_bot_writing_new_mail_after_every_answer_is_stopped_by_the_rate_limit(desk: FastDesk) -> None:
    """Another helpdesk answering with a fresh subject and no threading looks like a person
    writing new requests: the acknowledgement limit (5 an hour) and the circuit breaker stop it."""
    counter = iter(range(1000))

    def answer(row: dict[str, Any]) -> bytes:
        return make_mail(BOT, f"Your request {next(counter)} was received", "We will answer soon.",
                         to="support@desk.example",
                         headers={"Authentication-Results": "mx.desk.example; dmarc=pass header.from=acme.example"})

    desk.mail(BOT, "Printer does not print", "It is broken.")
    ping_pong(desk, BOT, answer, rounds=30)
    acknowledgements = desk.mails_to(BOT, "ticket_created")
    assert 1 <= len(acknowledgements) <= 5
    limited = [row for row in inbox(desk) if "rate-limited" in row["reason"]]
    assert limited  # the ones not answered are logged as such


def test_two_auto_responders_cannot_ping_pong_through_a_ticket(desk: FastDesk) -> None:
    """The customer's and the agent's mailboxes both answer everything: each comment mails the
    other. The per-ticket circuit breaker (MAILDESK_ANSWER_LIMIT_PER_HOUR mails from an address
    to one ticket in an hour) ends it; every mail is still kept on the ticket."""
    desk.mail(BOT, "Printer does not print", "It is broken.")

    def answer(row: dict[str, Any]) -> bytes:
        writer = row["to"][0]
        return make_mail(writer, f"Re: {row['subject']}", "I am away.", to=row["reply_to"],
                         in_reply_to=row["message_id"], headers={"Authentication-Results": "mx.desk.example; "
                                                                 f"dmarc=pass header.from={writer.split('@')[1]}"})

    answered: set[int] = set()
    for _ in range(30):
        waiting = [row for row in desk.outbox() if row["id"] not in answered and row["to"][0] in (BOT, AGENT)]
        for row in waiting:
            answered.add(row["id"])
            desk.ingest(answer(row))
        if not waiting:
            break
    else:
        pytest.fail("the auto-responders were still answering each other after 30 rounds")
    assert len(answered) <= 2 * 10 + 2
    ticket = desk.ticket(desk.json("ticket", "list")[0]["key"])
    assert len([message for message in ticket["messages"] if message["direction"] == "in"]) == len(answered) + 1
    assert any(event["reason"].startswith("circuit_breaker") for event in ticket["events"])


# A3: a polite auto-responder ------------------------------------------------------------------


@pytest.mark.parametrize("marker", [{"Auto-Submitted": "auto-replied"}, {"X-Autoreply": "yes"},
                                    {"Precedence": "auto_reply"}])
def test_a_polite_auto_responder_gets_nothing_and_changes_nothing(desk: FastDesk, marker: dict[str, str]) -> None:
    key = open_ticket(desk)
    desk.reply(AGENT, key, "ESTIMATE 45m")
    desk.reply(AGENT, key, "RESOLVE\n\nToner replaced.")
    assert desk.ticket(key)["status"] == "WAITING FOR CUSTOMER"
    sent_before = len(desk.outbox())

    def answer(row: dict[str, Any]) -> bytes:
        return make_mail(ANNA, f"Re: {row['subject']}", "REOPEN\nI am on holiday.", to=row["reply_to"],
                         in_reply_to=row["message_id"], headers=marker)

    for row in desk.mails_to(ANNA):
        desk.ingest(answer(row))
    assert len(desk.outbox()) == sent_before
    ticket = desk.ticket(key)
    assert ticket["status"] == "WAITING FOR CUSTOMER"
    notes = [message for message in ticket["messages"] if message["direction"] == "in" and message["internal"]]
    assert len(notes) == len(desk.mails_to(ANNA))
    assert all(row["reason"].startswith("kept as a note: auto_reply") for row in inbox(desk)[-len(notes):])


# A4: our own mail coming back -----------------------------------------------------------------


def test_fifty_of_our_own_notifications_fed_back_make_no_ticket_no_note_and_no_mail(desk: FastDesk) -> None:
    for n in range(17):
        desk.mail([ANNA, PETER, BOSS, EVE][n % 4], f"Request {n}", "Please help.")
    desk.run("outbox", "send")
    sent = sorted((desk.directory / "var" / "sent").glob("*.eml"))[:50]
    assert len(sent) == 50
    tickets, outbox, messages = desk.json("ticket", "list"), desk.outbox(), len(desk.rows(Message))
    for path in sent:
        desk.ingest(path.read_bytes())
    assert desk.json("ticket", "list") == tickets and desk.outbox() == outbox
    assert len(desk.rows(Message)) == messages
    own = [row for row in inbox(desk) if row["reason"].startswith("own mail coming back")]
    assert len(own) == 50 and all(row["state"] == "ignored" for row in own)


# A6: a bounce storm ---------------------------------------------------------------------------


def corpus_bounces() -> list[bytes]:
    files = sorted([*CORPUS.glob("flanker/*bounce*.eml"), *CORPUS.glob("mikelmail/*multipart_report*.eml")])
    return [path.read_bytes() for path in files]


def generated_bounce(n: int, original_id: str, recipient: str) -> bytes:
    boundary = f"dsn-{n}"
    return (f"Return-Path: <>\r\nFrom: Mail Delivery System <MAILER-DAEMON@mx.acme.example>\r\n"
            f"To: support@desk.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            f"Message-ID: <bounce-{n}@mx.acme.example>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; "
            f"boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
            f"Your message to {recipient} could not be delivered.\r\nACCEPT THE ESTIMATE\r\n"
            f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.acme.example\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
            f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original_id}\r\n"
            f"From: support@desk.example\r\nTo: {recipient}\r\n--{boundary}--\r\n").encode()


def test_a_storm_of_a_hundred_bounces_sends_nothing_and_opens_or_reopens_nothing(desk: FastDesk) -> None:
    key = open_ticket(desk)
    desk.reply(AGENT, key, f"ESTIMATE 3h DUE {DUE}")
    outbox = desk.outbox()
    notification = desk.mails_to(BOSS, "estimate_request")[0]
    bounces = [b"Received: from mx%d.acme.example\r\n" % copy + raw
               for raw in corpus_bounces() for copy in range(10)][:90]
    bounces += [generated_bounce(n, notification["message_id"], BOSS) for n in range(100 - len(bounces))]
    assert len(bounces) == 100
    for raw in bounces:
        desk.ingest(raw)
    assert desk.outbox() == outbox
    assert len(desk.json("ticket", "list")) == 1 and desk.ticket(key)["status"] == "ESTIMATED"
    rows = inbox(desk)[-100:]
    broken = [row for row in rows if row["state"] == "quarantined"]  # flanker's bounce without a From
    assert len(broken) == 10 and all("no From header" in row["reason"] for row in broken)
    assert all(row["state"] == "ignored" and row["reason"].startswith("bounce") for row in rows if row not in broken)


# A7: mailing-list mail ------------------------------------------------------------------------


def test_twenty_list_mails_get_no_acknowledgement(desk: FastDesk) -> None:
    for n in range(20):
        header = [{"List-Id": "<printers.acme.example>"}, {"List-Unsubscribe": "<mailto:u@acme.example>"},
                  {"Precedence": "list"}, {"List-Post": "<mailto:all@acme.example>"}][n % 4]
        desk.mail([ANNA, PETER, "list@lists.example"][n % 3], f"[printers] Digest {n}", "News.", headers=header)
    assert desk.outbox() == []
    rows = inbox(desk)
    assert len(rows) == 20 and all(row["reason"].startswith("bulk") for row in rows)


# A8: every outgoing mail is marked ------------------------------------------------------------

SUPPRESSED = re.compile(r"^(mailer-daemon|postmaster|noreply|no-reply|abuse|root)@", re.IGNORECASE)


def every_template(desk: FastDesk) -> None:
    """Run the workflow paths that send each kind of notification."""
    key = open_ticket(desk)
    desk.reply(AGENT, key, f"ESTIMATE 3h DUE {DUE}")
    desk.reply(BOSS, key, "ACCEPT THE ESTIMATE")
    desk.reply(PETER, key, "ACCEPT THE ESTIMATE")  # refused: not the responsible representative
    desk.reply(AGENT, key, "START")
    desk.reply(ANNA, key, "Any news?")
    desk.reply(AGENT, key, "RESOLVE")
    desk.mail(BOSS, "Jauns Service Desk lietotājs", "Lūdzu: liga@acme.example Līga Ozola")
    new_users = desk.json("ticket", "list")[-1]["key"]
    desk.reply(AGENT, new_users, "ADD USER liga@acme.example Līga Ozola")
    desk.mail("stranger@elsewhere.example", "Hello", "Who are you?")
    desk.mail(BOSS, f"Re: [{key}]", "ACCEPT THE ESTIMATE", dmarc="fail")  # a confirmation request
    for n in range(4):
        desk.mail("anna@acme.example", f"Another request {n}", "Please.")


def test_every_outgoing_mail_is_marked_as_automatic_and_loop_tagged(desk: FastDesk) -> None:
    """A8 for every template; the 1,000 built messages of test_hostile_mail's E6 check the same marks."""
    every_template(desk)
    settings = desk.settings
    rows = desk.rows(OutboxItem)
    templates = {row.template for row in rows}
    assert templates >= {"ticket_created", "ticket_announced", "estimate_request", "status_changed",
                         "command_refused", "comment", "solution_proposed", "user_welcome", "unknown_sender"}
    for row in rows:
        message = message_from_bytes(build_message(row, settings).as_bytes())
        assert message["Auto-Submitted"] == ("auto-replied" if row.in_reply_to else "auto-generated")
        assert message["X-Auto-Response-Suppress"] == "All"
        assert message["X-Maildesk-Loop"] == "support@desk.example"
        assert message["Message-ID"].endswith("@desk.example>")
        assert message["Reply-To"].endswith("@desk.example")
    assert settings.bounce_address == "support@desk.example"  # the envelope sender is ours, never a person's


@pytest.mark.parametrize("address", ["mailer-daemon@acme.example", "postmaster@acme.example",
                                     "noreply@acme.example", "no-reply@acme.example", "abuse@acme.example",
                                     "root@acme.example", "do-not-reply@acme.example"])
def test_nothing_is_ever_sent_to_machine_addresses(desk: FastDesk, address: str) -> None:
    desk.run("user", "add", address, "--name", "Machine", "--org", "ACME")
    desk.mail(address, "Printer", "Broken.")
    desk.mail(address, "Second", "Broken again.")
    assert NEVER_MAIL.match(address)
    desk.run("outbox", "send")
    sent = [path.read_bytes() for path in (desk.directory / "var" / "sent").glob("*.eml")]
    assert not [raw for raw in sent if f"To: {address}".encode() in raw]
    assert all(row["status"] == "failed" for row in desk.mails_to(address))


# A9: one person writing fifty new requests ----------------------------------------------------


def test_fifty_new_requests_in_ten_minutes_get_fifty_tickets_and_at_most_five_acknowledgements(desk: FastDesk) -> None:
    for n in range(50):
        desk.mail(ANNA, f"Request {n}", f"Body {n}")
    assert len(desk.json("ticket", "list")) == 50
    assert len(desk.mails_to(ANNA, "ticket_created")) <= 5
    assert len(desk.rows(Event, Event.reason.startswith("rate_limited"))) >= 45
