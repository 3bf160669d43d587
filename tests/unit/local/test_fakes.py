"""The fake Slack API and the request builders behave like Slack, as seen through
slack_sdk's real WebClient / WebhookClient / SignatureVerifier."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.models.blocks import ActionsBlock, ButtonElement, ConfirmObject, SectionBlock
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from snapbot_local.slack import FakeSlack
from snapbot_local.slack.blockkit import (
    assert_valid_message_blocks,
    validate_message_blocks,
    validate_view,
)
from snapbot_local.slack.signing import (
    SlackClientSim,
    block_actions_body,
    button_press_body,
    sign,
    slash_command_body,
    view_submission_body,
)

TOKEN = "xoxb-test-token"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(usergroups={"S1": ["U1", "U2"]}, not_in_channels={"CNOBOT"}) as f:
        yield f


@pytest.fixture
def client(fake: FakeSlack) -> WebClient:
    return WebClient(token=TOKEN, base_url=fake.api_url, timeout=5)


def section(text: str, block_id: str | None = None) -> dict:
    block = {"type": "section", "text": {"type": "mrkdwn", "text": text}}
    if block_id:
        block["block_id"] = block_id
    return block


def button(action_id: str, text: str = "Go", value: str = "v") -> dict:
    return {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": text},
        "value": value,
    }


# -- messages -----------------------------------------------------------------------


def test_post_message_returns_increasing_ts_and_the_messages_show_up(fake, client):
    first = client.chat_postMessage(channel="C1", text="one")
    second = client.chat_postMessage(channel="C1", text="two", blocks=[section("*two*")])
    third = client.chat_postMessage(channel="C2", text="three")

    tss = [first["ts"], second["ts"], third["ts"]]
    assert tss == sorted(tss, key=float) and len(set(tss)) == 3
    assert all(len(ts.split(".")[1]) == 6 for ts in tss)
    assert first["channel"] == "C1" and first["message"]["text"] == "one"
    assert [m.text for m in fake.messages("C1")] == ["one", "two"]
    assert fake.messages("C1")[1].blocks == [section("*two*")]
    assert fake.messages("C1")[0].user == "bot"
    assert [m.text for m in fake.messages()] == ["one", "two", "three"]
    assert fake.calls("chat.postMessage")[1].params["blocks"] == [section("*two*")]
    assert fake.invalid_payloads == [] and fake.warnings == []


def test_concurrent_posts_each_get_their_own_ts(fake):
    def post_ten(worker: int) -> None:
        client = WebClient(token=TOKEN, base_url=fake.api_url, timeout=5)
        for i in range(10):
            client.chat_postMessage(channel="C1", text=f"{worker}-{i}")

    threads = [threading.Thread(target=post_ten, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    messages = fake.messages("C1")
    assert len(messages) == 80
    assert len({m.ts for m in messages}) == 80
    assert [m.ts for m in messages] == sorted((m.ts for m in messages), key=float)


def test_update_edits_the_message_in_place_and_keeps_history(fake, client):
    ts = client.chat_postMessage(channel="C1", text="pending", blocks=[section("pending")])["ts"]
    answer = client.chat_update(channel="C1", ts=ts, text="approved", blocks=[section("done")])

    assert answer["ts"] == ts
    (message,) = fake.messages("C1")
    assert (message.ts, message.text, message.blocks) == (ts, "approved", [section("done")])
    assert message.edited
    assert message.history[0]["text"] == "pending"
    assert message.history[0]["blocks"] == [section("pending")]


def test_update_of_an_unknown_message_is_message_not_found(client):
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts="1700000000.999999", text="x")
    assert err.value.response["error"] == "message_not_found"


def test_thread_replies_permalinks_and_ephemerals(fake, client):
    parent = client.chat_postMessage(channel="C1", text="creating")["ts"]
    client.chat_postMessage(channel="C1", text="done", thread_ts=parent)

    assert [m.text for m in fake.thread("C1", parent)] == ["done"]
    assert fake.message("C1", parent).reply_count == 1
    link = client.chat_getPermalink(channel="C1", message_ts=parent)["permalink"]
    assert link == f"https://fake.slack.test/archives/C1/p{parent.replace('.', '')}"

    answer = client.chat_postEphemeral(channel="C1", user="U7", text="only you")
    (ephemeral,) = fake.ephemerals(user="U7")
    assert ephemeral.message_ts == answer["message_ts"] and ephemeral.text == "only you"
    assert fake.ephemerals(user="U8") == []
    assert len(fake.messages("C1")) == 2  # ephemerals are kept apart


def test_posting_where_the_bot_is_not_a_member_is_not_in_channel(fake, client):
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="CNOBOT", text="hello")
    assert err.value.response["error"] == "not_in_channel"
    assert fake.messages("CNOBOT") == []
    assert fake.calls("chat.postMessage")[0].ok is False


def test_missing_or_wrong_token_is_refused(fake):
    with pytest.raises(SlackApiError) as err:
        WebClient(base_url=fake.api_url).auth_test()
    assert err.value.response["error"] == "not_authed"
    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxp-user-token", base_url=fake.api_url).auth_test()
    assert err.value.response["error"] == "invalid_auth"


def test_auth_test_and_unknown_methods(fake, client):
    assert client.auth_test()["user_id"] == fake.bot_user_id == "UBOT"
    with pytest.raises(SlackApiError) as err:
        client.api_call("chat.teleport")
    assert err.value.response["error"] == "unknown_method"


def test_form_and_multipart_bodies_are_decoded_like_json(fake, client):
    blocks = [section("from a form")]
    client.api_call(
        "chat.postMessage", params={"channel": "C1", "text": "f", "blocks": json.dumps(blocks)}
    )
    client.api_call("chat.postMessage", data={"channel": "C1", "text": "multipart"})

    form, multipart = fake.messages("C1")
    assert form.blocks == blocks
    assert multipart.text == "multipart"


def test_connections_are_kept_alive(fake):
    host, port = fake.base_url.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        for text in ("a", "b"):
            conn.request(
                "POST",
                "/api/chat.postMessage",
                json.dumps({"channel": "C1", "text": text}),
                headers,
            )
            response = conn.getresponse()
            assert json.loads(response.read())["ok"] is True
            assert not response.will_close
    finally:
        conn.close()
    assert [m.text for m in fake.messages("C1")] == ["a", "b"]


# -- faults -------------------------------------------------------------------------


def test_a_429_is_retried_after_retry_after_by_slack_sdks_handler(fake):
    client = WebClient(
        token=TOKEN,
        base_url=fake.api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    fake.fail_next("chat.postMessage", 1, status=429, retry_after=0)

    assert client.chat_postMessage(channel="C1", text="eventually")["ok"]

    attempts = fake.calls("chat.postMessage")
    assert [(c.status, c.error) for c in attempts] == [(429, "ratelimited"), (200, None)]
    assert [m.text for m in fake.messages("C1")] == ["eventually"]


def test_a_429_without_a_retry_handler_carries_retry_after(fake, client):
    fake.fail_next("chat.update", 1, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts="1.0", text="x")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"
    assert err.value.response["error"] == "ratelimited"


def test_server_errors_and_injected_api_errors(fake, client):
    fake.fail_next("chat.postMessage", 1, status=500)
    fake.error_next("chat.postMessage", 1, error="channel_not_found")
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="a")
    assert err.value.response.status_code == 500
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="b")
    assert err.value.response.status_code == 200
    assert err.value.response["error"] == "channel_not_found"
    assert client.chat_postMessage(channel="C1", text="c")["ok"]
    assert [m.text for m in fake.messages("C1")] == ["c"]


def test_scopes_are_enforced_when_configured(fake, client):
    fake.scopes = {"commands", "chat:write", "usergroups:read"}
    assert client.usergroups_users_list(usergroup="S1")["ok"]
    with pytest.raises(SlackApiError) as err:
        client.users_info(user="U1")
    assert err.value.response["error"] == "missing_scope"
    assert err.value.response["needed"] == "users:read"


# -- users, groups, channels ----------------------------------------------------------


def test_usergroups_users_list_answers_from_the_configured_groups(fake, client):
    assert client.usergroups_users_list(usergroup="S1")["users"] == ["U1", "U2"]
    fake.usergroups["S2"] = ["U9"]
    assert client.usergroups_users_list(usergroup="S2")["users"] == ["U9"]
    with pytest.raises(SlackApiError) as err:
        client.usergroups_users_list(usergroup="SNOPE")
    assert err.value.response["error"] == "no_such_subteam"


def test_users_and_conversations_info_are_minimal(client):
    assert client.users_info(user="U1")["user"]["id"] == "U1"
    assert client.conversations_info(channel="C1")["channel"]["is_member"] is True
    assert client.conversations_info(channel="CNOBOT")["channel"]["is_member"] is False


# -- modals -------------------------------------------------------------------------


MODAL = {
    "type": "modal",
    "callback_id": "create_snapshot",
    "title": {"type": "plain_text", "text": "New snapshot"},
    "submit": {"type": "plain_text", "text": "Create"},
    "blocks": [
        {
            "type": "input",
            "block_id": "name",
            "label": {"type": "plain_text", "text": "Name"},
            "element": {"type": "plain_text_input", "action_id": "value"},
        }
    ],
}


def test_a_trigger_id_opens_one_modal_only(fake, client):
    view_id = client.views_open(trigger_id="123.456.abc", view=MODAL)["view"]["id"]
    with pytest.raises(SlackApiError) as err:
        client.views_open(trigger_id="123.456.abc", view=MODAL)
    assert err.value.response["error"] in ("invalid_trigger_id", "expired_trigger_id")
    assert [v.id for v in fake.views()] == [view_id]


def test_a_trigger_id_expires(fake, client):
    fake.trigger_ttl = 0.0
    trigger = fake.new_trigger_id()
    fake.wait_for(lambda: True)  # the clock moves on; no sleep needed for ttl=0
    with pytest.raises(SlackApiError) as err:
        client.views_open(trigger_id=trigger, view=MODAL)
    assert err.value.response["error"] == "expired_trigger_id"


def test_views_update_edits_the_open_modal(fake, client):
    opened = client.views_open(trigger_id=fake.new_trigger_id(), view=MODAL)["view"]
    changed = {**MODAL, "title": {"type": "plain_text", "text": "Working…"}}
    client.views_update(view_id=opened["id"], hash=opened["hash"], view=changed)
    (view,) = fake.views()
    assert view.view["title"]["text"] == "Working…" and len(view.history) == 1
    with pytest.raises(SlackApiError) as err:
        client.views_update(view_id=opened["id"], hash=opened["hash"], view=changed)
    assert err.value.response["error"] == "hash_conflict"


def test_an_invalid_modal_is_refused(fake, client):
    no_submit = {key: value for key, value in MODAL.items() if key != "submit"}
    with pytest.raises(SlackApiError) as err:
        client.views_open(trigger_id="1.2.3", view=no_submit)
    assert err.value.response["error"] == "invalid_blocks"
    assert fake.invalid_payloads[0].method == "views.open"
    # the refused call did not use up the trigger
    assert client.views_open(trigger_id="1.2.3", view=MODAL)["ok"]


# -- Block Kit validation -------------------------------------------------------------


def test_more_than_50_blocks_are_refused_and_recorded(fake, client):
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="long", blocks=[section("x")] * 51)
    assert err.value.response["error"] == "invalid_blocks"
    (invalid,) = fake.invalid_payloads
    assert invalid.method == "chat.postMessage"
    assert any("51 blocks" in p for p in invalid.problems)
    assert fake.messages("C1") == []


def test_a_button_text_over_75_characters_is_refused(fake, client):
    blocks = [{"type": "actions", "elements": [button("go", text="x" * 80)]}]
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="t", blocks=blocks)
    assert err.value.response["error"] == "invalid_blocks"
    assert any("80 characters" in p for p in fake.invalid_payloads[0].problems)


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        ([section("a", "same"), section("b", "same")], "block_id 'same' already used"),
        ([{"type": "actions", "elements": [button("a"), button("a")]}], "unique within a block"),
        ([section("x" * 3001)], "3001 characters"),
        ([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}], "151 characters"),
        ([{"type": "actions", "elements": [button("a", value="v" * 2001)]}], "2001 characters"),
        ([{"type": "actions", "elements": [button("a" * 256)]}], "256 characters"),
        ([section("")], "empty"),
        ([{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}], "must be plain_text"),
        ([{"type": "sektion", "text": {"type": "mrkdwn", "text": "s"}}], "unknown block type"),
    ],
)
def test_block_kit_limits(blocks, expected):
    problems = validate_message_blocks(blocks)
    assert any(expected in p for p in problems), problems


def test_confirm_dialog_limits():
    confirm = {
        "title": {"type": "plain_text", "text": "t" * 101},
        "text": {"type": "mrkdwn", "text": "x" * 301},
        "confirm": {"type": "plain_text", "text": "c" * 31},
        "deny": {"type": "plain_text", "text": "Cancel"},
    }
    blocks = [{"type": "actions", "elements": [{**button("del"), "confirm": confirm}]}]
    problems = "\n".join(validate_message_blocks(blocks))
    assert "confirm.title.text has 101 characters" in problems
    assert "confirm.text.text has 301 characters" in problems
    assert "confirm.confirm.text has 31 characters" in problems
    assert "deny" not in problems


def test_blocks_built_with_slack_sdk_models_pass():
    confirm = ConfirmObject(
        title="Delete?", text="It cannot be undone.", confirm="Delete", deny="Keep"
    )
    blocks = [
        SectionBlock(block_id="s", text="*web-server-01*"),
        ActionsBlock(
            block_id="a",
            elements=[
                ButtonElement(action_id="restore", text="Restore…", value="801"),
                ButtonElement(
                    action_id="delete", text="Delete…", value="801", style="danger", confirm=confirm
                ),
            ],
        ),
    ]
    assert_valid_message_blocks(blocks)
    assert_valid_message_blocks([b.to_dict() for b in blocks])


def test_validate_view_checks_modal_limits():
    assert validate_view(MODAL) == []
    long_title = {**MODAL, "title": {"type": "plain_text", "text": "t" * 25}}
    assert validate_view(long_title)
    too_many = {**MODAL, "blocks": [section("x", f"b{i}") for i in range(101)]}
    assert any("101 blocks" in p for p in validate_view(too_many))


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_blocks_without_fallback_text_are_a_warning_not_an_error(fake, client):
    client.chat_postMessage(channel="C1", blocks=[section("no fallback")])
    assert len(fake.messages("C1")) == 1
    assert fake.invalid_payloads == []
    assert any("fallback" in w for w in fake.warnings)


# -- response_url ---------------------------------------------------------------------


def test_response_url_posts_are_recorded_and_limited_to_five(fake):
    url = fake.response_url("list")
    webhook = WebhookClient(url)
    for i in range(5):
        assert webhook.send(text=f"reply {i}", response_type="ephemeral").status_code == 200
    sixth = webhook.send(text="one too many")

    assert (sixth.status_code, sixth.body) == (404, "used_url")
    posts = fake.responses("list")
    assert [p.status for p in posts] == [200] * 5 + [404]
    assert posts[0].payload == {"text": "reply 0", "response_type": "ephemeral"}


def test_response_url_with_context_updates_what_the_user_sees(fake, client):
    ts = client.chat_postMessage(channel="C1", text="Approve?", blocks=[section("Approve?")])["ts"]
    url = fake.response_url("press", channel="C1", user="U2", message_ts=ts)
    webhook = WebhookClient(url)

    webhook.send(text="You cannot approve your own request.")
    webhook.send(text="Approved by <@U2>", blocks=[section("Approved")], replace_original=True)

    assert [e.text for e in fake.ephemerals(user="U2")] == ["You cannot approve your own request."]
    message = fake.message("C1", ts)
    assert message.text == "Approved by <@U2>" and message.blocks == [section("Approved")]

    webhook.send(delete_original=True)
    assert fake.message("C1", ts) is None


def test_invalid_blocks_on_a_response_url_are_refused(fake):
    response = WebhookClient(fake.response_url()).send(text="t", blocks=[section("x")] * 51)
    assert (response.status_code, response.body) == (400, "invalid_blocks")
    assert fake.invalid_payloads[0].method == "response_url"


# -- waiting ------------------------------------------------------------------------


def test_wait_for_returns_as_soon_as_the_state_appears(fake, client):
    timer = threading.Timer(0.05, lambda: client.chat_postMessage(channel="C1", text="later"))
    timer.start()
    try:
        messages = fake.wait_for(lambda: fake.messages("C1"), timeout=5)
    finally:
        timer.join()
    assert messages[0].text == "later"
    assert fake.wait_for_call("chat.postMessage").params["text"] == "later"


def test_wait_for_times_out_with_a_dump_of_the_state(fake, client):
    client.chat_postMessage(channel="C1", text="something else")
    with pytest.raises(AssertionError) as err:
        fake.wait_for(lambda: fake.messages("C9"), timeout=0.1, what="a message in C9")
    assert "a message in C9" in str(err.value)
    assert "something else" in str(err.value)


def test_reset_forgets_calls_and_state_but_keeps_configuration(fake, client):
    client.chat_postMessage(channel="C1", text="x")
    fake.fail_next("auth.test")
    fake.reset()
    assert fake.calls() == [] and fake.messages() == []
    assert client.auth_test()["ok"]
    assert "CNOBOT" in fake.not_in_channels and fake.usergroups["S1"] == ["U1", "U2"]


def test_stop_closes_the_port(client):
    fake = FakeSlack().start()
    url = fake.api_url
    fake.stop()
    with pytest.raises(Exception):  # noqa: B017 - any connection error will do
        WebClient(token=TOKEN, base_url=url, timeout=1, retry_handlers=[]).auth_test()


# -- signing and request bodies -------------------------------------------------------


def test_signatures_verify_with_slack_sdks_verifier():
    body = slash_command_body("list web-server-01")
    headers = sign(SECRET, body)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid(
        body, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    )
    assert not SignatureVerifier("other-secret").is_valid(
        body, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    )
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    old = sign(SECRET, body, timestamp=1_600_000_000)
    assert old["X-Slack-Request-Timestamp"] == "1600000000"
    assert not verifier.is_valid(body, old["X-Slack-Request-Timestamp"], old["X-Slack-Signature"])


def test_slash_command_body_has_every_field_slack_sends():
    fields = parse_qs(
        slash_command_body(
            "restore 801 bad deploy", user_id="U2", response_url="http://r/1"
        ).decode()
    )
    every_field = (
        "token team_id team_domain channel_id channel_name user_id user_name command text "
        "api_app_id is_enterprise_install response_url trigger_id"
    )
    for name in every_field.split(" "):
        assert name in fields, name
    assert fields["command"] == ["/snapshot"] and fields["text"] == ["restore 801 bad deploy"]
    assert fields["user_id"] == ["U2"] and fields["response_url"] == ["http://r/1"]
    again = parse_qs(slash_command_body("list").decode())
    assert again["trigger_id"] != fields["trigger_id"]


def test_block_actions_body_matches_slacks_shape():
    form = parse_qs(
        block_actions_body(
            "approve", "42", user_id="U3", channel_id="C1", message_ts="1.000100"
        ).decode()
    )
    payload = json.loads(form["payload"][0])
    assert payload["type"] == "block_actions"
    assert payload["user"]["id"] == "U3" and payload["team"]["id"] == "T1"
    assert payload["container"] == {
        "type": "message",
        "message_ts": "1.000100",
        "channel_id": "C1",
        "is_ephemeral": False,
    }
    (action,) = payload["actions"]
    assert (action["action_id"], action["value"], action["type"]) == ("approve", "42", "button")
    assert payload["message"]["ts"] == "1.000100"

    ephemeral = json.loads(
        parse_qs(block_actions_body("a", "v", message_ts="2.0", is_ephemeral=True).decode())[
            "payload"
        ][0]
    )
    assert "message" not in ephemeral and ephemeral["container"]["is_ephemeral"] is True


def test_button_press_body_presses_a_button_on_a_recorded_message(fake, client):
    blocks = [
        section("snapshot 801", "s801"),
        {"type": "actions", "block_id": "a801", "elements": [button("restore", value="801")]},
        {"type": "actions", "block_id": "a802", "elements": [button("restore", value="802")]},
    ]
    client.chat_postMessage(channel="C1", text="list", blocks=blocks)
    (message,) = fake.messages("C1")

    body = button_press_body(message, "restore", value="802", user_id="U5")
    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert payload["actions"][0]["block_id"] == "a802"
    assert payload["actions"][0]["value"] == "802"
    assert payload["container"]["message_ts"] == message.ts
    assert payload["message"]["blocks"] == blocks
    with pytest.raises(LookupError):
        button_press_body(message, "approve")


def test_view_submission_body_carries_state_values():
    body = view_submission_body(
        "create_snapshot",
        {
            "server": {"value": {"value": "1", "text": "web-server-01"}},
            "name": {"value": "pre-deploy"},
        },
        user_id="U4",
        private_metadata='{"channel": "C1"}',
    )
    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert payload["type"] == "view_submission" and payload["user"]["id"] == "U4"
    view = payload["view"]
    assert view["callback_id"] == "create_snapshot"
    assert view["private_metadata"] == '{"channel": "C1"}'
    values = view["state"]["values"]
    assert values["name"]["value"] == {"type": "plain_text_input", "value": "pre-deploy"}
    assert values["server"]["value"]["selected_option"]["value"] == "1"


def test_slack_client_sim_posts_signed_bodies():
    seen: list[httpx.Request] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        ok = SignatureVerifier(SECRET).is_valid(
            request.content,
            request.headers["X-Slack-Request-Timestamp"],
            request.headers["X-Slack-Signature"],
        )
        return httpx.Response(200 if ok else 401)

    with SlackClientSim(
        "http://app.test/slack/events", SECRET, transport=httpx.MockTransport(app)
    ) as slack:
        assert slack.command("list").status_code == 200
        assert slack.post(slash_command_body("list"), bad_signature=True).status_code == 401
        assert slack.post(slash_command_body("list"), retry_num=1).status_code == 200

    assert seen[2].headers["X-Slack-Retry-Num"] == "1"
    assert seen[2].headers["X-Slack-Retry-Reason"] == "http_timeout"
    assert seen[0].url.path == "/slack/events"


def test_bolt_app_starts_against_the_fake(fake):
    from slack_bolt import App

    app = App(
        token=TOKEN, signing_secret=SECRET, client=WebClient(token=TOKEN, base_url=fake.api_url)
    )
    assert app.client.base_url == fake.api_url
    assert fake.calls("auth.test"), "Bolt verifies its token with auth.test at start"
