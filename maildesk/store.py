"""The database: engines, sessions, migrations, and the queries the pipeline needs.

Every write takes `*, session` so the caller owns the transaction: a ticket change, its
events and its outbox rows commit together or not at all.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, event, func, inspect, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, create_engine

from maildesk import rows
from maildesk.models import Event, Message, Organisation, Ticket, User
from maildesk.rows import Model
from maildesk.turns import WriterTurns

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SCHEMA_HEAD = "0005"  # the newest of migrations/versions; tests/test_schema.py keeps the two equal
SQLITE_BUSY_SECONDS = 30
# Page cache per connection (SQLite's default is 2 MiB). With a million tickets the indexes are
# hundreds of MiB, and each mail inserts at a dozen scattered places in them; 16 MiB made such a
# backlog 8-10 % faster (docs/performance.md), most likely by keeping the upper index levels in
# memory. A mail's raw bytes pass through the same cache, which bounds how much more is sensible.
SQLITE_CACHE_MIB = 16
SQLITE_HINT = ", or MAILDESK_DATA_DIR, the folder of the SQLite file"


class DatabaseNotReady(RuntimeError):
    """The schema is missing or older than this version of maildesk."""


class DatabaseUnavailable(RuntimeError):
    """The database cannot be opened or reached; the message names it (never its password) and the setting."""


def open_engine(url: str) -> Engine:
    """`make_engine`, then one connection: a folder the process may not write (under the unit,
    anything but its state directory), a server that is down or a wrong password ends in one
    line that names the setting, not in a driver's traceback."""
    try:
        engine = make_engine(url)
        with engine.connect():
            pass
    except (OSError, DBAPIError) as error:
        raise DatabaseUnavailable(f"cannot open the database {_described(url)}: {problem_of(url, error)} "
                                  f"(MAILDESK_DATABASE_URL{SQLITE_HINT if url.startswith('sqlite') else ''})") from None
    return engine


def _described(url: str) -> str:
    """The URL without its password; for SQLite also the file it means, whose folder may be relative
    (`./var` under systemd is /var, the working folder there being /)."""
    path = make_url(url).database if url.startswith("sqlite") else None
    return f"{safe_url(url)} (the file {Path(path).resolve()})" if path and path != ":memory:" else safe_url(url)


def safe_url(url: str) -> str:
    """A database URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def problem_of(url: str, error: BaseException) -> str:
    """The first line of a driver's error, with the URL's password masked should the driver repeat it."""
    detail = str(getattr(error, "orig", None) or error).splitlines()[0] if str(error) else type(error).__name__
    password = make_url(url).password if url else None
    return detail.replace(password, "***") if password else detail


def make_engine(url: str) -> Engine:
    """An engine with SQLite tuned for one writer and many readers (WAL, busy timeout, the
    process's writers taking turns in arrival order)."""
    if url.startswith("sqlite"):
        _ensure_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})
        event.listen(engine, "connect", _sqlite_pragmas)
        _take_turns(engine, WriterTurns(timeout=SQLITE_BUSY_SECONDS))
        return engine
    return create_engine(url, pool_pre_ping=True)


def _take_turns(engine: Engine, turns: WriterTurns) -> None:
    """Each transaction waits for its connection's turn, then takes SQLite's write lock; the turn
    passes on when the connection goes back to the pool (after the COMMIT or ROLLBACK, so the
    next writer finds the lock free instead of sleeping in the busy handler)."""
    def begin(connection: Connection) -> None:
        turns.take(connection.connection.dbapi_connection)
        _sqlite_begin_immediate(connection)

    event.listen(engine, "begin", begin)
    event.listen(engine, "checkin", lambda dbapi_connection, _record: turns.give_back(dbapi_connection))
    event.listen(engine, "invalidate", lambda dbapi_connection, _record, _error: turns.give_back(dbapi_connection))


