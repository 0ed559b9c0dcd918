"""Bounces of our own mail: the report (RFC 3464) read, the outbox row and the ticket told."""

from __future__ import annotations

from pathlib import Path

import pytest

from maildesk.core.mail import FailedRecipient
from maildesk.parse import parse_mail
from tests.desk import Desk

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "public"


def dsn(original_message_id: str, recipient: str, *, action: str = "failed", status: str = "5.1.1",
        returned: str = "headers") -> bytes:
    """A bounce as Postfix writes one: a text part, the delivery status, the original's headers
    (or, as Exchange does, the whole original as message/rfc822)."""
    original = (f"From: support@desk.example\r\nTo: {recipient}\r\nSubject: [SD-1] Printer\r\n"
                f"Message-ID: {original_message_id}\r\n")
    returned_part = ("Content-Type: text/rfc822-headers\r\n\r\n" + original if returned == "headers" else
                     "Content-Type: message/rfc822\r\n\r\n" + original + "\r\nThe acknowledgement.\r\n")
    return (
        "From: MAILER-DAEMON@mx.acme.example (Mail Delivery System)\r\n"
        "To: support@desk.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce.1@mx.acme.example>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\nbe delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.acme.example\r\nArrival-Date: Wed, 2 Dec 2026 10:00:00 +0200\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822;{recipient}\r\nAction: {action}\r\n"
        f"Status: {status}\r\nDiagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected:\r\n"
        " User unknown in virtual mailbox table\r\n\r\n"
        f"--b\r\n{returned_part}--b--\r\n").encode()


@pytest.mark.parametrize("returned", ["headers", "message"])
def test_a_report_names_the_original_and_the_failed_recipients(returned: str) -> None:
    mail = parse_mail(dsn("<sd-1.abc@desk.example>", "Anna@ACME.example", returned=returned))
    assert mail.report is not None and mail.report.original_message_id == "<sd-1.abc@desk.example>"
    assert mail.report.failed == (FailedRecipient(
        "anna@acme.example", "5.1.1",
        "550 5.1.1 <Anna@ACME.example>: Recipient address rejected: User unknown in virtual mailbox table"),)


def test_a_delay_report_or_a_plain_mail_has_nothing_to_match() -> None:
    assert parse_mail(dsn("<sd-1.abc@desk.example>", "anna@acme.example", action="delayed", status="4.4.1")
                      ).report is None
    assert parse_mail(b"From: anna@acme.example\r\nSubject: hi\r\n\r\nHello\r\n").report is None


@pytest.mark.parametrize("name, recipients, status", [
    ("flanker/tests_fixtures_messages_bounce_office365.eml", ["noname@example.com"], "5.1.10"),
    ("flanker/tests_fixtures_messages_bounce_mailbox-full.eml", ["user@aol.com"], "5.2.2"),
])
def test_real_bounces_from_the_corpus(name: str, recipients: list[str], status: str) -> None:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"the shared corpus is not beside the project ({path}): clone ../shared to run this")
    report = parse_mail(path.read_bytes()).report
    assert report is not None and report.original_message_id.startswith("<")
    assert [failure.address for failure in report.failed] == recipients
    assert {failure.status for failure in report.failed} == {status}


def test_a_bounce_of_an_acknowledgement_marks_it_and_notes_it_on_the_ticket(people: Desk) -> None:
    people.mail("anna@acme.example", "Printer", "Broken.")
    people.run("outbox", "send")
    acknowledgement = people.last_mail_to("anna@acme.example")
    assert acknowledgement["status"] == "sent"
    mails_before = len(people.outbox())

    people.ingest(dsn(acknowledgement["message_id"], "anna@acme.example"))

    (bounce,) = [row for row in people.json("inbox", "list") if row["sender"].startswith("mailer-daemon")]
    assert bounce["state"] == "processed"
    assert bounce["reason"].startswith(f"bounce: ticket_created mail {acknowledgement['id']} not delivered: "
                                       "anna@acme.example: 5.1.1 550 5.1.1")
    row = next(row for row in people.outbox() if row["id"] == acknowledgement["id"])
    assert row["status"] == "failed" and row["last_error"].startswith("bounced: anna@acme.example: 5.1.1")
    ticket = people.ticket("SD-1")
    assert ticket["status"] == "OPEN"  # a bounce changes nothing in the process
    (event,) = [event for event in ticket["events"] if event["command"] == "BOUNCE"]
    assert event["outcome"] == "bounced" and "anna@acme.example" in event["reason"]
    assert [message["internal"] for message in ticket["messages"] if message["from"].startswith("mailer-daemon")] \
        == [True]
    assert len(people.outbox()) == mails_before  # nobody is mailed about a bounce
    people.ingest(dsn(acknowledgement["message_id"], "anna@acme.example").replace(b"bounce.1@", b"bounce.2@"))
    assert people.json("inbox", "list")[-1]["reason"] == f"bounce: already recorded for ticket_created mail " \
                                                         f"{acknowledgement['id']}"
    assert len([event for event in people.ticket("SD-1")["events"] if event["command"] == "BOUNCE"]) == 1

    people.run("outbox", "retry", str(acknowledgement["id"]))  # the address fixed: the admin sends it again
    assert next(row for row in people.outbox() if row["id"] == acknowledgement["id"])["status"] == "pending"


def test_a_bounce_of_a_mail_that_is_not_ours_or_not_sent_yet_is_ignored_as_before(people: Desk) -> None:
    people.ingest(dsn("<somebody-else@elsewhere.example>", "anna@acme.example"))
    people.mail("anna@acme.example", "Printer", "Broken.")
    pending = people.last_mail_to("anna@acme.example")  # not sent yet: a bounce of it is forged
    people.ingest(dsn(pending["message_id"], "anna@acme.example").replace(b"bounce.1@", b"bounce.2@"))
    bounces = [row for row in people.json("inbox", "list") if row["sender"].startswith("mailer-daemon")]
    assert [(row["state"], row["reason"].split(":")[0]) for row in bounces] == [("ignored", "bounce")] * 2
    assert people.last_mail_to("anna@acme.example") == pending
    assert not [event for event in people.ticket("SD-1")["events"] if event["command"] == "BOUNCE"]
