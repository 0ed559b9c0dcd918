"""Shared pieces of the benchmarks: the corpus, a fresh desk, the people, counts, report rows.

The benchmarks measure maildesk as an admin runs it (real Dovecot, real SMTP, SQLite, one
process), so everything here prepares state the way the command line would and then stays
out of the way: no monkeypatching, no shortcuts inside maildesk. Each scenario gets a fresh
work directory under bench/out/ (git-ignored) so runs never see each other's database.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/ingest.py` puts bench/ first, we need the repo root
    sys.path.insert(0, str(REPO))

OUT = REPO / "bench" / "out"
CORPUS = OUT / "corpus"
SUPPORT_ADDRESS = "support@servicedesk.example"
AGENT_ADDRESS = "agent@servicedesk.example"
# Acknowledgement and answer limits exist against mail loops; a backlog of 2000 mails from 200
# senders would otherwise hit them and skip most acknowledgements, which is not the work we
# want to time. Both runs (empty and 1M) use the same values.
LIMITS = {"MAILDESK_ACK_LIMIT_PER_HOUR": "10000", "MAILDESK_ANSWER_LIMIT_PER_HOUR": "10000"}


@dataclass(frozen=True)
class CorpusMail:
    """One corpus message and the manifest facts a scenario needs (kind, sender, Message-ID)."""

    index: int
    kind: str
    sender: str
    message_id: str
    raw: bytes


def load_corpus(corpus: Path = CORPUS, limit: int | None = None) -> list[CorpusMail]:
    """The corpus in generation order (replies follow their originals, as in a real backlog)."""
    manifest = corpus / "manifest.jsonl"
    if not manifest.exists():
        raise SystemExit(f"no corpus at {corpus}: python3 ../shared/bench/gen_corpus.py --n 2000 --out {corpus}")
    mails = []
    for line in manifest.read_text(encoding="utf-8").splitlines()[:limit]:
        meta = json.loads(line)
        raw = (corpus / "eml" / f"{meta['idx']:05d}.eml").read_bytes()
        mails.append(CorpusMail(meta["idx"], meta["kind"], meta["from_addr"].lower(), meta["message_id"], raw))
    return mails


def fresh_workdir(name: str) -> Path:
    """bench/out/<name>, emptied: a scenario never inherits a database from an earlier run."""
    path = OUT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def base_env(workdir: Path, **extra: str) -> dict[str, str]:
    """MAILDESK_* settings for a desk living in `workdir` (SQLite there, sent/ and attachments there)."""
    env = {"MAILDESK_DATA_DIR": str(workdir / "var"), "MAILDESK_SUPPORT_ADDRESS": SUPPORT_ADDRESS,
           "MAILDESK_ENVIRONMENT": "development", "MAILDESK_LOG_LEVEL": "warning",
           "MAILDESK_WORKER_ID": "bench", **LIMITS}
    for name in ("MAILDESK_PARSE_PROCESSES", "MAILDESK_LOG_LEVEL"):  # to compare, or to see each mail's log line
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra)
    return env


def imap_env(dovecot: object) -> dict[str, str]:
    """Settings that point the poller at a private Dovecot (plaintext loopback port)."""
    return {"MAILDESK_IMAP_HOST": "127.0.0.1", "MAILDESK_IMAP_PORT": str(dovecot.port),  # type: ignore[attr-defined]
            "MAILDESK_IMAP_USER": dovecot.user, "MAILDESK_IMAP_PASSWORD": dovecot.password,  # type: ignore[attr-defined]
            "MAILDESK_IMAP_SSL": "false", "MAILDESK_IMAP_POLL_SECONDS": "5"}


def smtp_env(port: int) -> dict[str, str]:
    return {"MAILDESK_SMTP_HOST": "127.0.0.1", "MAILDESK_SMTP_PORT": str(port)}


def settings_for(workdir: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Settings from exactly `env`, never from a developer's ./.env (an empty env file is named)."""
    from maildesk.config import load_settings

    empty = workdir / "empty.env"
    empty.write_text("")
    return load_settings(env_file=empty, environ=env)


def prepare_desk(workdir: Path, env: dict[str, str], mails: Sequence[CorpusMail]):  # type: ignore[no-untyped-def]
    """Migrate a fresh SQLite database and register the corpus's people; returns (settings, engine).

    One organisation per sender domain, every sender a customer, one agent: without them the
    pipeline holds every mail as "unknown sender", which is a different (cheaper) path.
    """
    from maildesk import store
    from maildesk.directory import add_organisation, add_user
    from maildesk.models import utcnow

    settings = settings_for(workdir, env)
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine)
    senders = sorted({mail.sender for mail in mails})
    domains = sorted({sender.rpartition("@")[2] for sender in senders})
    with store.transaction(engine) as session:
        for domain in domains:
            add_organisation(domain, session=session, domains=[domain], language=None, service_level=None)
        now = utcnow()
        for sender in senders:
            add_user(sender, session=session, name=sender.partition("@")[0], now=now,
                     organisation=sender.rpartition("@")[2], agent=False, responsible=False, language=None)
        add_user(AGENT_ADDRESS, session=session, name="Bench Agent", now=now, organisation=None, agent=True,
                 responsible=False, language="en")
    return settings, engine


def append_all(dovecot: object, raws: Iterable[bytes], folder: str = "INBOX") -> tuple[int, float]:
    """APPEND every message over one connection; returns (count, seconds).

    One session rather than DovecotServer.append per mail: a login per message would make
    the preparation, not the benchmark, the slow part.
    """
    started = time.perf_counter()
    count = 0
    with dovecot.client() as imap:  # type: ignore[attr-defined]
        for raw in raws:
            imap.append(folder, raw)
            count += 1
    return count, time.perf_counter() - started


