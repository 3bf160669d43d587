"""The Slack surface end to end: signed requests into the real WSGI app (the same
WebApp gunicorn serves) over loopback, the provider simulator over HTTP, the fake
Slack Web API recording what users would see. SPEC sections 3, 4 and 8."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from bot.blocks import ids
from bot.services import door
from bot.services.actors import Actor
from snapbot_local.harness import HANG_GUARD_S, free_port
from snapbot_local.slack.blockkit import validate_message_blocks
from snapbot_local.slack.signing import (
    button_press_body,
    find_button,
    sign,
    slash_command_body,
    view_submission_body,
)
from snapbot_local.stack import LocalStack
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import AuditEvent, Job, SlackDelivery, Watch
from tests.conftest import wait_until
from tests.e2e_helpers import channel_messages, provider_writes, texts, wait_for_ephemeral

ANSWER_WITHIN_S = 30  # SPEC section 8: the user hears back within 30 s
WEB = 12345  # web-server-01, with snapshots 801 (newest) and 798 (oldest)
DB = 12346  # db-server-01, no snapshots
AUTH_MESSAGE = "The provider rejected the bot's API token; an admin must fix `VPS_API_TOKEN`."
UNAVAILABLE = "The provider is unreachable or failing right now; nothing was changed."


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def make_stack(tmp_path) -> Iterator:
    started: list[LocalStack] = []

    def make(**kw) -> LocalStack:
        kw.setdefault("create_seconds", 1.0)
        kw.setdefault("restore_seconds", 1.0)
        kw.setdefault("poll_seconds", 0.2)
        db = tmp_path / f"surface-{len(started)}.db"
        stack = LocalStack(database_url=f"sqlite:///{db}", **kw).start()
        started.append(stack)
        return stack

    yield make
    for stack in started:
        invalid = stack.slack.invalid_payloads
        stack.stop()
        assert invalid == [], f"Slack would refuse these payloads: {invalid}"


@pytest.fixture
def stack(make_stack) -> LocalStack:
    return make_stack()


def provider_calls(stack: LocalStack) -> int:
    return sum(stack.sim.state.calls.values())


def count(stack: LocalStack, table) -> int:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        return s.execute(select(func.count()).select_from(table)).scalar_one()


def ephemeral(stack: LocalStack, user: str, needle: str, timeout: float = 10.0):
    """The newest ephemeral to ``user`` whose text contains ``needle`` (waits for it)."""

    def find():
        return next(
            (e for e in reversed(stack.slack.ephemerals(user=user)) if needle in (e.text or "")),
            None,
        )

    try:
        return wait_until(find, timeout, interval=0.05, what=f"{needle!r} told to {user}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {user} was told: {texts(stack, user)}") from None


def listed_ids(blocks) -> list[int]:
    """Snapshot ids in the order a list message shows them (one actions block each)."""
    return [
        int(b["block_id"].removeprefix("snap_"))
        for b in blocks
        if b["type"] == "actions" and b.get("block_id", "").startswith("snap_")
    ]


def ack_json(response: httpx.Response) -> dict:
    """The ack's body as Slack reads it: JSON, or plain text (Bolt's ack(text=...))."""
    assert response.status_code == 200, response.text
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return {"text": response.text} if response.content else {}


def add_snapshots(stack: LocalStack, server_id: int, *names: str) -> None:
    """Snapshots made behind snapbot's back (straight into the simulator's state;
    these are not HTTP calls, so they do not count as provider calls)."""
    for name in names:
        stack.sim.state.create_snapshot({"server_id": server_id, "name": name})


# -- verification: nothing happens for an unsigned or stale request -------------------------


def _assert_rejected_without_effect(stack: LocalStack, **post_kw) -> None:
    user = stack.user("U1")
    assert provider_calls(stack) == 0
    for text in ("list", "create web-server-01 forged-snapshot", "delete 801"):
        assert user.command(text, **post_kw).status_code == 401
    assert count(stack, Job) == count(stack, AuditEvent) == count(stack, SlackDelivery) == 0
    # A properly signed command afterwards is answered: everything sent before it had
    # its chance to reach the provider, and nothing did.
    assert user.command("list db-server-01").status_code == 200
    wait_for_ephemeral(stack, "U1", "does not exist")
    assert set(stack.sim.state.calls) == {"GET snapshots/"}  # the valid command's lookup
    assert count(stack, Job) == count(stack, SlackDelivery) == 1
    with session_scope(stack.runtime.engine, readonly=True) as s:
        actions = {e.action for e in repo.latest_audit(s, limit=100)}
    assert actions == {"snapshot.list"}
    assert len(texts(stack, "U1")) == 1


def test_a_request_with_a_bad_signature_gets_401_and_reaches_nothing(stack):
    _assert_rejected_without_effect(stack, bad_signature=True)


def test_a_request_signed_more_than_five_minutes_ago_gets_401_and_reaches_nothing(stack):
    _assert_rejected_without_effect(stack, timestamp=int(time.time()) - 6 * 60)


def test_a_replayed_request_is_acknowledged_but_acted_on_once(stack):
    body = slash_command_body(
        "create web-server-01 replayed-once",
        user_id="U1",
        response_url=stack.slack.response_url("replay", channel="C1", user="U1"),
    )
    assert stack.client.post(body).status_code == 200
    assert stack.client.post(body, retry_num=1).status_code == 200
    wait_until(lambda: channel_messages(stack), what="the create's channel message")
    wait_until(lambda: count(stack, Watch) == 1, what="the snapshot watched")
    assert stack.sim.state.calls["POST snapshots/"] == 1
    assert count(stack, Job) == 1


def test_a_replayed_button_press_modal_submission_or_help_is_done_once(stack):
    """Every listener path stores the request's key with its job or audit row."""
    fake, user = stack.slack, stack.user("U1")
    user.command("delete 798")
    prompt = ephemeral(stack, "U1", "Delete snapshot")
    press = button_press_body(
        prompt,
        ids.DELETE_CONFIRM,
        user_id="U1",
        response_url=fake.response_url("press", channel="C1", user="U1"),
    )
    submit = view_submission_body(
        ids.CREATE_MODAL,
        {
            ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: "12345"},
            ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: "submitted-once"},
            ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: None},
        },
        user_id="U1",
        private_metadata=door.seal_opener(stack.deps, Actor(user="U1", channel="C1")),
    )
    help_body = slash_command_body("help", user_id="U1")
    for body in (press, submit, help_body):
        for retry in (None, 1, 2):
            assert stack.client.post(body, retry_num=retry).status_code == 200
    wait_until(lambda: count(stack, Watch) == 1, what="the modal's snapshot watched")
    wait_until(lambda: stack.sim.state.calls["DELETE snapshots/{id}/"] == 1, what="the delete done")
    stack.wait_settled(HANG_GUARD_S)
    assert stack.sim.state.calls["DELETE snapshots/{id}/"] == 1
    assert stack.sim.state.calls["POST snapshots/"] == 1
    with session_scope(stack.runtime.engine, readonly=True) as s:
        actions = [e.action for e in repo.latest_audit(s, limit=100)]
    assert actions.count("command.help") == 1
    assert actions.count("provider.delete") == 1 and actions.count("provider.create") == 1


