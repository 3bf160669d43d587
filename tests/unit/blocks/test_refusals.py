"""The one translation of the core's typed refusals into words (bot/blocks/refusals.py):
every verdict of decide_approval and decide_rejection, and every domain error, worded
exactly as the user reads it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bot.blocks.refusals import (
    create_interrupted,
    decision_answer,
    groups_note,
    name_taken,
    refusal_text,
    request_not_found,
    servers_unlisted,
    snapshot_in_restore,
)
from bot.core.approval import (
    Decision,
    Policy,
    RequestView,
    State,
    Verdict,
    decide_approval,
    decide_rejection,
)
from bot.core.errors import LimitReached, NotAllowed, NotRestorable, SnapbotError
from bot.user_messages import describe

NOW = datetime(2025, 1, 27, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=60)
REQUESTER = "UREQ"
APPROVERS = Policy(approvers=frozenset({"UBOSS", "SOPS"}))
DECIDED = [s for s in State if s not in (State.PENDING, State.EXPIRED)]
AFTER_APPROVAL = {
    State.APPROVED: "is starting",
    State.SAFEGUARDING: "is waiting for its safety snapshot",
    State.EXECUTING: "is starting",
    State.SUCCEEDED: "has started",
    State.FAILED: "failed",
    State.INTERRUPTED: "was interrupted",
}


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


ANYONE = Policy()


def answer_to(decide, view, actor, policy=ANYONE, groups=()) -> str:
    return decision_answer(decide(view, actor, policy, NOW, groups))


# --- decide_approval ---------------------------------------------------------------------


def test_requester_is_told_a_second_person_must_approve():
    text = answer_to(decide_approval, request(), REQUESTER)
    assert "cannot approve your own" in text
    assert "Anyone but the requester" in text
    assert text == (
        "You cannot approve your own restore request: a second person must. "
        "Anyone but the requester may approve."
    )


def test_requester_on_the_approver_list_is_told_who_else_may():
    policy = Policy(approvers=frozenset({REQUESTER, "UB"}))
    text = answer_to(decide_approval, request(), REQUESTER, policy)
    assert "<@UB>" in text
    assert text.endswith("Approvers: <@UB>, <@UREQ>.")


@pytest.mark.parametrize("required", [2, 3])
def test_recorded_approvals_count_down(required):
    policy = Policy(required_approvals=required)
    approvals: tuple[str, ...] = ()
    for i in range(required - 1):
        d = decide_approval(request(approvals=approvals), f"UAPP{i}", policy, NOW)
        assert d.verdict == Verdict.RECORD
        assert f"{required - i - 1} more approval(s) needed" in decision_answer(d)
        assert (
            decision_answer(d) == f"Approval recorded; {required - i - 1} more approval(s) needed."
        )
        approvals = tuple(d.approvals_after)
    last = decide_approval(request(approvals=approvals), "ULAST", policy, NOW)
    assert decision_answer(last) == "Approved: the restore starts now."


@pytest.mark.parametrize("required", [2, 3])
def test_a_repeated_click_is_told_what_is_still_needed(required):
    policy = Policy(required_approvals=required)
    text = answer_to(decide_approval, request(approvals=("UB",)), "UB", policy)
    assert f"still needs {required - 1} more" in text
    assert text == (
        f"You already approved this request; it still needs {required - 1} more approval(s)."
    )


def test_non_approver_is_told_who_may_approve():
    text = answer_to(decide_approval, request(), "UINTERN", APPROVERS)
    assert "<@UBOSS>" in text and "<!subteam^SOPS>" in text
    assert text == "You may not approve restores. Approvers: <@UBOSS>, <!subteam^SOPS>."


def test_empty_approver_list_says_nobody():
    text = answer_to(decide_approval, request(), "UB", Policy(approvers=frozenset()))
    assert "nobody" in text
    assert text == "You may not approve restores. Approvers: nobody (the list is empty)."


def test_expired_request_says_open_a_new_one():
    view = request(expires_at=NOW)
    for decide, actor in ((decide_approval, "UB"), (decide_rejection, REQUESTER)):
        assert answer_to(decide, view, actor) == "This restore request has expired; open a new one."


# --- closed requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", DECIDED)
def test_later_clicks_are_told_who_already_decided(state):
    view = request(state, ("UB",), decided_by="UB")
    for decide in (decide_approval, decide_rejection):
        text = answer_to(decide, view, "UC")
        if state in AFTER_APPROVAL:
            assert f"already approved by <@UB>; the restore {AFTER_APPROVAL[state]}" in text
            assert text == (
                f"This request was already approved by <@UB>; the restore {AFTER_APPROVAL[state]}."
            )
        else:
            assert f"already {state.value} by <@UB>" in text
            assert text == f"This request was already {state.value} by <@UB>."


def test_closed_request_without_a_decider_says_so_plainly():
    d = decide_approval(request(State.CANCELLED), "UB", Policy(), NOW)
    assert decision_answer(d) == "This request was already cancelled."


@pytest.mark.parametrize(
    ("state", "by", "text"),
    [
        ("approved", "UB", "This request was already approved by <@UB>."),
        ("rejected", "UB", "This request was already rejected by <@UB>."),
        ("expired", None, "This request was already expired by someone."),
    ],
)
def test_a_rejection_that_lost_the_race_names_the_winner_plainly(state, by, text):
    d = Decision(Verdict.CLOSED, closed_state=State(state), decided_by=by, lost_race=True)
    assert decision_answer(d) == text


# --- decide_rejection -------------------------------------------------------------------------


def test_requester_cancel_and_approver_reject_are_confirmed():
    assert answer_to(decide_rejection, request(), REQUESTER) == "Restore request cancelled."
    assert answer_to(decide_rejection, request(), "UB") == "Restore request rejected."


def test_non_approver_may_not_reject_and_is_told_who_may():
    text = answer_to(decide_rejection, request(), "UINTERN", APPROVERS)
    assert "requester" in text and "<@UBOSS>" in text
    assert text == (
        "You may not reject this restore. The requester, or approvers: <@UBOSS>, <!subteam^SOPS>."
    )


def test_every_verdict_has_words():
    for verdict in Verdict:
        assert decision_answer(Decision(verdict, closed_state=State.REJECTED)).strip()


# --- domain errors (bot/core/errors.py) -------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (
            NotAllowed("request restores", frozenset({"UOPS", "SOPS"})),
            "You may not request restores. Who may: <@UOPS>, <!subteam^SOPS>.",
        ),
        (NotAllowed("create snapshots", None), "You may not create snapshots. Who may: everyone."),
        (
            LimitReached("web-1", 41, "oldest-snap", 5),
            "Server web-1 already has 5 snapshots, the provider's limit. "
            "Delete one first; the oldest is oldest-snap (id 41).",
        ),
        (NotRestorable(77), "Snapshot 77 does not exist."),
        (
            NotRestorable(77, "nightly", "pending"),
            "Snapshot nightly is pending; only a completed snapshot can be restored.",
        ),
    ],
)
def test_domain_refusals_are_worded_once(exc, text):
    assert isinstance(exc, SnapbotError)
    assert refusal_text(exc) == text
    assert describe(exc) == text  # the one translation of errors uses the same words


# --- what is in the way, and Slack's user groups ------------------------------------------------


def test_refusals_of_what_is_in_the_way_are_worded_exactly():
    assert request_not_found(9)["text"] == "Restore request #9 does not exist."
    assert name_taken("web-1", "nightly")["text"] == (
        "Server web-1 already has a snapshot named nightly."
    )
    assert snapshot_in_restore(4, "approved")["text"] == (
        "Restore request #4 uses this snapshot (approved); it cannot be deleted now."
    )
    assert create_interrupted("nightly")["text"] == (
        "snapbot restarted while creating nightly; the provider has no such snapshot, so "
        "nothing was created. Run the command again."
    )
    assert servers_unlisted("the provider is down") == (
        "Could not load the server list (the provider is down); type an ID or name."
    )


def test_refusal_payloads_escape_what_they_quote():
    shown = name_taken("<!channel>", "a&b")
    assert "<!channel>" not in json.dumps(shown)
    assert "&lt;!channel&gt;" in shown["text"] and "a&amp;b" in shown["text"]


@pytest.mark.parametrize(
    ("gone", "unread", "note"),
    [
        ({}, [], ""),
        (
            {},
            ["SOPS", "SDEV"],
            " (Slack did not say who is in <!subteam^SOPS>, <!subteam^SDEV> just now; "
            "if you are, try again soon.)",
        ),
        (
            {"SX": "no_such_subteam", "SY": "plan_upgrade_required"},
            [],
            " (this workspace's plan has no user groups; user group SX does not exist.)",
        ),
        (
            {"SX": "no_such_subteam"},
            ["SOPS"],
            " (user group SX does not exist; Slack did not say who is in <!subteam^SOPS> "
            "just now; if you are, try again soon.)",
        ),
    ],
)
def test_groups_note_says_why_slack_may_be_the_cause(gone, unread, note):
    assert groups_note(gone, unread) == note
