"""Service-level timers through real mail: reminders, auto-close, warnings, breaches, catching up.

Mail whose moment matters goes through the real pipeline with a fixed clock (`Clocked`);
time then moves with `maildesk tick --now ...`, as an admin (or the daemon) would run it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import threading

import pytest

from maildesk import store
from maildesk.config import load_settings
from maildesk.notify import Notifier
from maildesk.process import Outcome, Pipeline
from maildesk.render import Renderer, default_templates_dir
from maildesk.timers import sweep
from tests.desk import TRUSTED_MTA, Desk, standard_people
from tests.mailbuilder import make_mail

RIGA = ZoneInfo("Europe/Riga")
ANNA, BOSS, PETER, EVE = "anna@acme.example", "boss@acme.example", "peter@acme.example", "eve@other.example"
AGENT, SECOND = "agent@desk.example", "second@desk.example"


def riga(month: int, day: int, hour: int, minute: int = 0, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=RIGA)


def utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


class Clocked:
    """The desk's own pipeline with a fixed clock: mail that arrives at a chosen moment."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.settings = load_settings(environ=desk.env)
        self.engine = store.make_engine(self.settings.database_url)

    def mail(self, when: datetime, sender: str, subject: str, body: str, *, to: str | None = None,
             headers: dict[str, str] | None = None, **options: Any) -> Outcome:
        all_headers = {"Authentication-Results": f"{TRUSTED_MTA}; dmarc=pass header.from={sender.rpartition('@')[2]}",
                       **(headers or {})}
        raw = make_mail(sender, subject, body, to=to or self.settings.support_address, headers=all_headers, **options)
        outcome = Pipeline(self.settings, self.engine, clock=lambda: when.astimezone(timezone.utc)).ingest(raw, "pipe")
        assert outcome is not None and outcome.state in ("processed", "held"), outcome
        return outcome

    def open(self, when: datetime, sender: str, subject: str) -> str:
        outcome = self.mail(when, sender, subject, "Please help.")
        assert outcome.ticket is not None
        return outcome.ticket

    def reply(self, when: datetime, sender: str, key: str, body: str, **options: Any) -> Outcome:
        """Answer the last notification `sender` got about `key`, as Desk.reply does."""
        last = [row for row in self.desk.mails_to(sender) if row["ticket"] == key][-1]
        return self.mail(when, sender, f"Re: {last['subject']}", body, to=last["reply_to"],
                         in_reply_to=last["message_id"], **options)


def tick(desk: Desk, when: datetime) -> dict[str, int]:
    output = desk.run("tick", "--now", when.isoformat())
    counts = output.split(": ", 1)[1].strip()
    return {name: int(number) for name, number in (part.split() for part in counts.split(", "))}


def deadlines(desk: Desk, key: str) -> dict[str, str | None]:
    return desk.ticket(key)["deadlines"]  # type: ignore[no-any-return]


def templates_to(desk: Desk, address: str, template: str, key: str) -> int:
    return len([row for row in desk.mails_to(address, template) if row["ticket"] == key])


@pytest.fixture
def clocked(people: Desk) -> Clocked:
    return Clocked(people)


def resolved_on_friday_afternoon(clocked: Clocked) -> str:
    """ANNA's ticket, answered on Monday and resolved Friday 13 November 2026 at 16:30 Riga time."""
    key = clocked.open(riga(11, 9, 10), ANNA, "Printer does not print")
    clocked.reply(riga(11, 9, 10, 30), AGENT, key, "START")
    clocked.reply(riga(11, 13, 16, 30), AGENT, key, "RESOLVE\n\nToner replaced.")
    assert clocked.desk.ticket(key)["status"] == "WAITING FOR CUSTOMER"
    return key