# -- list -------------------------------------------------------------------------------


def test_list_shows_every_server_newest_first_with_restore_and_delete_buttons(stack):
    add_snapshots(stack, DB, "db-nightly")  # created now: the newest of all
    assert stack.user("U1").command("list").status_code == 200
    shown = ephemeral(stack, "U1", "3 snapshot(s) for all servers")
    newest = stack.sim.state.list_snapshots()["results"][0]["id"]
    assert listed_ids(shown.blocks) == [newest, 801, 798]
    text = json.dumps(shown.blocks)
    for needle in ("db-nightly", "db-server-01", "pre-migration-snapshot", "web-server-01"):
        assert needle in text
    assert "5.0 GB" in text and "Before major migration" in text and "completed" in text
    for snapshot_id in (newest, 801, 798):
        _, restore = find_button(shown.blocks, ids.RESTORE_OPEN, value=str(snapshot_id))
        _, delete = find_button(shown.blocks, ids.DELETE_OPEN, value=str(snapshot_id))
        assert restore["text"]["text"] == "Restore…" and delete["text"]["text"] == "Delete…"
    assert provider_writes(stack) == 0


@pytest.mark.parametrize("server", ["12345", "web-server-01"])
def test_list_of_one_server_by_id_or_name_shows_only_its_snapshots(stack, server):
    add_snapshots(stack, DB, "db-nightly")
    stack.user("U1").command(f"list {server}")
    shown = ephemeral(stack, "U1", "2 snapshot(s) for web-server-01 (12345)")
    assert listed_ids(shown.blocks) == [801, 798]
    assert "db-nightly" not in json.dumps(shown.blocks)


