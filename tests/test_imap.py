"""The IMAP poller against a real Dovecot: mail in INBOX becomes tickets, originals are filed
only after the commit, and nothing is lost or doubled across restarts, UIDVALIDITY changes,
oversize mail and a server that dies in the middle of IDLE."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk import imap, process, store
from maildesk.config import Settings, load_settings
from maildesk.directory import add_organisation, add_user
from maildesk.imap import ImapPoller, PollReport, check_connection, open_client, uid_ranges
from maildesk.models import ImapCursor, InboxItem, InboxRaw, OutboxItem, Ticket
from maildesk.parse_worker import ProcessParser
from maildesk.process import GROUP_ROWS as PROCESS_GROUP, Pipeline, Prepared, chunks_by_size
from tests.mailbuilder import make_mail
from tests.servers import free_port

pytestmark = pytest.mark.servers

SUPPORT = "support@desk.example"
CUSTOMER = "anna@acme.example"
AGENT = "agent@desk.example"
STRANGER = "nobody@elsewhere.example"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def eventually(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Loop on an observable condition until a deadline (the poller works in another thread)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


def desk_settings(directory: Path, dovecot: Any, **settings: str) -> Settings:
    """Settings as an admin writes them for the test Dovecot (plaintext port), with overrides."""
    directory.mkdir(parents=True, exist_ok=True)
    empty_env_file = directory / "empty.env"  # never pick up a developer's ./.env
    empty_env_file.write_text("")
    environ = {"MAILDESK_DATA_DIR": str(directory / "var"), "MAILDESK_SUPPORT_ADDRESS": SUPPORT,
               "MAILDESK_IMAP_HOST": "127.0.0.1", "MAILDESK_IMAP_PORT": str(dovecot.port),
               "MAILDESK_IMAP_USER": dovecot.user, "MAILDESK_IMAP_PASSWORD": dovecot.password,
               "MAILDESK_IMAP_SSL": "false", "MAILDESK_LANGUAGE": "en",
               **{f"MAILDESK_{key.upper()}": value for key, value in settings.items()}}
    return load_settings(empty_env_file, environ=environ)


class Desk:
    """A pipeline on a fresh SQLite database, with ACME's Anna and one agent, polling the test Dovecot."""

    def __init__(self, directory: Path, dovecot: Any, **settings: str) -> None:
        self.settings = desk_settings(directory, dovecot, **settings)
        self.engine = store.make_engine(self.settings.database_url)
        store.upgrade(self.engine)
        self.pipeline = Pipeline(self.settings, self.engine)
        self.pollers: list[ImapPoller] = []
        now = datetime.now(timezone.utc)
        with store.transaction(self.engine) as session:
            add_organisation("ACME", session=session, domains=["acme.example"], language="en", service_level=None)
            add_user(CUSTOMER, session=session, name="Anna", now=now, organisation="ACME", agent=False,
                     responsible=False, language="en")
            add_user(AGENT, session=session, name="Agent", now=now, organisation=None, agent=True,
                     responsible=False, language="en")

    def poller(self, **options: Any) -> ImapPoller:
        poller = ImapPoller(self.settings, self.pipeline, **options)
        self.pollers.append(poller)
        return poller

    def rows(self, model: Any) -> list[Any]:
        with store.transaction(self.engine) as session:
            return list(session.execute(select(model).order_by(*model.__table__.primary_key.columns)).scalars())

    def tickets(self) -> list[Ticket]:
        return self.rows(Ticket)

    def inbox(self) -> list[InboxItem]:
        return self.rows(InboxItem)

    def mails_to(self, address: str, template: str) -> list[OutboxItem]:
        return [row for row in self.rows(OutboxItem)
                if address in json.loads(row.to_addresses) and row.template == template]

    def close(self) -> None:
        for poller in self.pollers:
            poller.close()
        self.engine.dispose()


@pytest.fixture
def desk(tmp_path: Path, dovecot: Any) -> Iterator[Desk]:
    dovecot.reset()
    desk = Desk(tmp_path, dovecot)
    yield desk
    desk.close()