def _ensure_sqlite_folder(url: str) -> None:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(connection: object, _record: object) -> None:
    connection.isolation_level = None  # type: ignore[attr-defined]  # SQLAlchemy emits BEGIN itself
    cursor = connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_MIB * 1024}")  # negative: in KiB, not pages
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
    # A batch runs in one savepoint, and SQLite keeps each page it changes first in a statement
    # journal: past 64 KiB that went to a temporary file, two write calls per page (~1,600 calls
    # a second in a backlog). In memory it costs the batch's changed pages, a few MiB.
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    """Take SQLite's write lock when a transaction starts, not at its first write.

    A deferred transaction that reads and then writes fails at once with "database is
    locked" when another connection committed in between (its snapshot is stale, and the
    busy timeout cannot help); BEGIN IMMEDIATE makes writers queue on the busy timeout.
    """
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to this version's head (what `maildesk db upgrade` runs)."""
    from alembic import command  # only here: importing Alembic takes a third of a short command's time

    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def check_ready(engine: Engine) -> None:
    """Raise DatabaseNotReady unless the schema is at SCHEMA_HEAD.

    Read with one query, not through Alembic: every command checks this, `maildesk ingest` for
    each mail an MTA pipes in among them, and importing Alembic (and the migration scripts it
    reads to find the head) was a third of such a process's time.
    """
    with engine.connect() as connection:
        current = _schema_revision(connection)
    if current != SCHEMA_HEAD:
        state = "empty" if current is None else f"at revision {current}, this maildesk needs {SCHEMA_HEAD}"
        raise DatabaseNotReady(f"the database is {state}: run `maildesk db upgrade`")


def _schema_revision(connection: Connection) -> str | None:
    """The revision Alembic last migrated the database to; None for an empty database."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One session, committed on success and rolled back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# Built once: SQLAlchemy then finds each in its compiled cache without building it per call.
_USER_BY_ADDRESS = select(User.__table__).where(User.__table__.c.address == bindparam("address"))  # type: ignore[attr-defined]
_TICKET_BY_KEY = select(Ticket.__table__).where(Ticket.__table__.c.key == bindparam("key"))  # type: ignore[attr-defined]


def find_user(address: str, *, session: Session) -> User | None:
    """The user with this address (case-insensitive); cached for the session's transaction,
    because one mail looks the same people up many times. Read as `find_ticket` reads."""
    address = address.lower()
    cache: dict[str, User | None] = session.info.setdefault("users", {})
    if address not in cache:
        cache[address] = _row_object(User, _USER_BY_ADDRESS, {"address": address}, session=session)
    return cache[address]


def preload_users(addresses: Iterable[str], *, session: Session) -> None:
    """Look up a batch's senders in one query (and remember who is unknown), before the mails
    ask for them one by one."""
    cache: dict[str, User | None] = session.info.setdefault("users", {})
    wanted = sorted({address.lower() for address in addresses if address} - cache.keys())
    if not wanted:
        return
    _flush_new(User, session=session)
    found = {row.address: rows.persistent(User, row._asdict(), session=session) for row in rows.typed_rows(
        _users_statement(len(wanted)), rows.numbered_values("address", wanted), session=session)}
    cache.update({address: found.get(address) for address in wanted})


@functools.lru_cache(maxsize=None)  # one per batch size: a few hundred at most
def _users_statement(count: int) -> Any:
    """The users with any of `count` addresses (read through `rows`, as `_row_object` reads)."""
    users = User.__table__  # type: ignore[attr-defined]
    return select(users).where(users.c.address.in_(rows.numbered("address", count, users.c.address.type)))


def forget_users(*, session: Session) -> None:
    """Drop the session's user cache (after users were added or changed in it)."""
    session.info.pop("users", None)
    session.info.pop("agents", None)