def test_list_of_a_server_without_snapshots_by_id_says_it_has_none(stack):
    stack.user("U1").command(f"list {DB}")
    shown = ephemeral(stack, "U1", "0 snapshot(s)")
    assert "No snapshots for server 12346" in json.dumps(shown.blocks)
    assert listed_ids(shown.blocks) == []


def test_an_unknown_server_name_is_said_not_to_exist_and_nothing_is_written(stack):
    user = stack.user("U1")
    user.command("list web-server-99")
    ephemeral(stack, "U1", "Server web-server-99 does not exist")
    user.command("create web-server-99 nightly")
    wait_until(lambda: len(texts(stack, "U1")) == 2, what="the create answered")
    assert "Server web-server-99 does not exist" in texts(stack, "U1")[-1]
    assert provider_writes(stack) == 0
    assert channel_messages(stack) == []


# -- create -------------------------------------------------------------------------------


def test_create_by_arguments_posts_a_channel_message_whose_ts_the_watch_keeps(stack):
    ack = ack_json(stack.user("U1").command('create web-server-01 before-fix "testing the fix"'))
    assert "Creating" in ack["text"]
    post = stack.slack.wait_for_call(
        "chat.postMessage", lambda c: c.params["channel"] == "C1", timeout=HANG_GUARD_S
    )
    assert post.params["channel"] == "C1" and "before-fix" in post.params["text"]
    watch = wait_until(
        lambda: next(iter(_watches(stack)), None), what="the new snapshot is watched"
    )
    with session_scope(stack.runtime.engine, readonly=True) as s:
        state, ts = repo.message_by_key(s, key=watch.parent_ts)
    (parent,) = channel_messages(stack)
    assert (state, ts) == ("sent", parent.ts)
    assert watch.server_id == WEB and watch.snapshot_name == "before-fix"
    assert watch.channel == "C1" and watch.requester == "U1"
    now = wait_until(
        lambda: (
            "3-10 minutes" in json.dumps(stack.slack.message("C1", parent.ts).blocks)
            and stack.slack.message("C1", parent.ts)
        ),
        what="the channel message shows the estimate",
    )
    shown = json.dumps(now.blocks)
    assert "inconsistent" in shown and "stop the server first" in shown
    (created,) = [s for s in stack.sim.state.list_snapshots(WEB)["results"] if s["id"] > 801]
    assert created["name"] == "before-fix" and created["description"] == "testing the fix"
    assert stack.sim.state.calls["POST snapshots/"] == 1


def _watches(stack: LocalStack) -> list[Watch]:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        return repo.active_watches(s)


def test_create_without_arguments_opens_a_modal_fills_the_picker_and_creates_on_submit(stack):
    fake = stack.slack
    trigger = fake.new_trigger_id()
    body = slash_command_body(
        "create",
        user_id="U1",
        channel_id="C1",
        trigger_id=trigger,
        response_url=fake.response_url("modal", channel="C1", user="U1"),
    )
    assert stack.client.post(body).status_code == 200
    opened = fake.wait_for_call("views.open", timeout=HANG_GUARD_S)
    assert opened.ok and opened.params["trigger_id"] == trigger
    assert opened.params["view"]["callback_id"] == ids.CREATE_MODAL
    updated = fake.wait_for_call("views.update", timeout=HANG_GUARD_S)
    (view,) = fake.views()
    assert updated.ok and updated.params["view_id"] == view.id
    server_block = next(b for b in view.view["blocks"] if b.get("block_id") == "server")
    picker = server_block["element"]
    assert picker["type"] == "static_select"
    assert {o["value"]: o["text"]["text"] for o in picker["options"]} == {
        "12345": "web-server-01 (12345)"
    }
    assert provider_writes(stack) == 0

    response = stack.user("U1").submit(
        ids.CREATE_MODAL,
        {
            ids.CREATE_SERVER_BLOCK: {
                ids.CREATE_SERVER_ACTION: {"value": "12345", "text": "web-server-01 (12345)"}
            },
            ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: "from-the-modal"},
            ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: None},
        },
        private_metadata=view.view["private_metadata"],
    )
    assert response.status_code == 200 and not response.content  # closes the modal
    wait_until(lambda: _watches(stack), what="the modal's snapshot is watched")
    (message,) = channel_messages(stack)
    assert "from-the-modal" in message.text and message.channel == "C1"
    names = [s["name"] for s in stack.sim.state.list_snapshots(WEB)["results"]]
    assert "from-the-modal" in names
    assert stack.sim.state.calls["POST snapshots/"] == 1