def customer_mail(subject: str, body: str = "It does not work.", *, to: str = SUPPORT, **options: Any) -> bytes:
    return make_mail(CUSTOMER, subject, body, to=to, **options)


class CuttableLink:
    """A TCP relay to Dovecot whose connections can be cut without a BYE: a crash or a lost route."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.sockets = []

    def close(self) -> None:
        self.listener.close()
        self.cut()


def run_in_thread(poller: ImapPoller) -> threading.Thread:
    thread = threading.Thread(target=poller.run_forever, name="test-imap-poller", daemon=True)
    thread.start()
    return thread


def test_a_customer_mail_becomes_an_open_ticket_and_the_original_moves_to_processed(desk: Desk, dovecot: Any) -> None:
    dovecot.append("INBOX", customer_mail("Printer on floor 3", message_id="<printer-1@client.example>"))

    report = desk.poller().poll_once()

    assert report == PollReport(fetched=1, stored_new=1, processed=1, quarantined=0, moved=1)
    [ticket] = desk.tickets()
    assert ticket.status == "OPEN" and ticket.reporter == CUSTOMER
    assert [row.ticket_id for row in desk.mails_to(CUSTOMER, "ticket_created")] == [ticket.id]
    assert [row.source for row in desk.inbox()] == ["imap"]
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 1
    assert b"<printer-1@client.example>" in dovecot.messages("Processed")[0]


def test_a_reply_appended_later_is_threaded_onto_the_same_ticket(desk: Desk, dovecot: Any) -> None:
    poller = desk.poller()
    dovecot.append("INBOX", customer_mail("Scanner jams"))
    poller.poll_once()
    [acknowledgement] = desk.mails_to(CUSTOMER, "ticket_created")

    dovecot.append("INBOX", customer_mail(f"Re: {acknowledgement.subject}", "Also the second tray.",
                                          to=acknowledgement.reply_to, in_reply_to=acknowledgement.message_id))
    report = poller.poll_once()

    assert report.processed == 1 and report.moved == 1
    [ticket] = desk.tickets()
    assert {row.ticket_id for row in desk.inbox()} == {ticket.id}
    assert dovecot.count("Processed") == 2 and dovecot.count("INBOX") == 0


def test_an_unknown_sender_is_held_and_filed_and_an_outlook_msg_is_quarantined_with_its_reason(
        desk: Desk, dovecot: Any) -> None:
    dovecot.append("INBOX", make_mail(STRANGER, "Hello", "Who are you?", to=SUPPORT))
    dovecot.append("INBOX", OLE2_MAGIC + bytes(range(1, 256)) * 8)

    report = desk.poller().poll_once()

    assert (report.quarantined, report.moved) == (1, 2)
    held, broken = desk.inbox()
    assert held.state == "held" and held.sender == STRANGER
    assert broken.state == "quarantined" and "Outlook .msg" in broken.reason
    assert desk.tickets() == []
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 1 and dovecot.count("Quarantine") == 1
    assert dovecot.messages("Quarantine")[0].startswith(OLE2_MAGIC)


def test_after_a_restart_only_new_mail_is_processed_and_stored_but_unfiled_mail_is_not_doubled(
        desk: Desk, dovecot: Any) -> None:
    for n in range(3):
        dovecot.append("INBOX", customer_mail(f"Before the restart {n}"))
    first = desk.poller()
    assert first.poll_once().stored_new == 3
    first.close()

    for n in range(2):
        dovecot.append("INBOX", customer_mail(f"After the restart {n}"))
    # A crash after the commit: one message stored only, one stored and processed, neither filed.
    stored_only, processed_unfiled = customer_mail("Stored, not processed"), customer_mail("Processed, not filed")
    ids = [item.inbox_id for item in desk.pipeline.store_many([stored_only, processed_unfiled], "imap")]
    desk.pipeline.process_many(ids[1:])
    dovecot.append("INBOX", stored_only)
    dovecot.append("INBOX", processed_unfiled)

    report = desk.poller().poll_once()

    assert (report.fetched, report.stored_new, report.processed, report.moved) == (4, 2, 3, 4)
    summaries = sorted(ticket.summary for ticket in desk.tickets())
    assert summaries == sorted([*(f"Before the restart {n}" for n in range(3)),
                                *(f"After the restart {n}" for n in range(2)),
                                "Stored, not processed", "Processed, not filed"])
    assert len(desk.inbox()) == 7
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 7


def append_originals_and_their_replies(dovecot: Any, count: int) -> None:
    """`count` new requests, then a reply to each (threaded by In-Reply-To): with `count` =
    PROCESS_GROUP every reply is in the group after its original."""
    for n in range(count):
        dovecot.append("INBOX", customer_mail(f"Request {n}", message_id=f"<request-{n}@client.example>"))
    for n in range(count):
        dovecot.append("INBOX", customer_mail(f"Re: Request {n}", f"More about request {n}.",
                                              in_reply_to=f"<request-{n}@client.example>"))


def test_the_next_group_is_parsed_before_the_one_ahead_is_finished_and_its_replies_still_thread(
        desk: Desk, dovecot: Any) -> None:
    append_originals_and_their_replies(dovecot, PROCESS_GROUP)
    desk.pipeline = Pipeline(desk.settings, desk.engine, parser=ProcessParser(1))
    calls: list[tuple[str, int]] = []
    prepare, finish = desk.pipeline.prepare, desk.pipeline.finish

    def prepare_logged(inbox_ids: list[int], **options: Any) -> Prepared:
        calls.append(("prepare", min(inbox_ids)))
        return prepare(inbox_ids, **options)

    def finish_logged(prepared: Prepared) -> list[Any]:
        calls.append(("finish", min(prepared.inbox_ids)))
        return finish(prepared)

    desk.pipeline.prepare, desk.pipeline.finish = prepare_logged, finish_logged  # type: ignore[method-assign]
    try:
        report = desk.poller().poll_once()
    finally:
        desk.pipeline.parser.close()

    first, second = 1, PROCESS_GROUP + 1
    assert calls == [("prepare", first), ("prepare", second), ("finish", first), ("finish", second)]
    assert (report.processed, report.moved) == (2 * PROCESS_GROUP, 2 * PROCESS_GROUP)
    tickets = {ticket.summary: ticket.id for ticket in desk.tickets()}
    assert sorted(tickets) == sorted(f"Request {n}" for n in range(PROCESS_GROUP))
    rows = desk.inbox()
    assert [row.ticket_id for row in rows[PROCESS_GROUP:]] == [tickets[f"Request {n}"] for n in range(PROCESS_GROUP)]
    assert {row.reason for row in rows[PROCESS_GROUP:]} == {"comment"}


def test_the_next_batch_is_fetched_while_one_is_processed_and_each_is_filed_only_after_its_commit(
        tmp_path: Path, dovecot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dovecot.reset()
    desk = Desk(tmp_path, dovecot, imap_batch_size=str(PROCESS_GROUP))
    for n in range(2 * PROCESS_GROUP):
        dovecot.append("INBOX", customer_mail(f"Request {n}"))
    events: list[str] = []
    second_fetched = threading.Event()
    fetch_bodies, move, finish = imap.fetch_bodies, ImapPoller._move, desk.pipeline.finish

    def fetching(client: Any, uids: list[int]) -> dict[int, bytes]:
        bodies = fetch_bodies(client, uids)
        events.append("fetch")
        if events.count("fetch") == 2:
            second_fetched.set()
        return bodies

    def moving(poller: ImapPoller, client: Any, uids: list[int], folder: str) -> int:
        events.append("move")
        return move(poller, client, uids, folder)

    def finishing(prepared: Prepared) -> list[Any]:
        if "committed" not in events:  # the first batch waits (a while at most) to see the second fetched
            events.append("second fetched meanwhile" if second_fetched.wait(10) else "not fetched meanwhile")
        outcomes = finish(prepared)
        events.append("committed")
        return outcomes

    monkeypatch.setattr(imap, "fetch_bodies", fetching)
    monkeypatch.setattr(ImapPoller, "_move", moving)
    desk.pipeline.finish = finishing  # type: ignore[method-assign]
    try:
        report = desk.poller().poll_once()
    finally:
        desk.close()
    assert (report.processed, report.moved) == (2 * PROCESS_GROUP, 2 * PROCESS_GROUP)
    # the next batch came in while the first was processed; each (one group) is filed after its commit
    assert events[:4] == ["fetch", "fetch", "second fetched meanwhile", "committed"]
    committed = [index for index, event in enumerate(events) if event == "committed"]
    moved = [index for index, event in enumerate(events) if event == "move"]
    assert len(committed) == len(moved) == 2 and all(move > commit for commit, move in zip(committed, moved))


def test_progress_is_reported_after_each_group_is_committed_so_the_sender_starts_at_once(
        desk: Desk, dovecot: Any) -> None:
    """The daemon wakes the outbox sender on each report: the group's acknowledgements are there
    to send, not only once the whole IMAP batch is done."""
    append_originals_and_their_replies(dovecot, PROCESS_GROUP)
    reports: list[tuple[int, int, int]] = []

    def progress(done: int, total: int) -> None:
        reports.append((done, total, len(desk.mails_to(AGENT, "ticket_announced"))))

    report = desk.poller(on_progress=progress).poll_once()
    assert report.processed == 2 * PROCESS_GROUP
    # after the first group every announcement of it is committed; the replies then add none
    assert reports == [(PROCESS_GROUP, 2 * PROCESS_GROUP, PROCESS_GROUP),
                       (2 * PROCESS_GROUP, 2 * PROCESS_GROUP, PROCESS_GROUP)]


def test_groups_are_bounded_in_bytes_so_a_backlog_of_big_mails_is_never_all_in_memory(
        desk: Desk, dovecot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd's MemoryMax a group of fifty big mails, held twice over, would get the
    daemon killed and restarted onto the same backlog again."""
    small = [customer_mail(f"Request {n}") for n in range(6)]
    big = customer_mail("Logs attached", "The log:\n" + "x" * 60 + ("\n" + "y" * 60) * 200)
    for raw in [*small[:3], big, *small[3:]]:
        dovecot.append("INBOX", raw)
    budget = 3 * max(len(raw) for raw in small) + 100  # sizes as the server counts them: CRLF, as sent
    assert len(big) > budget
    monkeypatch.setattr(process, "GROUP_BYTES", budget)
    groups: list[int] = []
    prepare = desk.pipeline.prepare

    def preparing(inbox_ids: list[int], **options: Any) -> Prepared:
        groups.append(len(inbox_ids))
        return prepare(inbox_ids, **options)

    desk.pipeline.prepare = preparing  # type: ignore[method-assign]
    report = desk.poller().poll_once()
    assert (report.processed, report.moved) == (7, 7)
    assert groups == [3, 1, 3]  # the big mail alone, between two groups of three


