"""Two workers on one PostgreSQL database never process an inbox row or send an outbox row twice."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maildesk import store
from maildesk.config import load_settings
from maildesk.directory import add_organisation, add_user
from maildesk.models import Event, InboxItem, OutboxItem, Ticket, utcnow
from maildesk.outbox import send_due
from maildesk.process import Pipeline
from maildesk.smtp import SmtpTransport
from tests.mailbuilder import make_mail

pytestmark = pytest.mark.servers
CUSTOMERS = [f"c{n}@acme.example" for n in range(50)]


def settings_for(tmp_path: Path, url: str, smtp_port: int, worker: str):
    return load_settings(environ={"MAILDESK_DATA_DIR": str(tmp_path / worker), "MAILDESK_DATABASE_URL": url,
                                  "MAILDESK_SUPPORT_ADDRESS": "support@desk.example", "MAILDESK_WORKER_ID": worker,
                                  "MAILDESK_SMTP_HOST": "127.0.0.1", "MAILDESK_SMTP_PORT": str(smtp_port)})


def test_two_workers_share_a_backlog_without_handling_a_row_twice(tmp_path: Path, pg_url: str, smtp_sink) -> None:
    first = settings_for(tmp_path, pg_url, smtp_sink.port, "worker-a")
    engine = store.make_engine(pg_url)
    store.upgrade(engine)
    with store.transaction(engine) as session:
        add_organisation("ACME", session=session, domains=[], language=None, service_level=None)
        for address in CUSTOMERS:
            add_user(address, session=session, name="C", now=utcnow(), organisation="ACME", agent=False,
                     responsible=False, language=None)
    raws = [make_mail(CUSTOMERS[n % 50], f"Request {n}", f"Body {n}", to="support@desk.example",
                      message_id=f"<r{n}@client.example>") for n in range(200)]
    ids = [stored.inbox_id for stored in Pipeline(first, engine).store_many(raws, "test")]

    processed: dict[str, list[int]] = {}
    sent: dict[str, int] = {}

    def work(worker: str) -> None:
        settings = settings_for(tmp_path, pg_url, smtp_sink.port, worker)
        own_engine = store.make_engine(pg_url)
        pipeline = Pipeline(settings, own_engine, worker=worker)
        transport = SmtpTransport(settings)
        mine = processed.setdefault(worker, [])
        sent[worker] = 0
        for start in range(0, len(ids), 10):
            mine.extend(outcome.inbox_id for outcome in pipeline.process_many(ids[start:start + 10]) if outcome)
            sent[worker] += send_due(own_engine, settings, transport, now=utcnow(), worker=worker).sent
        while report := send_due(own_engine, settings, transport, now=utcnow(), worker=worker):
            if not report.sent:
                break
            sent[worker] += report.sent
        transport.close()
        own_engine.dispose()

    threads = [threading.Thread(target=work, args=(name,)) for name in ("worker-a", "worker-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert sorted(processed["worker-a"] + processed["worker-b"]) == sorted(ids)
    assert processed["worker-a"] and processed["worker-b"], "both workers took part"
    with store.transaction(engine) as session:
        assert session.execute(select(func.count()).select_from(Ticket)).scalar_one() == 200
        assert session.execute(select(func.count()).select_from(Event).where(Event.command == "CREATE")
                               ).scalar_one() == 200
        assert session.execute(select(func.count()).select_from(InboxItem).where(InboxItem.state == "processed")
                               ).scalar_one() == 200
        outbox = session.execute(select(OutboxItem.message_id, OutboxItem.status)).all()
    assert {status for _, status in outbox} == {"sent"} and len(outbox) == sent["worker-a"] + sent["worker-b"]
    assert sorted(message.message_id for message in smtp_sink.messages) == sorted(mid for mid, _ in outbox)
