"""The pipeline alone, without IMAP: store the corpus, then process it in groups, in one process.

A developer's loop for the ingest path (parse, route, tickets, notifications, outbox rows):
`python bench/pipeline.py [--limit N] [--group G] [--parse-only]`. It prints msg/s for the store
and the process stages separately; it is not one of issue 3's figures (those include IMAP).
"""

from __future__ import annotations

import argparse
import time

from common import fresh_workdir, base_env, load_corpus, prepare_desk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--group", type=int, default=20, help="rows per process_many call")
    parser.add_argument("--parse-only", action="store_true", help="time parse_mail over the corpus and stop")
    args = parser.parse_args()
    mails = load_corpus(limit=args.limit)
    if args.parse_only:
        from maildesk.parse import parse_mail
        started = time.perf_counter()
        for mail in mails:
            parse_mail(mail.raw)
        elapsed = time.perf_counter() - started
        print(f"parse: {len(mails)} mails in {elapsed:.2f} s = {elapsed / len(mails) * 1000:.2f} ms/mail")
        return
    from maildesk.process import Pipeline
    workdir = fresh_workdir("pipeline")
    settings, engine = prepare_desk(workdir, base_env(workdir), mails)
    pipeline = Pipeline(settings, engine)
    started = time.perf_counter()
    stored = pipeline.store_many([mail.raw for mail in mails], "bench")
    stored_at = time.perf_counter()
    ids = [item.inbox_id for item in stored]
    for start in range(0, len(ids), args.group):
        pipeline.process_many(ids[start:start + args.group])
    done = time.perf_counter()
    print(f"store: {len(mails) / (stored_at - started):.0f} msg/s; process: {len(mails) / (done - stored_at):.1f} msg/s "
          f"({(done - stored_at) / len(mails) * 1000:.2f} ms/mail); total {len(mails) / (done - started):.1f} msg/s")


if __name__ == "__main__":
    main()