def test_an_invalid_name_in_the_modal_is_shown_inline_and_nothing_is_sent(stack):
    response = stack.user("U1").submit(
        ids.CREATE_MODAL,
        {
            ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: "web-server-01"},
            ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: "no spaces allowed!"},
            ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: None},
        },
    )
    answer = ack_json(response)
    assert answer["response_action"] == "errors"
    assert set(answer["errors"]) == {ids.CREATE_NAME_BLOCK}
    assert "letters" in answer["errors"][ids.CREATE_NAME_BLOCK].lower()
    assert count(stack, Job) == 0
    assert provider_calls(stack) == 0


def test_an_invalid_name_by_arguments_is_refused_before_the_provider(stack):
    answer = ack_json(stack.user("U1").command('create web-server-01 "bad name!"'))
    assert "Usage" in answer["text"] and "letters" in answer["text"].lower()
    assert validate_message_blocks(answer["blocks"]) == []
    assert count(stack, Job) == 0
    assert provider_calls(stack) == 0 and provider_writes(stack) == 0


def test_at_the_limit_create_names_the_oldest_snapshot_offers_to_delete_it_and_writes_nothing(
    stack,
):
    add_snapshots(stack, WEB, "third", "fourth", "fifth")
    user = stack.user("U1")
    user.command("create web-server-01 sixth")
    refusal = ephemeral(stack, "U1", "already has 5 snapshots")
    assert "weekly-snapshot-2025-01-08" in refusal.text and "798" in refusal.text
    _, button = find_button(refusal.blocks, ids.DELETE_OPEN, value="798")
    assert "weekly-snapshot-2025-01-08" in button["text"]["text"]
    assert provider_writes(stack) == 0 and channel_messages(stack) == []

    user.press(refusal, ids.DELETE_OPEN)  # the offer leads to the usual confirmation
    prompt = ephemeral(stack, "U1", "Delete snapshot weekly-snapshot-2025-01-08?")
    find_button(prompt.blocks, ids.DELETE_CONFIRM, value="798:U1")
    assert provider_writes(stack) == 0


def test_create_in_a_channel_without_the_bot_tells_the_user_to_invite_it(stack):
    stack.slack.not_in_channels.add("C1")
    stack.user("U1").command("create web-server-01 nightly")
    told = ephemeral(stack, "U1", "/invite @snapbot")
    assert "Nothing was changed" in told.text
    assert provider_writes(stack) == 0
    assert _watches(stack) == []
    assert [s["name"] for s in stack.sim.state.list_snapshots(WEB)["results"]] == [
        "pre-migration-snapshot",
        "weekly-snapshot-2025-01-08",
    ]


# -- delete -------------------------------------------------------------------------------


def test_delete_happens_only_after_the_same_user_confirms(stack):
    alice, mallory = stack.user("UALICE"), stack.user("UMALLORY")
    alice.command("list web-server-01")
    listing = ephemeral(stack, "UALICE", "snapshot(s)")
    alice.press(listing, ids.DELETE_OPEN, value="798")
    prompt = ephemeral(stack, "UALICE", "Delete snapshot weekly-snapshot-2025-01-08?")
    _, confirm = find_button(prompt.blocks, ids.DELETE_CONFIRM)
    dialog = confirm["confirm"]
    assert dialog["title"]["text"] and dialog["confirm"]["text"] == "Delete"
    assert "weekly-snapshot-2025-01-08" in dialog["text"]["text"]
    assert provider_writes(stack) == 0

    mallory.press(prompt, ids.DELETE_CONFIRM)
    ephemeral(stack, "UMALLORY", "Only the person who asked")
    assert stack.sim.state.calls["DELETE snapshots/{id}/"] == 0

    alice.press(prompt, ids.DELETE_CONFIRM)
    wait_until(lambda: stack.sim.state.calls["DELETE snapshots/{id}/"] == 1, what="one DELETE")
    outcome = wait_until(
        lambda: next(
            (
                e
                for e in stack.slack.ephemerals(user="UALICE")
                if e.message_ts == prompt.message_ts and "deleted" in (e.text or "")
            ),
            None,
        ),
        what="the prompt replaced with the outcome",
    )
    assert outcome.history and "Snapshot 798 deleted by <@UALICE>" in outcome.text
    assert [s["id"] for s in stack.sim.state.list_snapshots(WEB)["results"]] == [801]
    replace = [r for r in stack.slack.responses() if r.payload.get("replace_original")]
    assert replace and all(r.status == 200 for r in replace)


