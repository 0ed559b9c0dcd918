"""Where the time of one backlog run goes: cProfile self-time, grouped by what the code does.

The targets name the costs that matter (mail parsing, ORM inserts, building messages), so the
profile is summed into those buckets by the file each function lives in, rather than left as
a list of a thousand functions. Self time (tottime) is used: it adds up to the total, unlike
cumulative time.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from pathlib import Path

# First match wins: (bucket, substrings of the function's file path). Order matters: maildesk's
# own modules are named before the libraries they call.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("parse (mail-parser, email, quotes, maildesk.parse)",
     ("mailparser", "mail_parser", "/email/", "maildesk/parse.py", "maildesk/quotes.py", "mailparser_reply",
      "/encodings/", "/html/", "maildesk/core/", "maildesk/verify.py", "maildesk/authresults.py")),
    ("rendering (jinja2, notify, render, outgoing mail)",
     ("jinja2", "markupsafe", "maildesk/render.py", "maildesk/notify.py")),
    ("DB (SQLAlchemy, SQLModel, sqlite3, pydantic)",
     ("sqlalchemy", "sqlmodel", "sqlite3", "pydantic", "maildesk/store.py", "maildesk/models.py",
      )),
    ("IMAP (imapclient, imaplib, sockets)", ("imapclient", "imaplib", "socket.py", "ssl.py", "maildesk/imap.py")),
    ("maildesk pipeline and handlers (own code)", ("maildesk/",)),
)


def bucket_of(filename: str, function: str) -> str:
    """The bucket for one profiled function; builtins are named by what they belong to."""
    if filename == "~":  # a builtin: pstats puts its description in the function name
        if "sqlite3" in function:
            return BUCKETS[2][0]
        if "socket" in function or "recv" in function or "sendall" in function or "_ssl" in function:
            return BUCKETS[3][0]
        if "re.Pattern" in function or "_sre" in function:
            return "regular expressions (builtin; callers in parse and quotes mostly)"
        if "hashlib" in function or "openssl" in function:
            return "hashing (SHA-256 of raw mail, attachments)"
        if "binascii" in function or "a2b" in function or "b2a" in function:
            return BUCKETS[0][0]
        return "other builtins (str, dict, list, isinstance, ...)"
    for name, needles in BUCKETS:
        if any(needle in filename for needle in needles):
            return name
    return "other (stdlib, logging, ...)"


def breakdown(profile: cProfile.Profile) -> tuple[dict[str, float], float]:
    """Self time per bucket in seconds, and the total profiled time."""
    stats = pstats.Stats(profile)
    buckets: dict[str, float] = {}
    total = 0.0
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = bucket_of(filename, function)
        buckets[name] = buckets.get(name, 0.0) + tottime
        total += tottime
    return dict(sorted(buckets.items(), key=lambda item: -item[1])), total


def report(profile: cProfile.Profile, dump: Path, top: int = 25) -> str:
    """The bucket table and the top functions by cumulative time; the raw stats go to `dump`."""
    profile.dump_stats(str(dump))
    buckets, total = breakdown(profile)
    lines = ["| cost | seconds | share |", "|---|---|---|"]
    lines += [f"| {name} | {seconds:.1f} | {100 * seconds / total:.0f} % |" for name, seconds in buckets.items()]
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(top)
    body = text.getvalue()
    body = body[body.find("   ncalls"):] if "   ncalls" in body else body
    return ("\n".join(lines) + f"\n(total self time {total:.1f} s; raw stats: {dump}; "
            f"view with python -m pstats)\n\ntop {top} by cumulative time:\n" + body)
