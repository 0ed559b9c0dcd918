"""The database tables (SQLModel). Schema changes go through Alembic (maildesk/migrations).

Datetimes are timezone-aware UTC in Python and stored as naive UTC, the same on SQLite and
PostgreSQL. Ticket ids come from an autoincrement that never reuses a value, so the key
`SD-<id>` is never reused either.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

NAIVE_DATETIME = "naive datetime given to the database; use UTC-aware datetimes"
# SQLAlchemy's text form of a datetime on SQLite (`sqlite.DATETIME`'s default storage format),
# and the same with positional fields, which formats three times faster than through a dict.
SQLITE_DATETIME_FORMAT = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
SQLITE_DATETIME_TEXT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(NAIVE_DATETIME)
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        """On SQLite, `process_bind_param` and SQLAlchemy's text form in one step: composed, the
        two took a sixth of the time `rows.insert_one` spends on a row (a ticket has a dozen)."""
        if dialect.name != "sqlite" or getattr(self.impl_instance.dialect_impl(dialect), "_storage_format",
                                               None) != SQLITE_DATETIME_FORMAT:
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError(NAIVE_DATETIME)
            if value.tzinfo is not timezone.utc:
                value = value.astimezone(timezone.utc)
            return SQLITE_DATETIME_TEXT % (value.year, value.month, value.day, value.hour, value.minute,
                                           value.second, value.microsecond)
        return process


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _when(nullable: bool = False, index: bool = False) -> object:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


class Organisation(SQLModel, table=True):
    __tablename__ = "organisations"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=200)
    domains: str = Field(default="", max_length=1000, description="space-separated mail domains")
    language: str | None = Field(default=None, max_length=2)
    service_level: str | None = Field(default=None, max_length=100)


class User(SQLModel, table=True):
    """A person known by mail address; addresses are stored lower-cased (case-insensitive)."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(unique=True, max_length=320)
    name: str = Field(default="", max_length=200)
    role: str = Field(default="customer", max_length=20)
    organisation_id: int | None = Field(default=None, foreign_key="organisations.id", index=True)
    responsible: bool = Field(default=False)
    language: str | None = Field(default=None, max_length=2)
    created_at: datetime = _when()  # type: ignore[assignment]


class Ticket(SQLModel, table=True):
    __tablename__ = "tickets"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=30)
    type: str = Field(default="Service Request", max_length=100)
    summary: str = Field(default="", sa_column=Column(Text, nullable=False))
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    status: str = Field(default="OPEN", max_length=30, index=True)
    reporter: str = Field(max_length=320, index=True)
    organisation_id: int | None = Field(default=None, foreign_key="organisations.id", index=True)
    agent: str | None = Field(default=None, max_length=320)
    assignee: str | None = Field(default=None, max_length=320)
    holder: str = Field(default="agents", max_length=20)
    estimate_minutes: int | None = Field(default=None)
    estimate_version: int = Field(default=0, description="bumped on every estimate: voids older approvals")
    due_date: date | None = Field(default=None)
    channel: str = Field(default="email", max_length=10)
    thread_id: str = Field(default="", max_length=500, description="Message-ID that started the thread")
    created_at: datetime = _when()  # type: ignore[assignment]
    updated_at: datetime = _when()  # type: ignore[assignment]
    status_changed_at: datetime = _when()  # type: ignore[assignment]
    # Service-level clocks (maildesk.timers): anchors, due times, and "done at" marks that make
    # every warning, reminder and breach happen once. Times are recomputed from the anchors.
    first_response_due_at: datetime | None = _when(nullable=True, index=True)  # type: ignore[assignment]
    first_response_warn_at: datetime | None = _when(nullable=True, index=True)  # type: ignore[assignment]
    first_response_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    first_response_warned_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    first_response_breached_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    estimate_accepted_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    work_start_due_at: datetime | None = _when(nullable=True, index=True)  # type: ignore[assignment]
    work_start_warn_at: datetime | None = _when(nullable=True, index=True)  # type: ignore[assignment]
    work_started_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    work_start_warned_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    work_start_breached_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    acceptance_started_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    acceptance_due_at: datetime | None = _when(nullable=True, index=True)  # type: ignore[assignment]
    reminder_due_at: datetime | None = _when(nullable=True, index=True)  # type: ignore[assignment]
    reminder_sent_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]


