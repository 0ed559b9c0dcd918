"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from maildesk import models, store  # noqa: F401  (models registers the tables)


def differences(url: str) -> list[object]:
    engine = store.make_engine(url)
    store.upgrade(engine)
    store.check_ready(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, SQLModel.metadata)


def test_migrations_match_the_models_on_sqlite(tmp_path: Path) -> None:
    assert differences(f"sqlite:///{tmp_path / 'schema.db'}") == []


@pytest.mark.servers
def test_migrations_match_the_models_on_postgresql(pg_url: str) -> None:
    assert differences(pg_url) == []


def test_an_empty_database_is_reported_not_ready(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(store.DatabaseNotReady, match="maildesk db upgrade"):
        store.check_ready(engine)