@pytest.mark.parametrize(("sizes", "budget", "most", "expected"), [
    ({1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, 100, 2, [[1, 2], [3, 4], [5]]),
    ({1: 10, 2: 10, 3: 10, 4: 10}, 25, 3, [[1, 2], [3, 4]]),
    ({1: 10, 2: 50, 3: 10}, 25, 3, [[1], [2], [3]]),
])
def test_process_groups_are_bounded_in_count_and_bytes(sizes: dict[int, int], budget: int, most: int,
                                                        expected: list[list[int]]) -> None:
    assert list(chunks_by_size(list(sizes), sizes, budget, most=most)) == expected


def test_when_a_group_fails_the_group_prepared_behind_it_goes_back_at_once_with_no_attempt_counted(
        desk: Desk, dovecot: Any) -> None:
    append_originals_and_their_replies(dovecot, PROCESS_GROUP)
    finish = desk.pipeline.finish

    def database_gone(prepared: Prepared) -> list[Any]:
        raise RuntimeError("the database went away")

    desk.pipeline.finish = database_gone  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="went away"):
        desk.poller().poll_once()
    rows = desk.inbox()
    assert {(row.state, row.attempts) for row in rows[:PROCESS_GROUP]} == {("processing", 1)}  # its lease runs
    assert {(row.state, row.attempts, row.claimed_by) for row in rows[PROCESS_GROUP:]} == {("new", 0, None)}

    desk.pipeline.finish = finish  # type: ignore[method-assign]
    report = desk.poller().poll_once()
    assert report.processed == PROCESS_GROUP and report.moved == PROCESS_GROUP
    assert {row.state for row in desk.inbox()[PROCESS_GROUP:]} == {"processed"}
    assert dovecot.count("INBOX") == PROCESS_GROUP


