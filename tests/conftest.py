"""Shared fixtures: a fresh desk per test; real servers come from tests/servers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.desk import Desk, standard_people

pytest_plugins = ["tests.servers"]


@pytest.fixture(params=["sqlite", "postgresql"])
def desk(request: pytest.FixtureRequest, tmp_path: Path) -> Desk:
    """An empty desk on its own database: SQLite, and a fresh PostgreSQL database."""
    if request.param == "postgresql":
        return Desk(tmp_path, database_url=request.getfixturevalue("pg_url"))
    return Desk(tmp_path)


@pytest.fixture
def people(desk: Desk) -> Desk:
    """A desk with the standard organisations, customers and agents."""
    standard_people(desk)
    return desk