def test_a_ticket_resolved_on_friday_afternoon_is_reminded_and_closed_across_a_weekend_and_18_november(
        clocked: Clocked) -> None:
    desk = clocked.desk
    key = resolved_on_friday_afternoon(clocked)
    # Mon 16, Tue 17, (Wed 18 November is a holiday), Thu 19, Fri 20, Mon 23: closes at 16:30
    assert deadlines(desk, key)["acceptance_due_at"] == utc(riga(11, 23, 16, 30))
    assert deadlines(desk, key)["reminder_due_at"] == utc(riga(11, 20, 16, 30))

    assert tick(desk, riga(11, 20, 16, 29))["reminded"] == 0
    assert tick(desk, riga(11, 20, 16, 30))["reminded"] == 1
    assert tick(desk, riga(11, 20, 16, 30))["reminded"] == 0
    reminders = [row for row in desk.mails_to(ANNA, "acceptance_reminder") if row["ticket"] == key]
    assert len(reminders) == 1 and "2026-11-23 16:30" in reminders[0]["body_text"]

    assert tick(desk, riga(11, 23, 16, 29))["closed"] == 0
    assert desk.ticket(key)["status"] == "WAITING FOR CUSTOMER"
    assert tick(desk, riga(11, 23, 16, 30))["closed"] == 1
    assert tick(desk, riga(11, 23, 16, 30)) == {"closed": 0, "reminded": 0, "breached": 0, "warned": 0, "failed": 0}
    ticket = desk.ticket(key)
    assert ticket["status"] == "CLOSED"
    closing = [event for event in ticket["events"] if event["to_status"] == "CLOSED"]
    assert len(closing) == 1 and closing[0]["reason"] == "auto-accepted" and closing[0]["command"] == "AUTO CLOSE"
    assert templates_to(desk, ANNA, "auto_closed", key) == 1 and templates_to(desk, AGENT, "auto_closed", key) == 1


@pytest.mark.parametrize("year, resolved, closes, reminds", [
    # 4 May 2024 was a Saturday: Monday 6 May was the day off (and 1 May a holiday)
    (2024, (4, 30), (5, 9), (5, 8)),
    # 4 May 2025 was a Sunday: Monday 5 May off, 2 May moved off and worked on Saturday 10 May
    (2025, (4, 30), (5, 10), (5, 9)),
])
def test_4_may_on_a_weekend_moves_to_monday_and_delays_the_auto_close(
        clocked: Clocked, year: int, resolved: tuple[int, int], closes: tuple[int, int],
        reminds: tuple[int, int]) -> None:
    desk = clocked.desk
    key = clocked.open(riga(*resolved, 9, year=year), ANNA, "Report is slow")
    clocked.reply(riga(*resolved, 10, year=year), AGENT, key, "START")
    clocked.reply(riga(*resolved, 16, 30, year=year), AGENT, key, "RESOLVE")
    assert deadlines(desk, key)["acceptance_due_at"] == utc(riga(*closes, 16, 30, year=year))
    assert deadlines(desk, key)["reminder_due_at"] == utc(riga(*reminds, 16, 30, year=year))


def test_a_customer_comment_stops_the_clock_and_the_agents_reply_restarts_it(clocked: Clocked) -> None:
    desk = clocked.desk
    key = resolved_on_friday_afternoon(clocked)
    clocked.reply(riga(11, 16, 10), ANNA, key, "Which toner did you use?")
    assert deadlines(desk, key)["acceptance_due_at"] is None
    assert tick(desk, riga(11, 24, 9))["closed"] == 0
    assert desk.ticket(key)["status"] == "WAITING FOR CUSTOMER"

    clocked.reply(riga(11, 24, 11), AGENT, key, "The original HP toner.")
    # a full new term: Wed 25, Thu 26, Fri 27, Mon 30 November, Tue 1 December at 11:00
    assert deadlines(desk, key)["acceptance_due_at"] == utc(riga(12, 1, 11))
    assert tick(desk, riga(12, 1, 10, 59))["closed"] == 0
    assert tick(desk, riga(12, 1, 11))["closed"] == 1
    assert desk.ticket(key)["status"] == "CLOSED"


