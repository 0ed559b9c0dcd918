"""The complete happy paths of workflow.md, driven only by mail through `maildesk ingest`."""

from __future__ import annotations

from datetime import date, timedelta

from tests.desk import Desk
from tests.mailbuilder import quoted

ANNA, BOSS, PETER, EVE = "anna@acme.example", "boss@acme.example", "peter@acme.example", "eve@other.example"
AGENT = "agent@desk.example"
DUE = (date.today() + timedelta(days=20)).isoformat()


def open_ticket(desk: Desk, subject: str = "Printer does not print", body: str = "The printer is broken.") -> str:
    desk.mail(ANNA, subject, body)
    return desk.json("ticket", "list")[-1]["key"]


def reply(desk: Desk, sender: str, key: str, body: str) -> None:
    desk.reply(sender, key, body)


def last_in(desk: Desk, key: str) -> dict:
    return [message for message in desk.ticket(key)["messages"] if message["direction"] == "in"][-1]


def statuses(desk: Desk, key: str) -> list[str]:
    return [event["to_status"] for event in desk.ticket(key)["events"] if event["outcome"] == "applied"]


def test_a_small_task_goes_from_open_to_closed(people: Desk) -> None:
    key = open_ticket(people)
    assert people.ticket(key)["status"] == "OPEN"
    acknowledgement = people.last_mail_to(ANNA)
    assert acknowledgement["template"] == "ticket_created" and f"[{key}]" in acknowledgement["subject"]
    assert people.mails_to(AGENT, "ticket_announced") and people.mails_to("second@desk.example", "ticket_announced")

    reply(people, AGENT, key, "ESTIMATE 45m\n\nI will replace the toner.")
    ticket = people.ticket(key)
    assert (ticket["status"], ticket["estimate_minutes"], ticket["assignee"]) == ("IN PROGRESS", 45, AGENT)

    reply(people, AGENT, key, "RESOLVE\n\nToner replaced.")
    assert people.ticket(key)["status"] == "WAITING FOR CUSTOMER"
    proposal = people.last_mail_to(ANNA)
    assert proposal["template"] == "solution_proposed" and "ACCEPT THE SOLUTION" in proposal["body_text"]

    reply(people, ANNA, key, "ACCEPT THE SOLUTION\n\nPaldies!")
    assert people.ticket(key)["status"] == "INVOICE"
    reply(people, AGENT, key, "CLOSE")
    ticket = people.ticket(key)
    assert ticket["status"] == "CLOSED"
    assert statuses(people, key) == ["OPEN", "IN PROGRESS", "WAITING FOR CUSTOMER", "INVOICE", "CLOSED"]
    assert [m["direction"] for m in ticket["messages"]].count("in") == 5


def test_b_a_large_task_needs_the_responsible_representative(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, f"ESTIMATE 3h DUE {DUE}")
    ticket = people.ticket(key)
    assert (ticket["status"], ticket["estimate_minutes"], ticket["due_date"]) == ("ESTIMATED", 180, DUE)
    request = people.mails_to(BOSS, "estimate_request")
    assert len(request) == 1 and "3h" in request[0]["body_text"] and DUE in request[0]["body_text"]
    assert "APSTIPRINĀT NOVĒRTĒJUMU" in request[0]["body_text"]  # the responsible rep reads Latvian (ACME's language)
    assert not people.mails_to(PETER, "estimate_request")

    reply(people, BOSS, key, "ACCEPT THE ESTIMATE")
    assert people.ticket(key)["status"] == "ESTIMATE ACCEPTED"
    reply(people, AGENT, key, "START")
    reply(people, AGENT, key, "RESOLVE")
    reply(people, ANNA, key, "APSTIPRINĀT RISINĀJUMU")
    assert statuses(people, key) == ["OPEN", "ESTIMATED", "ESTIMATE ACCEPTED", "IN PROGRESS",
                                     "WAITING FOR CUSTOMER", "INVOICE"]


def test_c_cancel_request_on_an_estimated_ticket(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, f"ESTIMATE 2d DUE {DUE}")
    reply(people, BOSS, key, "ATCELT PIEPRASĪJUMU")
    assert people.ticket(key)["status"] == "CANCELLED"
    assert people.mails_to(AGENT, "status_changed")


def test_d_the_deploy_path_and_defects(people: Desk) -> None:
    key = open_ticket(people)
    for line in ("START", "RESOLVE"):
        reply(people, AGENT, key, line)
    reply(people, ANNA, key, "REOPEN\n\nLooks good, please deploy it to production.")
    assert people.ticket(key)["status"] == "REOPENED"
    to_agent = people.last_mail_to(AGENT)
    assert "please deploy it to production" in to_agent["body_text"]
    reply(people, AGENT, key, "DEPLOY")
    assert people.ticket(key)["status"] == "READY FOR DEPLOY"
    assert people.last_mail_to(ANNA)["template"] == "solution_proposed"
    reply(people, ANNA, key, "ATVĒRT NO JAUNA\n\nIn production the report shows wrong totals.")
    ticket = people.ticket(key)
    assert ticket["status"] == "REOPENED" and ticket["assignee"] == AGENT


def test_e_new_user_request_and_add_user(people: Desk) -> None:
    people.mail(BOSS, "Jauns Service Desk lietotājs", "Lūdzu izveidot: liga@acme.example Līga Ozola")
    key = people.json("ticket", "list")[-1]["key"]
    assert people.ticket(key)["type"] == "Add New Users"
    people.reply(AGENT, key, "ADD USER liga@acme.example Līga Ozola")
    users = {user["address"]: user for user in people.json("user", "list")}
    assert users["liga@acme.example"] == {"address": "liga@acme.example", "name": "Līga Ozola", "role": "customer",
                                          "organisation": "ACME", "responsible": False, "language": None}
    welcome = people.mails_to("liga@acme.example", "user_welcome")
    assert len(welcome) == 1 and "support@desk.example" in welcome[0]["body_text"]


