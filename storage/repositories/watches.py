"""Watches of snapshots and creates the bot started, until their terminal state is reported."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlmodel import Session

from storage.tables import Watch


def add_watch(session: Session, watch: Watch) -> Watch:
    session.add(watch)
    session.flush()
    return watch


def active_watches(
    session: Session, *, kind: str | None = None, kinds: tuple[str, ...] = ()
) -> list[Watch]:
    query = select(Watch).where(Watch.state == "watching")
    if kind:
        query = query.where(Watch.kind == kind)
    if kinds:
        query = query.where(Watch.kind.in_(kinds))
    return list(session.execute(query.order_by(Watch.id)).scalars())


def snapshot_watch(session: Session, *, snapshot_id: int) -> Watch | None:
    """The watch of a snapshot the bot created, if there is one (finished or not)."""
    return (
        session.execute(
            select(Watch).where(Watch.kind == "snapshot", Watch.snapshot_id == snapshot_id)
        )
        .scalars()
        .first()
    )


def note_watch_status(session: Session, *, watch_id: int, status: str, now: datetime) -> None:
    session.execute(
        update(Watch)
        .where(Watch.id == watch_id, Watch.state == "watching")
        .values(last_status=status, last_seen_at=now)
    )


def finish_watch(
    session: Session,
    *,
    watch_id: int,
    final_status: str,
    now: datetime,
    size_mb: int | None = None,
) -> bool:
    """Claim the report of a terminal state; only one caller ever wins it."""
    result = session.execute(
        update(Watch)
        .where(Watch.id == watch_id, Watch.state == "watching")
        .values(state="done", final_status=final_status, finished_at=now, size_mb=size_mb)
    )
    return result.rowcount == 1