def test_a_new_uidvalidity_rereads_the_folder_and_only_really_new_mail_makes_tickets(
        desk: Desk, dovecot: Any, caplog: pytest.LogCaptureFixture) -> None:
    first_five = [customer_mail(f"Request {n}") for n in range(5)]
    for raw in first_five:
        dovecot.append("INBOX", raw)
    poller = desk.poller()
    assert poller.poll_once().stored_new == 5
    [cursor] = desk.rows(ImapCursor)
    assert cursor.last_uid >= 5

    subprocess.run(["doveadm", "-c", str(dovecot.config_path), "mailbox", "update", "-u", dovecot.user,
                    "--uid-validity", str(cursor.uidvalidity + 1000), "INBOX"], check=True, capture_output=True)
    for raw in [*first_five, customer_mail("Request 5"), customer_mail("Request 6")]:
        dovecot.append("INBOX", raw)
    with caplog.at_level(logging.WARNING, logger="maildesk.imap"):
        report = desk.poller().poll_once()

    assert "uidvalidity changed" in caplog.text
    assert (report.fetched, report.stored_new, report.moved) == (7, 2, 7)
    assert len(desk.tickets()) == 7
    [cursor_after] = desk.rows(ImapCursor)
    assert cursor_after.uidvalidity == cursor.uidvalidity + 1000
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 12


