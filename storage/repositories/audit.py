"""The audit chain: one appender that takes the chain lock, and its readers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Engine, String, bindparam, func, select, type_coerce, update
from sqlmodel import Session

from bot.core import audit_chain
from storage.repositories._sql import _prepared
from storage.tables import AuditEvent, AuditHead


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
