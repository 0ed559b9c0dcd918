"""Backlog throughput: (a) IMAP -> tickets in one process, (b) the same through `maildesk run`
with the acknowledgements delivered to an SMTP sink, (f) (a) on a database of 1M tickets.

(a) times exactly `ImapPoller.poll_once()` on a full INBOX: fetch, store, parse, route,
tickets, outbox rows, commits, MOVE to Processed. Preparing the desk, APPENDing the corpus and
what the daemon does before READY (starting the parse helper, loading templates and calendars:
`Pipeline.warm_up`) are outside the timed part. (b) times the product as an admin runs it:
from spawning `maildesk run` until the INBOX is empty and no outbox row is pending or being sent.
"""

from __future__ import annotations

import cProfile
import multiprocessing
import os
import resource
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (CorpusMail, append_all, base_env, db_counts, db_path, flush_setup_writes, fresh_workdir,
                    imap_env, inbox_reasons, machine_busy_seconds, prepare_desk, print_header,
                    print_rows, process_tree_cpu_seconds, servers, summarise_counts, verdict)

TARGET_A = 420.0
TARGET_B = 250.0
TARGET_F_SHARE = 0.90
DAEMON_TIMEOUT_SECONDS = 900.0  # 2000 mails at a tenth of the target still finish inside this


