"""Slack delivery keys: each request body is handled once (retries and replays dropped)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection
from sqlmodel import Session

from storage.repositories._sql import _prepared
from storage.tables import SlackDelivery


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
