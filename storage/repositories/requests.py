"""Restore requests and their approvals (SPEC §5). The state of a request moves only
through ``transition_request``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import String, cast, literal, select, update
from sqlmodel import Session

from bot.core.approval import IllegalTransition, check_transition
from storage.repositories._sql import _insert, _inserted
from storage.tables import Approval, Outbox, RestoreRequest


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
    says whether this caller won. Every ``from -> to_state`` pair must be in
    bot.core.approval.TRANSITIONS: any other (or an unknown state, or no from-state at
    all) raises IllegalTransition before any SQL, so no caller can skip the approval."""
    from_states = tuple(from_states)
    _check_transitions(from_states, to_state)
    result = session.execute(
        update(RestoreRequest)
        .where(RestoreRequest.id == request_id, RestoreRequest.state.in_(from_states))
        .values(state=to_state, **values)
    )
    return result.rowcount == 1


def _check_transitions(from_states: tuple[str, ...], to_state: str) -> None:
    if not from_states:
        raise IllegalTransition(f"a restore request cannot go to {to_state} from no state")
    try:
        for current in from_states:
            check_transition(current, to_state)
    except IllegalTransition:
        raise
    except ValueError as exc:  # a name that is no State at all
        raise IllegalTransition(f"a restore request has no such state: {exc}") from None


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
            RestoreRequest.state.in_(("pending", "approved", "safeguarding", "executing")),
        )
        .order_by(RestoreRequest.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def active_requests_for_server(
    session: Session, *, server_id: int, besides: int | None = None
) -> list[RestoreRequest]:
    """Open or running requests on one server (SPEC 9.3's impact preview), oldest first."""
    query = select(RestoreRequest).where(
        RestoreRequest.server_id == server_id,
        RestoreRequest.state.in_(("pending", "approved", "safeguarding", "executing")),
    )
    if besides is not None:
        query = query.where(RestoreRequest.id != besides)
    return list(session.execute(query.order_by(RestoreRequest.id)).scalars())


def move_safety_step(
    session: Session,
    *,
    request_id: int,
    from_step: str,
    to_step: str,
    now: datetime,
    claimed_before: datetime | None = None,
    **values,
) -> bool:
    """Move a safeguarding request's safety snapshot from one step to the next (SPEC
    9.4), or (with ``to_step == from_step``) claim the step again; only if it is still
    on ``from_step`` and, with ``claimed_before``, nobody claimed that step since then.
    The row count says whether this caller won: one process does each step."""
    query = update(RestoreRequest).where(
        RestoreRequest.id == request_id,
        RestoreRequest.state == "safeguarding",
        RestoreRequest.safety_step == from_step,
    )
    if claimed_before is not None:
        query = query.where(RestoreRequest.safety_step_at < claimed_before)
    result = session.execute(query.values(safety_step=to_step, safety_step_at=now, **values))
    return result.rowcount == 1