def test_an_oversize_message_is_quarantined_without_being_fetched(tmp_path: Path, dovecot: Any) -> None:
    dovecot.reset()
    desk = Desk(tmp_path, dovecot, max_message_bytes="2048")
    try:
        dovecot.append("INBOX", customer_mail("Huge log", "x" * 10_000, message_id="<huge@client.example>"))
        dovecot.append("INBOX", customer_mail("Small", "A short one."))

        report = desk.poller().poll_once()

        assert (report.fetched, report.quarantined, report.moved) == (1, 1, 2)
        huge, small = sorted(desk.inbox(), key=lambda row: row.size, reverse=True)
        assert huge.state == "quarantined" and huge.size > 10_000
        assert [row.inbox_id for row in desk.rows(InboxRaw)] == [small.id]  # the huge one was never fetched
        assert f"message of {huge.size} bytes exceeds" in huge.reason and "(2048)" in huge.reason
        assert huge.message_id == "<huge@client.example>"
        assert small.state == "processed" and [t.summary for t in desk.tickets()] == ["Small"]
        assert dovecot.count("Quarantine") == 1 and dovecot.count("Processed") == 1 and dovecot.count("INBOX") == 0
        assert desk.poller().poll_once() == PollReport()  # seen again: no second row
        assert len(desk.inbox()) == 2
    finally:
        desk.close()


def test_idle_brings_a_new_mail_in_within_seconds_and_a_stop_ends_the_loop_at_once(desk: Desk, dovecot: Any) -> None:
    stop = threading.Event()
    thread = run_in_thread(desk.poller(stop_event=stop))
    try:
        eventually(lambda: desk.rows(ImapCursor), 10, "the first poll")
        dovecot.append("INBOX", customer_mail("Arrives while idling"))
        eventually(desk.tickets, 10, "a ticket from the mail delivered during IDLE")
        eventually(lambda: dovecot.count("Processed") == 1, 10, "the original in Processed")
    finally:
        stop.set()
        started = time.monotonic()
        thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - started < 2


