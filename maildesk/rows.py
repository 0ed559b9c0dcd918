"""The pipeline's hot statements, compiled once per dialect and run on the DBAPI cursor.

Where it sits in the flow: `store` and `process` write every mail's events, messages, outbox
rows and inbox state through here, in the caller's transaction (the session's own connection,
so savepoints and commits cover these rows like any other).

Why: SQLAlchemy spends 100-300 µs building, caching and executing one statement; sqlite3
itself needs under 10 µs for the same INSERT, and a mail writes six to ten rows. The SQL text
and the columns' bind processors still come from SQLAlchemy (the tables in `models`, the
`UTCDateTime` conversion, each dialect's parameter style), so the stored values are exactly
what the ORM would store and the SQL stays portable between SQLite and PostgreSQL.

A row the pipeline then changes through the ORM (a ticket) becomes an object with
`persistent`, as a query would have made it, without the query's ORM machinery.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, SQLModel

Model = TypeVar("Model", bound=SQLModel)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the parameters in the order the SQL text expects them
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool  # sqlite3 takes a sequence ("?"), psycopg a mapping ("%(name)s")
    defaults: Mapping[str, Any]  # the values of parameters the statement itself fixed (its literals)
    returning: bool  # the new id comes back as a row (PostgreSQL), not as sqlite3's lastrowid


@dataclass(frozen=True)
class _Prepared:
    """A module-level statement with its compiled form and the shape of the rows it returns."""

    statement: Any  # kept, so that its id is never reused while the entry exists
    compiled: _Compiled
    row: Any  # a named tuple class of the returned columns
    converters: tuple[Callable[[Any], Any] | None, ...]  # each returned column's result processor


_CACHE: dict[tuple[str, str, str, tuple[str, ...]], _Compiled] = {}
_PREPARED: dict[tuple[str, int], _Prepared] = {}


def insert_one(model: type[SQLModel], values: Mapping[str, Any], *, session: Session) -> int:
    """INSERT one row with the columns given in `values`; returns the new id."""
    connection, cursor = _cursor(session)
    compiled = _compiled("insert", _table(model), tuple(values), connection.dialect)
    try:
        cursor.execute(compiled.sql, _parameters(compiled, values))
        return int(cursor.fetchone()[0] if compiled.returning else cursor.lastrowid)
    except connection.dialect.loaded_dbapi.Error as error:
        raise _translated(connection, compiled.sql, error) from error
    finally:
        cursor.close()


def insert_many(model: type[SQLModel], rows: Sequence[Mapping[str, Any]], *, session: Session) -> None:
    """INSERT rows that all give the same columns, in one executemany; no ids come back."""
    if not rows:
        return
    connection, cursor = _cursor(session)
    compiled = _compiled("insert-many", _table(model), tuple(rows[0]), connection.dialect)
    try:
        cursor.executemany(compiled.sql, [_parameters(compiled, values) for values in rows])
    except connection.dialect.loaded_dbapi.Error as error:
        raise _translated(connection, compiled.sql, error) from error
    finally:
        cursor.close()


def update_by_id(model: type[SQLModel], row_id: int, values: Mapping[str, Any], *, session: Session) -> int:
    """UPDATE the columns given in `values` of one row; returns the number of rows changed."""
    connection, cursor = _cursor(session)
    compiled = _compiled("update", _table(model), tuple(values), connection.dialect)
    try:
        cursor.execute(compiled.sql, _parameters(compiled, {**values, "row_id": row_id}))
        return int(cursor.rowcount)
    except connection.dialect.loaded_dbapi.Error as error:
        raise _translated(connection, compiled.sql, error) from error
    finally:
        cursor.close()


def first_row(statement: Any, values: Mapping[str, Any], *, session: Session) -> tuple[Any, ...] | None:
    """The first row of a prepared SELECT (a module-level statement with named `bindparam`s).

    Values come back as the driver gives them: use it for counts and ids, not for datetimes.
    """
    return _run_prepared(statement, values, session=session, fetch=lambda cursor: cursor.fetchone())


def all_rows(statement: Any, values: Mapping[str, Any], *, session: Session) -> list[tuple[Any, ...]]:
    """Every row of a prepared statement (a SELECT, or a DML with RETURNING) that outlives
    the call: it is compiled once, under the statement's id. Values as the driver gives them."""
    return _run_prepared(statement, values, session=session, fetch=lambda cursor: cursor.fetchall()) or []