def test_an_out_of_office_reply_neither_stops_nor_restarts_the_clock(clocked: Clocked) -> None:
    desk = clocked.desk
    key = resolved_on_friday_afternoon(clocked)
    auto = {"Auto-Submitted": "auto-replied"}
    clocked.reply(riga(11, 13, 16, 31), ANNA, key, "I am out of the office until 30 November.", headers=auto)
    assert deadlines(desk, key)["acceptance_due_at"] == utc(riga(11, 23, 16, 30))

    clocked.reply(riga(11, 16, 10), ANNA, key, "Which toner did you use?")
    clocked.reply(riga(11, 16, 10, 1), AGENT, key, "I am on holiday until Monday.", headers=auto)
    assert deadlines(desk, key)["acceptance_due_at"] is None
    assert tick(desk, riga(12, 10, 12))["closed"] == 0


@pytest.mark.parametrize("created, warn_at, due_at", [
    # spring forward on Sunday 29 March: Friday 16:00 EET + 4h = Monday 12:00 EEST
    (riga(3, 27, 16), riga(3, 30, 11), riga(3, 30, 12)),
    # fall back on Sunday 25 October: Friday 15:00 EEST + 4h = Monday 11:00 EET
    (riga(10, 23, 15), riga(10, 26, 10), riga(10, 26, 11)),
])
def test_first_response_warning_and_breach_fire_once_each_across_a_dst_change(
        clocked: Clocked, created: datetime, warn_at: datetime, due_at: datetime) -> None:
    desk = clocked.desk
    key = clocked.open(created, ANNA, "VPN does not connect")
    assert deadlines(desk, key)["first_response_due_at"] == utc(due_at)
    assert deadlines(desk, key)["first_response_warn_at"] == utc(warn_at)
    minute = due_at - warn_at
    assert tick(desk, warn_at - minute / 60)["warned"] == 0
    assert tick(desk, warn_at)["warned"] == 1
    assert tick(desk, warn_at)["warned"] == 0
    assert tick(desk, due_at - minute / 60)["breached"] == 0
    assert tick(desk, due_at)["breached"] == 1
    assert tick(desk, due_at)["breached"] == 0
    for agent in (AGENT, SECOND):  # nobody holds the ticket yet: every agent is told
        mails = [row for row in desk.mails_to(agent, "deadline_warning") if row["ticket"] == key]
        assert len(mails) == 2
    events = [event["command"] for event in desk.ticket(key)["events"]]
    assert events.count("SLA WARNING") == 1 and events.count("SLA BREACH") == 1


def test_an_agents_answer_in_time_means_no_warning(clocked: Clocked) -> None:
    desk = clocked.desk
    key = clocked.open(riga(3, 27, 16), ANNA, "VPN does not connect")
    clocked.reply(riga(3, 30, 9, 30), AGENT, key, "Which VPN client do you use?")
    assert tick(desk, riga(3, 31, 12)) == {"closed": 0, "reminded": 0, "breached": 0, "warned": 0, "failed": 0}
    assert deadlines(desk, key)["first_response_at"] == utc(riga(3, 30, 9, 30))


def accepted_estimate(clocked: Clocked, due: str, accepted: datetime) -> str:
    key = clocked.open(accepted.replace(hour=9), ANNA, "New report")
    clocked.reply(accepted.replace(hour=10), AGENT, key, f"ESTIMATE 3h DUE {due}")
    clocked.reply(accepted, BOSS, key, "ACCEPT THE ESTIMATE")
    assert clocked.desk.ticket(key)["status"] == "ESTIMATE ACCEPTED"
    return key


def test_work_start_warning_and_breach_after_the_autumn_dst_change(clocked: Clocked) -> None:
    desk = clocked.desk
    key = accepted_estimate(clocked, "2026-12-18", riga(10, 22, 15))
    # Thursday 15:00 EEST + 2 business days = Monday 26 October 15:00 EET
    assert deadlines(desk, key)["work_start_due_at"] == utc(riga(10, 26, 15))
    assert tick(desk, riga(10, 26, 13, 59))["warned"] == 0
    assert tick(desk, riga(10, 26, 14))["warned"] == 1
    assert tick(desk, riga(10, 26, 15))["breached"] == 1
    assert tick(desk, riga(10, 27, 15)) == {"closed": 0, "reminded": 0, "breached": 0, "warned": 0, "failed": 0}
    assert templates_to(desk, AGENT, "deadline_warning", key) == 2  # the ticket's agent only
    assert templates_to(desk, SECOND, "deadline_warning", key) == 0


