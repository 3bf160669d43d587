"""Intent-named queries. Only this package speaks SQL.

Every function takes the session of the caller's unit of work (storage.db.session_scope)
and keyword arguments. Exactly-once is a conditional ``UPDATE … WHERE state = …`` whose
row count decides the winner, or an insert that a unique key refuses: both hold on
SQLite (one writer at a time) and on PostgreSQL (row locks), across threads and processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    String,
    bindparam,
    cast,
    func,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from bot.core import audit_chain
from storage.tables import (
    Approval,
    AuditEvent,
    AuditHead,
    Job,
    Lease,
    Outbox,
    RestoreRequest,
    Setting,
    SlackDelivery,
    SnapshotDeletion,
    Watch,
)


def _insert(session: Session, table):
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _inserted(session: Session, stmt) -> bool:
    # INSERT … ON CONFLICT DO NOTHING RETURNING: a row back means this call inserted.
    # (rowcount is not reliable for it across drivers.)
    return session.execute(stmt).first() is not None


def _prepared(build):
    """A statement for the hot path (every command's job, message and audit row):
    built once per dialect from ``bindparam``s, then run with fresh parameters on the
    session's connection. Building, cache-keying and ORM-executing a new statement
    each time was most of a `/snapshot list` job's CPU (bench/ack_latency.py)."""
    built: dict[str, object] = {}

    def run(session: Session | Connection, params: dict):
        conn = session if isinstance(session, Connection) else session.connection()
        name = conn.dialect.name
        stmt = built.get(name)
        if stmt is None:
            stmt = built[name] = build(postgresql if name == "postgresql" else sqlite)
        return conn.execute(stmt, params)

    return run


# --- audit -------------------------------------------------------------------------


def append_audit(
    session: Session,
    *,
    now: datetime,
    action: str,
    outcome: str,
    actor: str = "",
    team: str = "",
    channel: str = "",
    target: str = "",
    detail: str = "",
    key: bytes | None = None,
) -> AppendedAudit:
    """Append one row to the chain. The UPDATE of the head row takes the chain lock
    (a row lock on PostgreSQL, the write lock on SQLite) until the caller commits, so
    ids and hashes are assigned strictly one after another. Call it last in a unit
    of work, so that no other lock is taken while it is held."""
    if outcome not in audit_chain.OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    row_id, prev = _bump_audit_head(session, {}).one()
    payload = audit_chain.canonical(
        row_id, now, team, channel, actor, action, target, outcome, detail, prev
    )
    digest = audit_chain.row_hash(payload, key)
    event = {
        "id": row_id,
        "at": now,
        "team": team,
        "channel": channel,
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "detail": detail,
        "prev_hash": prev,
        "hash": digest,
    }
    _insert_audit_event(session, event)
    _set_audit_head_hash(session, {"b_hash": digest})
    return AppendedAudit(**event)


class AppendedAudit(NamedTuple):
    id: int
    at: datetime
    team: str
    channel: str
    actor: str
    action: str
    target: str
    outcome: str
    detail: str
    prev_hash: str
    hash: str


_bump_audit_head = _prepared(
    lambda d: (
        update(AuditHead.__table__)
        .where(AuditHead.__table__.c.id == 1)
        .values(count=AuditHead.__table__.c.count + 1)
        .returning(AuditHead.__table__.c.count, AuditHead.__table__.c.hash)
    )
)
_insert_audit_event = _prepared(lambda d: d.insert(AuditEvent.__table__))
_set_audit_head_hash = _prepared(
    lambda d: (
        update(AuditHead.__table__)
        .where(AuditHead.__table__.c.id == 1)
        .values(hash=bindparam("b_hash"))
    )
)


def latest_audit(session: Session, *, limit: int) -> list[AuditEvent]:
    return list(
        session.execute(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)).scalars()
    )


def audit_hash_at(session: Session, *, row_id: int) -> str | None:
    return session.execute(
        select(AuditEvent.hash).where(AuditEvent.id == row_id)
    ).scalar_one_or_none()


def audit_head(session: Session) -> tuple[int, str]:
    count, digest = session.execute(
        select(AuditHead.count, AuditHead.hash).where(AuditHead.id == 1)
    ).one()
    return int(count), digest


