"""(e) Peak memory of `maildesk ingest` on one mail with a 25 MB attachment, and on a tiny mail;
and (`--scenario e-daemon` and `e-lmtp`, beside the issue's figures) of `maildesk run` with all
its processes on a dozen mails of the largest size MAILDESK_MAX_MESSAGE_BYTES lets in, over IMAP
or by as many LMTP sessions at once, against the unit's MemoryMax=1G.

Measured from outside, on the real command an MTA pipes mail into, with `/usr/bin/time -v`
("Maximum resident set size"): that is the whole process (interpreter, imports, SQLite page
cache), which is what the admin's memory limit sees. The tiny mail gives the baseline those
fixed costs make; the difference is what the message itself costs.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from common import (SUPPORT_ADDRESS, CorpusMail, base_env, db_path, fresh_workdir, imap_env, prepare_desk,
                    print_header, print_rows, process_tree_rss_bytes, servers, verdict)

ATTACHMENT_BYTES = 25 * 1024 * 1024
MiB = 1024 * 1024


def build_mail(sender: str, attachment_bytes: int) -> bytes:
    """A plain request from a known customer, with an incompressible attachment (random bytes)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = SUPPORT_ADDRESS
    message["Subject"] = "Memory benchmark: log archive attached" if attachment_bytes else "Memory benchmark: tiny"
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message.set_content("Hello,\n\nthe log archive from the server is attached.\n\nBest regards,\n")
    if attachment_bytes:
        message.add_attachment(os.urandom(attachment_bytes), maintype="application", subtype="octet-stream",
                               filename="logs.tar.gz")
    return message.as_bytes()


