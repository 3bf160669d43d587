"""Snapshot deletions: one claimant per snapshot calls the provider."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update
from sqlmodel import Session

from storage.repositories._sql import _insert, _inserted
from storage.tables import SnapshotDeletion


def begin_deletion(
    session: Session, *, snapshot_id: int, by: str, now: datetime, stale_before: datetime
) -> SnapshotDeletion | None:
    """Claim the deletion of a snapshot: None when this caller won and may call the
    provider, else the row of the deletion that got there first. A failed deletion,
    or one left ``deleting`` since before ``stale_before`` (its process died), may be
    claimed again; the conditional update lets one claimant through."""
    values = dict(state="deleting", deleted_by=by, started_at=now, finished_at=None)
    stmt = _insert(session, SnapshotDeletion).values(snapshot_id=snapshot_id, **values)
    if _inserted(session, stmt.on_conflict_do_nothing().returning(SnapshotDeletion.snapshot_id)):
        return None
    retaken = session.execute(
        update(SnapshotDeletion)
        .where(
            SnapshotDeletion.snapshot_id == snapshot_id,
            or_(
                SnapshotDeletion.state == "failed",
                (SnapshotDeletion.state == "deleting")
                & (SnapshotDeletion.started_at < stale_before),
            ),
        )
        .values(**values)
    )
    if retaken.rowcount == 1:
        return None
    return session.execute(
        select(SnapshotDeletion).where(SnapshotDeletion.snapshot_id == snapshot_id)
    ).scalar_one()


def finish_deletion(
    session: Session, *, snapshot_id: int, by: str, deleted: bool, now: datetime
) -> None:
    session.execute(
        update(SnapshotDeletion)
        .where(
            SnapshotDeletion.snapshot_id == snapshot_id,
            SnapshotDeletion.deleted_by == by,
            SnapshotDeletion.state == "deleting",
        )
        .values(state="deleted" if deleted else "failed", finished_at=now)
    )