def test_delete_command_asks_first_and_cancel_changes_nothing(stack):
    user = stack.user("U1")
    user.command("delete 801")
    prompt = ephemeral(stack, "U1", "Delete snapshot pre-migration-snapshot?")
    user.press(prompt, ids.DELETE_CANCEL)
    wait_until(
        lambda: any(
            e.message_ts == prompt.message_ts and "cancelled" in (e.text or "")
            for e in stack.slack.ephemerals(user="U1")
        ),
        what="the prompt replaced by the cancellation",
    )
    assert provider_writes(stack) == 0
    assert {s["id"] for s in stack.sim.state.list_snapshots()["results"]} == {801, 798}


# -- provider errors (SPEC section 8) --------------------------------------------------------


def test_a_rejected_provider_token_tells_the_user_an_admin_must_fix_it(make_stack):
    stack = make_stack(settings_overrides={"vps_api_token": "not-the-token"})
    stack.user("U1").command("list")
    told = ephemeral(stack, "U1", "VPS_API_TOKEN", timeout=ANSWER_WITHIN_S)
    assert AUTH_MESSAGE in told.text
    assert "not-the-token" not in told.text


def test_an_unknown_snapshot_is_said_not_to_exist(stack):
    stack.user("U1").command("delete 999")
    ephemeral(stack, "U1", "Snapshot 999 does not exist", timeout=ANSWER_WITHIN_S)
    assert provider_writes(stack) == 0


def test_a_snapshot_gone_before_the_confirmation_gets_the_providers_404_message(stack):
    user = stack.user("U1")
    user.command("delete 798")
    prompt = ephemeral(stack, "U1", "Delete snapshot")
    stack.sim.state.vanish_snapshot(798)  # deleted elsewhere meanwhile
    user.press(prompt, ids.DELETE_CONFIRM)
    told = wait_until(
        lambda: next(
            (e for e in stack.slack.ephemerals(user="U1") if "does not exist" in (e.text or "")),
            None,
        ),
        ANSWER_WITHIN_S,
        what="the 404 told",
    )
    assert "Snapshot 798 does not exist" in told.text
    assert stack.sim.state.calls["DELETE snapshots/{id}/"] == 1


def test_a_provider_refusal_is_shown_with_the_providers_reason_verbatim(stack):
    # Four snapshots: snapbot's check passes. While snapbot posts its channel message
    # (slowed down here), someone else takes the fifth place: the provider says 400.
    add_snapshots(stack, WEB, "third", "fourth")
    stack.slack.latency["chat.postMessage"] = 1.0
    stack.user("U1").command("create web-server-01 sixth")
    wait_until(
        lambda: stack.sim.state.calls["GET snapshots/"] >= 2, interval=0.01, what="the check"
    )
    add_snapshots(stack, WEB, "fifth-by-someone-else")
    told = ephemeral(stack, "U1", "The provider refused", timeout=ANSWER_WITHIN_S)
    assert (
        "Snapshot limit reached (5 per server). Delete an old snapshot before creating a new one."
        in told.text
    )
    assert stack.sim.state.calls["POST snapshots/"] == 1
    (message,) = channel_messages(stack)
    wait_until(
        lambda: "was not created" in (stack.slack.message("C1", message.ts).text or ""),
        what="the channel message shows the failure",
    )


@pytest.mark.parametrize("fault", ["fail_next", "fail_rate"])
def test_a_failing_provider_is_reported_as_failing_with_nothing_changed(stack, fault):
    if fault == "fail_next":
        stack.sim.state.fail_next(10, 503)
    else:
        stack.sim.state.fail_rate = 1.0
    stack.user("U1").command("list")
    told = ephemeral(stack, "U1", "unreachable or failing", timeout=ANSWER_WITHIN_S)
    assert UNAVAILABLE in told.text
    assert stack.sim.state.calls["GET snapshots/"] >= 2  # GETs are retried