def forget_cached(*, session: Session) -> None:
    """Drop every lookup cache of the session (after a savepoint was rolled back)."""
    forget_users(session=session)
    for name in ("tickets", "organisations", "levels", "parsed_levels", "closed_days"):
        session.info.pop(name, None)


def organisation(organisation_id: int | None, *, session: Session) -> Organisation | None:
    """The organisation with this id, held for the session: the identity map keeps rows only
    while someone references them, and one mail asks for the same few many times."""
    if organisation_id is None:
        return None
    cache: dict[int, Organisation | None] = session.info.setdefault("organisations", {})
    if organisation_id not in cache:
        cache[organisation_id] = session.get(Organisation, organisation_id)
    return cache[organisation_id]


def find_organisation(name: str, *, session: Session) -> Organisation | None:
    return session.exec(select(Organisation).where(func.lower(Organisation.name) == name.lower())).scalars().first()  # type: ignore[call-overload]


def find_ticket(key: str, *, session: Session) -> Ticket | None:
    """The ticket with this key; found tickets are remembered for the session (routing and
    handling look the same one up), a miss is not (a batch may create that ticket next).

    Read through `rows` (`_row_object`), not by an ORM query.
    """
    found: dict[str, Ticket] = session.info.setdefault("tickets", {})
    key = key.upper()
    if key not in found:
        ticket = _row_object(Ticket, _TICKET_BY_KEY, {"key": key}, session=session)
        if ticket is None:
            return None
        found[key] = ticket
    return found[key]


def _row_object(model: type[Model], statement: Any, values: dict[str, Any], *, session: Session) -> Model | None:
    """The object of the first row of `statement`, read through `rows` and joined to the session.

    Half the cost of an ORM query, and no autoflush: the tickets a batch changes are saved
    once at its end instead of before every lookup.
    """
    _flush_new(model, session=session)
    found = rows.typed_rows(statement, values, session=session)
    return rows.persistent(model, found[0]._asdict(), session=session) if found else None


def _flush_new(model: type[Model], *, session: Session) -> None:
    """Flush when an object of `model` was added to the session and not yet written: a lookup
    through `rows` sees only written rows, and an ORM query would have flushed it first."""
    if any(isinstance(pending, model) for pending in session.new):
        session.flush()


def remember_ticket(ticket: Ticket, *, session: Session) -> None:
    """A ticket created in this session: a reply later in the same batch finds it without a query."""
    session.info.setdefault("tickets", {})[ticket.key.upper()] = ticket


def ticket_key_by_message_ids(message_ids: Sequence[str], *, session: Session) -> str | None:
    """The key of the ticket whose thread holds the first of these Message-IDs."""
    for message_id in message_ids:
        row = session.exec(select(Ticket.key).join(Message, Message.ticket_id == Ticket.id)  # type: ignore[call-overload]
                           .where(Message.message_id == message_id).limit(1)).first()
        if row:
            return row[0]
    return None


def agents(*, session: Session) -> list[User]:
    if "agents" not in session.info:
        session.info["agents"] = list(session.exec(select(User).where(User.role.in_(("agent", "admin")))  # type: ignore[call-overload]
                                                   .order_by(User.id)).scalars())
    return list(session.info["agents"])


def responsible_representatives(organisation_id: int | None, *, session: Session) -> list[User]:
    if organisation_id is None:
        return []
    query = (select(User).where(User.organisation_id == organisation_id, User.responsible.is_(True),  # type: ignore[attr-defined]
                                User.role == "customer").order_by(User.id))
    return list(session.exec(query).scalars())  # type: ignore[call-overload]


def add_event(*, session: Session, ticket_id: int | None, at: datetime, actor: str, command: str,
              from_status: str = "", to_status: str = "", outcome: str = "applied", reason: str = "") -> None:
    rows.insert_one(Event, dict(ticket_id=ticket_id, at=at, actor=actor, command=command[:300],
                                from_status=from_status, to_status=to_status, outcome=outcome, reason=reason),
                    session=session)
