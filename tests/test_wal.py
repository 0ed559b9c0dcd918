"""The daemon's WAL checkpoints (maildesk.wal) on a real SQLite file: commits leave the log
alone, the checkpointer thread copies it into the database."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from maildesk import store
from maildesk.wal import BACKSTOP_PAGES, WalCheckpointer, defer_checkpoints

ROWS_OF_4_KIB = 1500  # past SQLite's default autocheckpoint of 1000 pages


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'desk.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE blob (id INTEGER PRIMARY KEY, data BLOB)"))
    yield engine
    engine.dispose()


def write_rows(engine: Engine, count: int) -> None:
    for number in range(count):  # one commit each, as the daemon's writes come
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO blob (data) VALUES (:data)"), {"data": bytes([number % 256]) * 4096})


def database_pages(path: Path) -> int:
    return path.stat().st_size // 4096


def test_deferred_connections_raise_the_autocheckpoint_and_commits_no_longer_copy_the_log(
        engine: Engine, tmp_path: Path) -> None:
    defer_checkpoints(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == BACKSTOP_PAGES
    before = database_pages(tmp_path / "desk.db")
    write_rows(engine, ROWS_OF_4_KIB)
    assert database_pages(tmp_path / "desk.db") == before  # every page is still only in the log
    connection = engine.raw_connection()
    try:
        busy, logged, copied = WalCheckpointer.checkpoint(connection)
    finally:
        connection.close()
    assert busy == 0 and logged == copied > ROWS_OF_4_KIB
    assert database_pages(tmp_path / "desk.db") > before + ROWS_OF_4_KIB


def test_without_deferring_a_commit_copies_the_log_itself(engine: Engine, tmp_path: Path) -> None:
    before = database_pages(tmp_path / "desk.db")
    write_rows(engine, ROWS_OF_4_KIB)
    assert database_pages(tmp_path / "desk.db") > before + 900  # what the test above rules out


def test_the_checkpointer_thread_copies_the_log_while_writes_go_on_and_stops_on_its_event(
        engine: Engine, tmp_path: Path) -> None:
    defer_checkpoints(engine)
    stop = threading.Event()
    checkpointer = threading.Thread(target=WalCheckpointer(engine, stop, interval=0.05).run)
    checkpointer.start()
    try:
        before = database_pages(tmp_path / "desk.db")
        write_rows(engine, 300)
        deadline = time.monotonic() + 10
        while database_pages(tmp_path / "desk.db") < before + 300 and time.monotonic() < deadline:
            stop.wait(0.02)
        assert database_pages(tmp_path / "desk.db") >= before + 300
    finally:
        stop.set()
        checkpointer.join(timeout=10)
    assert not checkpointer.is_alive()


def test_every_connection_is_in_wal_mode_with_the_larger_page_cache(engine: Engine) -> None:
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -store.SQLITE_CACHE_MIB * 1024
        assert store.SQLITE_CACHE_MIB * 1024 > 2000  # above SQLite's default of 2000 KiB


def test_a_savepoint_keeps_the_pages_it_may_roll_back_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch runs in one savepoint; SQLite copies each page the savepoint changes first into a
    statement journal, a temporary file past 64 KiB (a write system call per page) unless
    temp_store is MEMORY."""
    temporary = tmp_path / "sqlite-temp"
    temporary.mkdir()
    monkeypatch.setenv("SQLITE_TMPDIR", str(temporary))  # SQLite reads it at each temporary file it opens
    engine = store.make_engine(f"sqlite:///{tmp_path / 'batch.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE blob (id INTEGER PRIMARY KEY, data BLOB)"))
        connection.execute(text("INSERT INTO blob (data) VALUES (:data)"), [{"data": b"x" * 3000}] * 200)

    def temporary_files() -> list[str]:  # SQLite unlinks them at once: only the open descriptor shows them
        links = (os.readlink(path) for path in Path("/proc/self/fd").iterdir() if path.is_symlink())
        return [link for link in links if link.startswith(str(temporary))]

    with engine.begin() as connection:
        assert connection.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY
        savepoint = connection.begin_nested()
        connection.execute(text("UPDATE blob SET data = :data"), {"data": b"y" * 3000})  # 200 pages, 800 KiB
        assert temporary_files() == []
        savepoint.rollback()
        assert connection.exec_driver_sql("SELECT count(*) FROM blob WHERE data = :x", {"x": b"x" * 3000}).scalar() \
            == 200
    engine.dispose()
