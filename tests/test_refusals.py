"""Refused commands change nothing, are logged with a reason, and get one explanatory reply."""

from __future__ import annotations

from tests.desk import Desk
from tests.mailbuilder import quoted
from tests.test_flows import AGENT, ANNA, BOSS, DUE, EVE, PETER, open_ticket, reply


def assert_refused(desk: Desk, key: str, sender: str, status: str, reason_code_text: str) -> None:
    ticket = desk.ticket(key)
    assert ticket["status"] == status
    refused = [event for event in ticket["events"] if event["outcome"] == "refused"]
    assert refused and refused[-1]["actor"] == sender and reason_code_text in refused[-1]["reason"]
    replies = desk.mails_to(sender, "command_refused")
    assert len(replies) == 1


def test_accept_the_estimate_from_a_non_responsible_customer_is_refused(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, f"ESTIMATE 3h DUE {DUE}")
    reply(people, PETER, key, "ACCEPT THE ESTIMATE")
    assert_refused(people, key, PETER, "ESTIMATED", "responsible representative")
    body = people.mails_to(PETER, "command_refused")[0]["body_text"]
    assert "ACCEPT THE ESTIMATE" in body


def test_accept_the_estimate_from_another_organisation_is_refused(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, f"ESTIMATE 3h DUE {DUE}")
    reply(people, EVE, key, "ACCEPT THE ESTIMATE")
    assert_refused(people, key, EVE, "ESTIMATED", "another organisation")


def test_an_agent_command_from_a_customer_is_refused(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, ANNA, key, "RESOLVE")
    assert_refused(people, key, ANNA, "OPEN", "only support agents")
    assert "CANCEL REQUEST" in people.mails_to(ANNA, "command_refused")[0]["body_text"]


def test_a_command_in_the_wrong_status_is_refused(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, ANNA, key, "ACCEPT THE SOLUTION")
    assert_refused(people, key, ANNA, "OPEN", "not possible while the ticket is OPEN")


def test_an_unreadable_estimate_is_refused_with_help(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, "ESTIMATE soon")
    assert_refused(people, key, AGENT, "OPEN", "cannot read the effort")


def test_a_large_estimate_without_due_date_is_refused(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, "ESTIMATE 3h")
    assert_refused(people, key, AGENT, "OPEN", "due date")


def test_assign_to_someone_who_is_not_an_agent_is_refused(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, f"ASSIGN {ANNA}")
    assert_refused(people, key, AGENT, "OPEN", "not a support agent")
    reply(people, AGENT, key, "ASSIGN second@desk.example")
    assert people.ticket(key)["assignee"] == "second@desk.example"


def test_unknown_senders_open_no_ticket_and_get_one_polite_answer(people: Desk) -> None:
    people.mail("stranger@nowhere.example", "Help", "Please help")
    people.mail("stranger@nowhere.example", "Help again", "Please!")
    assert people.json("ticket", "list") == []
    answers = people.mails_to("stranger@nowhere.example")
    assert len(answers) == 1 and answers[0]["template"] == "unknown_sender"
    assert "Jauns Service Desk lietotājs" in answers[0]["body_text"] or "New Service Desk user" in answers[0]["body_text"]


def test_addresses_compare_case_insensitively(people: Desk) -> None:
    people.mail("Anna@ACME.example", "Printer", "Broken")
    assert people.json("ticket", "list")[0]["reporter"] == ANNA


GMAIL = "Paldies\n\nOn Thu, 26 Nov 2026 at 10:00, Service Desk <support@desk.example> wrote:\n{quote}"
OUTLOOK_EN = ("Paldies\n\n________________________________\nFrom: Service Desk <support@desk.example>\n"
              "Sent: Thursday, November 26, 2026 10:00 AM\nTo: Anna <anna@acme.example>\n"
              "Subject: [{key}] Printer\n\n{plain}")
OUTLOOK_LV = ("Paldies\n\nNo: Service Desk <support@desk.example>\nNosūtīts: ceturtdiena, 2026. gada 26. novembris 10:00\n"
              "Kam: Anna <anna@acme.example>\nTēma: [{key}] Printer\n\n{plain}")


def test_quoted_keywords_never_fire(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, "START")
    reply(people, AGENT, key, "RESOLVE")
    notification = people.last_mail_to(ANNA)["body_text"]
    assert "ACCEPT THE SOLUTION" in notification
    for template in (GMAIL, OUTLOOK_EN, OUTLOOK_LV):
        body = template.format(quote=quoted(notification), plain=notification, key=key)
        reply(people, ANNA, key, body)
        ticket = people.ticket(key)
        assert ticket["status"] == "WAITING FOR CUSTOMER", template[:30]
        assert [m for m in ticket["messages"] if m["direction"] == "in"][-1]["new_text"].strip() == "Paldies"
