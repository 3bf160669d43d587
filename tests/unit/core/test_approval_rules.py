"""The two-person rule (bot/core/approval.py) as plain data: no database, no Slack.

Every (state, target) pair of the state machine, every verdict of decide_approval and
decide_rejection, RESTORE_APPROVALS 1..3, approver lists with user groups, and the
expiry boundary to the microsecond. A decision carries facts; the words the clicker
reads are tests/unit/blocks/test_refusals.py's.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.approval import (
    ACTIVE_STATES,
    DENIALS,
    OPEN_STATES,
    TRANSITIONS,
    Decision,
    IllegalTransition,
    Policy,
    RequestView,
    State,
    Verdict,
    can_transition,
    check_transition,
    decide_approval,
    decide_rejection,
    is_expired,
)

NOW = datetime(2025, 1, 27, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=60)
TICK = timedelta(microseconds=1)
REQUESTER = "UREQ"

LEGAL = {
    (State.PENDING, State.APPROVED),
    (State.PENDING, State.REJECTED),
    (State.PENDING, State.CANCELLED),
    (State.PENDING, State.EXPIRED),
    (State.APPROVED, State.EXECUTING),
    (State.APPROVED, State.FAILED),
    (State.APPROVED, State.SAFEGUARDING),  # SPEC 9: the safety snapshot first
    (State.SAFEGUARDING, State.EXECUTING),
    (State.SAFEGUARDING, State.FAILED),
    (State.EXECUTING, State.SUCCEEDED),
    (State.EXECUTING, State.FAILED),
    (State.EXECUTING, State.INTERRUPTED),
}
ALL_PAIRS = list(itertools.product(State, State))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LEGAL]
TERMINAL = [
    State.SUCCEEDED,
    State.FAILED,
    State.INTERRUPTED,
    State.REJECTED,
    State.CANCELLED,
    State.EXPIRED,
]
DECIDED = [s for s in State if s not in (State.PENDING, State.EXPIRED)]


def request(
    state: State = State.PENDING,
    approvals: tuple[str, ...] = (),
    *,
    expires_at: datetime = LATER,
    decided_by: str | None = None,
) -> RequestView:
    return RequestView(
        state=state,
        requester=REQUESTER,
        expires_at=expires_at,
        approvals=frozenset(approvals),
        decided_by=decided_by,
    )


# --- the state machine ---------------------------------------------------------------------


def test_transition_table_is_exactly_the_documented_graph():
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == LEGAL


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL))
def test_legal_transition_is_accepted(current, target):
    check_transition(current, target)
    check_transition(current.value, target.value)  # stored rows carry plain strings
    assert can_transition(current, target)


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_every_illegal_transition_is_refused(current, target):
    with pytest.raises(IllegalTransition, match=f"from {current.value} to {target.value}"):
        check_transition(current, target)
    assert not can_transition(current, target)


def test_there_are_88_illegal_transitions_out_of_100():
    assert len(ALL_PAIRS) == 100
    assert len(ILLEGAL) == 88


@pytest.mark.parametrize("state", TERMINAL)
def test_terminal_states_go_nowhere(state):
    assert all(not can_transition(state, target) for target in State)


@pytest.mark.parametrize("state", list(State))
def test_no_state_moves_to_itself(state):
    with pytest.raises(IllegalTransition):
        check_transition(state, state)


@pytest.mark.parametrize(
    ("current", "target"), [("pending", "done"), ("bogus", "approved"), ("", "")]
)
def test_unknown_state_names_are_refused(current, target):
    with pytest.raises(ValueError):
        check_transition(current, target)
    assert not can_transition(current, target)


def test_nothing_returns_to_pending_so_an_approval_can_never_be_undone():
    assert all(not can_transition(s, State.PENDING) for s in State)


def test_restore_can_only_be_reached_through_approved():
    # executing (the provider call) is reached from approved, directly or through
    # safeguarding (the safety snapshot, SPEC 9), which only approved leads to.
    sources = {a for a, b in LEGAL if b == State.EXECUTING}
    assert sources == {State.APPROVED, State.SAFEGUARDING}
    assert {a for a, b in LEGAL if b == State.SAFEGUARDING} == {State.APPROVED}


def test_open_and_active_state_sets():
    assert {State.PENDING} == OPEN_STATES
    assert {State.PENDING, State.APPROVED, State.SAFEGUARDING, State.EXECUTING} == ACTIVE_STATES


# --- decide_approval ----------------------------------------------------------------------


def test_requester_cannot_approve_own_restore():
    d = decide_approval(request(), REQUESTER, Policy(), NOW)
    assert d.verdict == Verdict.SELF_APPROVAL
    assert d.outcome == "denied"
    assert d.new_state is None
    assert d.approvers is None  # the answer says anyone but the requester may approve


def test_requester_on_the_approver_list_still_cannot_approve_own_restore():
    policy = Policy(approvers=frozenset({REQUESTER, "UB"}))
    d = decide_approval(request(), REQUESTER, policy, NOW)
    assert d.verdict == Verdict.SELF_APPROVAL
    assert d.approvers == policy.approvers  # the answer names UB


def test_requester_in_an_approver_group_still_cannot_approve_own_restore():
    policy = Policy(approvers=frozenset({"SOPS"}))
    d = decide_approval(request(), REQUESTER, policy, NOW, actor_groups={"SOPS"})
    assert d.verdict == Verdict.SELF_APPROVAL


def test_with_one_approval_required_the_first_other_person_approves():
    d = decide_approval(request(), "UB", Policy(required_approvals=1), NOW)
    assert d.verdict == Verdict.APPROVE
    assert d.new_state == State.APPROVED
    assert d.approvals_after == {"UB"}
    assert d.outcome == "ok"


@pytest.mark.parametrize("required", [1, 2, 3])
def test_distinct_approvers_until_the_quorum_then_approve(required):
    policy = Policy(required_approvals=required)
    approvals: frozenset[str] = frozenset()
    for i in range(required):
        actor = f"UAPP{i}"
        d = decide_approval(request(approvals=tuple(approvals)), actor, policy, NOW)
        approvals = d.approvals_after
        if i + 1 < required:
            assert d.verdict == Verdict.RECORD
            assert d.new_state is None
            assert d.missing == required - i - 1
        else:
            assert d.verdict == Verdict.APPROVE
            assert d.new_state == State.APPROVED
    assert approvals == {f"UAPP{i}" for i in range(required)}


@pytest.mark.parametrize("required", [2, 3])
def test_a_repeated_click_counts_once(required):
    policy = Policy(required_approvals=required)
    first = decide_approval(request(), "UB", policy, NOW)
    assert first.verdict == Verdict.RECORD
    again = decide_approval(request(approvals=("UB",)), "UB", policy, NOW)
    assert again.verdict == Verdict.REPEAT
    assert again.new_state is None
    assert again.approvals_after == {"UB"}
    assert again.outcome == "ok"  # not a denial: the click was valid, it just adds nothing
    assert again.missing == required - 1


@pytest.mark.parametrize("required", [1, 2, 3])
def test_many_clicks_by_one_approver_never_reach_a_quorum_above_one(required):
    policy = Policy(required_approvals=required)
    view = request()
    verdicts = []
    for _ in range(5):
        d = decide_approval(view, "UB", policy, NOW)
        verdicts.append(d.verdict)
        if d.new_state is not None:
            break
        view = request(approvals=tuple(d.approvals_after))
    if required == 1:
        assert verdicts == [Verdict.APPROVE]
    else:
        assert verdicts == [Verdict.RECORD] + [Verdict.REPEAT] * 4


def test_requester_never_counts_towards_the_quorum():
    policy = Policy(required_approvals=2)
    view = request(approvals=("UB",))
    assert decide_approval(view, REQUESTER, policy, NOW).verdict == Verdict.SELF_APPROVAL
    assert decide_approval(view, "UC", policy, NOW).verdict == Verdict.APPROVE


# --- approver lists and groups ------------------------------------------------------------------


APPROVERS = Policy(approvers=frozenset({"UBOSS", "SOPS"}))


def test_non_approver_is_refused_and_told_who_may_approve():
    d = decide_approval(request(), "UINTERN", APPROVERS, NOW, actor_groups=())
    assert d.verdict == Verdict.NOT_APPROVER
    assert d.outcome == "denied"
    assert d.new_state is None
    assert d.approvers == APPROVERS.approvers  # the answer names them


def test_listed_user_may_approve():
    assert decide_approval(request(), "UBOSS", APPROVERS, NOW).verdict == Verdict.APPROVE


def test_member_of_an_approver_group_may_approve():
    d = decide_approval(request(), "UOPS1", APPROVERS, NOW, actor_groups={"SOPS"})
    assert d.verdict == Verdict.APPROVE


def test_member_of_some_other_group_may_not_approve():
    d = decide_approval(request(), "UDEV", APPROVERS, NOW, actor_groups={"SDEV"})
    assert d.verdict == Verdict.NOT_APPROVER


def test_empty_approver_list_lets_nobody_approve():
    policy = Policy(approvers=frozenset())
    d = decide_approval(request(), "UB", policy, NOW)
    assert d.verdict == Verdict.NOT_APPROVER
    assert d.approvers == frozenset()  # the answer says nobody may


def test_non_approver_click_is_not_recorded_towards_the_quorum():
    policy = Policy(approvers=frozenset({"UBOSS"}), required_approvals=2)
    d = decide_approval(request(approvals=("UBOSS",)), "UINTERN", policy, NOW)
    assert d.verdict == Verdict.NOT_APPROVER
    assert d.approvals_after == frozenset()


# --- expiry -------------------------------------------------------------------------------


def test_expiry_boundary_one_microsecond_before_is_still_open():
    view = request(expires_at=NOW)
    assert not is_expired(view, NOW - TICK)
    assert decide_approval(view, "UB", Policy(), NOW - TICK).verdict == Verdict.APPROVE


def test_expiry_boundary_at_the_exact_instant_is_expired():
    view = request(expires_at=NOW)
    assert is_expired(view, NOW)
    d = decide_approval(view, "UB", Policy(), NOW)
    assert d.verdict == Verdict.EXPIRED
    assert d.outcome == "denied"
    assert d.new_state is None


def test_late_approval_after_expiry_is_refused_even_before_the_sweep():
    view = request(expires_at=NOW - timedelta(minutes=1))  # still stored as pending
    assert decide_approval(view, "UB", Policy(), NOW).verdict == Verdict.EXPIRED
    assert decide_rejection(view, "UB", Policy(), NOW).verdict == Verdict.EXPIRED
    assert decide_rejection(view, REQUESTER, Policy(), NOW).verdict == Verdict.EXPIRED


def test_expired_request_refuses_the_requester_too():
    view = request(State.EXPIRED)
    assert decide_approval(view, REQUESTER, Policy(), NOW).verdict == Verdict.EXPIRED


def test_only_pending_requests_expire():
    for state in State:
        view = request(state, expires_at=NOW - timedelta(days=1))
        assert is_expired(view, NOW) == (state == State.PENDING)


def test_policy_default_ttl_is_an_hour():
    assert Policy().ttl == timedelta(minutes=60)
    assert Policy().required_approvals == 1
    assert Policy().approvers is None


# --- closed requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", DECIDED)
def test_later_clicks_are_told_who_already_decided(state):
    view = request(state, ("UB",), decided_by="UB")
    for decide in (decide_approval, decide_rejection):
        d = decide(view, "UC", Policy(), NOW)
        assert d.verdict == Verdict.CLOSED
        assert d.outcome == "denied"
        assert d.new_state is None
        assert d.closed_state == state
        assert d.decided_by == "UB"
        assert not d.lost_race


@pytest.mark.parametrize("state", DECIDED)
def test_closed_request_refuses_even_the_approver_who_decided(state):
    view = request(state, ("UB",), decided_by="UB")
    assert decide_approval(view, "UB", Policy(), NOW).verdict == Verdict.CLOSED


def test_closed_request_without_a_decider_says_so_plainly():
    d = decide_approval(request(State.CANCELLED), "UB", Policy(), NOW)
    assert d.closed_state == State.CANCELLED
    assert d.decided_by is None


def test_closed_wins_over_self_approval_and_non_approver():
    view = request(State.APPROVED, decided_by="UB")
    assert decide_approval(view, REQUESTER, APPROVERS, NOW).verdict == Verdict.CLOSED
    assert decide_approval(view, "UINTERN", APPROVERS, NOW).verdict == Verdict.CLOSED


# --- decide_rejection -------------------------------------------------------------------------


def test_requester_may_cancel_with_reject():
    d = decide_rejection(request(), REQUESTER, Policy(), NOW)
    assert d.verdict == Verdict.CANCEL
    assert d.new_state == State.CANCELLED
    assert d.outcome == "ok"


def test_requester_may_cancel_even_when_not_an_approver():
    d = decide_rejection(request(), REQUESTER, APPROVERS, NOW)
    assert d.verdict == Verdict.CANCEL


def test_anyone_but_the_requester_rejects_when_no_list_is_set():
    d = decide_rejection(request(), "UB", Policy(), NOW)
    assert d.verdict == Verdict.REJECT
    assert d.new_state == State.REJECTED


def test_approver_may_reject_after_partial_approvals():
    view = request(approvals=("UBOSS",))
    policy = Policy(approvers=frozenset({"UBOSS", "SOPS"}), required_approvals=2)
    d = decide_rejection(view, "UOPS1", policy, NOW, actor_groups={"SOPS"})
    assert d.verdict == Verdict.REJECT


def test_non_approver_may_not_reject():
    d = decide_rejection(request(), "UINTERN", APPROVERS, NOW)
    assert d.verdict == Verdict.NOT_APPROVER
    assert d.outcome == "denied"
    assert d.new_state is None
    assert d.rejecting
    assert d.approvers == APPROVERS.approvers


# --- verdicts ---------------------------------------------------------------------------------


def test_denials_are_exactly_the_refusals():
    assert {Verdict.SELF_APPROVAL, Verdict.NOT_APPROVER, Verdict.CLOSED, Verdict.EXPIRED} == DENIALS
    for verdict in Verdict:
        expected = "denied" if verdict in DENIALS else "ok"
        assert Decision(verdict).outcome == expected


# Only these verdicts change the request; every other one leaves it as it is.
STATE_OF_VERDICT = {
    Verdict.APPROVE: State.APPROVED,
    Verdict.REJECT: State.REJECTED,
    Verdict.CANCEL: State.CANCELLED,
}
users = st.sampled_from(["UREQ", "UA", "UB", "UC", "UD"])


@given(
    state=st.sampled_from(list(State)),
    approvals=st.frozensets(st.sampled_from(["UA", "UB", "UC"]), max_size=3),
    actor=users,
    required=st.integers(min_value=1, max_value=3),
    listed=st.none() | st.frozensets(st.sampled_from(["UA", "UB", "UREQ", "SG"]), max_size=4),
    in_group=st.booleans(),
    offset=st.integers(min_value=-5, max_value=5),
)
def test_every_decision_is_consistent_with_the_state_machine(
    state, approvals, actor, required, listed, in_group, offset
):
    view = request(state, tuple(approvals), expires_at=NOW + timedelta(microseconds=offset))
    policy = Policy(approvers=listed, required_approvals=required)
    groups = {"SG"} if in_group else set()
    for d in (
        decide_approval(view, actor, policy, NOW, groups),
        decide_rejection(view, actor, policy, NOW, groups),
    ):
        assert d.new_state == STATE_OF_VERDICT.get(d.verdict)
        if d.new_state is not None:
            # A state change is only ever proposed from an open, unexpired request,
            # never to the requester's benefit, and always along a legal edge.
            assert can_transition(view.state, d.new_state)
            assert view.state == State.PENDING and not is_expired(view, NOW)
            assert d.outcome == "ok"
        if d.new_state == State.APPROVED:
            assert actor != REQUESTER
            assert REQUESTER not in d.approvals_after
            assert len(d.approvals_after) >= required
            assert actor in d.approvals_after
        if d.verdict == Verdict.RECORD:
            assert len(d.approvals_after) < required