class PollerWithMailDuringSearch(ImapPoller):
    """Mail arrives while the first poll's SEARCH runs: the server announces it only at that command's end."""

    def __init__(self, *args: Any, deliver: Callable[[], None], **options: Any) -> None:
        super().__init__(*args, **options)
        self.deliver: Callable[[], None] | None = deliver

    def poll_once(self) -> PollReport:
        report = super().poll_once()
        if self.deliver is not None:
            self.deliver()
            self.deliver = None
            assert self._client is not None
            assert self._client.search(["ALL"]) == []  # Dovecot answers from the old view, then "* 1 EXISTS"
        return report


def test_mail_announced_during_a_search_is_fetched_at_once_not_at_the_next_idle(desk: Desk, dovecot: Any) -> None:
    stop = threading.Event()
    poller = PollerWithMailDuringSearch(desk.settings, desk.pipeline, stop_event=stop, idle_reissue_seconds=3600,
                                        deliver=lambda: dovecot.append("INBOX", customer_mail("Raced the SEARCH")))
    thread = run_in_thread(poller)
    try:
        eventually(desk.tickets, 10, "a ticket from the mail announced before IDLE began")
    finally:
        stop.set()
        thread.join(timeout=5)
        poller.close()
    assert not thread.is_alive()


def test_a_server_restart_during_idle_is_survived_with_a_reconnect(
        desk: Desk, dovecot: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="maildesk.imap")
    stop = threading.Event()
    thread = run_in_thread(desk.poller(stop_event=stop, max_backoff=2))
    try:
        dovecot.append("INBOX", customer_mail("Before the outage"))
        eventually(lambda: len(desk.tickets()) == 1, 10, "the first ticket")

        dovecot.restart()
        # The old session lingers (~10 s) and even reports new mail until the server says BYE:
        # deliver only once the poller has noticed the loss and reconnected.
        eventually(lambda: caplog.text.count("connected to IMAP") >= 2, 40, "a reconnect after the restart")
        dovecot.append("INBOX", customer_mail("After the outage"))

        eventually(lambda: len(desk.tickets()) == 2, 60, "a ticket from the mail delivered after the restart")
        eventually(lambda: dovecot.count("INBOX") == 0, 10, "INBOX emptied")
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert "reconnecting in" in caplog.text


