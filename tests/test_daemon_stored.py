"""The daemon's processing of what the LMTP listener stored: alone when it comes, in groups
when it comes faster than it is processed (a burst from the MTA), a stop between groups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk import daemon as daemon_module
from maildesk import process, store
from maildesk.config import load_settings
from maildesk.daemon import Daemon
from tests.desk import Desk, standard_people
from tests.mailbuilder import make_mail


IMAP = {"MAILDESK_IMAP_HOST": "127.0.0.1", "MAILDESK_IMAP_USER": "desk", "MAILDESK_IMAP_PASSWORD": "never used"}


@pytest.fixture(params=["lmtp"])
def desk_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Desk, Daemon, list[list[int]]]]:
    """A desk, a Daemon on it (not started: its loop's step is called directly; with IMAP
    settings for the "imap" parameter), and the groups its pipeline was asked to process,
    recorded on the way to the real `process_many`."""
    desk = Desk(tmp_path)
    standard_people(desk)
    settings = load_settings(environ={**desk.env, **(IMAP if request.param == "imap" else {})})
    daemon = Daemon(settings, store.make_engine(settings.database_url))
    asked: list[list[int]] = []
    process_many = daemon.pipeline.process_many

    def recording(inbox_ids: list[int], **options: object) -> object:
        asked.append(list(inbox_ids))
        return process_many(inbox_ids, **options)  # type: ignore[arg-type]

    daemon.pipeline.process_many = recording  # type: ignore[method-assign]
    yield desk, daemon, asked
    daemon.engine.dispose()


def _store(daemon: Daemon, count: int) -> list[int]:
    ids = [daemon.pipeline.store_raw(make_mail("anna@acme.example", f"Request {n}", "Broken.",
                                               to="support@desk.example"), "lmtp").inbox_id for n in range(count)]
    for inbox_id in ids:
        daemon.stored.put(inbox_id)
    return ids


def _states(desk: Desk) -> list[str]:
    return [row["state"] for row in desk.json("inbox", "list")]


def test_what_came_meanwhile_is_processed_as_one_group(desk_daemon) -> None:  # type: ignore[no-untyped-def]
    desk, daemon, asked = desk_daemon
    ids = _store(daemon, 7)
    daemon._process_stored(timeout=0.1)
    assert asked == [ids]
    assert _states(desk) == ["processed"] * 7 and len(desk.json("ticket", "list")) == 7


def test_groups_are_bounded_and_a_stop_waits_only_for_the_group_in_hand(desk_daemon, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    desk, daemon, asked = desk_daemon
    monkeypatch.setattr(process, "GROUP_ROWS", 3)
    monkeypatch.setattr(daemon_module, "GROUP_ROWS", 3)
    ids = _store(daemon, 7)
    process_many = daemon.pipeline.process_many

    def stop_after_the_second(inbox_ids: list[int], **options: object) -> object:
        result = process_many(inbox_ids, **options)
        if len(asked) == 2:
            daemon.signals.stop.set()
        return result

    daemon.pipeline.process_many = stop_after_the_second  # type: ignore[method-assign]
    daemon._process_stored(timeout=0.1)
    assert asked == [ids[:3], ids[3:6]]
    assert _states(desk) == ["processed"] * 6 + ["new"]  # stored: the next start processes it


@pytest.mark.parametrize("desk_daemon", ["imap"], indirect=True)
def test_with_imap_retries_and_recovered_rows_go_one_at_a_time(desk_daemon) -> None:  # type: ignore[no-untyped-def]
    """The poller may meet the same rows in INBOX and files a mail only after processing its row
    itself: a group claimed here left mails in INBOX until the next poll (the SIGKILL test)."""
    desk, daemon, asked = desk_daemon
    ids = _store(daemon, 3)
    daemon._process_stored(timeout=0.1)
    assert asked == [[inbox_id] for inbox_id in ids]
    assert _states(desk) == ["processed"] * 3
