"""The issue's own yardstick for the machine: how fast Dovecot serves FETCH here.

Issue 3 gives its targets for "this 2-core machine" and says that there "Dovecot serves FETCH
at ~3,000 msg/s". The VMs these benchmarks ran on differed by a factor of two (an AMD EPYC VM,
then an Intel Xeon one), so this scenario measures that same figure beside (a)-(f): no maildesk
code at all, only imapclient reading the APPENDed corpus as the poller does (UID SEARCH, then
RFC822.SIZE and BODY.PEEK[] in batches of 200), several times over one session.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from common import CorpusMail, append_all, print_header, servers

BATCH = 200  # the poller's IMAP batch (maildesk.imap)
ROUNDS = 5
ISSUE_FETCH_RATE = 3000.0  # msg/s, issue 3's figure for its machine


def scenario_fetch(mails: list[CorpusMail]) -> dict[str, Any]:
    print_header("reference: Dovecot FETCH of the corpus, no maildesk code")
    with servers(dovecot=True) as (dovecot, _sink):
        appended, append_seconds = append_all(dovecot, (mail.raw for mail in mails))
        print(f"appended {appended} mails ({sum(len(m.raw) for m in mails) / 1e6:.1f} MB) in {append_seconds:.1f} s")
        rates = [_fetch_all(dovecot, appended) for _ in range(ROUNDS)]
    median = statistics.median(rates)
    print(f"FETCH rounds: {', '.join(f'{rate:.0f}' for rate in rates)} msg/s; median {median:.0f} "
          f"= {median / ISSUE_FETCH_RATE:.2f} x the issue's ~{ISSUE_FETCH_RATE:.0f} msg/s")
    return {"rows": [("reference: Dovecot FETCH, no maildesk code",
                      f"median {median:.0f} msg/s over {ROUNDS} rounds ({min(rates):.0f}-{max(rates):.0f})",
                      f"issue's machine ~{ISSUE_FETCH_RATE:.0f} msg/s", "-")],
            "fetch_rates": rates}


def _fetch_all(dovecot: object, expected: int) -> float:
    """One pass over INBOX as the poller reads it; msg/s."""
    with dovecot.client() as imap:  # type: ignore[attr-defined]
        imap.select_folder("INBOX", readonly=True)
        started = time.perf_counter()
        uids = imap.search(["ALL"])
        fetched = 0
        for start in range(0, len(uids), BATCH):
            batch = uids[start:start + BATCH]
            sizes = imap.fetch(batch, ["RFC822.SIZE"])
            bodies = imap.fetch(batch, ["BODY.PEEK[]"])
            fetched += sum(1 for uid in batch if uid in sizes and b"BODY[]" in bodies.get(uid, {}))
        elapsed = time.perf_counter() - started
    if fetched != expected:
        raise RuntimeError(f"fetched {fetched} of {expected} mails")
    return fetched / elapsed
