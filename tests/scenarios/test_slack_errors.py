"""Slack's own refusals, DMs, modal answers and a double-clicked Delete (SPEC 13.2,
13.3, 13.4, 14.7's private_metadata; issue #13 items 2, 3, 4 and 10).

End to end over loopback: signed requests into the real app, the provider simulator
over HTTP, and the fake Slack configured the way a workspace can be (a DM between
people, an archived or read-only channel, a channel the bot is not in), answering with
the errors Slack gives there."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import func, select

from bot.blocks import ids
from bot.blocks.refusals import FORM_NOT_VERIFIED
from bot.core import view_metadata as vm
from bot.core.conversations import is_direct_message
from bot.outbox import is_transient
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import (
    block_actions_body,
    button_press_body,
    find_button,
    slash_command_body,
    view_submission_body,
)
from snapbot_local.stack import INCIDENT_CHANNEL, LocalStack
from storage import repositories as repo
from storage.db import make_engine, migrate, session_scope
from storage.tables import Job
from tests.conftest import wait_until
from tests.e2e_helpers import provider_writes, texts

WEB = 12345  # web-server-01: snapshots 801 and 798
SNAPSHOT = 801
DM_REFUSAL = "run it in a channel where snapbot is a member"


@pytest.fixture
def stack(tmp_path) -> Iterator[LocalStack]:
    s = LocalStack(
        database_url=f"sqlite:///{tmp_path / 'errors.db'}",
        create_seconds=1.0,
        restore_seconds=1.0,
        poll_seconds=0.2,
    ).start()
    yield s
    invalid = s.slack.invalid_payloads
    s.stop()
    assert invalid == [], f"Slack would refuse these payloads: {invalid}"


def told(stack: LocalStack, user: str, needle: str, timeout: float = 15.0):
    """The first thing ``user`` was shown (ephemeral or response_url) containing ``needle``."""

    def find():
        return next(
            (e for e in stack.slack.ephemerals(user=user) if needle in (e.text or "")), None
        )

    try:
        return wait_until(find, timeout, what=f"{needle!r} told to {user}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {user} was told {texts(stack, user)}") from None


def audit_rows(stack: LocalStack, action: str) -> list:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        return [e for e in repo.latest_audit(s, limit=500) if e.action == action]


def wait_audit(stack: LocalStack, action: str, outcome: str):
    return wait_until(
        lambda: next((e for e in audit_rows(stack, action) if e.outcome == outcome), None),
        15,
        what=f"an audit row {action} {outcome}",
    )


def snapshot_names(stack: LocalStack) -> list[str]:
    return [s["name"] for s in stack.sim.state.list_snapshots(WEB)["results"]]


def sealed_fields(sealed: str) -> dict:
    """What a sealed private_metadata says (it is signed, not secret)."""
    body = sealed.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def command(stack: LocalStack, text: str, *, channel: str, channel_name: str, user="U1"):
    """A slash command typed in ``channel``; its response_url is named "cmd"."""
    fake = stack.slack
    body = slash_command_body(
        text,
        user_id=user,
        channel_id=channel,
        channel_name=channel_name,
        response_url=fake.response_url("cmd", channel=channel, user=user),
        trigger_id=fake.new_trigger_id(),
    )
    response = stack.client.post(body)
    assert response.status_code == 200, response.text
    return response


# -- the rules, on plain data -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("ratelimited", 429),
        ("ratelimited", 200),
        ("internal_error", 200),
        ("fatal_error", 500),
        ("service_unavailable", 200),
        ("request_timeout", 200),
        ("", 502),
        ("no_text", 503),  # a 5xx is Slack failing, whatever the body says
    ],
)
def test_only_rate_limits_and_slacks_own_failures_are_worth_retrying(error, status):
    assert is_transient(error, status)


@pytest.mark.parametrize(
    "error",
    [
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "is_archived",
        "not_in_channel",
        "channel_not_found",
        "msg_blocks_too_long",
        "plan_upgrade_required",
        "an_error_slack_adds_next_year",
        "",
    ],
)
def test_every_other_slack_refusal_is_final(error):
    assert not is_transient(error, 200)
    assert not is_transient(error, 400)


@pytest.mark.parametrize(
    ("channel_id", "channel_name", "dm"),
    [
        ("D0123ABCD", "directmessage", True),
        ("D0123ABCD", "", True),
        ("G0456EFGH", "mpdm-alice--bob--carol-1", True),  # an old group DM
        ("C0789", "mpdm-alice--bob-1", True),
        ("G0456EFGH", "ops-private", False),  # an old private channel
        ("C0789", "general", False),
        ("", "", False),
    ],
)
def test_a_dm_is_told_from_the_channel_id_or_name_slack_sends(channel_id, channel_name, dm):
    assert is_direct_message(channel_id, channel_name) is dm


def test_sealed_metadata_opens_only_as_sealed_and_only_for_its_user():
    key, other_key = vm.metadata_key("signing-secret"), vm.metadata_key("another-secret")
    opener = vm.Opener("U1", "C1", "general", "https://hooks.slack.com/commands/T1/1/x")
    sealed = vm.seal(opener, key)
    assert vm.unseal(sealed, key, user="U1") == opener
    assert vm.unseal(sealed, key, user="U2") is None  # another user's form
    assert vm.unseal(sealed, other_key, user="U1") is None  # another bot's
    body, mac = sealed.split(".")
    data = sealed_fields(sealed)
    data["r"] = "https://attacker.example/collect"
    edited = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    assert vm.unseal(f"{edited}.{mac}", key, user="U1") is None
    for typed in ("C1", "", "a.b", f"{body}.", ".", "é.é", sealed + "x", "x" * 4000):
        assert vm.unseal(typed, key, user="U1") is None, typed


# -- the fake models Slack's refusals -----------------------------------------------------------


def test_the_fake_refuses_posts_where_slack_does_with_slacks_error_shapes():
    with FakeSlack(plan="free") as fake:
        client = WebClient(token="xoxb-test", base_url=fake.api_url)
        fake.set_channel("DPEOPLE", kind="im")
        fake.set_channel("GMPDM", kind="mpim")
        fake.set_channel("CARCHIVED", archived=True)
        fake.set_channel("CREADONLY", posting="read_only")
        fake.set_channel("CTHREADS", posting="thread_only")
        fake.set_channel("CNOBOT", member=False)
        cases = {
            ("chat.postMessage", "DPEOPLE"): "channel_not_found",
            ("chat.postEphemeral", "DPEOPLE"): "channel_not_found",
            ("chat.postMessage", "GMPDM"): "channel_not_found",
            ("chat.postMessage", "CARCHIVED"): "is_archived",
            ("chat.postEphemeral", "CARCHIVED"): "is_archived",
            ("chat.postMessage", "CREADONLY"): "restricted_action_read_only_channel",
            ("chat.postMessage", "CTHREADS"): "restricted_action_thread_only_channel",
            ("chat.postMessage", "CNOBOT"): "not_in_channel",
            ("chat.postEphemeral", "CNOBOT"): "not_in_channel",
        }
        for (method, channel), error in cases.items():
            with pytest.raises(SlackApiError) as raised:
                client.api_call(method, json={"channel": channel, "user": "U1", "text": "hi"})
            assert raised.value.response.status_code == 200
            assert raised.value.response.data == {"ok": False, "error": error}, (method, channel)
        long = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 2900}}] * 5
        with pytest.raises(SlackApiError) as raised:
            client.chat_postMessage(channel="C1", text="long", blocks=long)
        assert raised.value.response["error"] == "msg_blocks_too_long"
        with pytest.raises(SlackApiError) as raised:
            client.usergroups_users_list(usergroup="S1")
        assert raised.value.response["error"] == "plan_upgrade_required"
        # Where Slack does let the bot speak: a reply in a thread-only channel, an
        # ephemeral in a read-only one, and a response_url anywhere.
        client.chat_postEphemeral(channel="CREADONLY", user="U1", text="only you")
        info = client.conversations_info(channel="CREADONLY")["channel"]
        assert info["is_read_only"] and info["is_member"]
        url = fake.response_url("dm", channel="DPEOPLE", user="U1")
        assert httpx.post(url, json={"text": "hello in a DM"}).status_code == 200
        assert [e.text for e in fake.ephemerals(user="U1", channel="DPEOPLE")] == ["hello in a DM"]


def test_a_view_submission_carries_no_response_url():
    body = view_submission_body(ids.CREATE_MODAL, {}, private_metadata="x")
    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert payload["response_urls"] == [] and "response_url" not in payload


# -- SPEC 13.3: a channel the bot cannot post in ------------------------------------------------


CANNOT_POST = [
    ({"posting": "read_only"}, "restricted_action_read_only_channel", "Only some members"),
    ({"posting": "thread_only"}, "restricted_action_thread_only_channel", "threads only"),
    ({"archived": True}, "is_archived", "is archived"),
    ({"member": False}, "not_in_channel", "/invite @snapbot"),
]


@pytest.mark.parametrize(("setup", "error", "fix"), CANNOT_POST)
def test_create_where_the_bot_cannot_post_changes_nothing_and_says_how_to_fix_it(
    stack, setup, error, fix
):
    stack.slack.set_channel("C1", **setup)
    stack.user("U1").command("create web-server-01 nightly")
    answer = told(stack, "U1", fix)
    assert "Nothing was changed" in answer.text and answer.source == "response_url"
    row = wait_audit(stack, "snapshot.create", "error")
    assert row.detail == error and row.actor == "U1"
    stack.wait_settled()
    assert provider_writes(stack) == 0
    assert "nightly" not in snapshot_names(stack)
    # refused once, at once: never retried for minutes
    assert len([c for c in stack.slack.calls("chat.postMessage") if c.error == error]) == 1


@pytest.mark.parametrize(("setup", "error", "fix"), CANNOT_POST)
def test_a_restore_request_that_cannot_be_posted_is_cancelled_and_the_requester_told(
    stack, setup, error, fix
):
    stack.slack.set_channel("C1", **setup)
    stack.user("UALICE").command(f"restore {SNAPSHOT} bad deploy")
    answer = told(stack, "UALICE", fix)
    assert "Nothing was changed" in answer.text
    with session_scope(stack.runtime.engine, readonly=True) as s:
        (req,) = repo.requests_in_state(s, states=["cancelled", "pending", "approved"])
    assert req.state == "cancelled" and req.outcome_detail == "could not post the request"
    assert wait_audit(stack, "restore.request", "error").detail == error
    assert stack.restore_calls == 0


def arm_after_the_checkpoint(stack: LocalStack) -> None:
    """A fault for the next chat.postMessage must not be taken by the day's audit
    checkpoint, which the duties post to the incident channel at start."""
    stack.slack.wait_for_call(
        "chat.postMessage", lambda c: c.params["channel"] == INCIDENT_CHANNEL, timeout=15
    )


def test_an_error_slack_never_documented_is_final_and_told_at_once(stack):
    arm_after_the_checkpoint(stack)
    stack.slack.error_next("chat.postMessage", error="an_error_slack_adds_next_year")
    stack.user("U1").command("create web-server-01 nightly")
    answer = told(stack, "U1", "an_error_slack_adds_next_year")
    assert "Nothing was changed" in answer.text
    stack.wait_settled()
    assert provider_writes(stack) == 0 and "nightly" not in snapshot_names(stack)
    assert [
        c.error for c in stack.slack.calls("chat.postMessage") if c.params["channel"] == "C1"
    ] == ["an_error_slack_adds_next_year"]


def test_a_transient_slack_failure_is_retried_and_the_create_goes_ahead_once(stack):
    arm_after_the_checkpoint(stack)
    stack.slack.error_next("chat.postMessage", error="service_unavailable")
    stack.user("U1").command("create web-server-01 nightly")
    message = stack.slack.wait_for(
        lambda: next((m for m in stack.slack.messages("C1") if "nightly" in (m.text or "")), None),
        20,
        what="the create's message, posted on a retry",
    )
    assert message.channel == "C1"
    wait_until(lambda: "nightly" in snapshot_names(stack), what="the snapshot created")
    assert stack.sim.state.calls["POST snapshots/"] == 1


# -- SPEC 13.4: DMs -----------------------------------------------------------------------------

DMS = [("D0DMPEOPLE", "directmessage", "im"), ("G0GROUPDM", "mpdm-u1--u2--u3-1", "mpim")]


@pytest.mark.parametrize(("channel", "name", "kind"), DMS)
@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("create web-server-01 nightly", "snapshot.create"),
        ("create", "snapshot.create"),
        (f"restore {SNAPSHOT} bad deploy", "restore.request"),
        (f"delete {SNAPSHOT}", "snapshot.delete"),
    ],
)
def test_a_command_that_needs_a_channel_message_is_refused_at_once_in_a_dm(
    stack, channel, name, kind, text, action
):
    stack.slack.set_channel(channel, kind=kind)
    command(stack, text, channel=channel, channel_name=name)
    answer = told(stack, "U1", DM_REFUSAL)
    assert "/invite" not in answer.text.split("run it in")[0]  # not "invite me here"
    assert answer.source == "response_url" and answer.channel == channel
    row = wait_audit(stack, action, "denied")
    assert row.detail == "direct message" and row.channel == channel
    stack.wait_settled()
    assert provider_writes(stack) == 0 and stack.restore_calls == 0
    assert [
        c for c in stack.slack.calls("chat.postMessage") if c.params["channel"] == channel
    ] == []
    assert stack.slack.calls("views.open") == []


@pytest.mark.parametrize(("channel", "name", "kind"), DMS)
def test_read_only_commands_answer_as_usual_in_a_dm(stack, channel, name, kind):
    stack.slack.set_channel(channel, kind=kind)
    assert "Usage" in command(stack, "help", channel=channel, channel_name=name).text  # in the ack
    for text, action in (
        ("list", "snapshot.list"),
        ("audit", "audit.show"),
        ("pending", "pending.show"),
    ):
        before = len(texts(stack, "U1"))
        command(stack, text, channel=channel, channel_name=name)
        wait_until(lambda b=before: len(texts(stack, "U1")) > b, 15, what=f"{text} answered")
        assert wait_audit(stack, action, "ok").channel == channel
    assert "snapshot(s)" in texts(stack, "U1")[0]
    assert not any(DM_REFUSAL in t for t in texts(stack, "U1"))
    assert all(e.source == "response_url" for e in stack.slack.ephemerals(user="U1"))


def test_a_delete_button_pressed_in_a_dm_is_refused_before_the_provider(stack):
    stack.slack.set_channel("D0DMPEOPLE", kind="im")
    command(stack, "list web-server-01", channel="D0DMPEOPLE", channel_name="directmessage")
    listing = told(stack, "U1", "snapshot(s)")
    _, button = find_button(listing.blocks, ids.DELETE_OPEN, value=str(SNAPSHOT))
    body = block_actions_body(
        ids.DELETE_OPEN,
        button["value"],
        user_id="U1",
        channel_id="D0DMPEOPLE",
        channel_name="directmessage",
        message_ts=listing.message_ts,
        is_ephemeral=True,
        response_url=stack.slack.response_url("press", channel="D0DMPEOPLE", user="U1"),
    )
    assert stack.client.post(body).status_code == 200
    told(stack, "U1", DM_REFUSAL)
    assert wait_audit(stack, "snapshot.delete", "denied").detail == "direct message"
    assert provider_writes(stack) == 0


# -- SPEC 13.2 and 14.7: modal answers ----------------------------------------------------------


def open_modal(stack: LocalStack, channel: str = "C1", user: str = "U1"):
    """/snapshot create in ``channel``: the modal snapbot opened, and the command's
    response_url name ("opener")."""
    fake = stack.slack
    body = slash_command_body(
        "create",
        user_id=user,
        channel_id=channel,
        trigger_id=fake.new_trigger_id(),
        response_url=fake.response_url("opener", channel=channel, user=user),
    )
    assert stack.client.post(body).status_code == 200
    fake.wait_for_call("views.update", timeout=15)
    (view,) = fake.views()
    return view


def submit(stack: LocalStack, metadata: str, name: str, user: str = "U1"):
    body = view_submission_body(
        ids.CREATE_MODAL,
        {
            ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: {"value": str(WEB), "text": "w"}},
            ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: name},
            ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: None},
        },
        user_id=user,
        private_metadata=metadata,
    )
    return stack.client.post(body)


def test_a_modal_submitted_in_a_channel_without_the_bot_is_answered_through_the_openers_url(
    stack,
):
    stack.slack.set_channel("CNOBOT", member=False)
    view = open_modal(stack, "CNOBOT")
    response = submit(stack, view.view["private_metadata"], "from-the-modal")
    assert response.status_code == 200 and not response.content
    answer = told(stack, "U1", "/invite @snapbot")
    assert answer.source == "response_url" and answer.channel == "CNOBOT"
    assert [r.status for r in stack.slack.responses("opener")] == [200]
    assert provider_writes(stack) == 0
    # Slack refused the bot's own ephemeral there; nothing was lost to it
    assert not [c for c in stack.slack.calls("chat.postEphemeral") if not c.ok]


def test_a_modal_answer_falls_back_to_an_ephemeral_when_the_openers_url_is_used_up(stack):
    view = open_modal(stack, "C1")
    opener_url = sealed_fields(view.view["private_metadata"])["r"]
    for n in range(5):  # Slack: five posts per response_url
        assert httpx.post(opener_url, json={"text": f"use {n}"}).status_code == 200
    stack.sim.state.create_snapshot({"server_id": WEB, "name": "taken-name"})
    submit(stack, view.view["private_metadata"], "taken-name")
    answer = told(stack, "U1", "already has a snapshot named taken-name")
    assert answer.source == "chat.postEphemeral" and answer.channel == "C1"
    assert stack.slack.responses("opener")[-1].status == 404


def test_a_typed_edited_or_borrowed_private_metadata_is_refused_audited_and_the_user_told(stack):
    view = open_modal(stack, "C1", user="U1")
    sealed = view.view["private_metadata"]
    data = sealed_fields(sealed)
    data["c"] = "CELSEWHERE"
    edited = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    mac = sealed.split(".")[1]
    forged = {
        "typed": ("C1", "U1"),
        "edited": (f"{edited}.{mac}", "U1"),
        "borrowed": (sealed, "U2"),
    }
    for metadata, user in forged.values():
        response = submit(stack, metadata, "forged-create", user=user)
        assert response.status_code == 200
        answer = response.json()
        assert answer["response_action"] == "errors"
        assert answer["errors"] == {ids.CREATE_SERVER_BLOCK: FORM_NOT_VERIFIED}
    denied = [
        e
        for e in audit_rows(stack, "snapshot.create")
        if e.outcome == "denied" and e.detail == "private_metadata not sealed by snapbot"
    ]
    assert sorted(e.actor for e in denied) == ["U1", "U1", "U2"]
    assert all(e.channel == "" for e in denied)  # nothing taken from the forged text
    with session_scope(stack.runtime.engine, readonly=True) as s:
        forms = s.execute(select(func.count()).where(Job.kind == "create_view")).scalar_one()
    assert forms == 0
    assert provider_writes(stack) == 0
    # the genuine form still works
    assert submit(stack, sealed, "genuine-create").status_code == 200
    wait_until(lambda: "genuine-create" in snapshot_names(stack), 15, what="the genuine create")


# -- a double-clicked Delete ----------------------------------------------------------------------


def delete_prompt(stack: LocalStack, user: str = "U1"):
    stack.user(user).command("delete 798")
    return told(stack, user, "Delete snapshot weekly-snapshot-2025-01-08?")


def press_confirm(stack: LocalStack, prompt, user: str = "U1", name: str = "press"):
    """One press of Delete on the prompt: a body of its own (its own response_url)."""
    body = button_press_body(
        prompt,
        ids.DELETE_CONFIRM,
        user_id=user,
        response_url=stack.slack.response_url(
            name, channel="C1", user=user, message_ts=prompt.message_ts
        ),
    )
    assert stack.client.post(body).status_code == 200


def test_a_second_delete_press_after_the_first_finished_says_who_deleted_it(stack):
    prompt = delete_prompt(stack)
    press_confirm(stack, prompt, name="first")
    told(stack, "U1", "Snapshot 798 deleted by <@U1>")
    press_confirm(stack, prompt, name="second")
    told(stack, "U1", "Snapshot 798 was already deleted by <@U1>.")
    stack.wait_settled()
    assert stack.sim.state.calls["DELETE snapshots/{id}/"] == 1
    assert not any("does not exist" in t for t in texts(stack, "U1"))
    assert [e.outcome for e in audit_rows(stack, "provider.delete")] == ["ok"]
    (second,) = [e for e in audit_rows(stack, "snapshot.delete") if e.outcome == "denied"]
    assert second.detail == "deleted" and second.target == "snapshot:798"


def test_a_second_delete_press_while_the_first_is_at_the_provider_deletes_once(stack):
    services = stack.deps
    real_delete, entered, release = (
        services.vps.delete_snapshot,
        threading.Event(),
        threading.Event(),
    )

    def held_delete(snapshot_id):
        entered.set()
        assert release.wait(30), "the test never released the delete"
        return real_delete(snapshot_id)

    services.vps.delete_snapshot = held_delete
    try:
        prompt = delete_prompt(stack)
        press_confirm(stack, prompt, name="first")
        assert entered.wait(15), "the first press never reached the provider"
        press_confirm(stack, prompt, name="second")
        told(stack, "U1", "Snapshot 798 is already being deleted by <@U1>.")
    finally:
        release.set()
    told(stack, "U1", "Snapshot 798 deleted by <@U1>")
    stack.wait_settled()
    assert stack.sim.state.calls["DELETE snapshots/{id}/"] == 1
    assert 798 not in {s["id"] for s in stack.sim.state.list_snapshots(WEB)["results"]}


def test_deletion_claims_let_one_through_and_a_failed_or_abandoned_one_be_tried_again(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

    def claim(by, at=now):
        with session_scope(engine) as s:
            row = repo.begin_deletion(
                s, snapshot_id=798, by=by, now=at, stale_before=at - timedelta(minutes=5)
            )
            return None if row is None else (row.state, row.deleted_by)

    try:
        assert claim("U1") is None
        assert claim("U2") == ("deleting", "U1")
        with session_scope(engine) as s:
            repo.finish_deletion(s, snapshot_id=798, by="U1", deleted=False, now=now)
        assert claim("U2") is None  # a failed deletion may be tried again
        assert claim("U3", at=now + timedelta(minutes=6)) is None  # U2's process died
        with session_scope(engine) as s:
            repo.finish_deletion(s, snapshot_id=798, by="U2", deleted=True, now=now)  # too late
            repo.finish_deletion(s, snapshot_id=798, by="U3", deleted=True, now=now)
        assert claim("U4", at=now + timedelta(hours=1)) == ("deleted", "U3")
    finally:
        engine.dispose()


def test_a_delete_that_crashes_frees_its_claim_for_the_next_press(stack):
    services = stack.deps
    real_delete = services.vps.delete_snapshot

    def broken(snapshot_id):
        raise RuntimeError("a bug between the claim and the provider")

    services.vps.delete_snapshot = broken
    try:
        prompt = delete_prompt(stack)
        press_confirm(stack, prompt, name="first")
        stack.wait_settled()
    finally:
        services.vps.delete_snapshot = real_delete
    press_confirm(stack, prompt, name="second")
    told(stack, "U1", "Snapshot 798 deleted by <@U1>")
    assert stack.sim.state.calls["DELETE snapshots/{id}/"] == 1
    assert not any("already being deleted" in t for t in texts(stack, "U1"))


def test_a_request_whose_message_slack_refuses_later_is_cancelled_and_its_requester_told(stack):
    """The request message was still being retried when the requester was answered;
    Slack then refused it for good. Staged: the request's message row is put in that
    state. The lease holder cancels the request (which frees the snapshot) and tells
    the requester directly and the incident channel; nothing reaches the provider."""
    from sqlalchemy import update

    from storage.tables import Outbox, RestoreRequest

    command(stack, "restore 801 staged", channel="C1", channel_name="ops")
    stack.wait_settled()
    with session_scope(stack.runtime.engine) as s:
        (req,) = repo.requests_in_state(s, states=["pending"])
        s.execute(
            update(Outbox)
            .where(Outbox.key == f"req:{req.id}:msg")
            .values(state="failed", result_ts=None, error="is_archived")
        )
        s.execute(update(RestoreRequest).where(RestoreRequest.id == req.id).values(message_ts=None))
    wait_until(
        lambda: repo_state(stack, req.id) == "cancelled", what="the unposted request cancelled"
    )
    stack.wait_settled()
    dm = [m.text or "" for m in stack.slack.messages("U1")]
    assert any(f"restore request #{req.id}" in t and "was cancelled" in t for t in dm), dm
    incident = [m.text or "" for m in stack.slack.messages(INCIDENT_CHANNEL)]
    assert any(f"#{req.id}" in t and "is_archived" in t for t in incident), incident
    assert ("error", "is_archived") in [
        (e.outcome, e.detail) for e in audit_rows(stack, "restore.request")
    ]
    assert stack.sim.state.calls["POST snapshots/{id}/restore/"] == 0
    # The snapshot is free again.
    command(stack, "restore 801 again", channel="C1", channel_name="ops")
    stack.wait_settled()
    with session_scope(stack.runtime.engine, readonly=True) as s:
        assert len(repo.requests_in_state(s, states=["pending"])) == 1


def repo_state(stack: LocalStack, request_id: int) -> str:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        return repo.get_restore_request(s, request_id=request_id).state
