"""maildesk benchmarks (issue 3, item 8): run by hand, never by CI; loopback servers only.

    .venv/bin/python bench/ingest.py --scenario a          # backlog IMAP -> tickets, msg/s
    .venv/bin/python bench/ingest.py --scenario a --profile  # where (a)'s time goes (cProfile)
    .venv/bin/python bench/ingest.py --scenario b          # the same through `maildesk run` + SMTP sink
    .venv/bin/python bench/ingest.py --scenario c          # APPEND -> ack latency with IDLE
    .venv/bin/python bench/ingest.py --scenario d          # LMTP -> ack latency
    .venv/bin/python bench/ingest.py --scenario e          # peak RSS with a 25 MiB attachment
    .venv/bin/python bench/ingest.py --scenario e-daemon   # `maildesk run`'s processes, 12 largest mails, IMAP
    .venv/bin/python bench/ingest.py --scenario e-lmtp     # the same, 12 LMTP sessions at once
    .venv/bin/python bench/ingest.py --scenario f          # (a) with 1,000,000 tickets stored
    .venv/bin/python bench/ingest.py --scenario fetch      # the machine: Dovecot FETCH alone (issue: ~3,000 msg/s)
    .venv/bin/python bench/ingest.py --scenario report     # the markdown table of all stored results

Each scenario builds its own desk under bench/out/<scenario>/ and its own servers, stops by
itself, prints its figures and markdown rows for docs/performance.md, and stores them in
bench/out/results.json ((f) reads (a)'s figure from there). The machine is small and shared:
run one scenario at a time, and look at `uptime` first.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common import CORPUS, load_average, load_corpus, machine, print_rows
import results

SCENARIOS = ("a", "b", "c", "d", "e", "e-daemon", "e-lmtp", "f", "fetch", "report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=SCENARIOS, required=True)
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="output folder of gen_corpus.py")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N corpus mails (smoke runs)")
    parser.add_argument("--profile", action="store_true", help="(a) or (f) under cProfile; prints the cost breakdown, stores no figure")
    parser.add_argument("--mails", type=int, default=60, help="(c), (d): measured mails (one more warms up)")
    parser.add_argument("--spacing", type=float, default=None, help="(c), (d): seconds between mails "
                        "(default 1.5 for (c), 0.5 for (d))")
    parser.add_argument("--big-mails", type=int, default=12, help="(e-daemon, e-lmtp): mails of the largest size allowed")
    parser.add_argument("--tickets", type=int, default=1_000_000, help="(f): tickets to seed")
    parser.add_argument("--seed-tables", default="tickets,messages,inbox,outbox",
                        help="(f): tables to seed, one row per ticket each (default: all four)")
    parser.add_argument("--baseline", type=float, default=None, help="(f): the empty-database msg/s "
                        "(default: the stored (a) result)")
    parser.add_argument("--no-save", action="store_true", help="do not store the figures in results.json")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if options.scenario == "report":
        stored = results.load()
        print("machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()) + f"; load now {load_average()}")
        print_rows(results.rows(stored))
        return
    mails = load_corpus(options.corpus, options.limit)
    result = run(options, mails)
    if result and not options.no_save and options.limit is None:
        results.save(_result_key(options), result)


def _result_key(options: argparse.Namespace) -> str:
    """(f) with fewer seeded tables is kept next to the full (f), not over it."""
    if options.scenario == "f" and options.seed_tables != "tickets,messages,inbox,outbox":
        return "f-" + options.seed_tables.replace(",", "+")
    return str(options.scenario)


def run(options: argparse.Namespace, mails: list) -> dict:  # type: ignore[type-arg]
    """Dispatch to one scenario; imports are late so a broken module only breaks its scenario."""
    scenario = options.scenario
    if scenario == "a":
        from throughput import scenario_a
        return scenario_a(mails, profile=options.profile)
    if scenario == "b":
        from throughput import scenario_b
        return scenario_b(mails)
    if scenario == "c":
        from latency import scenario_c
        return scenario_c(mails, count=options.mails, spacing=options.spacing or 1.5)
    if scenario == "d":
        from latency import scenario_d
        return scenario_d(mails, count=options.mails, spacing=options.spacing or 0.5)
    if scenario == "e":
        from memory import scenario_e
        return scenario_e(mails)
    if scenario in ("e-daemon", "e-lmtp"):
        from memory import scenario_e_daemon
        return scenario_e_daemon(mails, count=options.big_mails, via="imap" if scenario == "e-daemon" else "lmtp")
    if scenario == "fetch":
        from reference import scenario_fetch
        return scenario_fetch(mails)
    from throughput import scenario_f
    baseline = options.baseline or results.load().get("a", {}).get("msgs_per_s")
    tables = tuple(name.strip() for name in options.seed_tables.split(",") if name.strip())
    return scenario_f(mails, baseline=baseline, tickets=options.tickets, tables=tables, profile=options.profile)


if __name__ == "__main__":
    main()