def _fail_the_create_post(stack: LocalStack, status: int) -> None:
    """Let snapbot's checks pass, then fail the POST itself: while snapbot posts its
    channel message (slowed down here), the provider's next answer is set to fail."""
    stack.slack.latency["chat.postMessage"] = 1.0
    wait_until(
        lambda: stack.sim.state.calls["GET snapshots/"] >= 2, interval=0.01, what="the check"
    )
    stack.sim.state.fail_next(1, status)


def test_a_create_that_gets_a_5xx_is_never_sent_twice_and_the_user_is_told(stack):
    stack.user("U1").command("create web-server-01 once-only")
    _fail_the_create_post(stack, 502)
    told = ephemeral(stack, "U1", "unreachable or failing", timeout=ANSWER_WITHIN_S)
    assert stack.sim.state.calls["POST snapshots/"] == 1
    assert "/snapshot list" in told.text  # the outcome was not confirmed: look first
    (message,) = channel_messages(stack)
    wait_until(
        lambda: "was not created" in (stack.slack.message("C1", message.ts).text or ""),
        what="the channel message shows the failure",
    )
    assert _watches(stack) == []


def test_a_stopped_provider_is_reported_as_unreachable(stack):
    stack.sim.stop()
    stack.user("U1").command("delete 801")
    told = ephemeral(stack, "U1", "unreachable", timeout=ANSWER_WITHIN_S)
    assert UNAVAILABLE in told.text


def test_a_provider_url_on_a_closed_port_is_reported_as_unreachable(make_stack):
    closed = f"http://127.0.0.1:{free_port()}/api/v1/"
    stack = make_stack(settings_overrides={"vps_api_url": closed})
    stack.user("U1").command("create web-server-01 nightly")
    told = ephemeral(stack, "U1", "unreachable", timeout=ANSWER_WITHIN_S)
    assert UNAVAILABLE in told.text
    assert channel_messages(stack) == []


# -- help and usage ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "help", "frobnicate 801", "list a b c", "delete abc"])
def test_help_and_malformed_commands_answer_the_usage_ephemerally(stack, text):
    answer = ack_json(stack.user("U1").command(text))
    assert "/snapshot list [server]" in answer["text"]
    assert answer.get("response_type", "ephemeral") == "ephemeral"
    assert validate_message_blocks(answer["blocks"]) == []
    assert count(stack, Job) == 0 and provider_calls(stack) == 0
    with session_scope(stack.runtime.engine, readonly=True) as s:
        (event,) = repo.latest_audit(s, limit=5)
    assert event.action in ("command.help", "command.invalid") and event.actor == "U1"


# -- the ack never waits for the provider ------------------------------------------------------


def test_a_command_is_acknowledged_while_the_provider_has_not_answered(stack):
    # The provider holds the list until released: the ack cannot have waited for it.
    with stack.sim.state.hold("GET", "snapshots/") as held:
        response = stack.user("U1").command("list")
        assert response.status_code == 200
        assert count(stack, Job) == 1
        held.wait_arrived(1)  # the job's call is in flight, unanswered
        assert texts(stack, "U1") == []
    ephemeral(stack, "U1", "snapshot(s)", timeout=ANSWER_WITHIN_S)


def test_forty_concurrent_commands_are_all_acknowledged_while_the_provider_holds_every_call(
    stack,
):
    # No ack can wait for the provider: it answers nothing until every ack is in.
    held = stack.sim.state.hold("GET", "snapshots/")
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(40)

    def one(i: int) -> None:
        body = slash_command_body(
            "list",
            user_id=f"U{i:03d}",
            response_url=stack.slack.response_url(f"c{i}", channel="C1", user=f"U{i:03d}"),
        )
        with httpx.Client(timeout=HANG_GUARD_S) as client:
            start.wait()
            r = client.post(
                stack.url, content=body, headers=sign(stack.client.signing_secret, body)
            )
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD_S)
    assert statuses == [200] * 40
    assert count(stack, Job) == 40
    held.wait_arrived(1)  # the lists' call reached the provider, which has not answered
    held.release()
    wait_until(lambda: len(texts(stack)) >= 40, what="every list answered")