def test_a_connection_cut_without_bye_during_idle_is_noticed_and_reopened(
        tmp_path: Path, dovecot: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A dead socket does not raise in idle_check: it answers [] at once, again and again."""
    dovecot.reset()
    caplog.set_level(logging.DEBUG, logger="maildesk.imap")
    link = CuttableLink(dovecot.port)
    desk = Desk(tmp_path, dovecot, imap_port=str(link.port))
    stop = threading.Event()
    thread = run_in_thread(desk.poller(stop_event=stop, max_backoff=2))
    try:
        eventually(lambda: "idling on" in caplog.text, 10, "the poller in IDLE")
        link.cut()
        eventually(lambda: "the connection is closed" in caplog.text, 10, "the dead connection noticed")
        dovecot.append("INBOX", customer_mail("After the cut"))
        eventually(desk.tickets, 20, "a ticket from the mail delivered after the cut")
    finally:
        stop.set()
        thread.join(timeout=5)
        desk.close()
        link.close()
    assert not thread.is_alive()
    assert caplog.text.count("connected to IMAP") >= 2


def test_an_unreachable_server_is_retried_with_doubling_backoff_up_to_the_cap(
        tmp_path: Path, dovecot: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="maildesk.imap")
    desk = Desk(tmp_path, dovecot, imap_port=str(free_port()))
    stop = threading.Event()
    thread = run_in_thread(desk.poller(stop_event=stop, max_backoff=2))
    try:
        eventually(lambda: caplog.text.count("reconnecting in") >= 3, 10, "three failed attempts")
    finally:
        stop.set()
        thread.join(timeout=5)
        desk.close()
    assert not thread.is_alive()
    delays = [line.rsplit("reconnecting in ", 1)[1] for line in caplog.messages if "reconnecting in" in line]
    assert delays[:3] == ["1 s", "2 s", "2 s"]
    assert "Connection refused" in caplog.messages[0] and dovecot.password not in caplog.text


class PollerWithoutMove(ImapPoller):
    """A server without RFC 6851 MOVE, as many still are."""

    def _connect(self) -> Any:
        client = super()._connect()
        self._capabilities -= {b"MOVE"}
        return client


def test_without_move_the_original_is_copied_flagged_and_uid_expunged(desk: Desk, dovecot: Any) -> None:
    dovecot.append("INBOX", customer_mail("Filed the old way"))
    dovecot.append("INBOX", make_mail(STRANGER, "Hello", "Who are you?", to=SUPPORT))
    poller = PollerWithoutMove(desk.settings, desk.pipeline)
    try:
        assert poller.poll_once().moved == 2
    finally:
        poller.close()
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 2
    assert len(desk.tickets()) == 1


def test_check_connection_says_what_is_wrong_without_the_password(tmp_path: Path, dovecot: Any) -> None:
    assert check_connection(desk_settings(tmp_path, dovecot)) is None

    problem = check_connection(desk_settings(tmp_path, dovecot, imap_password="not-the-password-42"))
    assert problem is not None and f"IMAP login failed for user {dovecot.user}" in problem
    assert "not-the-password-42" not in problem

    closed_port = free_port()
    problem = check_connection(desk_settings(tmp_path, dovecot, imap_port=str(closed_port)))
    assert problem is not None and problem.startswith(f"cannot connect to IMAP 127.0.0.1:{closed_port}: ")


def test_a_fetched_mail_is_formatted_for_imaplib_debug_lines_only_when_they_are_logged(
        tmp_path: Path, dovecot: Any, caplog: pytest.LogCaptureFixture) -> None:
    dovecot.reset()
    dovecot.append("INBOX", customer_mail("A long report", body="lorem ipsum\n" * 5000))
    settings = desk_settings(tmp_path, dovecot)

    def debug_text_of_one_fetch() -> list[str]:
        client = open_client(settings)
        formatted: list[str] = []
        client._imap._mesg = formatted.append  # where imaplib sends its debug lines
        try:
            client.select_folder("INBOX", readonly=True)
            [body] = [data[b"BODY[]"] for data in client.fetch(client.search(), ["BODY.PEEK[]"]).values()]
            assert body.count(b"lorem ipsum") == 5000
        finally:
            client.logout()
        return formatted

    caplog.set_level(logging.INFO, logger="imapclient.imaplib")
    assert debug_text_of_one_fetch() == []
    caplog.set_level(logging.DEBUG, logger="imapclient.imaplib")
    assert any("lorem ipsum" in line for line in debug_text_of_one_fetch())


@pytest.mark.parametrize(("uids", "expected"), [
    ([], ""), ([7], "7"), ([1, 2, 3], "1:3"), ([3, 1, 2, 7, 9, 10], "1:3,7,9:10"),
])
def test_uids_are_logged_as_imap_sequence_sets(uids: list[int], expected: str) -> None:
    assert uid_ranges(uids) == expected


@pytest.mark.parametrize(("sizes", "budget", "expected"), [
    ({1: 10, 2: 10, 3: 10}, 20, [[1, 2], [3]]),
    ({1: 50, 2: 10}, 20, [[1], [2]]),  # a message bigger than the budget is fetched alone
    ({}, 20, []),
])
def test_bodies_are_fetched_in_chunks_of_bounded_size(sizes: dict[int, int], budget: int,
                                                      expected: list[list[int]]) -> None:
    assert list(chunks_by_size(list(sizes), sizes, budget)) == expected


def test_check_connection_names_a_missing_folder(tmp_path: Path, dovecot: Any) -> None:
    problem = check_connection(desk_settings(tmp_path, dovecot, imap_folder="Support/Incoming"))
    assert problem == (f"IMAP folder 'Support/Incoming' does not exist for user {dovecot.user} "
                       f"at 127.0.0.1:{dovecot.port}")
