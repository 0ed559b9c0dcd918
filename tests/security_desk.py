"""A desk for the security tests (issue 4): the command-line desk of tests/desk.py, made fast
enough for the hundreds of mails a loop, storm or fuzz test sends.

- Mail goes through one long-lived `Pipeline`, as in the daemon. `maildesk ingest` does
  exactly `Pipeline(...).ingest(raw, "pipe")`, but each new process compiles every template
  again (~0.4 s a mail).
- `ticket()` and `outbox()` read the database through the same views as `--json`, without
  starting a command each time.
- The standard people are added once per test module and the database is copied per test.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session

from maildesk import store
from maildesk.config import Settings, load_settings
from maildesk.models import OutboxItem, Ticket
from maildesk.process import Pipeline
from maildesk.render import Renderer, default_templates_dir
from maildesk.views import outbox_row, ticket_detail
from tests.desk import Desk, standard_people

BOT = "bot@acme.example"
_renderer: list[Renderer] = []  # one for the whole run: its compiled templates are the same for every desk


def renderer() -> Renderer:
    if not _renderer:
        _renderer.append(Renderer(default_templates_dir()))
    return _renderer[0]


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
            self.pipeline = Pipeline(settings, store.make_engine(settings.database_url), renderer=renderer())
        return self.pipeline

    def ingest(self, raw: bytes, *, expect: int = 0) -> str:
        outcome = self.pipe().ingest(raw, "pipe")
        return "already stored" if outcome is None else f"{outcome.state} {outcome.ticket or ''} {outcome.reason}"

    def ticket(self, key: str) -> dict[str, Any]:
        """What `maildesk ticket show KEY --json` prints."""
        with Session(self.pipe().engine) as session:
            ticket = store.find_ticket(key, session=session)
            assert ticket is not None, f"no ticket {key}"
            return json.loads(json.dumps(ticket_detail(ticket, session=session), default=str))

    def outbox(self) -> list[dict[str, Any]]:
        """What `maildesk outbox list --json` prints."""
        with Session(self.pipe().engine) as session:
            query = select(OutboxItem, Ticket.key).outerjoin(Ticket, OutboxItem.ticket_id == Ticket.id).order_by(
                OutboxItem.id)
            return json.loads(json.dumps([outbox_row(item, key) for item, key in session.execute(query)], default=str))

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


def prepare(tmp_path_factory: pytest.TempPathFactory, then: Callable[[FastDesk], object] | None = None) -> Path:
    """A data directory with the standard people and BOT, an ACME customer whose mailbox
    answers by itself; `then` adds what a module's tests all start from."""
    directory = tmp_path_factory.mktemp("prepared")
    desk = FastDesk(directory)
    standard_people(desk)
    desk.run("user", "add", BOT, "--name", "Away Bot", "--org", "ACME", "--language", "en")
    if then is not None:
        then(desk)
    desk.close()
    return directory / "var"


@pytest.fixture(scope="module")
def prepared_var(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(tmp_path_factory)


@pytest.fixture
def desk(tmp_path: Path, prepared_var: Path) -> Iterator[FastDesk]:
    """A fresh SQLite desk with the standard people (tests/conftest.py's `people`, SQLite only)."""
    shutil.copytree(prepared_var, tmp_path / "var")
    desk = FastDesk(tmp_path)
    yield desk
    desk.close()