def test_f_a_phone_ticket_acknowledges_the_caller_whose_reply_threads(people: Desk) -> None:
    output = people.run("ticket", "create", "--reporter", ANNA, "--summary", "VPN does not connect",
                        "--description", "Called at 10:05", "--by", AGENT)
    key = output.split()[-1]
    ticket = people.ticket(key)
    assert (ticket["status"], ticket["channel"]) == ("OPEN", "phone")
    acknowledgement = people.last_mail_to(ANNA)
    assert acknowledgement["template"] == "ticket_created"
    people.mail(ANNA, "Re: VPN does not connect", "It works again after a restart.",
                in_reply_to=acknowledgement["message_id"])
    assert len(people.json("ticket", "list")) == 1
    assert last_in(people, key)["new_text"].startswith("It works again")


def test_a_reply_threads_by_headers_without_the_subject_token(people: Desk) -> None:
    key = open_ticket(people)
    acknowledgement = people.last_mail_to(ANNA)
    people.mail(ANNA, "Re: Printer", "One more detail: it is the HP.", in_reply_to=acknowledgement["message_id"])
    assert len(people.json("ticket", "list")) == 1
    assert last_in(people, key)["new_text"] == "One more detail: it is the HP."


def test_comments_are_forwarded_and_internal_notes_are_not(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, "START")
    before = len(people.mails_to(ANNA))
    reply(people, ANNA, key, "Kad būs gatavs?")
    assert people.last_mail_to(AGENT)["template"] == "comment"
    reply(people, AGENT, key, "Tomorrow morning.")
    assert len(people.mails_to(ANNA)) == before + 1 and "Tomorrow morning." in people.last_mail_to(ANNA)["body_text"]
    reply(people, AGENT, key, "INTERNAL\nShe called twice already.")
    assert len(people.mails_to(ANNA)) == before + 1
    assert all("called twice" not in mail["body_text"] for mail in people.outbox())
    assert last_in(people, key)["new_text"].endswith("She called twice already.")


def test_a_customer_comment_goes_to_every_agent_when_nobody_is_assigned(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, ANNA, key, "Also the scanner.")
    assert people.mails_to(AGENT, "comment") and people.mails_to("second@desk.example", "comment")


def test_ingest_is_idempotent(people: Desk, tmp_path) -> None:
    from tests.mailbuilder import make_mail
    raw = make_mail(ANNA, "Printer", "Broken", to="support@desk.example")
    people.ingest(raw)
    outbox_before = people.outbox()
    assert "already stored" in people.ingest(raw)
    assert len(people.json("ticket", "list")) == 1 and people.outbox() == outbox_before


def test_ingest_reads_standard_input(people: Desk) -> None:
    from tests.mailbuilder import make_mail
    people.run("ingest", input=make_mail(ANNA, "From a pipe", "Body", to="support@desk.example"))
    assert people.json("ticket", "list")[0]["summary"] == "From a pipe"


def test_ticket_keys_are_never_reused(people: Desk) -> None:
    keys = [open_ticket(people, subject=f"Ticket {n}") for n in range(3)]
    assert keys == ["SD-1", "SD-2", "SD-3"]


def test_quoted_reply_prefixes_are_removed_from_the_summary(people: Desk) -> None:
    open_ticket(people, subject="Fwd: AW: Monitor flickers")
    assert people.json("ticket", "list")[-1]["summary"] == "Monitor flickers"


def test_outbox_send_writes_eml_files_and_marks_them_sent(people: Desk) -> None:
    key = open_ticket(people)
    output = people.run("outbox", "send")
    sent = list((people.directory / "var" / "sent").glob("*.eml"))
    assert output.startswith(f"sent {len(sent)},") and len(sent) == 3
    assert {row["status"] for row in people.outbox()} == {"sent"}
    text = b"".join(path.read_bytes() for path in sent)
    assert f"[{key}]".encode() in text and b"Auto-Submitted: auto-" in text and b"X-Auto-Response-Suppress: All" in text
    assert people.run("outbox", "send").startswith("sent 0,")


def test_every_notification_threads_and_replies_to_a_token_address_of_the_desk(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, "START")
    for row in people.outbox():
        assert row["reply_to"].startswith("support+") and row["reply_to"].endswith("@desk.example")
        assert row["message_id"].endswith("@desk.example>") and row["in_reply_to"]
        assert f"[{key}]" in row["subject"]
    assert len({row["message_id"] for row in people.outbox()}) == len(people.outbox())


def test_type_and_assign_by_mail_change_the_ticket_but_not_its_status(people: Desk) -> None:
    key = open_ticket(people)
    reply(people, AGENT, key, "TYPE Incident\nASSIGN second@desk.example")
    ticket = people.ticket(key)
    assert (ticket["type"], ticket["assignee"], ticket["status"]) == ("Incident", "second@desk.example", "OPEN")
    assert [event["command"] for event in ticket["events"]][-2:] == ["TYPE Incident", "ASSIGN second@desk.example"]


def test_a_subject_key_of_no_existing_ticket_opens_a_new_one_of_the_right_type(people: Desk) -> None:
    people.mail(BOSS, "[SD-999] Jauns Service Desk lietotājs", "liga@acme.example Līga Ozola")
    (ticket,) = people.json("ticket", "list")
    assert (ticket["key"], ticket["type"]) == ("SD-1", "Add New Users")