AUDIT_COLUMNS = (
    AuditEvent.id,
    AuditEvent.at,
    AuditEvent.team,
    AuditEvent.channel,
    AuditEvent.actor,
    AuditEvent.action,
    AuditEvent.target,
    AuditEvent.outcome,
    AuditEvent.detail,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)


def _audit_time_text(dialect: str):
    """``at`` as UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``, read without building datetimes
    (audit_chain.format_time takes it as is): SQLite stores exactly that text; PostgreSQL
    formats it. A million rows verify several times faster this way."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", AuditEvent.at), "YYYY-MM-DD HH24:MI:SS.US")
    return type_coerce(AuditEvent.at, String)


def stream_audit_rows(
    engine: Engine,
    *,
    since: datetime | None = None,
    actor: str | None = None,
    after: int | None = None,
    upto: int | None = None,
    batch: int = 5000,
    time_as_text: bool = False,
) -> Iterator[tuple]:
    """Audit rows (with ``after`` < id <= ``upto``; without ``after``, from the very first,
    even an id the bot never assigns) in id order, fetched in pages by id so memory stays flat whatever the size of the
    table (keyset pagination, no server-side cursor; each page is a short read-only
    transaction, so writers are never held up). Returns where a caller may resume."""
    columns = list(AUDIT_COLUMNS)
    if time_as_text:
        columns[1] = _audit_time_text(engine.dialect.name)
    reader = engine.execution_options(readonly=True)
    last = after
    while True:
        query = select(*columns).order_by(AuditEvent.id).limit(batch)
        if last is not None:
            query = query.where(AuditEvent.id > last)
        if upto is not None:
            query = query.where(AuditEvent.id <= upto)
        if since is not None:
            query = query.where(AuditEvent.at >= since)
        if actor is not None:
            query = query.where(AuditEvent.actor == actor)
        with reader.connect() as conn:
            result = conn.execute(query)
            # Text and integers need no result processing: with time_as_text the
            # driver's own tuples are taken as they are (a third less time per row).
            rows = result.cursor.fetchall() if time_as_text else result.all()
            result.close()
        if not rows:
            return last
        yield from rows
        last = rows[-1][0]


# --- Slack deliveries ----------------------------------------------------------------


def record_delivery(session: Session | Connection, *, key: str, now: datetime) -> bool:
    """True the first time a request body is seen, False for a redelivery or replay."""
    return _first_delivery(session, {"key": key, "received_at": now}).first() is not None


_first_delivery = _prepared(
    lambda d: (
        d.insert(SlackDelivery.__table__)
        .on_conflict_do_nothing()
        .returning(SlackDelivery.__table__.c.key)
    )
)


def forget_deliveries(session: Session, *, before: datetime) -> int:
    result = session.execute(
        SlackDelivery.__table__.delete().where(SlackDelivery.received_at < before)
    )
    return result.rowcount


# --- leases --------------------------------------------------------------------------


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


# --- jobs ----------------------------------------------------------------------------


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


# --- restore requests ------------------------------------------------------------------


def open_restore_request(session: Session, request: RestoreRequest) -> RestoreRequest | None:
    """Store a new active request, or None when its snapshot already has one: the
    partial unique index (storage/tables.py) refuses the second of two racing inserts
    on both databases, so there is no window between a check and the insert. On
    PostgreSQL the loser waits for the winner's commit, then reads it (a new statement
    in READ COMMITTED); on SQLite the writers already take turns."""
    values = request.model_dump(exclude={"id"})
    stmt = _insert(session, RestoreRequest).values(**values).on_conflict_do_nothing()
    row_id = session.execute(stmt.returning(RestoreRequest.id)).scalar_one_or_none()
    return None if row_id is None else session.get(RestoreRequest, row_id)


def get_restore_request(
    session: Session, *, request_id: int, lock: bool = False
) -> RestoreRequest | None:
    """With ``lock``, the row stays locked until the unit of work ends (PostgreSQL
    ``FOR UPDATE``; on SQLite the immediate transaction already excludes writers), so
    deciders of one request take turns and each sees the approvals before it."""
    return session.get(
        RestoreRequest, request_id, populate_existing=True, with_for_update=lock or None
    )


def approvers_of(session: Session, *, request_id: int) -> frozenset[str]:
    return frozenset(
        session.execute(
            select(Approval.approver).where(Approval.request_id == request_id)
        ).scalars()
    )


def add_approval(session: Session, *, request_id: int, approver: str, now: datetime) -> bool:
    """False when this approver had already approved (a repeated click counts once)."""
    stmt = _insert(session, Approval).values(request_id=request_id, approver=approver, at=now)
    return _inserted(session, stmt.on_conflict_do_nothing().returning(Approval.id))


def transition_request(
    session: Session, *, request_id: int, from_states: Iterable[str], to_state: str, **values
) -> bool:
    """Move a request on only if it is still in one of ``from_states``; the row count
    says whether this caller won."""
    result = session.execute(
        update(RestoreRequest)
        .where(RestoreRequest.id == request_id, RestoreRequest.state.in_(tuple(from_states)))
        .values(state=to_state, **values)
    )
    return result.rowcount == 1


def set_request_message(session: Session, *, request_id: int, channel: str, ts: str) -> None:
    session.execute(
        update(RestoreRequest)
        .where(RestoreRequest.id == request_id)
        .values(channel=channel, message_ts=ts)
    )


def requests_in_state(
    session: Session,
    *,
    states: Iterable[str],
    before: datetime | None = None,
    column: str = "created_at",
) -> list[RestoreRequest]:
    query = select(RestoreRequest).where(RestoreRequest.state.in_(tuple(states)))
    if before is not None:
        query = query.where(getattr(RestoreRequest, column) < before)
    return list(session.execute(query.order_by(RestoreRequest.id)).scalars())


def expired_requests(session: Session, *, now: datetime) -> list[RestoreRequest]:
    return list(
        session.execute(
            select(RestoreRequest)
            .where(RestoreRequest.state == "pending", RestoreRequest.expires_at <= now)
            .order_by(RestoreRequest.id)
        ).scalars()
    )


def unposted_requests(session: Session) -> list[tuple[RestoreRequest, str]]:
    """Pending requests whose channel message Slack refused for good after the request
    was opened (it was still being retried when its requester was answered), with
    Slack's error: nobody can see or decide them."""
    key = literal("req:") + cast(RestoreRequest.id, String) + literal(":msg")
    rows = session.execute(
        select(RestoreRequest, Outbox.error)
        .join(Outbox, Outbox.key == key)
        .where(
            RestoreRequest.state == "pending",
            RestoreRequest.message_ts.is_(None),
            Outbox.state == "failed",
        )
        .order_by(RestoreRequest.id)
    ).all()
    return [(req, error or "") for req, error in rows]