def test_an_earlier_agreed_due_date_is_the_work_start_deadline(clocked: Clocked) -> None:
    key = accepted_estimate(clocked, "2026-10-23", riga(10, 22, 15))
    assert deadlines(clocked.desk, key)["work_start_due_at"] == utc(riga(10, 23, 17))
    clocked.reply(riga(10, 23, 9), AGENT, key, "START")
    assert deadlines(clocked.desk, key)["work_started_at"] == utc(riga(10, 23, 9))
    assert tick(clocked.desk, riga(10, 30, 12))["breached"] == 0


def test_after_a_three_day_outage_one_tick_closes_every_overdue_ticket_once(clocked: Clocked) -> None:
    desk = clocked.desk
    keys = []
    for hour in (10, 11, 12):
        key = clocked.open(riga(11, 2, 9), ANNA, f"Task at {hour}")
        clocked.reply(riga(11, 2, 9, 30), AGENT, key, "START")
        clocked.reply(riga(11, 2, hour), AGENT, key, "RESOLVE")
        keys.append(key)
    assert tick(desk, riga(11, 5, 12))["reminded"] == 0
    # the daemon was down from Thursday noon until Thursday a week later
    assert tick(desk, riga(11, 12, 12)) == {"closed": 3, "reminded": 0, "breached": 0, "warned": 0, "failed": 0}
    assert tick(desk, riga(11, 12, 12))["closed"] == 0
    for key in keys:
        assert desk.ticket(key)["status"] == "CLOSED"
        assert templates_to(desk, ANNA, "auto_closed", key) == 1
        assert templates_to(desk, ANNA, "acceptance_reminder", key) == 0


def test_a_changed_service_level_moves_open_deadlines(clocked: Clocked) -> None:
    desk = clocked.desk
    key = resolved_on_friday_afternoon(clocked)
    desk.run("sla", "add", "gold", "--first-response", "1h", "--work-start", "1d", "--acceptance-term", "3d")
    desk.run("org", "set", "ACME", "--service-level", "gold")
    assert deadlines(desk, key)["acceptance_due_at"] == utc(riga(11, 19, 16, 30))
    desk.run("sla", "close-day", "2026-11-19", "--reason", "office move")
    assert deadlines(desk, key)["acceptance_due_at"] == utc(riga(11, 20, 16, 30))
    levels = {row["name"]: row for row in desk.json("sla", "list")}
    assert levels["standard"]["default"] and levels["standard"]["acceptance_term"] == "5d"
    assert levels["gold"]["hours"] == "Mon-Fri 09:00-17:00" and levels["gold"]["holidays"] == "LV"


