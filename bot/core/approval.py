"""The two-person rule for restores (SPEC §5), as pure functions.

A restore request moves through::

    pending --> approved --> executing --> succeeded
       |           |             |-------> failed
       |           |             '-------> interrupted   (died mid-call; never retried)
       |           '--> safeguarding --> executing        (SPEC 9: the safety snapshot
       |                     '---------> failed            first; bot/core/safety.py)
       |--> rejected   (an approver said no)
       |--> cancelled  (the requester withdrew it)
       '--> expired    (nobody decided within APPROVAL_TTL_MINUTES)
    approved --> failed  (the snapshot was gone or not completed when re-read)

``decide_approval`` and ``decide_rejection`` take the request as it is stored, the
actor, the policy and the time, and say what should happen. The shell stores the
answer with a conditional update, so concurrent clicks still produce one winner. A
``Decision`` carries facts, not text: bot/blocks/refusals.py words the answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from bot.core.authz import Allowed, is_allowed


class State(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    SAFEGUARDING = "safeguarding"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.APPROVED, State.REJECTED, State.CANCELLED, State.EXPIRED}),
    State.APPROVED: frozenset({State.EXECUTING, State.FAILED, State.SAFEGUARDING}),
    State.SAFEGUARDING: frozenset({State.EXECUTING, State.FAILED}),
    State.EXECUTING: frozenset({State.SUCCEEDED, State.FAILED, State.INTERRUPTED}),
}
OPEN_STATES = frozenset({State.PENDING})
ACTIVE_STATES = frozenset({State.PENDING, State.APPROVED, State.SAFEGUARDING, State.EXECUTING})


class IllegalTransition(ValueError):
    pass


def check_transition(current: State | str, target: State | str) -> None:
    current, target = State(current), State(target)
    if target not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"a restore request cannot go from {current} to {target}")


def can_transition(current: State | str, target: State | str) -> bool:
    try:
        check_transition(current, target)
    except (IllegalTransition, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Policy:
    approvers: Allowed = None  # None: anyone but the requester
    required_approvals: int = 1
    ttl: timedelta = timedelta(minutes=60)


@dataclass(frozen=True, slots=True)
class RequestView:
    state: State
    requester: str
    expires_at: datetime
    approvals: frozenset[str] = field(default_factory=frozenset)
    decided_by: str | None = None


class Verdict(StrEnum):
    RECORD = "record"  # a valid approval, more are needed
    APPROVE = "approve"  # this approval completes the quorum: execute
    REPEAT = "repeat"  # the same approver again: counts once
    REJECT = "reject"
    CANCEL = "cancel"
    SELF_APPROVAL = "self_approval"
    NOT_APPROVER = "not_approver"
    CLOSED = "closed"  # already decided by someone
    EXPIRED = "expired"


DENIALS = frozenset({Verdict.SELF_APPROVAL, Verdict.NOT_APPROVER, Verdict.CLOSED, Verdict.EXPIRED})


@dataclass(frozen=True, slots=True)
class Decision:
    """What should happen, and the facts the answer names; no text (the actor's answer
    is worded once, by bot/blocks/refusals.py ``decision_answer``)."""

    verdict: Verdict
    new_state: State | None = None
    approvals_after: frozenset[str] = frozenset()
    missing: int = 0  # RECORD, REPEAT: approvals still needed
    approvers: Allowed = None  # SELF_APPROVAL, NOT_APPROVER: who may approve instead
    rejecting: bool = False  # NOT_APPROVER: the refused click was a Reject
    closed_state: State | None = None  # CLOSED: the state the request is already in
    decided_by: str | None = None  # CLOSED: who put it there, when anyone did
    lost_race: bool = False  # CLOSED: another decision won the conditional update

    @property
    def outcome(self) -> str:
        return "denied" if self.verdict in DENIALS else "ok"


def is_expired(request: RequestView, now: datetime) -> bool:
    return request.state == State.PENDING and now >= request.expires_at


def _closed(request: RequestView, now: datetime) -> Decision | None:
    if is_expired(request, now) or request.state == State.EXPIRED:
        return Decision(Verdict.EXPIRED)
    if request.state != State.PENDING:
        return Decision(Verdict.CLOSED, closed_state=request.state, decided_by=request.decided_by)
    return None


def decide_approval(
    request: RequestView,
    actor: str,
    policy: Policy,
    now: datetime,
    actor_groups: Iterable[str] = (),
) -> Decision:
    closed = _closed(request, now)
    if closed:
        return closed
    if actor == request.requester:
        return Decision(Verdict.SELF_APPROVAL, approvers=policy.approvers)
    if not is_allowed(actor, actor_groups, policy.approvers):
        return Decision(Verdict.NOT_APPROVER, approvers=policy.approvers)
    if actor in request.approvals:
        missing = policy.required_approvals - len(request.approvals)
        return Decision(Verdict.REPEAT, approvals_after=request.approvals, missing=missing)
    after = request.approvals | {actor}
    if len(after) >= policy.required_approvals:
        return Decision(Verdict.APPROVE, State.APPROVED, after)
    missing = policy.required_approvals - len(after)
    return Decision(Verdict.RECORD, None, after, missing=missing)


def decide_rejection(
    request: RequestView,
    actor: str,
    policy: Policy,
    now: datetime,
    actor_groups: Iterable[str] = (),
) -> Decision:
    closed = _closed(request, now)
    if closed:
        return closed
    if actor == request.requester:
        return Decision(Verdict.CANCEL, State.CANCELLED)
    if not is_allowed(actor, actor_groups, policy.approvers):
        return Decision(Verdict.NOT_APPROVER, approvers=policy.approvers, rejecting=True)
    return Decision(Verdict.REJECT, State.REJECTED)