class InboxItem(SQLModel, table=True):
    """An incoming mail, saved before anything else happens, and how far it got; its bytes are an `InboxRaw`."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_state_id", "state", "id"),
                      Index("ix_inbox_sender_received", "sender", "received_at"))  # the circuit breaker's count

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = _when()  # type: ignore[assignment]
    source: str = Field(default="pipe", max_length=20)
    sha256: str = Field(unique=True, max_length=64)
    message_id: str = Field(default="", max_length=1000)
    size: int = Field(default=0)
    state: str = Field(default="new", max_length=20)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    attempts: int = Field(default=0)
    claimed_by: str | None = Field(default=None, max_length=100)
    claimed_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    processed_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    ticket_id: int | None = Field(default=None, foreign_key="tickets.id")
    sender: str = Field(default="", max_length=320)


class InboxRaw(SQLModel, table=True):
    """The raw bytes of an inbox row, apart from it: SQLite rewrites a whole row, blob and all, on
    every UPDATE, and an inbox row changes state at least twice (claimed, then processed)."""

    __tablename__ = "inbox_raw"

    inbox_id: int = Field(foreign_key="inbox.id", primary_key=True)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Message(SQLModel, table=True):
    """Every mail in and out of a ticket: the thread as agents and customers saw it."""

    __tablename__ = "messages"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="tickets.id", index=True)
    direction: str = Field(max_length=3)
    message_id: str = Field(default="", max_length=1000, index=True)
    in_reply_to: str = Field(default="", max_length=1000)
    sender: str = Field(default="", max_length=320)
    subject: str = Field(default="", sa_column=Column(Text, nullable=False))
    new_text: str = Field(default="", sa_column=Column(Text, nullable=False))
    full_text: str = Field(default="", sa_column=Column(Text, nullable=False))
    internal: bool = Field(default=False)
    unverified: bool = Field(default=False, description="a command in it could not be verified as the sender's")
    inbox_id: int | None = Field(default=None, foreign_key="inbox.id")
    outbox_id: int | None = Field(default=None, foreign_key="outbox.id")
    created_at: datetime = _when()  # type: ignore[assignment]


class Attachment(SQLModel, table=True):
    """An attached file, stored under a generated name; the sender's name is data only."""

    __tablename__ = "attachments"

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="messages.id", index=True)
    filename: str = Field(default="", max_length=300)
    content_type: str = Field(default="application/octet-stream", max_length=200)
    size: int = Field(default=0)
    sha256: str = Field(max_length=64)
    stored_name: str = Field(max_length=100)


class Event(SQLModel, table=True):
    """The audit log: every transition, every refused command, every notable outcome."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="tickets.id", index=True)
    at: datetime = _when()  # type: ignore[assignment]
    actor: str = Field(default="", max_length=320)
    command: str = Field(default="", max_length=300)
    from_status: str = Field(default="", max_length=30)
    to_status: str = Field(default="", max_length=30)
    outcome: str = Field(default="applied", max_length=20)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))


class OutboxItem(SQLModel, table=True):
    """A rendered mail waiting to be sent; written in the transaction of its cause."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_due", "status", "next_attempt_at"),
                      Index("ix_outbox_to_template_created", "to_addresses", "template", "created_at"))  # rate limits

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="tickets.id", index=True)
    message_id: str = Field(unique=True, max_length=500)
    in_reply_to: str = Field(default="", max_length=1000)
    references: str = Field(default="", sa_column=Column(Text, nullable=False))
    to_addresses: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    reply_to: str = Field(default="", max_length=320)
    subject: str = Field(default="", max_length=300)
    template: str = Field(default="", max_length=100)
    language: str = Field(default="lv", max_length=2)
    body_text: str = Field(default="", sa_column=Column(Text, nullable=False))
    body_html: str = Field(default="", sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", max_length=20)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = _when()  # type: ignore[assignment]
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False))
    recipient_results: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    claimed_by: str | None = Field(default=None, max_length=100)
    claimed_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    sent_at: datetime | None = _when(nullable=True)  # type: ignore[assignment]
    created_at: datetime = _when()  # type: ignore[assignment]


class ImapCursor(SQLModel, table=True):
    """How far the IMAP poller got in a folder: UIDs are only meaningful per UIDVALIDITY."""

    __tablename__ = "imap_cursors"

    folder: str = Field(primary_key=True, max_length=300)
    uidvalidity: int = Field(default=0, sa_type=BigInteger)
    last_uid: int = Field(default=0, sa_type=BigInteger)


class ConsumedToken(SQLModel, table=True):
    """A reply token that already approved something: a replay of it is a no-op."""

    __tablename__ = "consumed_tokens"

    token: str = Field(primary_key=True, max_length=200)
    ticket_id: int = Field(foreign_key="tickets.id")
    inbox_id: int | None = Field(default=None, foreign_key="inbox.id")
    at: datetime = _when()  # type: ignore[assignment]


class ServiceLevel(SQLModel, table=True):
    """What an organisation is promised: durations in business time, and the calendar they count in."""

    __tablename__ = "service_levels"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    first_response: str = Field(default="4h", max_length=20, description="e.g. 4h: business time")
    work_start: str = Field(default="2d", max_length=20, description="after ESTIMATE ACCEPTED")
    acceptance_term: str = Field(default="5d", max_length=20, description="WAITING FOR CUSTOMER until auto-close")
    hours: str = Field(default="Mon-Fri 09:00-17:00", max_length=200)
    timezone: str = Field(default="Europe/Riga", max_length=64)
    holidays: str = Field(default="LV", max_length=10, description="country code for `holidays`; empty: none")
    created_at: datetime = _when()  # type: ignore[assignment]


class ClosedDay(SQLModel, table=True):
    """A day the desk is closed besides public holidays (every service level's calendar)."""

    __tablename__ = "closed_days"

    day: date = Field(primary_key=True)
    reason: str = Field(default="", max_length=200)
    created_at: datetime = _when()  # type: ignore[assignment]
