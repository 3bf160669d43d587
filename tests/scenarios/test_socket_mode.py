"""Socket Mode end to end (SPEC 13.1): the real app (build_app, the same listeners as
over HTTP) behind slack_bolt's SocketModeHandler, whose slack_sdk client asks the fake
Slack's `apps.connections.open` for a URL and connects to its WebSocket endpoint
(snapbot_local.slack.socket_mode). Envelopes carry the same payloads the HTTP tests sign; the
provider simulator runs over loopback HTTP and counts the restores."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import func, select
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from bot.blocks import ids
from bot.services import door
from snapbot_local.harness import snapbot_env
from snapbot_local.provider import start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import (
    button_press_body,
    slash_command_body,
    view_submission_body,
)
from snapbot_local.slack.socket_mode import socket_mode_payload
from snapbot_local.stack import APP_TOKEN, BOT_TOKEN, VPS_TOKEN, LocalStack
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import Job, RestoreRequest, Watch
from tests.conftest import wait_until
from tests.e2e_helpers import channel_messages, restore_calls, texts, wait_for_ephemeral

SNAPSHOT = 801  # seeded: web-server-01's newest snapshot
EMPTY_SERVER = 12346  # db-server-01: no snapshots
WORKING_ON_LIST = ":hourglass_flowing_sand: Listing snapshots…"
NO_SNAPSHOTS = "0 snapshot(s) for server 12346"
RECONNECT_S = 30.0  # above 5 x LocalStack's socket_ping_interval, with room for a slow machine


@pytest.fixture
def make_stack(sqlite_url) -> Iterator:
    started: list[LocalStack] = []

    def make(database_url: str = sqlite_url, **kw) -> LocalStack:
        kw.setdefault("poll_seconds", 0.2)
        kw.setdefault("create_seconds", 1.0)
        kw.setdefault("restore_seconds", 1.0)
        stack = LocalStack(database_url=database_url, socket_mode=True, **kw).start()
        started.append(stack)
        return stack

    yield make
    for stack in started:
        invalid, stray = stack.slack.invalid_payloads, stack.socket.stray
        stack.stop()
        assert invalid == [], f"Slack would refuse these payloads: {invalid}"
        assert stray == [], f"the app sent what is not an ack of a sent envelope: {stray}"


@pytest.fixture
def stack(make_stack) -> LocalStack:
    return make_stack()


def jobs(stack: LocalStack) -> int:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def list_body(stack: LocalStack, name: str, user: str = "U1") -> bytes:
    """`/snapshot list 12346` with a response_url of its own, named ``name``."""
    return slash_command_body(
        f"list {EMPTY_SERVER}",
        user_id=user,
        response_url=stack.slack.response_url(name, channel="C1", user=user),
        trigger_id=stack.slack.new_trigger_id(),
    )


def socket_payload(body: bytes) -> dict:
    return socket_mode_payload(body)[1]


def answered(stack: LocalStack, name: str) -> list[str]:
    return [r.payload.get("text") or "" for r in stack.slack.responses(name) if r.status == 200]


def request_message(stack: LocalStack):
    return wait_until(
        lambda: next(
            (m for m in channel_messages(stack) if (m.text or "").startswith("Restore request #")),
            None,
        ),
        what="the restore request message",
    )


def request_row(stack: LocalStack, message) -> RestoreRequest:
    rid = int(re.search(r"Restore request #(\d+)", message.text).group(1))
    with session_scope(stack.runtime.engine, readonly=True) as s:
        return repo.get_restore_request(s, request_id=rid)


# -- the defect: every request after the first was taken for a redelivery ----------------


def test_fifty_different_commands_in_a_row_over_socket_mode_are_each_answered(stack):
    for i in range(50):
        ack = stack.send(list_body(stack, f"list-{i}"))
        assert ack.payload == {"text": WORKING_ON_LIST}
    wait_until(
        lambda: all(answered(stack, f"list-{i}") for i in range(50)),
        30,
        what="an answer to each of the 50 commands",
    )
    stack.wait_settled()
    for i in range(50):
        assert answered(stack, f"list-{i}") == [NO_SNAPSHOTS], i
    assert jobs(stack) == 50
    assert len(stack.socket.acked_ids()) == 50


def test_a_redelivered_envelope_is_acknowledged_and_acted_on_once(stack):
    socket, fake = stack.socket, stack.slack
    create = socket.deliver(
        slash_command_body(
            "create web-server-01 delivered-twice",
            user_id="U1",
            response_url=fake.response_url("create", channel="C1", user="U1"),
        )
    )
    socket.wait_ack(create)
    again = socket.redeliver(create)
    assert again.envelope_id == create.envelope_id and again.payload == create.payload
    wait_until(lambda: len(socket.acks(create)) == 2, what="the redelivery acknowledged")
    wait_until(lambda: channel_messages(stack), what="the create's channel message")
    stack.wait_settled()
    assert stack.sim.state.calls["POST snapshots/"] == 1
    assert jobs(stack) == 1
    # A second, different press of the same button (a double click) is a new request.
    stack.user("U1").command("delete 798")
    prompt = wait_until(
        lambda: next((e for e in fake.ephemerals(user="U1") if "Delete snapshot" in e.text), None),
        what="the delete prompt",
    )
    press = socket.deliver(
        button_press_body(
            prompt,
            ids.DELETE_CONFIRM,
            user_id="U1",
            response_url=fake.response_url("press", channel="C1", user="U1"),
        )
    )
    socket.wait_ack(press)
    socket.redeliver(press)
    wait_until(lambda: len(socket.acks(press)) == 2, what="the redelivered press acknowledged")
    stack.wait_settled()
    assert stack.sim.state.calls["DELETE snapshots/{id}/"] == 1


# -- the two-person restore ------------------------------------------------------------------


def test_over_socket_mode_a_restore_approved_by_a_second_person_runs_once(make_stack, db_url):
    stack = make_stack(db_url)
    ack = stack.user("UALICE").command(f"restore {SNAPSHOT} bad deploy")
    assert ack.payload == {"text": ":hourglass_flowing_sand: Opening a restore request…"}
    message = request_message(stack)
    wait_until(
        lambda: request_row(stack, message).message_ts == message.ts,
        what="the request to remember its message",
    )

    stack.user("UALICE").press(message, ids.APPROVE)
    wait_for_ephemeral(stack, "UALICE", "cannot approve your own")
    stack.wait_settled()
    assert restore_calls(stack) == 0
    assert request_row(stack, message).state == "pending"

    bob = stack.user("UBOB")
    bob.press(message, ids.APPROVE)
    bob.press(message, ids.APPROVE)  # a double click: a second, different envelope
    wait_until(
        lambda: request_row(stack, message).state == "succeeded", 30, what="the restore to end"
    )
    stack.wait_settled()
    assert restore_calls(stack) == 1
    assert request_row(stack, message).decided_by == "UBOB"


# -- the create modal --------------------------------------------------------------------------


def test_over_socket_mode_create_opens_a_modal_and_its_submission_creates_the_snapshot(stack):
    fake = stack.slack
    trigger = fake.new_trigger_id()
    body = slash_command_body(
        "create",
        user_id="U1",
        trigger_id=trigger,
        response_url=fake.response_url("modal", channel="C1", user="U1"),
    )
    assert stack.send(body).payload is None  # nothing to say: the modal is the answer
    opened = fake.wait_for_call("views.open", timeout=10)
    assert opened.ok and opened.params["trigger_id"] == trigger
    fake.wait_for_call("views.update", timeout=10)  # the server picker filled in
    (view,) = fake.views()

    submission = view_submission_body(
        ids.CREATE_MODAL,
        {
            ids.CREATE_SERVER_BLOCK: {
                ids.CREATE_SERVER_ACTION: {"value": "12345", "text": "web-server-01 (12345)"}
            },
            ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: "from-the-socket-modal"},
            ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: None},
        },
        user_id="U1",
        view_id=view.id,
        private_metadata=view.view["private_metadata"],
    )
    envelope = stack.socket.deliver(submission)
    assert envelope.accepts_response_payload and "response_url" not in envelope.payload
    assert stack.socket.wait_ack(envelope).payload is None  # closes the modal

    def watched():
        with session_scope(stack.runtime.engine, readonly=True) as s:
            return s.execute(select(func.count()).select_from(Watch)).scalar_one()

    wait_until(watched, what="the modal's snapshot is watched")
    (message,) = channel_messages(stack)
    assert "from-the-socket-modal" in message.text
    assert stack.sim.state.calls["POST snapshots/"] == 1


# -- a dropped connection ----------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["disconnect", "drop"])
def test_a_cut_connection_reconnects_and_every_acknowledged_command_is_acted_on(
    stack, cut, monkeypatch
):
    socket = stack.socket
    (first,) = socket.links
    bodies = [list_body(stack, f"before-{i}") for i in range(10)]
    # The last three are stored but held before their ack when the connection goes:
    # their acks then leave on whatever connection there is, or are lost with it.
    held_urls = {socket_payload(b)["response_url"] for b in bodies[7:]}
    release, inside = threading.Event(), threading.Semaphore(0)
    accept = door.accept

    def accept_then_hold(deps, kind, payload, **kw):
        stored = accept(deps, kind, payload, **kw)
        if payload.get("response_url") in held_urls:
            inside.release()
            assert release.wait(30), "the test never released the held acks"
        return stored

    monkeypatch.setattr(door, "accept", accept_then_hold)
    before = [socket.deliver(body) for body in bodies]
    for envelope in before[:7]:
        socket.wait_ack(envelope)
    for _ in range(3):
        assert inside.acquire(timeout=10), "a held command never reached the app"
    acked_before_the_cut = socket.acked_ids()
    assert acked_before_the_cut == {e.envelope_id for e in before[:7]}

    if cut == "disconnect":
        socket.disconnect("refresh_requested")
    else:
        socket.drop()
    release.set()
    # slack_sdk's built-in client may learn of a reset only from failing pings (when an
    # ack's send took the error, its reads see a quiet EOF): up to 5 pings, 2 s apart.
    after = [socket.deliver(list_body(stack, "after-0"), timeout=RECONNECT_S)]
    after += [socket.deliver(list_body(stack, f"after-{i}")) for i in range(1, 10)]
    assert all(e.link != first.id for e in after)
    for envelope in after:
        socket.wait_ack(envelope)
    # The client asked for a fresh URL to reconnect, as after any close.
    assert len(stack.slack.calls("apps.connections.open")) >= 2
    wait_until(lambda: not socket.links[0].open, what="the first connection closed")

    wait_until(
        lambda: all(answered(stack, f"before-{i}") for i in range(7)),
        30,
        what="an answer to every command acknowledged before the cut",
    )
    # What Slack holds no ack for it may send again: acted on once, wherever it got to.
    for envelope in before:
        if envelope.envelope_id not in socket.acked_ids():
            socket.wait_ack(socket.redeliver(envelope))
    names = [f"before-{i}" for i in range(10)] + [f"after-{i}" for i in range(10)]
    wait_until(
        lambda: all(answered(stack, name) for name in names), 30, what="every command answered"
    )
    stack.wait_settled()
    for name in names:
        assert answered(stack, name) == [NO_SNAPSHOTS], name
    assert jobs(stack) == 20


# -- the endpoint speaks what Slack speaks -----------------------------------------------------


def test_the_socket_endpoint_pings_the_client_and_refuses_a_url_it_did_not_issue(stack):
    assert stack.socket.ping()
    bad = f"ws://127.0.0.1:{stack.socket.port}/link/?ticket=forged&app_id=AFAKEAPP"
    with pytest.raises(InvalidStatus) as refused:
        connect(bad, open_timeout=5)
    assert refused.value.response.status_code == 401
    assert texts(stack, "U1") == []


def test_apps_connections_open_wants_an_app_level_token():
    with FakeSlack() as fake:
        fake.socket_mode()
        client = WebClient(base_url=fake.api_url)
        url = client.apps_connections_open(app_token=APP_TOKEN)["url"]
        assert url.startswith("ws://127.0.0.1:") and "/link/?ticket=" in url
        with pytest.raises(SlackApiError) as wrong_kind:
            client.apps_connections_open(app_token=BOT_TOKEN)
        assert wrong_kind.value.response["error"] == "not_allowed_token_type"
        with pytest.raises(SlackApiError) as none:
            client.api_call("apps.connections.open")
        assert none.value.response["error"] == "not_authed"


# -- `snapbot serve` with SLACK_APP_TOKEN: the production entry point --------------------------


@pytest.mark.slow
def test_snapbot_serve_with_an_app_token_answers_commands_over_the_socket_and_stops_on_sigterm(
    tmp_path,
):
    sim = start_simulator(token=VPS_TOKEN)
    fake = FakeSlack().start()
    socket = fake.socket_mode()
    env = snapbot_env(
        {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_URL": fake.api_url,
            "VPS_API_URL": sim.url,
            "VPS_API_TOKEN": VPS_TOKEN,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        socket.wait_for(lambda: socket.links, 60, what="`snapbot serve` to connect")
        for i in range(3):
            body = slash_command_body(
                f"list {EMPTY_SERVER}",
                user_id="U1",
                response_url=fake.response_url(f"serve-{i}", channel="C1", user="U1"),
            )
            assert socket.wait_ack(socket.deliver(body), 30).payload == {"text": WORKING_ON_LIST}
        fake.wait_for(
            lambda: all(fake.responses(f"serve-{i}") for i in range(3)),
            30,
            what="an answer to each command",
        )
        assert [r.payload["text"] for i in range(3) for r in fake.responses(f"serve-{i}")] == [
            NO_SNAPSHOTS
        ] * 3
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        fake.stop()
        sim.stop()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
