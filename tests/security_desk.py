"""A desk for the security tests (issue 4): the command-line desk of tests/desk.py, made fast
enough for the hundreds of mails a loop, storm or fuzz test sends.

- Mail goes through one long-lived `Pipeline`, as in the daemon. `maildesk ingest` does
  exactly `Pipeline(...).ingest(raw, "pipe")`, but each new process compiles every template
  again (~0.4 s a mail).
- The standard people are added once per test module and the database is copied per test.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session

from maildesk import store
from maildesk.config import Settings, load_settings
from maildesk.process import Pipeline
from tests.desk import Desk, standard_people

BOT = "bot@acme.example"


class FastDesk(Desk):
    pipeline: Pipeline | None = None

    @property
    def settings(self) -> Settings:
        empty = self.directory / "empty.env"  # never a developer's ./.env
        empty.write_text("")
        return load_settings(empty, environ=self.env)

    def pipe(self) -> Pipeline:
        if self.pipeline is None:
            settings = self.settings
            self.pipeline = Pipeline(settings, store.make_engine(settings.database_url))
        return self.pipeline

    def ingest(self, raw: bytes, *, expect: int = 0) -> str:
        outcome = self.pipe().ingest(raw, "pipe")
        return "already stored" if outcome is None else f"{outcome.state} {outcome.ticket or ''} {outcome.reason}"

    def rows(self, model: Any, *where: Any) -> list[Any]:
        """Rows of a table, straight from the database (for what `--json` does not show)."""
        with Session(self.pipe().engine) as session:
            rows = list(session.execute(select(model).where(*where).order_by(
                *model.__table__.primary_key.columns)).scalars())
            session.expunge_all()
        return rows

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.engine.dispose()


@pytest.fixture(scope="module")
def prepared_var(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with the standard people and BOT, an ACME customer whose mailbox answers by itself."""
    directory = tmp_path_factory.mktemp("prepared")
    desk = Desk(directory)
    standard_people(desk)
    desk.run("user", "add", BOT, "--name", "Away Bot", "--org", "ACME", "--language", "en")
    return directory / "var"


@pytest.fixture
def desk(tmp_path: Path, prepared_var: Path) -> Iterator[FastDesk]:
    """A fresh SQLite desk with the standard people (tests/conftest.py's `people`, SQLite only)."""
    shutil.copytree(prepared_var, tmp_path / "var")
    desk = FastDesk(tmp_path)
    yield desk
    desk.close()
