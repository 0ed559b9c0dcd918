"""Raw mail retention: `maildesk inbox prune` and MAILDESK_KEEP_RAW_DAYS (on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from maildesk import retention, store
from maildesk.config import load_settings
from maildesk.models import utcnow
from tests.daemon_harness import DaemonProcess, wait_until
from tests.desk import Desk
from tests.mailbuilder import make_mail
from tests.servers import free_port


def _engine(desk: Desk):  # type: ignore[no-untyped-def]
    return store.make_engine(load_settings(environ=desk.env).database_url)


def _handled_days_ago(desk: Desk, days: int, *inbox_ids: int) -> None:
    engine = _engine(desk)
    with engine.begin() as connection:
        for inbox_id in inbox_ids:
            connection.execute(text("UPDATE inbox SET processed_at = :at WHERE id = :id"),
                               {"at": utcnow() - timedelta(days=days), "id": inbox_id})
    engine.dispose()


def _raw_kept(desk: Desk) -> set[int]:
    engine = _engine(desk)
    with engine.connect() as connection:
        kept = {row[0] for row in connection.execute(text("SELECT inbox_id FROM inbox_raw"))}
    engine.dispose()
    return kept


def _inbox(desk: Desk) -> dict[int, str]:
    return {row["id"]: row["state"] for row in desk.json("inbox", "list")}


def test_prune_removes_only_old_handled_mail_and_a_repeat_is_still_known(people: Desk) -> None:
    old_ticket = make_mail("anna@acme.example", "Printer", "Broken.", to="support@desk.example")
    people.ingest(old_ticket)
    people.mail("stranger@nowhere.example", "Hello", "Who are you?")  # held: waits for `inbox retry`
    people.mail("anna@acme.example", "Scanner", "Also broken.")  # processed, but recent
    assert _inbox(people) == {1: "processed", 2: "held", 3: "processed"}
    _handled_days_ago(people, 40, 1, 2)

    assert people.run("inbox", "prune", "--older-than", "30", "--dry-run").startswith(
        "would remove the raw bytes of 1 mail handled over 30 days ago")
    assert _raw_kept(people) == {1, 2, 3}
    output = people.run("inbox", "prune", "--older-than", "30")
    assert output.startswith("removed the raw bytes of 1 mail handled over 30 days ago")
    assert _raw_kept(people) == {2, 3}
    assert people.run("inbox", "prune", "--older-than", "30").startswith("removed the raw bytes of 0 mails")

    assert "already stored" in people.ingest(old_ticket)  # its SHA-256 is kept: not a second ticket
    assert sorted(ticket["key"] for ticket in people.json("ticket", "list")) == ["SD-1", "SD-2"]
    assert people.ticket("SD-1")["messages"][0]["new_text"] == "Broken."  # the ticket keeps what it said


def test_the_daemon_prunes_by_itself_with_keep_raw_days(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    daemon = DaemonProcess({**desk.env, "MAILDESK_KEEP_RAW_DAYS": "30", "MAILDESK_LMTP_PORT": str(free_port())},
                           tmp_path)
    desk.run("org", "add", "ACME", "--domain", "acme.example")
    desk.run("user", "add", "anna@acme.example", "--name", "Anna", "--org", "ACME")
    desk.mail("anna@acme.example", "Old", "Handled long ago.")
    desk.mail("anna@acme.example", "New", "Handled today.")
    _handled_days_ago(desk, 31, 1)
    try:
        daemon.start()
        wait_until(lambda: _raw_kept(desk) == {2}, 20, what="the daemon's prune at start")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert "removed the raw bytes of 1 mail handled over 30 days ago" in daemon.log.read_text()


def test_a_run_of_the_daemon_prunes_a_bounded_number_of_batches(people: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long history goes over several runs, so the daemon's loop (and its watchdog) never stalls."""
    for number in range(3):
        people.mail("anna@acme.example", f"Request {number}", "Old.")
    _handled_days_ago(people, 40, 1, 2, 3)
    monkeypatch.setattr(retention, "PRUNE_BATCH", 1)
    engine = _engine(people)
    before = utcnow() - timedelta(days=30)
    assert retention.prunable(engine, handled_before=before) == retention.Pruned(3, sum(
        row["size"] for row in people.json("inbox", "list")))
    assert retention.prune_raw(engine, handled_before=before, max_batches=2).mails == 2
    assert _raw_kept(people) == {3}
    assert retention.prune_raw(engine, handled_before=before).mails == 1
    assert _raw_kept(people) == set()
    engine.dispose()
