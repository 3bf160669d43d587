"""Small durable facts (the ``setting`` table): a key, a value, and a compare-and-set."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session

from storage.repositories._sql import _insert, _inserted
from storage.tables import Setting


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
