"""Sending in a helper process (`send_worker`): the same outcomes as in-process, recorded by the
caller; a stop ends the batch after the message in hand; a helper that dies loses nothing."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from maildesk import outbox, send_worker, store
from maildesk.config import Settings
from maildesk.delivery import LocalSender
from maildesk.models import OutboxItem
from maildesk.outbox import release_stale_claims, send_due
from maildesk.send_worker import SendWorker, sender_for
from maildesk.smtp import SmtpTransport
from tests.daemon_harness import wait_until
from tests.servers import SmtpSink
from tests.test_smtp import ANNA, BOSS, T0, engine, make_settings, queue, received_ids, row, settings  # noqa: F401


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real receiver offering PIPELINING, as the benchmarks' and a production relay do (the
    `settings` and `engine` fixtures of test_smtp use it)."""
    with SmtpSink(pipelining=True) as sink:
        yield sink


@pytest.fixture
def worker(settings: Settings) -> Iterator[SendWorker]:
    worker = SendWorker(settings)
    worker.start()
    worker.wait_started()
    yield worker
    worker.close()


def helper_pids() -> list[int]:
    return [child.pid for child in multiprocessing.active_children() if child.pid is not None]


def test_the_helper_sends_a_batch_and_the_caller_records_each_outcome(engine: Engine, settings: Settings,
                                                                       worker: SendWorker, smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse_recipients({BOSS: 550})
    smtp_sink.refuse_messages({"<later@desk.example>": 451})
    ids = [queue(engine, ANNA, subject=f"[SD-{n}] Printer") for n in range(3)]
    both = queue(engine, ANNA, BOSS, subject="[SD-4] Printer")
    report = send_due(engine, settings, worker, now=T0)
    assert (report.sent, report.retried, report.failed) == (4, 0, 0)
    assert sorted(received_ids(smtp_sink)) == sorted([*ids, both])
    results = json.loads(row(engine, both).recipient_results)
    assert (results[ANNA]["state"], results[BOSS]["state"]) == ("delivered", "refused")
    assert {row(engine, message_id).claimed_by for message_id in [*ids, both]} == {None}
    with store.transaction(engine) as session:  # a message the server defers, over the same helper
        session.add(OutboxItem(message_id="<later@desk.example>", to_addresses=json.dumps([ANNA]),
                                      subject="[SD-5] Later", body_text="Later.", created_at=T0, next_attempt_at=T0))
    assert send_due(engine, settings, worker, now=T0).retried == 1
    assert row(engine, "<later@desk.example>").status == "pending" and "451" in row(engine, "<later@desk.example>").last_error
    assert len(helper_pids()) == 1  # one helper, kept: its SMTP connection serves every batch


def test_a_stop_lets_the_helper_finish_the_message_in_hand_and_the_rest_goes_back(
        engine: Engine, settings: Settings, worker: SendWorker, smtp_sink: SmtpSink) -> None:
    ids = [queue(engine, ANNA, subject=f"[SD-{n}] Printer") for n in range(5)]
    smtp_sink.stall_next(1, 1.0)  # the first message takes a second: the stop comes meanwhile
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    report = send_due(engine, settings, worker, now=T0, stop=stop.is_set)
    statuses = [row(engine, message_id).status for message_id in ids]
    assert report.sent == statuses.count("sent") and 1 <= report.sent < 5
    assert statuses == ["sent"] * report.sent + ["pending"] * (5 - report.sent)
    assert {row(engine, message_id).claimed_by for message_id in ids} == {None}
    assert {row(engine, message_id).attempts for message_id in ids[report.sent:]} == {0}  # never attempted
    assert send_due(engine, settings, worker, now=T0).sent == 5 - report.sent  # the helper goes on
    assert sorted(received_ids(smtp_sink)) == sorted(ids)


def test_a_helper_that_dies_leaves_its_batch_claimed_and_a_new_one_sends_it_after_the_lease(
        engine: Engine, settings: Settings, worker: SendWorker, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [queue(engine, ANNA, subject=f"[SD-{n}] Printer") for n in range(3)]
    smtp_sink.stall_next(1, 5.0)
    [pid] = helper_pids()
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(Exception):
        send_due(engine, settings, worker, now=T0)
    assert {row(engine, message_id).status for message_id in ids} == {"sending"}  # may have been sent
    later = T0 + outbox.CLAIM_LEASE + timedelta(minutes=1)
    assert release_stale_claims(engine, now=later) == 3
    assert send_due(engine, settings, worker, now=later).sent == 3
    assert helper_pids() != [pid]
    assert set(received_ids(smtp_sink)) == set(ids)


def test_the_helper_is_used_for_smtp_unless_switched_off_and_never_for_the_sent_folder(
        tmp_path: Path, smtp_sink: SmtpSink) -> None:
    assert isinstance(sender_for(make_settings(tmp_path, smtp_sink.port)), SendWorker)
    local = sender_for(make_settings(tmp_path, smtp_sink.port, send_process="false"))
    assert isinstance(local, LocalSender) and isinstance(local.transport, SmtpTransport)
    folder = sender_for(make_settings(tmp_path, smtp_sink.port, smtp_host=""))
    assert isinstance(folder, LocalSender) and not isinstance(folder.transport, SmtpTransport)


def test_a_batch_goes_in_chunks_and_a_stop_in_a_later_chunk_leaves_the_rest_untouched(
        engine: Engine, settings: Settings, worker: SendWorker, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_worker, "SEND_CHUNK", 2)
    monkeypatch.setattr(outbox, "RECORD_EVERY_SECONDS", 0.0)
    ids = [queue(engine, ANNA, subject=f"[SD-{n}] Printer") for n in range(7)]
    stop = threading.Event()
    seen: list[list[str]] = []

    def stop_once_the_first_chunk_is_recorded() -> None:
        wait_until(lambda: row(engine, ids[1]).status == "sent", 10, interval=0.01, what="the first chunk recorded")
        seen.append([row(engine, message_id).status for message_id in ids])
        stop.set()
    smtp_sink.stall_next(7, 0.2)  # each message takes a while at the sink
    threading.Thread(target=stop_once_the_first_chunk_is_recorded, daemon=True).start()
    report = send_due(engine, settings, worker, now=T0, stop=stop.is_set)
    statuses = [row(engine, message_id).status for message_id in ids]
    assert seen and seen[0][:2] == ["sent", "sent"] and "sending" in seen[0]  # recorded while the rest went on
    assert 3 <= report.sent < 7 and statuses == ["sent"] * report.sent + ["pending"] * (7 - report.sent)
    assert {row(engine, message_id).attempts for message_id in ids[report.sent:]} == {0}  # never handed over
    assert {row(engine, message_id).claimed_by for message_id in ids} == {None}
