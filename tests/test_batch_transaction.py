"""A batch's transaction holds SQLite's write lock: it must not begin before there is work for it.

With a parse helper, `Pipeline.finish` may have to wait for the first parsed mail (the first
group of a backlog, a helper that fell behind). Meanwhile the outbox sender and the LMTP
listener must still be able to write.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from maildesk import store
from maildesk.config import load_settings
from maildesk.directory import add_organisation, add_user
from maildesk.examine import Examiner
from maildesk.models import utcnow
from maildesk.parse_worker import InProcessParser, Parsed
from maildesk.process import Pipeline, State
from tests.desk import TRUSTED_MTA
from tests.mailbuilder import make_mail

WAIT_SECONDS = 20


class HeldParser(InProcessParser):
    """Parses in-process, but the first result waits until the test lets it go."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.go_on = threading.Event()

    def parse_many(self, raws: Sequence[bytes], attempts: Sequence[int], examiner: Examiner) -> Iterator[Parsed]:
        results = super().parse_many(raws, attempts, examiner)

        def held() -> Iterator[Parsed]:
            self.asked.set()
            assert self.go_on.wait(WAIT_SECONDS), "the test never let the parser go on"
            yield from results
        return held()


def test_another_writer_commits_while_a_batch_waits_for_its_first_parsed_mail(tmp_path: Path) -> None:
    settings = load_settings(environ={"MAILDESK_DATA_DIR": str(tmp_path / "var"),
                                      "MAILDESK_SUPPORT_ADDRESS": "support@desk.example",
                                      "MAILDESK_TRUSTED_AUTHSERV_IDS": TRUSTED_MTA})
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine)
    with store.transaction(engine) as session:  # customers: their mails open tickets
        add_organisation("Client", session=session, domains=[], language=None, service_level=None)
        for n in range(3):
            add_user(f"c{n}@client.example", session=session, name=f"C {n}", now=utcnow(), organisation="Client",
                     agent=False, responsible=False, language=None)
    parser = HeldParser()
    pipeline = Pipeline(settings, engine, parser=parser)
    verdict = {"Authentication-Results": f"{TRUSTED_MTA}; dmarc=pass header.from=client.example"}
    raws = [make_mail(f"c{n}@client.example", f"Request {n}", "Hello", to="support@desk.example", headers=verdict)
            for n in range(3)]
    ids = [stored.inbox_id for stored in pipeline.store_many(raws, "test")]
    prepared = pipeline.prepare(ids)
    outcomes: list[object] = []
    batch = threading.Thread(target=lambda: outcomes.extend(pipeline.finish(prepared)))
    batch.start()
    try:
        assert parser.asked.wait(WAIT_SECONDS)
        written = threading.Event()

        def write() -> None:  # what the outbox sender does between two batches: a short write
            with store.transaction(engine) as session:
                add_organisation("Written meanwhile", session=session, domains=[], language=None, service_level=None)
            written.set()
        writer = threading.Thread(target=write)
        writer.start()
        assert written.wait(WAIT_SECONDS), "the batch held the write lock while it waited for the parser"
    finally:
        parser.go_on.set()
        batch.join(WAIT_SECONDS)
    writer.join(WAIT_SECONDS)
    assert [(outcome.inbox_id, outcome.state, outcome.ticket) for outcome in outcomes] == \
        [(inbox_id, State.PROCESSED.value, f"SD-{n + 1}") for n, inbox_id in enumerate(ids)]  # type: ignore[attr-defined]
