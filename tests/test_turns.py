"""Writers of one process take turns at SQLite's write lock in arrival order (maildesk.turns)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import text

from maildesk import store
from maildesk.turns import WriterTurns


def _wait_until_waiting(turns: WriterTurns, count: int) -> None:
    deadline = time.monotonic() + 10
    while turns.waiting < count:
        assert time.monotonic() < deadline, f"{count} writers never lined up"
        time.sleep(0.001)


def test_turns_go_in_the_order_they_were_asked_for() -> None:
    turns = WriterTurns(timeout=10)
    order: list[str] = []
    assert turns.take("first")

    def writer(name: str) -> None:
        assert turns.take(name)
        order.append(name)
        turns.give_back(name)

    threads = []
    for number, name in enumerate(("second", "third", "fourth"), start=1):
        thread = threading.Thread(target=writer, args=(name,))
        thread.start()
        threads.append(thread)
        _wait_until_waiting(turns, number)
    turns.give_back("first")
    for thread in threads:
        thread.join(10)
    assert order == ["second", "third", "fourth"]
    assert turns.take("later")  # free again


def test_the_holder_may_take_its_turn_again_and_a_stranger_cannot_give_it_back() -> None:
    turns = WriterTurns(timeout=0.05)
    assert turns.take("connection")
    assert turns.take("connection")
    turns.give_back("someone else")
    assert not turns.take("other")  # still held: the other waited out its timeout
    assert turns.waiting == 0  # and left the line
    turns.give_back("connection")
    assert turns.take("other")


def test_a_writer_that_timed_out_is_skipped_when_the_turn_passes_on() -> None:
    turns = WriterTurns(timeout=0.05)
    assert turns.take("holder")
    assert not turns.take("impatient")
    turns.give_back("holder")
    assert turns.take("next")  # not handed to the writer that already went ahead


def test_a_writer_waits_for_one_transaction_of_a_busy_thread_not_for_all_of_them(tmp_path: Path) -> None:
    """The outbox sender beside the poller on a backlog (a wait is counted in the busy thread's
    commits, which it counts a moment after each one: up to 3, not 1). With SQLite's busy handler alone, the
    thread that commits and begins again at once wins nearly every time, and the other writer
    waits for all of its transactions (measured: 39 of 40, most runs)."""
    engine = store.make_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    with store.transaction(engine) as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    busy_transactions = 60
    commits = 0
    committed = threading.Condition()

    def busy_writer() -> None:
        nonlocal commits
        for _ in range(busy_transactions):
            with store.transaction(engine) as session:
                until = time.perf_counter() + 0.01  # a 10-ms transaction, like 2 mails of a batch
                while time.perf_counter() < until:
                    session.execute(text("INSERT INTO t VALUES (1)"))
            with committed:
                commits += 1
                committed.notify_all()

    def next_commit(after: int) -> None:  # each request comes while the busy thread is in a transaction
        with committed:
            assert committed.wait_for(lambda: commits > after or commits == busy_transactions, timeout=10)
            assert commits < busy_transactions, "the busy thread finished while this one waited for its turn"

    thread = threading.Thread(target=busy_writer)
    thread.start()
    waits = []
    try:
        next_commit(0)
        with store.transaction(engine) as session:  # this thread's own connection, opened outside the count
            session.execute(text("INSERT INTO t VALUES (2)"))
        for _ in range(8):
            next_commit(commits)
            asked_at = commits
            with store.transaction(engine) as session:
                session.execute(text("INSERT INTO t VALUES (2)"))  # the transaction begins here
                waits.append(commits - asked_at)
            finished_at = commits
    finally:
        thread.join(60)
    assert max(waits) <= 3, f"waited for {waits} of the other thread's transactions"
    assert finished_at < busy_transactions * 0.75, "the transactions did not get in while the other thread ran"
    assert commits == busy_transactions
    engine.dispose()
