"""Reference rows the pipeline reads for every mail and an admin changes a few times a year.

Where it sits in the flow: `Pipeline.process_many` primes each transaction's lookup caches
(`store.organisation`, `store.agents`, `sla.find_level`, `sla.closed_days`) from one snapshot,
read again at most every `REFERENCE_SECONDS`. Without it, a mail arriving alone (LMTP, IDLE)
paid four or five queries for the same organisations, agents, service levels and closed days
as the one before.

A change made with `maildesk org`, `user`, `sla add` or `sla close-day` therefore reaches new
mail within `REFERENCE_SECONDS` (an agent added is told of new tickets from then on); the `sla`
commands reschedule the open tickets themselves. Users changed by a mail in the same
transaction are read afresh (`store.forget_users`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from maildesk import store
from maildesk.models import ClosedDay, Organisation, ServiceLevel, User

REFERENCE_SECONDS = 10.0


@dataclass(frozen=True)
class Snapshot:
    organisations: dict[int, Organisation]
    agents: tuple[User, ...]
    levels: dict[str, ServiceLevel]
    closed_days: frozenset[date]
    taken_at: float


class ReferenceCache:
    """One snapshot of the reference rows per pipeline, renewed when it is older than `max_age`."""

    def __init__(self, engine: Engine, *, max_age: float = REFERENCE_SECONDS) -> None:
        self.engine = engine
        self.max_age = max_age
        self._snapshot: Snapshot | None = None

    def prime(self, session: Session) -> None:
        """Fill the session's lookup caches; rows the snapshot lacks are still looked up as before."""
        snapshot = self._current()
        session.info["organisations"] = dict(snapshot.organisations)
        session.info["agents"] = list(snapshot.agents)
        users = session.info.setdefault("users", {})
        users.update({agent.address: agent for agent in snapshot.agents if agent.address not in users})
        session.info["levels"] = dict(snapshot.levels)
        session.info["closed_days"] = snapshot.closed_days

    def forget(self) -> None:
        self._snapshot = None

    def _current(self) -> Snapshot:
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot.taken_at > self.max_age:
            snapshot = self._snapshot = self._read()
        return snapshot

    def _read(self) -> Snapshot:
        with store.transaction(self.engine) as session:
            organisations = {row.id: row for row in session.execute(select(Organisation)).scalars()}
            agents = tuple(store.agents(session=session))
            levels = {row.name: row for row in session.execute(select(ServiceLevel)).scalars()}
            closed = frozenset(session.execute(select(ClosedDay.day)).scalars())
            session.expunge_all()  # read-only copies: no session may change them
        return Snapshot(organisations, agents, levels, closed, time.monotonic())  # type: ignore[arg-type]
