"""maildesk.rows: prepared statements on the session's cursor, against a real SQLite database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import bindparam, column, select, table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.types import TypeDecorator

from maildesk import rows, store
from maildesk.models import InboxItem, Ticket, UTCDateTime

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
INBOX = InboxItem.__table__  # type: ignore[attr-defined]


def desk(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = store.make_engine(f"sqlite:///{tmp_path / 'maildesk.db'}")
    store.upgrade(engine)
    with store.transaction(engine) as session:
        for number, state in enumerate(("new", "failed", "processed")):
            rows.insert_one(InboxItem, {"received_at": T0, "source": "test", "sha256": f"{number:064d}", "size": 1,
                                        "message_id": f"<{number}@x>", "state": state, "reason": "", "attempts": 0,
                                        "sender": ""}, session=session)
    return engine


def test_a_statement_with_literals_runs_with_them_and_returns_every_row(tmp_path: Path) -> None:
    engine = desk(tmp_path)
    claim = (update(INBOX).where(INBOX.c.state.in_([bindparam("new", "new"), bindparam("failed", "failed")]))
             .values(state="processing", claimed_at=bindparam("now", type_=INBOX.c.claimed_at.type),
                     attempts=INBOX.c.attempts + 1)
             .returning(INBOX.c.message_id, INBOX.c.attempts))
    with store.transaction(engine) as session:
        assert sorted(rows.all_rows(claim, {"now": T0}, session=session)) == [("<0@x>", 1), ("<1@x>", 1)]
        assert rows.all_rows(claim, {"now": T0}, session=session) == []  # nothing new or failed is left
        assert rows.first_row(select(INBOX.c.claimed_at).where(INBOX.c.message_id == "<0@x>"), {},
                              session=session) == ("2026-12-01 09:00:00.000000",)  # UTCDateTime's stored form


def test_driver_errors_come_out_as_sqlalchemy_s_naming_the_statement(tmp_path: Path) -> None:
    """The pipeline relies on IntegrityError (a mail stored twice by two workers) from every call."""
    engine = desk(tmp_path)
    twice = {"received_at": T0, "source": "test", "sha256": f"{0:064d}", "size": 1, "message_id": "", "state": "new",
             "reason": "", "attempts": 0, "sender": ""}
    with store.transaction(engine) as session:
        with pytest.raises(IntegrityError, match="INSERT INTO inbox") as one:
            rows.insert_one(InboxItem, twice, session=session)
        assert "UNIQUE constraint failed: inbox.sha256" in str(one.value.orig)
        with pytest.raises(IntegrityError, match="INSERT INTO inbox"):
            rows.insert_many(InboxItem, [twice], session=session)
        with pytest.raises(IntegrityError, match="UPDATE inbox"):
            rows.update_by_id(InboxItem, 2, {"sha256": f"{0:064d}"}, session=session)
        with pytest.raises(OperationalError, match="no such table: nowhere"):
            rows.all_rows(select(column("id")).select_from(table("nowhere")), {}, session=session)


def test_a_new_statement_with_the_id_of_a_freed_one_is_compiled_afresh(tmp_path: Path) -> None:
    engine = desk(tmp_path)
    states = select(INBOX.c.state).order_by(INBOX.c.id)
    ids = select(INBOX.c.id).order_by(INBOX.c.id)
    with store.transaction(engine) as session:
        rows.all_rows(states, {}, session=session)
        # as if `states` had been freed and `ids` had been given its address
        rows._PREPARED[(engine.dialect.name, id(ids))] = rows._PREPARED[(engine.dialect.name, id(states))]
        assert rows.all_rows(ids, {}, session=session) == [(1,), (2,), (3,)]


def test_typed_rows_name_each_column_and_convert_it_by_its_type(tmp_path: Path) -> None:
    engine = desk(tmp_path)
    claim = (update(INBOX).where(INBOX.c.state == bindparam("state"))
             .values(claimed_at=bindparam("now", type_=INBOX.c.claimed_at.type))
             .returning(INBOX.c.message_id, INBOX.c.claimed_at, INBOX.c.attempts))
    with store.transaction(engine) as session:
        (row,) = rows.typed_rows(claim, {"state": "failed", "now": T0}, session=session)
        assert rows.typed_rows(claim, {"state": "held", "now": T0}, session=session) == []
    assert (row.message_id, row.claimed_at, row.attempts) == ("<1@x>", T0, 0)
    assert row.claimed_at.tzinfo is not None  # a datetime in UTC, as the ORM gives it, not the stored text


def ticket_values(**changes: object) -> dict[str, object]:
    values: dict[str, object] = dict(key="SD-1", summary="Printer", reporter="anna@acme.example", created_at=T0,
                                     updated_at=T0, status_changed_at=T0)
    return {**values, **changes}


def test_new_object_has_the_values_and_the_defaults_a_validated_one_has() -> None:
    built = rows.new_object(Ticket, ticket_values())
    validated = Ticket(**ticket_values())
    assert built.model_dump() == validated.model_dump()
    assert (built.status, built.holder, built.agent) == ("OPEN", "agents", None)


def test_new_object_still_refuses_a_row_without_a_required_field() -> None:
    values = ticket_values()
    del values["reporter"]
    with pytest.raises(TypeError, match="reporter"):
        rows.new_object(Ticket, values)


def test_persistent_gives_the_object_the_session_holds_or_one_it_saves_like_a_loaded_one(tmp_path: Path) -> None:
    engine = desk(tmp_path)
    with store.transaction(engine) as session:
        whole = rows.new_object(Ticket, ticket_values()).model_dump(exclude={"id"})
        ticket_id = rows.insert_one(Ticket, whole, session=session)
    by_id = select(Ticket.__table__).where(Ticket.__table__.c.id == bindparam("id"))  # type: ignore[attr-defined]
    with store.transaction(engine) as session:
        (row,) = rows.typed_rows(by_id, {"id": ticket_id}, session=session)
        ticket = rows.persistent(Ticket, row._asdict(), session=session)
        assert ticket in session and not session.dirty  # as if a query had loaded it
        assert session.get(Ticket, ticket_id) is ticket  # no second object, no query
        assert rows.persistent(Ticket, row._asdict(), session=session) is ticket
        ticket.status = "WAITING FOR CUSTOMER"
        assert rows.persistent(Ticket, row._asdict(), session=session).status == "WAITING FOR CUSTOMER"
    with store.transaction(engine) as session:
        assert session.get(Ticket, ticket_id).status == "WAITING FOR CUSTOMER"  # the change was saved


def test_find_ticket_flushes_a_ticket_added_but_not_yet_saved(tmp_path: Path) -> None:
    engine = desk(tmp_path)
    with store.transaction(engine) as session:
        added = Ticket(**ticket_values(key="SD-7"))
        session.add(added)
        assert store.find_ticket("sd-7", session=session) is added
        assert store.find_ticket("SD-8", session=session) is None


def test_rows_written_in_a_savepoint_go_when_it_is_rolled_back_though_the_transaction_wrote_before(
        tmp_path: Path) -> None:
    engine = desk(tmp_path)
    row = {"received_at": T0, "source": "test", "message_id": "", "size": 1, "state": "new", "reason": "",
           "attempts": 0, "sender": ""}
    with store.transaction(engine) as session:
        rows.insert_one(InboxItem, {**row, "sha256": "a" * 64}, session=session)  # the connection is now known
        with pytest.raises(RuntimeError):
            with session.begin_nested():
                rows.insert_one(InboxItem, {**row, "sha256": "b" * 64}, session=session)
                raise RuntimeError("the mail breaks")
        with session.begin_nested():
            rows.insert_one(InboxItem, {**row, "sha256": "c" * 64}, session=session)
    digests = select(INBOX.c.sha256).where(INBOX.c.source == "test").order_by(INBOX.c.sha256)
    with store.transaction(engine) as session:
        kept = [digest[0] for (digest,) in rows.all_rows(digests, {}, session=session)]
    assert kept == ["0", "0", "0", "a", "c"]  # desk()'s three, then ours without the rolled-back one


OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
AWARE = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=OFFSETS)


@given(AWARE)
def test_a_datetime_is_stored_on_sqlite_as_the_text_sqlalchemy_s_own_conversion_gives(value: datetime) -> None:
    dialect = sqlite.dialect()
    column_type = UTCDateTime().dialect_impl(dialect)
    composed = TypeDecorator.bind_processor(column_type, dialect)  # process_bind_param, then DATETIME's
    assert composed is not None
    assert column_type.bind_processor(dialect)(value) == composed(value)


def test_postgresql_gets_the_naive_utc_datetime_itself() -> None:
    dialect = postgresql.dialect()
    processor = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None
    assert processor(datetime(2026, 12, 1, 11, 0, tzinfo=timezone(timedelta(hours=2)))) == datetime(2026, 12, 1, 9, 0)


def test_a_datetime_in_any_zone_comes_back_as_the_same_instant_in_utc_and_a_naive_one_is_refused(
        tmp_path: Path) -> None:
    engine = desk(tmp_path)
    riga = timezone(timedelta(hours=2))
    with store.transaction(engine) as session:
        rows.update_by_id(InboxItem, 1, {"claimed_at": datetime(2026, 12, 1, 11, 0, 0, 5, tzinfo=riga)},
                          session=session)
        (stored,) = rows.typed_rows(select(INBOX.c.claimed_at).where(INBOX.c.id == 1), {}, session=session)
        assert stored.claimed_at == datetime(2026, 12, 1, 9, 0, 0, 5, tzinfo=timezone.utc)
        assert stored.claimed_at.tzinfo is timezone.utc
        with pytest.raises(ValueError, match="naive datetime"):
            rows.update_by_id(InboxItem, 2, {"claimed_at": datetime(2026, 12, 1, 9, 0)}, session=session)
