"""The job queue: the ack's one write, claims by lease, progress, finishing, purging."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import Connection, bindparam, func, or_, select, update
from sqlmodel import Session

from storage.repositories._sql import _prepared
from storage.repositories.deliveries import record_delivery
from storage.tables import Job


def accept_job(
    conn: Connection,
    *,
    delivery_key: str | None,
    kind: str,
    payload: dict,
    owner: str,
    now: datetime,
    lease: timedelta,
) -> int | None:
    """The ack's one write: the request's delivery key and its job, in the caller's
    transaction; None (and nothing stored) for a body seen before. Prepared Core
    statements on a bare connection, not the ORM: this runs before every ack, under
    the write lock, so its CPU is the ack's."""
    if delivery_key is not None and not record_delivery(conn, key=delivery_key, now=now):
        return None
    return _new_job(
        conn,
        {
            "kind": kind,
            "payload": json.dumps(payload, separators=(",", ":")),
            "progress": "{}",
            "state": "queued",
            "owner": owner,
            "lease_until": now + lease,
            "attempts": 0,
            "created_at": now,
            "error": "",
        },
    ).scalar_one()


_new_job = _prepared(lambda d: d.insert(Job.__table__).returning(Job.__table__.c.id))


def claim_job(
    session: Session, *, job_id: int, owner: str, now: datetime, lease: timedelta
) -> ClaimedJob | None:
    """Start a job: a queued one (ours, unowned, or one whose lease lapsed), or a
    running one whose worker died. The handler sees ``attempts`` and its saved
    ``progress``. The web process queues its jobs unowned (owner ''): the first job
    worker to claim one runs it."""
    row = _claim_job(
        session, {"b_id": job_id, "b_owner": owner, "b_now": now, "b_until": now + lease}
    ).first()
    return ClaimedJob(*row) if row is not None else None


class ClaimedJob(NamedTuple):
    id: int
    kind: str
    payload: str
    progress: str
    attempts: int
    owner: str
    created_at: datetime


def _claim_job_statement(d):
    job = Job.__table__.c
    return (
        update(Job.__table__)
        .where(
            job.id == bindparam("b_id"),
            or_(
                (job.state == "queued")
                & (
                    (job.owner == bindparam("b_owner"))
                    | (job.owner == "")
                    | (job.lease_until < bindparam("b_now"))
                ),
                (job.state == "running")
                & (
                    (job.lease_until < bindparam("b_now"))
                    # Ours already: a retried claim whose first commit was lost with its
                    # connection (one thread per job per process: JobRunner._dispatched).
                    | (job.owner == bindparam("b_owner"))
                ),
            ),
        )
        .values(
            state="running",
            owner=bindparam("b_owner"),
            lease_until=bindparam("b_until"),
            attempts=job.attempts + 1,
        )
        .returning(
            job.id, job.kind, job.payload, job.progress, job.attempts, job.owner, job.created_at
        )
    )


_claim_job = _prepared(_claim_job_statement)


def orphaned_jobs(session: Session, *, now: datetime, limit: int = 50) -> list[int]:
    return list(
        session.execute(
            select(Job.id)
            .where(Job.state.in_(("queued", "running")), Job.lease_until < now)
            .order_by(Job.id)
            .limit(limit)
        ).scalars()
    )


def unowned_jobs(session: Session, *, limit: int) -> list[int]:
    """Queued jobs no process has taken yet, oldest first (what a job worker polls)."""
    return list(
        session.execute(
            select(Job.id)
            .where(Job.state == "queued", Job.owner == "")
            .order_by(Job.id)
            .limit(limit)
        ).scalars()
    )


def release_queued_jobs(session: Session, *, owner: str, now: datetime) -> int:
    """Hand back the jobs ``owner`` queued but never started (it is stopping): their
    lease ends now, so the next lease holder takes them at once, not in 20 s."""
    result = session.execute(
        update(Job)
        .where(Job.owner == owner, Job.state == "queued")
        .values(lease_until=now - timedelta(seconds=1))
    )
    return result.rowcount


def save_job_progress(session: Session, *, job_id: int, progress: dict) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(progress=json.dumps(progress)))


def finish_job(session: Session, *, job_id: int, now: datetime, error: str = "") -> None:
    _finish_job(
        session,
        {
            "b_id": job_id,
            "b_state": "failed" if error else "done",
            "b_now": now,
            "b_error": error[:500],
        },
    )


_finish_job = _prepared(
    lambda d: (
        update(Job.__table__)
        .where(Job.__table__.c.id == bindparam("b_id"))
        .values(
            state=bindparam("b_state"), finished_at=bindparam("b_now"), error=bindparam("b_error")
        )
    )
)


def purge_finished_jobs(session: Session, *, before: datetime) -> int:
    result = session.execute(
        Job.__table__.delete().where(Job.state.in_(("done", "failed")), Job.finished_at < before)
    )
    return result.rowcount


def count_jobs(session: Session, *, states: Sequence[str]) -> int:
    return session.execute(
        select(func.count()).select_from(Job).where(Job.state.in_(states))
    ).scalar_one()