def flush_setup_writes() -> None:
    """Write back what the set-up left in the page cache (`os.sync`) before the timed part.

    While the kernel writes back a large amount of dirty pages it throttles every other writer
    (`balance_dirty_pages`). A run on a 1M-row database copied just before it paid for the copy:
    each commit took four times as long as on an empty one (1.5 against 0.35 ms a mail); after a
    sync, the two were equal. A desk that has run for years has its history on disk, so no timed
    part starts with the set-up's writes still pending.
    """
    started = time.perf_counter()
    os.sync()
    print(f"page cache written back in {time.perf_counter() - started:.1f} s (os.sync, before the timed part)")


def db_path(settings: object) -> Path:
    return Path(str(settings.database_url).split("///", 1)[1])  # type: ignore[attr-defined]


def db_counts(path: Path) -> dict[str, object]:
    """Tickets, messages, inbox states, outbox statuses and templates, read with plain sqlite3.

    Plain sqlite3 (read-only URI) so it can also watch a daemon's database while it runs.
    """
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        def grouped(sql: str) -> dict[str, int]:
            return {str(key): int(value) for key, value in connection.execute(sql)}
        return {
            "tickets": connection.execute("SELECT count(*) FROM tickets").fetchone()[0],
            "messages": connection.execute("SELECT count(*) FROM messages").fetchone()[0],
            "inbox": grouped("SELECT state, count(*) FROM inbox GROUP BY state ORDER BY 1"),
            "outbox": grouped("SELECT status, count(*) FROM outbox GROUP BY status ORDER BY 1"),
            "outbox_templates": grouped("SELECT template, count(*) FROM outbox GROUP BY template ORDER BY 1"),
        }
    finally:
        connection.close()


def inbox_reasons(path: Path, limit: int = 8) -> list[tuple[str, str, int]]:
    """The most common (state, reason) pairs: shows at a glance what did not become a ticket."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [(str(a), str(b)[:80], int(c)) for a, b, c in connection.execute(
            "SELECT state, reason, count(*) FROM inbox GROUP BY 1, 2 ORDER BY 3 DESC LIMIT ?", (limit,))]
    finally:
        connection.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation): with 50 samples p99 is the maximum, honestly."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    return {"n": len(seconds), "p50": percentile(seconds, 0.50), "p90": percentile(seconds, 0.90),
            "p99": percentile(seconds, 0.99), "max": max(seconds), "mean": statistics.fmean(seconds),
            "min": min(seconds)}


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far, every core counted (/proc/stat: all but
    idle and iowait). Over a timed run, divided by the mails, it says what a mail costs the
    machine, which is steadier on this shared VM than the rate itself."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(root: int) -> float:
    """User + system CPU used so far by `root` and every living process below it (proc(5) stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    return sum((int(fields[11]) + int(fields[12])) / ticks for fields in _tree_stats(root).values())


def process_tree_rss_bytes(root: int) -> dict[int, int]:
    """The resident set size of `root` and of every living process below it, by process id."""
    sizes: dict[int, int] = {}
    for pid in _tree_stats(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                sizes[pid] = int(line.split()[1]) * 1024
    return sizes


def _tree_stats(root: int) -> dict[int, list[str]]:
    """proc(5) stat fields (after the command name) of `root` and every living process below it."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, fields in stats.items() if int(fields[1]) in tree} - tree
        grew = bool(below)
        tree |= below
    return {pid: stats[pid] for pid in tree if pid in stats}


def load_average() -> str:
    """The 1/5/15-minute load: the machine is shared, so every figure says how busy it was."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine() -> dict[str, str]:
    """What docs/performance.md needs to say about the machine the figures came from."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": memory, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "kernel": platform.release()}


def calibration_ms() -> float:
    """Milliseconds a fixed pure-Python loop takes here now (best of 5): this VM's speed moves by up to
    half within an hour, so a figure is read beside it, and two trees are compared run by run."""
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for number in range(200_000):
            total += number * number % 7
        best = min(best, time.perf_counter() - started)
    return 1000 * best


def print_header(title: str) -> None:
    print(f"== {title}")
    print("machine: " + ", ".join(f"{key} {value}" for key, value in machine().items()))
    print(f"load average at start: {load_average()}; calibration loop {calibration_ms():.1f} ms (lower is faster)")


def print_rows(rows: Sequence[tuple[str, str, str, str]]) -> None:
    """Markdown table rows (scenario | measured | target | met?) ready to paste into docs/performance.md."""
    print("\nmarkdown rows for docs/performance.md:")
    print("| scenario | measured | target | met |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"(load average at end: {load_average()})")


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def summarise_counts(counts: dict[str, object]) -> str:
    return (f"tickets {counts['tickets']}, messages {counts['messages']}, inbox {counts['inbox']}, "
            f"outbox {counts['outbox']}, templates {counts['outbox_templates']}")


@contextmanager
def servers(*, dovecot: bool = False, smtp: bool = False) -> Iterator[tuple[object, object]]:
    """A private Dovecot and/or SMTP sink for one scenario, always stopped afterwards."""
    from tests.servers import DovecotServer, SmtpSink

    imap_server = DovecotServer(lmtp=False) if dovecot else None
    # the receiving end costs what an MTA's would, and offers PIPELINING as Postfix and Exim do
    sink = SmtpSink(chunked_data=True, pipelining=True) if smtp else None
    try:
        if sink is not None:
            sink.start()
        yield imap_server, sink
    finally:
        if sink is not None:
            sink.stop()
        if imap_server is not None:
            imap_server.close()


def states(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counter.items()))
