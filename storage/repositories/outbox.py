"""The outbox: Slack calls that must happen, claimed, retried and settled by key."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import bindparam, func, or_, select, update
from sqlmodel import Session

from storage.repositories._sql import _prepared
from storage.tables import Outbox


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