def typed_rows(statement: Any, values: Mapping[str, Any], *, session: Session) -> list[Any]:
    """Every row of a prepared statement as a named tuple of its columns, each value converted
    by its column's type as a SQLAlchemy result would be (datetimes as datetimes)."""
    found = all_rows(statement, values, session=session)
    if not found:
        return []
    prepared = _prepared(statement, session.get_bind().dialect)
    return [prepared.row._make([value if convert is None else convert(value)
                                for value, convert in zip(row, prepared.converters)]) for row in found]


def new_object(model: type[Model], values: Mapping[str, Any]) -> Model:
    """A transient `model` object with `values` over the model's defaults, built as a query
    builds the objects it loads: without SQLModel's validation, which takes ~300 µs for a
    ticket's 40 fields. For values our own code or the database gives; a required field
    missing from them is still an error."""
    defaults, required = _defaults(model)
    missing = required - values.keys()
    if missing:
        raise TypeError(f"{model.__name__} needs {', '.join(sorted(missing))}")
    instance: Model = model._sa_class_manager.new_instance()  # type: ignore[attr-defined]
    instance.__dict__.update(defaults)
    instance.__dict__.update(values)
    return instance


def persistent(model: type[Model], values: Mapping[str, Any], *, session: Session) -> Model:
    """The session's object for a row read through this module (`typed_rows(...)._asdict()`):
    the one the session already holds under that id, as a query would return it, or a new one
    joined to the session as if a query had loaded it (`make_transient_to_detached`, no SQL)."""
    known = session.identity_map.get(identity_key(model, values["id"]))
    if known is not None:
        return known  # type: ignore[return-value]
    instance = new_object(model, values)
    make_transient_to_detached(instance)
    session.add(instance)
    return instance


@functools.cache
def _defaults(model: type[SQLModel]) -> tuple[dict[str, Any], frozenset[str]]:
    """Each column's default (none of the models uses a default factory) and the required ones."""
    defaults: dict[str, Any] = {}
    required: set[str] = set()
    for name, field in model.model_fields.items():
        if field.default_factory is not None:
            raise TypeError(f"{model.__name__}.{name} has a default factory; new_object cannot build it")
        if field.is_required():
            required.add(name)
        else:
            defaults[name] = field.default
    return defaults, frozenset(required)


def numbered(name: str, count: int, type_: Any) -> list[Any]:
    """Parameters `name_0` .. `name_{count-1}` for the IN list of a prepared statement, whose SQL
    is fixed when compiled (SQLAlchemy's expanding IN would be rewritten per call)."""
    return [bindparam(f"{name}_{number}", type_=type_) for number in range(count)]


def numbered_values(name: str, values: Sequence[Any]) -> dict[str, Any]:
    """The values for `numbered(name, len(values), ...)`."""
    return {f"{name}_{number}": value for number, value in enumerate(values)}


def _run_prepared(statement: Any, values: Mapping[str, Any], *, session: Session,
                  fetch: Callable[[Any], Any]) -> Any:
    connection, cursor = _cursor(session)
    compiled = _prepared(statement, connection.dialect).compiled
    try:
        cursor.execute(compiled.sql, _parameters(compiled, {**compiled.defaults, **values}))
        found = fetch(cursor)
    except connection.dialect.loaded_dbapi.Error as error:
        raise _translated(connection, compiled.sql, error) from error
    finally:
        cursor.close()
    if isinstance(found, list):
        return [tuple(row) for row in found]
    return tuple(found) if found is not None else None