def test_the_reports_match_a_hand_computed_month(clocked: Clocked) -> None:
    desk = clocked.desk
    desk.run("sla", "add", "gold", "--first-response", "1h", "--work-start", "1d", "--acceptance-term", "3d")
    desk.run("org", "set", "Other Ltd", "--service-level", "gold")
    one = clocked.open(riga(11, 2, 10), ANNA, "One")
    clocked.reply(riga(11, 2, 11, 30), AGENT, one, "ESTIMATE 45m")                 # response 90 min
    two = clocked.open(riga(11, 2, 16), ANNA, "Two")
    clocked.reply(riga(11, 3, 10), AGENT, one, "RESOLVE")
    clocked.reply(riga(11, 3, 11), AGENT, two, "ESTIMATE 3h DUE 2026-11-20")      # response 60 + 120 min
    clocked.reply(riga(11, 3, 12), BOSS, two, "ACCEPT THE ESTIMATE")
    clocked.reply(riga(11, 4, 10), ANNA, one, "ACCEPT THE SOLUTION")              # INVOICE on 4 November
    clocked.reply(riga(11, 5, 12), AGENT, two, "START")                           # start 300 + 480 + 180 min
    clocked.reply(riga(11, 5, 14), AGENT, two, "RESOLVE")
    three = clocked.open(riga(11, 6, 15), PETER, "Three")
    tick(desk, riga(11, 9, 11))                                                    # first response breached
    clocked.reply(riga(11, 9, 13), AGENT, three, "Looking at it.")                # response 120 + 240 min
    four = clocked.open(riga(11, 10, 9, 30), EVE, "Four")
    clocked.reply(riga(11, 10, 10), AGENT, four, "Done already?")                 # response 30 min
    tick(desk, riga(11, 12, 14))                                                   # "two" auto-accepted
    clocked.open(riga(12, 1, 10), ANNA, "Five, in December")

    report = desk.json("report", "sla", "--from", "2026-11-01", "--to", "2026-11-30")
    acme, other = report["organisations"]
    assert acme == {"organisation": "ACME", "service_level": "standard", "tickets": 3,
                    "first_response_target": "4h", "responded": 3, "responded_in_time": 2,
                    "first_response_average_minutes": 210, "first_response_breaches": 1,
                    "work_start_target": "2d", "started": 1, "started_in_time": 1,
                    "work_start_average_minutes": 960, "work_start_breaches": 0, "auto_closed": 1}
    assert other == {"organisation": "Other Ltd", "service_level": "gold", "tickets": 1,
                     "first_response_target": "1h", "responded": 1, "responded_in_time": 1,
                     "first_response_average_minutes": 30, "first_response_breaches": 0,
                     "work_start_target": "1d", "started": 0, "started_in_time": 0,
                     "work_start_average_minutes": None, "work_start_breaches": 0, "auto_closed": 0}
    only = desk.json("report", "sla", "--from", "2026-11-01", "--to", "2026-11-30", "--org", "other ltd")
    assert [row["organisation"] for row in only["organisations"]] == ["Other Ltd"]

    invoice = desk.json("report", "invoice", "--from", "2026-11-01", "--to", "2026-11-30")
    [group] = invoice["organisations"]
    assert (group["organisation"], group["count"], group["estimate_minutes"]) == ("ACME", 2, 225)
    assert [(row["key"], row["reached"], row["estimate"], row["at"]) for row in group["tickets"]] == [
        (one, "INVOICE", "45m", "2026-11-04"), (two, "auto-accepted", "3h", "2026-11-12")]
    assert desk.json("report", "invoice", "--from", "2026-11-05", "--to", "2026-11-11")["organisations"] == []


def test_two_daemons_sweeping_one_postgresql_at_once_close_and_tell_each_ticket_once(
        tmp_path, pg_url: str) -> None:
    """Two sweepers (separate engines, as two daemons have) race over 20 overdue tickets."""
    desk = Desk(tmp_path, database_url=pg_url)
    standard_people(desk)
    clocked = Clocked(desk)
    keys = []
    for n in range(20):
        key = clocked.open(riga(11, 2, 9), ANNA, f"Task {n}")
        clocked.reply(riga(11, 2, 9, 30), AGENT, key, "START")
        clocked.reply(riga(11, 2, 10), AGENT, key, "RESOLVE")
        keys.append(key)
    moment = riga(11, 20, 12).astimezone(timezone.utc)
    reports = []

    def daemon() -> None:
        engine = store.make_engine(pg_url)
        notifier = Notifier(clocked.settings, Renderer(default_templates_dir()))
        reports.append(sweep(engine, clocked.settings, notifier, now=moment))
        engine.dispose()

    threads = [threading.Thread(target=daemon) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sum(report.closed for report in reports) == 20 and all(report.failed == 0 for report in reports)
    for key in keys:
        assert desk.ticket(key)["status"] == "CLOSED"
        assert templates_to(desk, ANNA, "auto_closed", key) == 1