def backlog_in_process(name: str, mails: list[CorpusMail], *, profile_to: Path | None = None,
                       before_ingest: Callable[[Any, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run (a) in `bench/out/<name>`; `before_ingest(settings, engine)` may seed the database first."""
    from maildesk.imap import ImapPoller
    from maildesk.parse_worker import ProcessParser, parser_for
    from maildesk.process import Pipeline
    from maildesk.wal import checkpoints_in_background

    workdir = fresh_workdir(name)
    extra: dict[str, Any] = {}
    with servers(dovecot=True) as (dovecot, _sink):
        env = {**base_env(workdir), **imap_env(dovecot)}
        settings, engine = prepare_desk(workdir, env, mails)
        if before_ingest is not None:
            extra = before_ingest(settings, engine)
        appended, append_seconds = append_all(dovecot, (mail.raw for mail in mails))
        print(f"appended {appended} mails ({sum(len(m.raw) for m in mails) / 1e6:.1f} MB) in {append_seconds:.1f} s")
        parser = parser_for(settings.parse_processes)  # as `maildesk poll --once` and `maildesk run` do
        if isinstance(parser, ProcessParser):
            parser.start()  # the daemon starts it before READY: not part of the backlog's time
        print(f"MAILDESK_PARSE_PROCESSES={settings.parse_processes}")
        pipeline = Pipeline(settings, engine, parser=parser)
        pipeline.warm_up()  # templates and calendars, as the daemon loads them before READY
        poller = ImapPoller(settings, pipeline)
        profiler = cProfile.Profile() if profile_to else None
        flush_setup_writes()
        started, cpu_started = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        helpers_started, busy_started = helpers_cpu_seconds(), machine_busy_seconds()
        if profiler:
            profiler.enable()
        try:
            with checkpoints_in_background(engine):  # as `maildesk poll --once` does
                report = poller.poll_once()
        finally:
            if profiler:
                profiler.disable()
            elapsed = time.perf_counter() - started
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            helpers = helpers_cpu_seconds() - helpers_started
            busy = machine_busy_seconds() - busy_started
            poller.close()
            parser.close()
        left = dovecot.count("INBOX")  # type: ignore[attr-defined]
        processed_folder = dovecot.count(settings.imap_processed_folder)  # type: ignore[attr-defined]
    counts = db_counts(db_path(settings))
    rate = appended / elapsed
    print(f"poll_once: {elapsed:.1f} s for {appended} mails = {rate:.1f} msg/s")
    user, system = cpu.ru_utime - cpu_started.ru_utime, cpu.ru_stime - cpu_started.ru_stime
    print(f"the poller's process (all its threads) used {user:.1f} s user + {system:.1f} s system CPU = "
          f"{1000 * (user + system) / max(appended, 1):.2f} ms a mail; its parse helper(s) "
          f"{1000 * helpers / max(appended, 1):.2f} ms a mail; the machine (both cores, Dovecot too) "
          f"{1000 * busy / max(appended, 1):.2f} ms a mail")
    print(f"poll report: {report}")
    print(f"IMAP after: INBOX {left}, {settings.imap_processed_folder} {processed_folder}")
    print(summarise_counts(counts))
    print("inbox outcomes: " + "; ".join(f"{state} {reason!r} x{n}" for state, reason, n in inbox_reasons(
        db_path(settings))))
    result = {"msgs_per_s": round(rate, 1), "seconds": round(elapsed, 2), "mails": appended, "counts": counts,
              "inbox_left": left, "report": str(report), **extra}
    if profiler and profile_to:
        from profiling import report as profile_report
        text = profile_report(profiler, profile_to)
        print("\nprofile (cProfile adds overhead: the shares matter, not the seconds):\n" + text)
        (profile_to.with_suffix(".txt")).write_text(text)
    return result


def helpers_cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process's multiprocessing children: the
    parse helpers, which are reaped only at the end, so `RUSAGE_CHILDREN` cannot tell."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # it ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total / ticks


def scenario_a(mails: list[CorpusMail], *, profile: bool = False) -> dict[str, Any]:
    print_header("(a) backlog ingest: ImapPoller.poll_once() on a full INBOX, SQLite, one process"
                 + (" [cProfile on: the rate is NOT the figure]" if profile else ""))
    name = "a-profile" if profile else "a"
    result = backlog_in_process(name, mails, profile_to=(Path("bench/out") / "profile-a.pstats").resolve()
                                if profile else None)
    if profile:
        return {}  # a profiled rate is not a measurement: keep the stored (a) figure as it was
    rate = result["msgs_per_s"]
    counts = result["counts"]
    result["rows"] = [("(a) backlog IMAP -> tickets + acks queued", f"{rate:.0f} msg/s ({result['mails']} mails in "
                       f"{result['seconds']:.1f} s; {counts['tickets']} tickets, {sum(counts['outbox'].values())} "
                       f"outbox rows)", f"≥ {TARGET_A:.0f} msg/s", verdict(rate >= TARGET_A))]
    print_rows(result["rows"])
    return result


def scenario_b(mails: list[CorpusMail]) -> dict[str, Any]:
    """`maildesk run` (IMAP poller + SMTP sender threads) against Dovecot and the SMTP sink."""
    from tests.daemon_harness import DaemonProcess

    print_header("(b) backlog through `maildesk run` (subprocess): IMAP in, acknowledgements out to an SMTP sink")
    workdir = fresh_workdir("b")
    with servers(dovecot=True, smtp=True) as (dovecot, sink):
        env = {**base_env(workdir), **imap_env(dovecot), "MAILDESK_SMTP_HOST": "127.0.0.1",
               "MAILDESK_SMTP_PORT": str(sink.port)}  # type: ignore[attr-defined]
        settings, engine = prepare_desk(workdir, env, mails)
        engine.dispose()
        appended, append_seconds = append_all(dovecot, (mail.raw for mail in mails))
        print(f"appended {appended} mails in {append_seconds:.1f} s")
        database = db_path(settings)
        flush_setup_writes()
        daemon = DaemonProcess(env, workdir)
        started, started_wall, busy_started = time.perf_counter(), time.time(), machine_busy_seconds()
        try:
            daemon.start()  # returns at READY=1
            ready = time.perf_counter()
            inbox_empty_at = _wait_for_drain(dovecot, database, started)
            done = time.perf_counter()
            busy = machine_busy_seconds() - busy_started
            assert daemon.process is not None
            maildesk_cpu = process_tree_cpu_seconds(daemon.process.pid)  # the daemon and its parse helper
            delivered = len(sink.messages)  # type: ignore[attr-defined]
            during = sum(message.received_at <= started_wall + inbox_empty_at  # acks that did not wait for the backlog
                         for message in sink.messages)  # type: ignore[attr-defined]
        finally:
            if daemon.process is not None:
                daemon.stop()
            daemon.close()
    counts = db_counts(database)
    total, from_ready = done - started, done - ready
    rate = appended / total
    print(f"spawn -> READY {ready - started:.2f} s; spawn -> INBOX empty {inbox_empty_at:.1f} s; "
          f"spawn -> outbox drained {total:.1f} s")
    print(f"{rate:.1f} msg/s from spawn ({appended / from_ready:.1f} msg/s from READY); "
          f"{delivered} mails at the sink = {delivered / total:.1f} deliveries/s, {during} of them before the "
          f"INBOX was empty")
    print(f"CPU a mail: the machine {1000 * busy / appended:.2f} ms (both cores, from spawn), of it maildesk's "
          f"processes {1000 * maildesk_cpu / appended:.2f} ms (start-up included); the rest is the sink, Dovecot "
          "and this script")
    print(summarise_counts(counts))
    result = {"msgs_per_s": round(rate, 1), "msgs_per_s_from_ready": round(appended / from_ready, 1),
              "seconds": round(total, 2), "inbox_empty_seconds": round(inbox_empty_at, 2), "delivered": delivered,
              "delivered_before_inbox_empty": during,
              "counts": counts}
    result["rows"] = [("(b) backlog via `maildesk run`, acks delivered to SMTP sink",
                       f"{rate:.0f} msg/s ({appended} mails, {delivered} mails delivered, {total:.1f} s from "
                       f"spawn)", f"≥ {TARGET_B:.0f} msg/s", verdict(rate >= TARGET_B))]
    print_rows(result["rows"])
    return result


def _wait_for_drain(dovecot: Any, database: Path, started: float) -> float:
    """Block until INBOX is empty and nothing is left to send; returns when INBOX emptied (s from start).

    Checked every 0.25 s (finer polling would steal CPU from the daemon on 2 cores) over one IMAP
    session and one read-only SQLite connection: a login per check cost Dovecot CPU on the very
    cores being measured.
    """
    deadline = started + DAEMON_TIMEOUT_SECONDS
    inbox_empty_at: float | None = None
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        with dovecot.client() as imap:
            while time.perf_counter() < deadline:
                if inbox_empty_at is None and int(imap.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"]) == 0:
                    inbox_empty_at = time.perf_counter() - started
                if inbox_empty_at is not None and _settled(connection):
                    return inbox_empty_at
                time.sleep(0.25)
    finally:
        connection.close()
    raise SystemExit(f"(b) did not finish within {DAEMON_TIMEOUT_SECONDS:.0f} s: {db_counts(database)}")


def _settled(connection: sqlite3.Connection) -> bool:
    """Nothing left to send, and no inbox row new or being processed."""
    return connection.execute(
        "SELECT (SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending'))"
        " + (SELECT count(*) FROM inbox WHERE state IN ('new', 'processing'))").fetchone()[0] == 0


def scenario_f(mails: list[CorpusMail], *, baseline: float | None, tickets: int,
               tables: tuple[str, ...], profile: bool = False) -> dict[str, Any]:
    """(a) again after seeding `tickets` tickets (and one row each in the other `tables`) by SQL."""
    from seed import seed_history

    print_header(f"(f) backlog ingest with {tickets:,} tickets already in the database "
                 f"(seeded: {', '.join(tables)})")
    result = backlog_in_process("f", mails, before_ingest=lambda settings, engine: seed_history(
        db_path(settings), engine, mails, tickets=tickets, tables=tables),
        profile_to=(Path("bench/out") / "profile-f.pstats").resolve() if profile else None)
    if profile:
        return {}  # a profiled rate is not a measurement
    rate = result["msgs_per_s"]
    share = rate / baseline if baseline else None
    shown = f"{100 * share:.0f} % of {baseline:.0f} msg/s" if share is not None else "no (a) figure to compare"
    print(f"{rate:.1f} msg/s with {tickets:,} tickets: {shown}")
    result["baseline_msgs_per_s"] = baseline
    seeded = "" if set(tables) >= {"inbox", "messages", "outbox"} else f" (seeded only {', '.join(tables)})"
    result["rows"] = [(f"(f) backlog with {tickets:,} tickets already stored{seeded}",
                       f"{rate:.0f} msg/s = {shown}", f"≥ {100 * TARGET_F_SHARE:.0f} % of (a)",
                       verdict(share is not None and share >= TARGET_F_SHARE))]
    print_rows(result["rows"])
    return result
