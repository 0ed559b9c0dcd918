"""Organisations and users, as the admin manages them from the command line."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlmodel import Session

from maildesk import store
from maildesk.models import Organisation, User


class DirectoryError(ValueError):
    """An admin request that cannot be done; the message says why."""


def add_organisation(name: str, *, session: Session, domains: list[str], language: str | None,
                     service_level: str | None) -> Organisation:
    if store.find_organisation(name, session=session):
        raise DirectoryError(f"organisation {name!r} already exists")
    organisation = Organisation(name=name.strip(), domains=" ".join(domain.lower().strip() for domain in domains),
                                language=language, service_level=service_level)
    session.add(organisation)
    session.flush()
    return organisation


def add_user(address: str, *, session: Session, name: str, now: datetime, organisation: str | None,
             agent: bool, responsible: bool, language: str | None) -> User:
    address = address.strip().lower()
    if "@" not in address or address.startswith("@") or address.endswith("@"):
        raise DirectoryError(f"{address!r} is not a mail address")
    if store.find_user(address, session=session):
        raise DirectoryError(f"user {address} already exists")
    if agent == bool(organisation):
        raise DirectoryError("give either --org NAME (a customer) or --agent")
    if agent and responsible:
        raise DirectoryError("--responsible applies to customers only")
    organisation_id = None
    if organisation:
        row = store.find_organisation(organisation, session=session)
        if row is None:
            raise DirectoryError(f"no organisation {organisation!r}: add it with `maildesk org add`")
        organisation_id = row.id
    user = User(address=address, name=name.strip(), role="agent" if agent else "customer",
                organisation_id=organisation_id, responsible=responsible, language=language, created_at=now)
    session.add(user)
    session.flush()
    store.forget_users(session=session)
    return user


def list_users(*, session: Session) -> list[tuple[User, str | None]]:
    query = (select(User, Organisation.name).outerjoin(Organisation, User.organisation_id == Organisation.id)
             .order_by(User.id))
    return [(user, organisation) for user, organisation in session.execute(query)]
