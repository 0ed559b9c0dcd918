"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_the_head_maildesk_checks_for_is_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    assert store.SCHEMA_HEAD == ScriptDirectory.from_config(store._alembic_config()).get_current_head()


def test_a_database_one_migration_behind_is_reported_with_both_revisions(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    store.upgrade(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0004'")
    with pytest.raises(store.DatabaseNotReady, match=f"at revision 0004, this maildesk needs {store.SCHEMA_HEAD}"):
        store.check_ready(engine)


def test_a_command_on_an_upgraded_database_does_not_import_alembic(tmp_path: Path) -> None:
    """Every command checks the schema (`maildesk ingest` once per mail an MTA pipes in):
    with Alembic imported for it, a third of such a process's time went to the import."""
    url = f"sqlite:///{tmp_path / 'ready.db'}"
    store.upgrade(store.make_engine(url))
    env = {"PATH": os.environ["PATH"], "MAILDESK_DATA_DIR": str(tmp_path / "var"), "MAILDESK_DATABASE_URL": url}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "maildesk", "ticket", "list"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "maildesk.store" in imported and "sqlalchemy" in imported
    assert not {name for name in imported if name.split(".")[0] == "alembic"}