def _prepared(statement: Any, dialect: Dialect) -> _Prepared:
    key = (dialect.name, id(statement))
    known = _PREPARED.get(key)
    if known is None or known.statement is not statement:  # the statement is kept, so its id is never reused
        columns = list(statement.exported_columns)
        known = _PREPARED[key] = _Prepared(
            statement, _prepare(statement.compile(dialect=dialect), dialect),
            namedtuple("Row", [column.key for column in columns], rename=True),  # type: ignore[misc]
            tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns))
    return known


def _compiled(kind: str, table: Table, names: tuple[str, ...], dialect: Dialect) -> _Compiled:
    key = (kind, dialect.name, table.name, names)
    if key not in _CACHE:
        if kind == "insert-many":
            statement: Any = insert(table)
        elif kind == "insert":
            statement = insert(table)
            if dialect.name != "sqlite":  # sqlite3 has lastrowid; the others say RETURNING
                statement = statement.returning(table.c.id)
        else:
            statement = update(table).where(table.c.id == bindparam("row_id", type_=table.c.id.type))
        _CACHE[key] = _prepare(statement.compile(dialect=dialect, column_keys=list(names)), dialect)
    return _CACHE[key]


def _prepare(compiled: Any, dialect: Dialect) -> _Compiled:
    """The SQL text, its parameters in order and each one's bind processor (from its column's type)."""
    order = tuple(compiled.positiontup) if compiled.positional else tuple(compiled.binds)
    binds = [compiled.binds[name] for name in order]
    processors = tuple(bind.type.dialect_impl(dialect).bind_processor(dialect) for bind in binds)
    defaults = {name: bind.value for name, bind in zip(order, binds) if not bind.required}
    sql = str(compiled)
    if "POSTCOMPILE" in sql:
        raise ValueError(f"a prepared statement takes no expanding IN list (use rows.numbered): {sql}")
    return _Compiled(sql, order, processors, bool(compiled.positional), defaults, " RETURNING " in sql)


def _table(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined, no-any-return]


def _parameters(compiled: _Compiled, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
    converted = [value if process is None else process(value)
                 for value, process in zip((values[name] for name in compiled.names), compiled.processors)]
    return converted if compiled.positional else dict(zip(compiled.names, converted))


def _translated(connection: Connection, sql: str, error: Exception) -> DBAPIError:
    """A driver error as SQLAlchemy's (IntegrityError and the rest), as callers already expect.

    Each statement says `except ... raise _translated(...)` itself: a shared context manager
    cost a generator per row (with the other changes of 5696298, insert_one 42.6 -> 30-33 µs)."""
    return DBAPIError.instance(sql, None, error, connection.dialect.loaded_dbapi.Error)  # type: ignore[no-any-return]


def _cursor(session: Session) -> tuple[Connection, Any]:
    """A cursor on the session's connection, inside its transaction and savepoints.

    The connection is remembered per innermost transaction: `session.connection()` costs
    20 µs a row, but it is also what makes a savepoint begun with `begin_nested()` emit its
    SAVEPOINT, so it is asked again in each new one. Remembered per root transaction, the
    rows of a mail handled in its own savepoint stayed when that savepoint was rolled back.

    Pending ORM changes are not flushed first: the rows written here depend on no pending ORM
    row (tickets and users are flushed when created), and an early flush would send a ticket's
    UPDATE once per row written instead of once per mail.
    """
    known = session.info.get("rows_connection")
    if known is not None and known[0] is _innermost_transaction(session):
        connection = known[1]
    else:
        connection = session.connection()  # begins the transaction (or the savepoint) if not yet begun
        session.info["rows_connection"] = (_innermost_transaction(session), connection)
    return connection, connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _innermost_transaction(session: Session) -> Any:
    """The savepoint in progress, else the transaction, else None."""
    return session.get_nested_transaction() or session.get_transaction()