def open_request_for_snapshot(session: Session, *, snapshot_id: int) -> RestoreRequest | None:
    return session.execute(
        select(RestoreRequest)
        .where(
            RestoreRequest.snapshot_id == snapshot_id,
            RestoreRequest.state.in_(("pending", "approved", "executing")),
        )
        .order_by(RestoreRequest.id.desc())
        .limit(1)
    ).scalar_one_or_none()


# --- watches ---------------------------------------------------------------------------


def add_watch(session: Session, watch: Watch) -> Watch:
    session.add(watch)
    session.flush()
    return watch


def active_watches(session: Session, *, kind: str | None = None) -> list[Watch]:
    query = select(Watch).where(Watch.state == "watching")
    if kind:
        query = query.where(Watch.kind == kind)
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


# --- outbox ----------------------------------------------------------------------------


def enqueue_message(
    session: Session, *, method: str, payload: dict, now: datetime, key: str | None = None
) -> int | None:
    """Queue a Slack call that must happen. With ``key``, queueing twice queues once."""
    values = {
        "key": key,
        "method": method,
        "payload": json.dumps(payload, separators=(",", ":")),
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "owner": "",
        "error": "",
        "created_at": now,
    }
    return _enqueue_message(session, values).scalar_one_or_none()


_enqueue_message = _prepared(
    lambda d: d.insert(Outbox.__table__).on_conflict_do_nothing().returning(Outbox.__table__.c.id)
)


def claim_message(
    session: Session, *, message_id: int, owner: str, now: datetime, lease: timedelta
) -> ClaimedMessage | None:
    row = _claim_message(
        session, {"b_id": message_id, "b_owner": owner, "b_now": now, "b_until": now + lease}
    ).first()
    return ClaimedMessage(*row) if row is not None else None


