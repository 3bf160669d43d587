"""Who acts is checked at the door (SPEC 13.5, 14.3).

A request whose user ID is not a Slack user ID, or whose user belongs to another
organisation (another team, another Enterprise Grid org, a Slack Connect partner in a
shared channel) is refused for every action before any use case runs, and the refusal
is audited as denied. The rule is pure (bot/core/authz.py); the end-to-end tests send
requests signed as Slack signs them to the whole app on loopback, with the default
settings (SNAPSHOT_OPERATORS and SNAPSHOT_APPROVERS unset: anyone of ours may act).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.blocks import ids
from bot.core.authz import is_user_id, outsider
from snapbot_local.slack.signing import (
    block_actions_body,
    button_press_body,
    slash_command_body,
    view_submission_body,
)
from snapbot_local.stack import LocalStack
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest
from tests.conftest import wait_until
from tests.e2e_helpers import provider_writes, restore_calls, wait_for_ephemeral

SNAPSHOT = 801  # seeded: pre-migration-snapshot of web-server-01
DOOR = "turned away at the door"

# --- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("U1", True),
        ("W1", True),
        ("U012AB3CD", True),
        ("WABC", True),
        ("", False),
        (" ", False),
        ("U", False),
        ("W", False),
        ("u2", False),
        ("U2a", False),
        ("../U2", False),
        ("U2/..", False),
        (" U2", False),
        ("U2 ", False),
        ("U2\n", False),
        ("U2\x00", False),
        ("S123", False),  # a user group, not a user
        ("B123", False),  # a bot
        ("T123", False),
        ("U\u0661", False),  # an Arabic-Indic digit: not ASCII
        ("\uff352", False),  # a full-width U
        (None, False),
        (12, False),
        (["U1"], False),
    ],
)
def test_a_slack_user_id_is_u_or_w_then_upper_case_letters_or_digits(value, expected):
    assert is_user_id(value) is expected


@given(st.text(alphabet="UWuwST019AZaz ./_-\n\x00", max_size=8))
def test_is_user_id_agrees_with_the_spec_wording_for_any_string(value):
    allowed = set(string.ascii_uppercase + string.digits)
    expected = len(value) >= 2 and value[0] in "UW" and all(c in allowed for c in value[1:])
    assert is_user_id(value) is expected


@pytest.mark.parametrize(
    ("user_team", "user_enterprise", "home_team", "home_enterprise", "allowed", "refused"),
    [
        ("T1", "", "T1", "", frozenset(), False),  # ours
        ("T1", "E1", "T1", "E1", frozenset(), False),  # ours, on a Grid
        ("E1", "E1", "T1", "E1", frozenset(), False),  # an org-level user of our Grid
        ("T2", "", "T1", "", frozenset(), True),  # another workspace (Slack Connect)
        ("T2", "E1", "T1", "E1", frozenset(), True),  # another workspace of our own Grid
        ("T2", "", "T1", "", frozenset({"T2"}), False),  # ... unless SLACK_ALLOWED_TEAMS says so
        ("T2", "", "T1", "", frozenset({"T3"}), True),
        ("T1", "E2", "T1", "E1", frozenset(), True),  # another enterprise
        ("T1", "E2", "T1", "", frozenset(), False),  # our enterprise unknown: nothing to compare
        ("E2", "E2", "T1", "E1", frozenset(), True),  # another org's org-level user
        ("", "", "T1", "", frozenset(), True),  # no team at all
        ("", "", "", "", frozenset(), True),
    ],
)
def test_only_users_of_the_installing_organisation_or_an_allowed_team_pass(
    user_team, user_enterprise, home_team, home_enterprise, allowed, refused
):
    why = outsider(
        user_team=user_team,
        user_enterprise=user_enterprise,
        home_team=home_team,
        home_enterprise=home_enterprise,
        allowed_teams=allowed,
    )
    assert (why is not None) is refused, why


# --- end to end: signed requests from forged or foreign actors ---------------------------------


@dataclass(frozen=True)
class Who:
    """A sender, as the signed request names them."""

    user: str
    team: str = "T1"  # the team the request came through (team.id / team_id)
    user_team: str | None = None  # user.team_id when it differs (interactive payloads)
    enterprise: str | None = None

    @property
    def command_team(self) -> str:
        # A slash command names one team: the user's own.
        return self.user_team or self.team


OURS = "T1"
OUR_GRID = "E1"
TURNED_AWAY = {
    "empty user id": Who(""),
    "blank user id": Who(" "),
    "path as user id": Who("../U2"),
    "lower-case user id": Who("u2"),
    "user of another team": Who("U2", team="T2"),
    "user of another enterprise": Who("U2", enterprise="E2"),
    "Slack Connect partner": Who("U3", user_team="T9"),
}


@pytest.fixture
def stack():
    stack = LocalStack(poll_seconds=0.2, restore_seconds=0.5).start()
    # What start-up learns from auth.test (SPEC 13.6).
    stack.deps.installed.team = OURS
    stack.deps.installed.enterprise = OUR_GRID
    yield stack
    problems = stack.slack.invalid_payloads
    stack.stop()
    assert problems == [], "Slack would have refused a payload"


def post(stack: LocalStack, body: bytes) -> None:
    response = stack.client.post(body)
    assert response.status_code == 200, response.text


def command(stack: LocalStack, who: Who, text: str) -> None:
    post(
        stack,
        slash_command_body(
            text,
            user_id=who.user,
            team_id=who.command_team,
            enterprise_id=who.enterprise,
            response_url=stack.slack.response_url("command", channel="C1", user=who.user),
        ),
    )


def press(stack: LocalStack, who: Who, message, action_id: str, value: str | None = None) -> None:
    fields = dict(
        user_id=who.user,
        team_id=who.team,
        user_team_id=who.user_team,
        enterprise_id=who.enterprise,
        response_url=stack.slack.response_url(
            "button", channel="C1", user=who.user, message_ts=message.ts
        ),
    )
    if value is None:
        body = button_press_body(message, action_id, **fields)
    else:
        body = block_actions_body(action_id, value, message_ts=message.ts, **fields)
    post(stack, body)


def submit_create(stack: LocalStack, who: Who, **kw) -> None:
    post(
        stack,
        view_submission_body(
            ids.CREATE_MODAL,
            {
                ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: "web-server-01"},
                ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: "door-snapshot"},
                ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: None},
            },
            user_id=who.user,
            team_id=kw.pop("team_id", who.team),
            user_team_id=who.user_team,
            enterprise_id=who.enterprise,
            private_metadata="C1",
            **kw,
        ),
    )


def open_request(stack: LocalStack):
    command(stack, Who("UALICE"), f"restore {SNAPSHOT} bad deploy")
    message = wait_until(
        lambda: next(
            (
                m
                for m in stack.slack.messages("C1")
                if not m.is_reply and (m.text or "").startswith("Restore request #")
            ),
            None,
        ),
        what="the restore request message",
    )
    wait_until(lambda: requests(stack) and requests(stack)[0].message_ts, what="its ts stored")
    return message


def requests(stack: LocalStack) -> list[RestoreRequest]:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return repo.requests_in_state(
            s, states=["pending", "approved", "executing", "succeeded", "failed"]
        )


def approvals(stack: LocalStack, request_id: int) -> frozenset[str]:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return repo.approvers_of(s, request_id=request_id)


def door_refusals(stack: LocalStack) -> list:
    with session_scope(stack.deps.engine, readonly=True) as s:
        rows = list(reversed(repo.latest_audit(s, limit=1000)))
    return [r for r in rows if r.detail.startswith(DOOR)]


@pytest.mark.parametrize("who", TURNED_AWAY.values(), ids=TURNED_AWAY.keys())
def test_a_forged_or_foreign_actor_can_approve_reject_request_create_or_delete_nothing(stack, who):
    request = open_request(stack)
    (req,) = requests(stack)
    writes_before = provider_writes(stack)
    messages_before = len(stack.slack.messages("C1"))

    attempts = [
        ("restore.approve", lambda: press(stack, who, request, ids.APPROVE)),
        ("restore.reject", lambda: press(stack, who, request, ids.REJECT)),
        ("restore.request", lambda: command(stack, who, f"restore {SNAPSHOT} mine now")),
        ("restore.request", lambda: press(stack, who, request, ids.RESTORE_OPEN, str(SNAPSHOT))),
        ("snapshot.create", lambda: command(stack, who, "create web-server-01 door-snapshot")),
        ("snapshot.create", lambda: submit_create(stack, who)),
        ("snapshot.delete", lambda: command(stack, who, f"delete {SNAPSHOT}")),
        # The confirm button names who asked: a forged "" matches a forged "" actor.
        (
            "snapshot.delete",
            lambda: press(stack, who, request, ids.DELETE_CONFIRM, f"{SNAPSHOT}:{who.user}"),
        ),
        ("snapshot.list", lambda: command(stack, who, "list")),
        ("command.help", lambda: command(stack, who, "help")),
    ]
    for _, attempt in attempts:
        attempt()
    wait_until(
        lambda: len(door_refusals(stack)) >= len(attempts),
        what=f"every attempt audited as refused: {[r.action for r in door_refusals(stack)]}",
    )
    stack.wait_settled()

    refusals = door_refusals(stack)
    assert sorted(r.action for r in refusals) == sorted(a for a, _ in attempts)
    assert {r.outcome for r in refusals} == {"denied"}
    assert {r.actor for r in refusals} == {who.user}
    assert [r.target for r in refusals if r.action == "restore.approve"] == [f"request:{req.id}"]
    # Nothing happened: no approval, the request still pending, no second request,
    # nothing at the provider, no new channel message.
    (still,) = requests(stack)
    assert (still.id, still.state) == (req.id, "pending")
    assert approvals(stack, req.id) == frozenset()
    assert restore_calls(stack) == 0
    assert provider_writes(stack) == writes_before
    assert len(stack.slack.messages("C1")) == messages_before


def test_the_user_of_another_team_is_told_why_nothing_happened(stack):
    request = open_request(stack)
    press(stack, Who("U2", user_team="T2"), request, ids.APPROVE)
    said = wait_for_ephemeral(stack, "U2", "snapbot did nothing")
    assert "T2" in said and "SLACK_ALLOWED_TEAMS" in said
    # And one of ours still approves the same request: the door lets real users in.
    press(stack, Who("UBOB"), request, ids.APPROVE)
    wait_until(lambda: restore_calls(stack) == 1, what="the restore to run once")


def test_a_slack_connect_modal_naming_the_other_side_is_refused_when_the_install_is_unknown(
    stack,
):
    # Before auth.test is known, the installing team comes from the request: a modal
    # opened in a shared channel names the other side in `team` and ours only in
    # view.app_installed_team_id (bolt-python's connect_channel_payload).
    stack.deps.installed.team = None
    stack.deps.installed.enterprise = None
    submit_create(stack, Who("U3", team="T9"), installed_team_id=OURS)
    wait_until(lambda: door_refusals(stack), what="the submission refused at the door")
    stack.wait_settled()
    (refusal,) = door_refusals(stack)
    assert (refusal.action, refusal.outcome, refusal.actor) == ("snapshot.create", "denied", "U3")
    assert provider_writes(stack) == 0


def test_a_slack_connect_partner_in_slack_allowed_teams_may_approve():
    stack = LocalStack(
        poll_seconds=0.2, restore_seconds=0.5, settings_overrides={"slack_allowed_teams": "T9"}
    ).start()
    try:
        stack.deps.installed.team = OURS
        request = open_request(stack)
        press(stack, Who("U3", user_team="T9"), request, ids.APPROVE)
        wait_until(lambda: restore_calls(stack) == 1, what="the partner's approval to restore")
        assert door_refusals(stack) == []
        (req,) = requests(stack)
        assert approvals(stack, req.id) == frozenset({"U3"})
    finally:
        stack.stop()


def test_while_slack_has_not_named_the_install_the_door_refuses_and_asks_again(stack, monkeypatch):
    """Start-up goes on when auth.test cannot be asked (Slack down). A slash command
    names only one team, so until the install is known a Slack Connect partner's
    command cannot be told from ours: everyone is refused, and auth.test is asked
    again (here at once) until it answers."""
    from bot.services import door

    stack.deps.installed.team = None
    stack.deps.installed.enterprise = None
    monkeypatch.setattr(door, "INSTALL_RETRY_S", 0.0)
    stack.slack.fail_next("auth.test", 1, status=500)
    command(stack, Who("U3", team="T9"), "list")
    said = wait_for_ephemeral(stack, "U3", "snapbot did nothing")
    assert "which workspace it is installed in" in said
    stack.wait_settled()
    assert [(r.action, r.outcome, r.actor) for r in door_refusals(stack)] == [
        ("snapshot.list", "denied", "U3")
    ]
    # Slack answers again: the install is learnt, ours pass and the partner does not.
    command(stack, Who("UBOB", team=stack.slack.team_id), "list")
    wait_for_ephemeral(stack, "UBOB", "snapshot(s)")
    assert stack.deps.installed.team == stack.slack.team_id
    command(stack, Who("U3", team="T9"), "pending")
    stack.wait_settled()
    assert len(door_refusals(stack)) == 2
