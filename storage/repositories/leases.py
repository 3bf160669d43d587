"""Named leases: which process does the background duties (bot.watcher.LEASE_NAME) now."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session

from storage.repositories._sql import _insert
from storage.tables import Lease


def acquire_lease(
    session: Session, *, name: str, owner: str, now: datetime, ttl: timedelta
) -> bool:
    """Take or renew the lease; True while ``owner`` holds it."""
    session.execute(
        _insert(session, Lease)
        .values(name=name, owner="", expires_at=now - timedelta(days=1))
        .on_conflict_do_nothing()
    )
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, or_(Lease.owner == owner, Lease.expires_at < now))
        .values(owner=owner, expires_at=now + ttl)
    )
    return result.rowcount == 1


def release_lease(session: Session, *, name: str, owner: str, now: datetime) -> bool:
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == owner)
        .values(owner="", expires_at=now - timedelta(seconds=1))
    )
    return result.rowcount == 1


def lease_holder(session: Session, *, name: str, now: datetime) -> str | None:
    row = session.get(Lease, name)
    if row is None or not row.owner or row.expires_at < now:
        return None
    return row.owner
