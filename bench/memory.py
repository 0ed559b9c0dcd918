"""(e) Peak memory of `maildesk ingest` on one mail with a 25 MB attachment, and on a tiny mail.

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
import subprocess
import sys
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from common import (SUPPORT_ADDRESS, CorpusMail, base_env, fresh_workdir, prepare_desk, print_header, print_rows,
                    verdict)

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