def peak_rss(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Peak RSS in bytes of `command`, and its output; by /usr/bin/time -v when installed."""
    full_env = {**os.environ, **env}
    time_binary = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if time_binary:
        result = subprocess.run([time_binary, "-v", *command], env=full_env, cwd=cwd, capture_output=True,
                                text=True, timeout=600)
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
        if result.returncode != 0 or not match:
            raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n"
                             f"{result.stderr[-3000:]}")
        return int(match.group(1)) * 1024, result.stdout.strip()
    # RUSAGE_CHILDREN is the maximum over all children so far: run the big mail after the tiny one
    result = subprocess.run(command, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, result.stdout.strip()


def scenario_e(corpus: list[CorpusMail]) -> dict[str, Any]:
    print_header(f"(e) peak RSS of `maildesk ingest` with a {ATTACHMENT_BYTES // MiB} MiB attachment")
    workdir = fresh_workdir("e")
    env = base_env(workdir)
    _settings, engine = prepare_desk(workdir, env, corpus)
    engine.dispose()
    sender = corpus[0].sender
    command = [sys.executable, "-m", "maildesk", "--env-file", str(workdir / "empty.env"), "ingest"]
    figures: dict[str, dict[str, Any]] = {}
    for label, size in (("tiny", 0), ("big", ATTACHMENT_BYTES)):
        path = workdir / f"{label}.eml"
        path.write_bytes(build_mail(sender, size))
        rss, output = peak_rss([*command, str(path)], env, workdir)
        figures[label] = {"raw_bytes": path.stat().st_size, "peak_rss_bytes": rss, "output": output}
        print(f"{label}: raw {path.stat().st_size / MiB:.1f} MiB, peak RSS {rss / MiB:.1f} MiB ({output})")
    raw = figures["big"]["raw_bytes"]
    rss = figures["big"]["peak_rss_bytes"]
    baseline = figures["tiny"]["peak_rss_bytes"]
    target = 4 * raw + 80 * MiB
    print(f"target 4 x {raw / MiB:.1f} MiB + 80 MiB = {target / MiB:.0f} MiB; the message itself cost "
          f"{(rss - baseline) / MiB:.0f} MiB = {(rss - baseline) / raw:.1f} x its raw size")
    row = ("(e) peak RSS, `maildesk ingest` of one mail with a 25 MiB attachment",
           f"{rss / MiB:.0f} MiB (raw {raw / MiB:.1f} MiB; tiny mail {baseline / MiB:.0f} MiB; "
           f"+{(rss - baseline) / raw:.1f} × raw)", f"≤ 4 × raw + 80 MiB = {target / MiB:.0f} MiB",
           verdict(rss <= target))
    result = {"figures": figures, "target_bytes": target, "rows": [row]}
    print_rows(result["rows"])
    return result


UNIT_MEMORY_MAX = 1024 * MiB  # systemd/maildesk.service: MemoryMax=1G
SAMPLE_SECONDS = 0.02


def scenario_e_daemon(corpus: list[CorpusMail], count: int = 1, via: str = "imap") -> dict[str, Any]:
    """`count` mails of the largest size allowed through `maildesk run`: APPENDed to Dovecot for
    the IMAP poller (and its parse helper), or delivered by as many LMTP sessions at once, as a
    Postfix would. The peak of the summed RSS of the daemon's processes, sampled every 20 ms until
    every mail is processed. Shared pages (the interpreter, libraries) count once per process, so
    the sum is above what the unit's cgroup is charged; the page cache of the files written is not
    in it (the cgroup reclaims that before it would kill)."""
    from tests.daemon_harness import DaemonProcess
    from tests.servers import free_port

    name = f"e-{'daemon' if via == 'imap' else via}"
    print_header(f"({name}) peak RSS of `maildesk run` and its helpers on the largest mails allowed, over {via.upper()}")
    workdir = fresh_workdir(name)
    with servers(dovecot=via == "imap") as (dovecot, _sink):
        port = free_port()
        env = {**base_env(workdir), **(imap_env(dovecot) if via == "imap" else {"MAILDESK_LMTP_PORT": str(port)})}
        settings, engine = prepare_desk(workdir, env, corpus)
        engine.dispose()
        raw = _largest_mail(corpus[0].sender, settings.max_message_bytes)
        raws = [raw.replace(b"Message-ID: <", f"Message-ID: <{number}.".encode(), 1) for number in range(count)]
        if via == "imap":
            for numbered in raws:
                dovecot.append("INBOX", numbered)  # type: ignore[attr-defined]
        daemon = DaemonProcess(env, workdir)
        peaks: dict[int, int] = {}
        peak_sum = 0
        try:
            daemon.start()
            assert daemon.process is not None
            sessions = [threading.Thread(target=_deliver_by_lmtp, args=(port, corpus[0].sender, numbered))
                        for numbered in (raws if via == "lmtp" else [])]
            for session in sessions:
                session.start()
            deadline = time.monotonic() + 300
            while _processed(db_path(settings)) < count and time.monotonic() < deadline:
                sizes = process_tree_rss_bytes(daemon.process.pid)
                peak_sum = max(peak_sum, sum(sizes.values()))
                for pid, size in sizes.items():
                    peaks[pid] = max(peaks.get(pid, 0), size)
                time.sleep(SAMPLE_SECONDS)
            done = _processed(db_path(settings))
            for session in sessions:
                session.join()
        finally:
            if daemon.process is not None:
                daemon.stop()
            daemon.close()
    print(f"{count} mail(s) of {len(raw) / MiB:.1f} MiB each (MAILDESK_MAX_MESSAGE_BYTES "
          f"{settings.max_message_bytes / MiB:.0f} MiB); {done} done within 300 s")
    print("peak RSS per process: " + ", ".join(f"{size / MiB:.0f} MiB" for size in sorted(peaks.values(), reverse=True)))
    print(f"peak of the sum: {peak_sum / MiB:.0f} MiB (the unit's MemoryMax {UNIT_MEMORY_MAX / MiB:.0f} MiB)")
    row = (f"({name}) peak RSS of `maildesk run` and its helpers, the largest mails allowed over {via.upper()}",
           f"{peak_sum / MiB:.0f} MiB summed over {len(peaks)} processes ({count} mail(s) of {len(raw) / MiB:.1f} MiB"
           f"{', all sessions at once' if via == 'lmtp' else ''})",
           f"< MemoryMax {UNIT_MEMORY_MAX / MiB:.0f} MiB", verdict(done == count and peak_sum < UNIT_MEMORY_MAX))
    result = {"raw_bytes": len(raw), "mails": count, "peak_sum_bytes": peak_sum,
              "peaks": sorted(peaks.values(), reverse=True), "done": done, "rows": [row]}
    print_rows(result["rows"])
    return result


def _deliver_by_lmtp(port: int, sender: str, raw: bytes) -> None:
    with smtplib.LMTP("127.0.0.1", port, timeout=300) as client:
        client.ehlo()
        client.sendmail(sender, [SUPPORT_ADDRESS], raw)


def _largest_mail(sender: str, limit: int) -> bytes:
    """A mail with one attachment, as close under `limit` bytes as base64's growth allows."""
    attachment = int(limit / 1.37)  # base64 in 76-character lines: 4/3 and a CRLF each 57 bytes
    while True:
        raw = build_mail(sender, attachment)
        if len(raw) <= limit:
            return raw
        attachment -= len(raw) - limit + 4096


def _processed(database: Path) -> int:
    """How many inbox rows are done (processed, or failed for good)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return int(connection.execute("SELECT count(*) FROM inbox WHERE state NOT IN ('new', 'processing')")
                   .fetchone()[0])
    finally:
        connection.close()