class ClaimedMessage(NamedTuple):
    id: int
    method: str
    payload: str
    attempts: int


def _claim_message_statement(d):
    msg = Outbox.__table__.c
    return (
        update(Outbox.__table__)
        .where(
            msg.id == bindparam("b_id"),
            msg.state == "pending",
            msg.next_attempt_at <= bindparam("b_now"),
            or_(msg.lease_until.is_(None), msg.lease_until < bindparam("b_now")),
        )
        .values(
            owner=bindparam("b_owner"), lease_until=bindparam("b_until"), attempts=msg.attempts + 1
        )
        .returning(msg.id, msg.method, msg.payload, msg.attempts)
    )


_claim_message = _prepared(_claim_message_statement)


def due_messages(session: Session, *, now: datetime, limit: int = 100) -> list[int]:
    return list(
        session.execute(
            select(Outbox.id)
            .where(
                Outbox.state == "pending",
                Outbox.next_attempt_at <= now,
                or_(Outbox.lease_until.is_(None), Outbox.lease_until < now),
            )
            .order_by(Outbox.id)
            .limit(limit)
        ).scalars()
    )


def mark_message_sent(session: Session, *, message_id: int, now: datetime, ts: str | None) -> None:
    _mark_message_sent(session, {"b_id": message_id, "b_now": now, "b_ts": ts})


_mark_message_sent = _prepared(
    lambda d: (
        update(Outbox.__table__)
        .where(Outbox.__table__.c.id == bindparam("b_id"))
        .values(
            state="sent", sent_at=bindparam("b_now"), result_ts=bindparam("b_ts"), lease_until=None
        )
    )
)


def mark_message_retry(
    session: Session, *, message_id: int, error: str, next_attempt_at: datetime
) -> None:
    session.execute(
        update(Outbox)
        .where(Outbox.id == message_id)
        .values(error=error[:500], next_attempt_at=next_attempt_at, lease_until=None)
    )


def defer_message(session: Session, *, message_id: int, next_attempt_at: datetime) -> None:
    """Put a claimed message back without counting the attempt (it waits for its parent)."""
    session.execute(
        update(Outbox)
        .where(Outbox.id == message_id)
        .values(next_attempt_at=next_attempt_at, lease_until=None, attempts=Outbox.attempts - 1)
    )


def mark_message_failed(session: Session, *, message_id: int, now: datetime, error: str) -> None:
    session.execute(
        update(Outbox)
        .where(Outbox.id == message_id)
        .values(state="failed", error=error[:500], sent_at=now, lease_until=None)
    )


def message_by_key(session: Session, *, key: str) -> tuple[str | None, str | None]:
    """(state, ts) of the message queued under ``key``; (None, None) when there is none."""
    row = session.execute(select(Outbox.state, Outbox.result_ts).where(Outbox.key == key)).first()
    return (row[0], row[1]) if row else (None, None)


def message_outcome(session: Session, *, key: str) -> tuple[str | None, str | None, str]:
    """(state, ts, last error) of the message queued under ``key``."""
    row = session.execute(
        select(Outbox.state, Outbox.result_ts, Outbox.error).where(Outbox.key == key)
    ).first()
    return (row[0], row[1], row[2]) if row else (None, None, "")


def count_messages(session: Session, *, state: str) -> int:
    return session.execute(
        select(func.count()).select_from(Outbox).where(Outbox.state == state)
    ).scalar_one()


# --- small durable facts -----------------------------------------------------------------


def get_setting(session: Session, *, key: str) -> str | None:
    row = session.get(Setting, key)
    return row.value if row else None


def put_setting(session: Session, *, key: str, value: str) -> None:
    session.execute(
        _insert(session, Setting)
        .values(key=key, value=value)
        .on_conflict_do_update(index_elements=["key"], set_={"value": value})
    )


def claim_setting(session: Session, *, key: str, expected: str | None, value: str) -> bool:
    """Compare-and-set, for once-a-day duties that several processes may attempt."""
    if expected is None:
        stmt = _insert(session, Setting).values(key=key, value=value)
        return _inserted(session, stmt.on_conflict_do_nothing().returning(Setting.key))
    result = session.execute(
        update(Setting).where(Setting.key == key, Setting.value == expected).values(value=value)
    )
    return result.rowcount == 1


# --- deletes -------------------------------------------------------------------------


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
