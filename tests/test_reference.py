"""The pipeline's snapshot of organisations, service levels and closed days."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine

from maildesk import sla, store
from maildesk.directory import add_organisation, add_user
from maildesk.models import utcnow
from maildesk.reference import ReferenceCache


def desk(tmp_path: Path) -> Engine:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'maildesk.db'}")
    store.upgrade(engine)
    with store.transaction(engine) as session:
        add_organisation("acme.example", session=session, domains=["acme.example"], language="lv", service_level=None)
        sla.close_day(date(2026, 12, 28), "inventory", session=session, now=utcnow())
        add_user("agnese@servicedesk.example", session=session, name="Agnese Kalniņa", now=utcnow(), organisation=None,
                 agent=True, responsible=False, language=None)
    return engine


def statements(engine: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def test_a_primed_transaction_finds_organisations_and_closed_days_without_a_query(tmp_path: Path) -> None:
    engine = desk(tmp_path)
    cache = ReferenceCache(engine)
    cache.prime(store.Session(engine))  # the first snapshot is read here
    seen = statements(engine)
    with store.transaction(engine) as session:
        cache.prime(session)
        organisation = next(iter(session.info["organisations"].values()))
        assert store.organisation(organisation.id, session=session).name == "acme.example"
        assert date(2026, 12, 28) in sla.closed_days(session=session)
        assert [agent.name for agent in store.agents(session=session)] == ["Agnese Kalniņa"]
        assert store.find_user("Agnese@servicedesk.example", session=session).name == "Agnese Kalniņa"  # type: ignore[union-attr]
    assert not [sql for sql in seen if "organisations" in sql or "closed_days" in sql or "users" in sql]


def test_a_change_reaches_the_pipeline_once_the_snapshot_is_older_than_its_age(tmp_path: Path) -> None:
    engine = desk(tmp_path)
    fresh, kept = ReferenceCache(engine, max_age=0), ReferenceCache(engine, max_age=3600)
    for cache in (fresh, kept):
        with store.transaction(engine) as session:
            cache.prime(session)
    with store.transaction(engine) as session:
        sla.close_day(date(2026, 12, 29), "moved", session=session, now=utcnow())
    for cache, expected in ((fresh, True), (kept, False)):
        with store.transaction(engine) as session:
            cache.prime(session)
            assert (date(2026, 12, 29) in sla.closed_days(session=session)) is expected


def test_users_changed_in_the_transaction_are_read_afresh_not_from_the_snapshot(tmp_path: Path) -> None:
    engine = desk(tmp_path)
    cache = ReferenceCache(engine, max_age=3600)
    with store.transaction(engine) as session:
        cache.prime(session)
        add_user("juris@servicedesk.example", session=session, name="Juris Ozols", now=utcnow(), organisation=None,
                 agent=True, responsible=False, language=None)  # it forgets the session's user cache
        assert {agent.name for agent in store.agents(session=session)} == {"Agnese Kalniņa", "Juris Ozols"}


def test_the_pipeline_warms_up_the_templates_and_every_levels_holiday_calendar(tmp_path: Path) -> None:
    from maildesk.config import load_settings
    from maildesk.process import Pipeline
    from maildesk.render import default_templates_dir

    engine = desk(tmp_path)
    (tmp_path / "empty.env").write_text("")
    settings = load_settings(env_file=tmp_path / "empty.env", environ={
        "MAILDESK_DATA_DIR": str(tmp_path / "var"), "MAILDESK_SUPPORT_ADDRESS": "support@servicedesk.example"})
    sla._public_days.cache_clear()
    pipeline = Pipeline(settings, engine)
    pipeline.warm_up()
    assert sla._public_days.cache_info().currsize == 1  # the default level's "LV" tables, for its years
    text_templates = [path for path in default_templates_dir().rglob("*.j2") if not path.name.endswith(".html.j2")]
    assert len(pipeline.notifier.renderer._text.cache) == len(text_templates)  # type: ignore[union-attr]
