"""Typed confirmation with an impact preview (SPEC 9.3, RESTORE_CONFIRM=typed), end to
end over HTTP and over Socket Mode.

An allowed approver's Approve opens a modal (views.open with that click's trigger_id)
showing what the restore does; the approval counts only once the server's name is
typed and submitted. Everyone who may not approve is refused at the click, as without
typed confirmation, and gets no modal. Every press and submission is a body signed as
Slack signs it (or a Socket Mode envelope) through the fake Slack; assertions are on
the fake's recorded calls and views, the ack's answer, the stored approvals, the
provider's restore calls and the audit rows.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import update

from bot.blocks import ids
from bot.core import view_metadata
from bot.services import door
from bot.services.actors import Actor
from snapbot_local.slack.blockkit import validate_view
from snapbot_local.slack.signing import button_press_body, view_submission_body
from snapbot_local.stack import LocalStack
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest
from tests.conftest import wait_until
from tests.e2e_helpers import restore_calls, wait_for_ephemeral

SNAPSHOT = 801  # seeded: pre-migration-snapshot of web-server-01 (12345), 2025-01-15 18:30
OLDER = 798  # seeded: weekly-snapshot-2025-01-08 of the same server
SERVER_NAME = "web-server-01"


# Over Socket Mode too; those variants run with the slow ones (CI, after the README
# suite), which keeps the README's command under its 5 minutes on 2 cores.
@pytest.fixture(params=["http", pytest.param("socket", marks=pytest.mark.slow)])
def start(request, sqlite_url):
    stacks: list[LocalStack] = []

    def _start(**overrides) -> LocalStack:
        settings = {"restore_confirm": "typed", **overrides.pop("settings", {})}
        if overrides.get("safer_restores"):
            settings.pop("restore_confirm")  # as LocalStack sets it: typed
        stack = LocalStack(
            database_url=sqlite_url,
            poll_seconds=0.2,
            restore_seconds=0.5,
            socket_mode=request.param == "socket",
            settings_overrides=settings,
            **overrides,
        ).start()
        stacks.append(stack)
        return stack

    yield _start
    for stack in stacks:
        invalid = stack.slack.invalid_payloads
        stray = stack.socket.stray if stack.socket is not None else []
        stack.stop()
        assert invalid == [], f"Slack would have refused a payload: {invalid}"
        assert stray == [], f"the app sent what is not an ack of a sent envelope: {stray}"


# --- helpers --------------------------------------------------------------------------------


def open_request(stack: LocalStack, requester: str = "UALICE", snapshot: int = SNAPSHOT):
    """(request row, its channel message) once the message is posted and remembered."""
    stack.user(requester).command(f"restore {snapshot} bad deploy")
    stack.wait_settled(30)
    with session_scope(stack.deps.engine, readonly=True) as s:
        (req,) = [
            r for r in repo.requests_in_state(s, states=["pending"]) if r.snapshot_id == snapshot
        ]
    assert req.message_ts
    return req, stack.slack.message(req.channel, req.message_ts)


def press_approve(stack: LocalStack, user: str, message, **kw) -> tuple[str, object]:
    """Press Approve on ``message`` as ``user``: (the click's trigger_id, the ack)."""
    trigger = stack.slack.new_trigger_id()
    body = button_press_body(
        message,
        ids.APPROVE,
        user_id=user,
        trigger_id=trigger,
        response_url=stack.slack.response_url(
            "button", channel=message.channel, user=user, message_ts=message.ts
        ),
        **kw,
    )
    return trigger, stack.send(body)


def opened_for(stack: LocalStack, trigger: str):
    return next((v for v in stack.slack.views() if v.trigger_id == trigger), None)


def wait_opened(stack: LocalStack, trigger: str):
    return stack.slack.wait_for(
        lambda: opened_for(stack, trigger), 10, what=f"a modal opened with trigger {trigger}"
    )


def submit(stack: LocalStack, user: str, metadata: str, typed: str | None, **kw):
    """Submit the confirmation; the ack's answer ({} when it closes the modal)."""
    body = view_submission_body(
        ids.RESTORE_CONFIRM_MODAL,
        {ids.RESTORE_CONFIRM_BLOCK: {ids.RESTORE_CONFIRM_ACTION: typed}},
        user_id=user,
        private_metadata=metadata,
        **kw,
    )
    return answer_of(stack.send(body))


def answer_of(ack) -> dict:
    if isinstance(ack, httpx.Response):
        assert ack.status_code == 200, ack.text
        return ack.json() if ack.content else {}
    return ack.payload or {}


def confirm_via_modal(stack: LocalStack, user: str, message, typed: str = SERVER_NAME) -> dict:
    trigger, _ = press_approve(stack, user, message)
    view = wait_opened(stack, trigger).view
    return submit(stack, user, view["private_metadata"], typed)


def approvers(stack: LocalStack, request_id: int) -> frozenset[str]:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return repo.approvers_of(s, request_id=request_id)


def state_of(stack: LocalStack, request_id: int) -> str:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return repo.get_restore_request(s, request_id=request_id).state


def audit(stack: LocalStack, action: str) -> list[tuple[str, str, str]]:
    with session_scope(stack.deps.engine, readonly=True) as s:
        rows = list(reversed(repo.latest_audit(s, limit=1000)))
    return [(r.actor, r.outcome, r.detail) for r in rows if r.action == action]


def view_text(view: dict) -> str:
    return json.dumps(view)


# --- the modal opens for an allowed approver, with the impact preview -------------------------


def test_an_allowed_approvers_approve_opens_the_impact_preview_with_the_clicks_trigger(start):
    stack = start(settings={"approval_ttl_minutes": 42, "restore_approvals": 2})
    req, message = open_request(stack)
    trigger, ack = press_approve(stack, "UBOB", message)
    assert answer_of(ack) == {}
    opened = opened_for(stack, trigger)  # already opened when the click was acknowledged
    assert opened is not None, "views.open was not called with the click's trigger_id"
    assert validate_view(opened.view) == []
    view = opened.view
    text = view_text(view)
    assert view["callback_id"] == ids.RESTORE_CONFIRM_MODAL
    assert f"*{SERVER_NAME}* (`12345`) will be overwritten" in text
    assert "pre-migration-snapshot" in text and "(ID `801`" in text
    # The data-loss window, in the reader's time zone (UTC for clients that cannot).
    loss_at = int(datetime(2025, 1, 15, 18, 30, tzinfo=UTC).timestamp())
    assert f"everything written to *{SERVER_NAME}* since <!date^{loss_at}^" in text
    assert "|2025-01-15 18:30 UTC>" in text
    assert "<@UALICE>" in text and "bad deploy" in text
    assert "Approvals so far:* none yet (0 of 2)" in text and "Still needed:* 2" in text
    assert re.search(r"\(in 4[12] min\)", text), text
    assert "No safety snapshot is taken first" in text  # RESTORE_SAFETY_SNAPSHOT off here
    (field,) = [b for b in view["blocks"] if b["type"] == "input"]
    assert field["block_id"] == ids.RESTORE_CONFIRM_BLOCK
    assert field["label"]["text"] == "Type the server's name to approve"
    assert '"confirm"' not in text  # a confirm dialog inside a modal would close it
    stack.wait_settled()
    assert approvers(stack, req.id) == frozenset()
    assert state_of(stack, req.id) == "pending"
    assert audit(stack, "restore.confirm") == [("UBOB", "ok", "opened")]
    assert audit(stack, "restore.approve") == []


def test_the_preview_shows_the_safety_plan_a_newer_snapshot_and_other_requests_on_the_server(
    start,
):
    stack = start(settings={"restore_safety_snapshot": True})
    open_request(stack, "UCAROL", SNAPSHOT)  # another open request on web-server-01
    req, message = open_request(stack, "UALICE", OLDER)
    trigger, _ = press_approve(stack, "UBOB", message)
    view = wait_opened(stack, trigger).view
    assert validate_view(view) == []
    text = view_text(view)
    assert f"pre-restore-r{req.id}" in text  # the safety snapshot to be taken first
    assert "unless it is restored from the safety snapshot" in text
    assert "a newer snapshot, *pre-migration-snapshot*, is" in text
    assert "Other restore requests on web-server-01" in text
    assert "(pending): *pre-migration-snapshot*, asked by <@UCAROL>" in text


# --- no modal for those who may not approve: today's refusal --------------------------------


def test_the_requester_gets_no_modal_and_the_usual_refusal(start):
    stack = start()
    req, message = open_request(stack, "UALICE")
    trigger, _ = press_approve(stack, "UALICE", message)
    wait_for_ephemeral(stack, "UALICE", "cannot approve your own")
    stack.wait_settled()
    assert opened_for(stack, trigger) is None and stack.slack.calls("views.open") == []
    assert audit(stack, "restore.approve") == [("UALICE", "denied", "self_approval")]
    assert approvers(stack, req.id) == frozenset()


def test_a_non_approver_gets_no_modal_and_the_usual_refusal(start):
    stack = start(settings={"snapshot_approvers": "UBOSS"})
    _, message = open_request(stack)
    trigger, _ = press_approve(stack, "UINTERN", message)
    text = wait_for_ephemeral(stack, "UINTERN", "may not approve")
    assert "<@UBOSS>" in text
    stack.wait_settled()
    assert stack.slack.calls("views.open") == []
    assert audit(stack, "restore.approve") == [("UINTERN", "denied", "not_approver")]
    # The listed approver does get the modal.
    trigger, _ = press_approve(stack, "UBOSS", message)
    assert validate_view(wait_opened(stack, trigger).view) == []


def test_another_organisations_user_is_turned_away_at_the_door_without_a_modal(start):
    stack = start()
    _, message = open_request(stack)
    press_approve(stack, "UPARTNER", message, user_team_id="T2")
    wait_for_ephemeral(stack, "UPARTNER", "SLACK_ALLOWED_TEAMS")
    stack.wait_settled()
    assert stack.slack.calls("views.open") == []
    ((actor, outcome, detail),) = audit(stack, "restore.approve")
    assert (actor, outcome) == ("UPARTNER", "denied") and "turned away at the door" in detail


def test_a_press_on_a_decided_request_or_another_message_gets_no_modal(start):
    stack = start()
    req, message = open_request(stack)
    stack.user("UBOB").press(message, ids.REJECT)
    wait_until(lambda: state_of(stack, req.id) == "rejected", what="the rejection")
    press_approve(stack, "UCAROL", message)
    wait_for_ephemeral(stack, "UCAROL", "already rejected")
    # Another request's buttons, on a message that request never was (a ts the fake
    # never issues).
    _, other_message = open_request(stack, "UALICE", OLDER)
    elsewhere = SimpleNamespace(ts="1700000000.999999", channel="C1", blocks=other_message.blocks)
    press_approve(stack, "UDAVE", elsewhere)
    wait_for_ephemeral(stack, "UDAVE", "is not on a message snapbot posted")
    stack.wait_settled()
    assert stack.slack.calls("views.open") == []
    assert [a[:2] for a in audit(stack, "restore.approve")] == [
        ("UCAROL", "denied"),
        ("UDAVE", "denied"),
    ]


def test_a_press_the_listener_could_not_judge_never_approves_without_the_typed_name(start):
    # The user group's members are not cached at the click, and the listener asks Slack
    # nothing before its ack but views.open (the 3 s): no modal. The job looks the group
    # up, and the presser may approve; it must not approve without the typed name, so
    # it asks for another press, which finds the group cached and opens the modal.
    stack = start(settings={"snapshot_approvers": "SOPS"})
    stack.slack.usergroups["SOPS"] = ["UOPS"]
    req, message = open_request(stack)
    stack.deps.groups._cache.clear()  # as after the cache's time is up
    looked_up = len(stack.slack.calls("usergroups.users.list"))
    press_approve(stack, "UOPS", message)
    wait_for_ephemeral(stack, "UOPS", "Press Approve again")
    stack.wait_settled()
    assert stack.slack.calls("views.open") == []
    assert approvers(stack, req.id) == frozenset() and restore_calls(stack) == 0
    assert audit(stack, "restore.approve") == [("UOPS", "denied", "typed confirmation needed")]
    assert len(stack.slack.calls("usergroups.users.list")) == looked_up + 1  # by the job
    assert confirm_via_modal(stack, "UOPS", message) == {}
    wait_until(lambda: state_of(stack, req.id) == "succeeded", what="the restore")


def test_a_modal_slack_would_not_open_is_said_and_approves_nothing(start):
    stack = start()
    req, message = open_request(stack)
    stack.slack.error_next("views.open", error="expired_trigger_id")
    press_approve(stack, "UBOB", message)
    wait_for_ephemeral(stack, "UBOB", "Slack did not open the confirmation in time")
    stack.wait_settled()
    assert approvers(stack, req.id) == frozenset() and restore_calls(stack) == 0
    assert [a[:2] for a in audit(stack, "restore.confirm")] == [("UBOB", "ok"), ("UBOB", "error")]
    assert audit(stack, "restore.approve") == []


# --- the submission -------------------------------------------------------------------------


def test_a_wrong_name_is_an_error_on_the_input_and_records_nothing(start):
    stack = start()
    req, message = open_request(stack)
    trigger, _ = press_approve(stack, "UBOB", message)
    metadata = wait_opened(stack, trigger).view["private_metadata"]
    for typed in ("web-server-02", "WEB-SERVER-01", "", None, "web server 01"):
        answer = submit(stack, "UBOB", metadata, typed)
        assert answer["response_action"] == "errors", typed
        assert set(answer["errors"]) == {ids.RESTORE_CONFIRM_BLOCK}
        assert SERVER_NAME in answer["errors"][ids.RESTORE_CONFIRM_BLOCK]
    stack.wait_settled()
    assert approvers(stack, req.id) == frozenset()
    assert state_of(stack, req.id) == "pending" and restore_calls(stack) == 0
    assert audit(stack, "restore.approve") == []


def test_the_right_name_with_spaces_approves_and_restores_exactly_once(start):
    stack = start()
    req, message = open_request(stack)
    trigger, _ = press_approve(stack, "UBOB", message)
    metadata = wait_opened(stack, trigger).view["private_metadata"]
    assert submit(stack, "UBOB", metadata, f"  {SERVER_NAME} \n") == {}  # the modal closes
    wait_until(lambda: state_of(stack, req.id) == "succeeded", what="the restore")
    stack.slack.wait_for(
        lambda: "Approved by <@UBOB>" in str(stack.slack.message("C1", message.ts).blocks),
        10,
        what="the request message to show who approved",
    )
    # The same modal submitted again once decided: it says so, and records nothing.
    again = submit(stack, "UBOB", metadata, SERVER_NAME)
    assert again["response_action"] == "update"
    assert "already approved by <@UBOB>" in view_text(again["view"])
    stack.wait_settled()
    assert approvers(stack, req.id) == {"UBOB"}
    assert restore_calls(stack) == 1
    assert audit(stack, "restore.approve") == [("UBOB", "ok", "approve")]


def test_a_double_submission_and_a_redelivery_count_once(start):
    stack = start()
    req, message = open_request(stack)
    trigger, _ = press_approve(stack, "UBOB", message)
    metadata = wait_opened(stack, trigger).view["private_metadata"]
    body = view_submission_body(
        ids.RESTORE_CONFIRM_MODAL,
        {ids.RESTORE_CONFIRM_BLOCK: {ids.RESTORE_CONFIRM_ACTION: SERVER_NAME}},
        user_id="UBOB",
        private_metadata=metadata,
    )
    twice = view_submission_body(  # a second submission, before the first is decided
        ids.RESTORE_CONFIRM_MODAL,
        {ids.RESTORE_CONFIRM_BLOCK: {ids.RESTORE_CONFIRM_ACTION: SERVER_NAME}},
        user_id="UBOB",
        private_metadata=metadata,
    )
    answer_of(stack.send(body))
    answer_of(stack.send(twice))
    answer_of(stack.send(body))  # Slack delivers the first one again
    wait_until(lambda: state_of(stack, req.id) == "succeeded", what="the restore")
    stack.wait_settled()
    assert approvers(stack, req.id) == {"UBOB"}
    assert restore_calls(stack) == 1
    approved = audit(stack, "restore.approve")
    assert approved[0] == ("UBOB", "ok", "approve")
    assert approved[1:] in ([], [("UBOB", "denied", "closed")])  # the second, if it came in time


def test_with_safer_restores_on_the_confirmed_approval_snapshots_first_then_restores_once(start):
    # SPEC 9 as shipped: RESTORE_SAFETY_SNAPSHOT=on and RESTORE_CONFIRM=typed together.
    stack = start(safer_restores=True, create_seconds=0.5, settings={})
    assert stack.settings.restore_confirm == "typed" and stack.settings.restore_safety_snapshot
    req, message = open_request(stack)
    trigger, _ = press_approve(stack, "UBOB", message)
    view = wait_opened(stack, trigger).view
    assert f"pre-restore-r{req.id}" in view_text(view)
    assert submit(stack, "UBOB", view["private_metadata"], SERVER_NAME) == {}
    wait_until(lambda: state_of(stack, req.id) == "succeeded", what="the restore")
    stack.wait_settled()
    assert stack.sim.state.calls["POST snapshots/"] == 1  # the safety snapshot, once
    assert restore_calls(stack) == 1
    assert audit(stack, "restore.approve") == [("UBOB", "ok", "approve")]


def test_two_approvers_each_confirm_and_the_quorum_restores_once(start):
    stack = start(settings={"restore_approvals": 2})
    req, message = open_request(stack)
    assert confirm_via_modal(stack, "UBOB", message) == {}
    wait_for_ephemeral(stack, "UBOB", "1 more approval(s) needed")
    trigger, _ = press_approve(stack, "UCAROL", stack.slack.message("C1", message.ts))
    text = view_text(wait_opened(stack, trigger).view)
    assert "Approvals so far:* <@UBOB> (1 of 2)" in text
    assert (
        submit(stack, "UCAROL", opened_for(stack, trigger).view["private_metadata"], SERVER_NAME)
        == {}
    )
    wait_until(lambda: state_of(stack, req.id) == "succeeded", what="the restore")
    stack.wait_settled()
    assert restore_calls(stack) == 1
    assert audit(stack, "restore.approve") == [
        ("UBOB", "ok", "record"),
        ("UCAROL", "ok", "approve"),
    ]


@pytest.mark.parametrize("how", ["rejected", "expired"])
def test_a_request_closed_while_the_modal_was_open_is_not_approved_and_the_modal_says_why(
    start, how
):
    stack = start()
    req, message = open_request(stack)
    trigger, _ = press_approve(stack, "UBOB", message)
    metadata = wait_opened(stack, trigger).view["private_metadata"]
    if how == "rejected":
        stack.user("UCAROL").press(message, ids.REJECT)
        wait_until(lambda: state_of(stack, req.id) == "rejected", what="the rejection")
    else:
        with session_scope(stack.deps.engine) as s:
            s.execute(
                update(RestoreRequest)
                .where(RestoreRequest.id == req.id)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
    stack.wait_settled()
    before = audit(stack, "restore.approve")
    answer = submit(stack, "UBOB", metadata, SERVER_NAME)
    assert answer["response_action"] == "update"
    assert validate_view(answer["view"]) == []
    shown = view_text(answer["view"])
    assert ("already rejected by <@UCAROL>" if how == "rejected" else "has expired") in shown
    stack.wait_settled()
    assert approvers(stack, req.id) == frozenset() and restore_calls(stack) == 0
    assert audit(stack, "restore.approve") == before == []


def test_forged_or_borrowed_metadata_is_refused(start):
    stack = start()
    req, message = open_request(stack)
    trigger, _ = press_approve(stack, "UBOB", message)
    genuine = wait_opened(stack, trigger).view["private_metadata"]
    key = stack.deps.metadata_key
    binding = view_metadata.unseal_binding(genuine, key, user="UBOB")
    assert binding is not None and binding.request_id == req.id
    encoded, mac = genuine.split(".")
    forged = [
        "",
        "not-sealed",
        json.dumps({"request_id": req.id}),
        f"{encoded}.{mac[:-2]}AA",  # the seal broken
        genuine,  # sealed for UBOB, submitted by UCAROL below
        door.seal_opener(stack.deps, Actor(user="UCAROL", channel="C1")),  # another modal's
    ]
    for metadata in forged:
        answer = submit(stack, "UCAROL", metadata, SERVER_NAME)
        assert answer["response_action"] == "errors", metadata
        assert "could not verify this form" in answer["errors"][ids.RESTORE_CONFIRM_BLOCK]
    stack.wait_settled()
    assert approvers(stack, req.id) == frozenset() and restore_calls(stack) == 0
    refused = audit(stack, "restore.approve")
    assert refused == [("UCAROL", "denied", "private_metadata not sealed by snapbot")] * len(forged)


# --- RESTORE_CONFIRM=button: as before ------------------------------------------------------


def test_button_mode_approves_at_the_click_without_a_modal(start):
    stack = start(settings={"restore_confirm": "button"})
    req, message = open_request(stack)
    press_approve(stack, "UBOB", message)
    wait_until(lambda: state_of(stack, req.id) == "succeeded", what="the restore")
    stack.wait_settled()
    assert stack.slack.calls("views.open") == []
    assert restore_calls(stack) == 1
    assert audit(stack, "restore.approve") == [("UBOB", "ok", "approve")]
    assert audit(stack, "restore.confirm") == []
