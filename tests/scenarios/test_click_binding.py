"""A click is bound to its message (SPEC 14.7).

Approve and Reject act only when pressed on a message snapbot posted for that request:
the request message, a message in its thread, or its incident notice. A press whose
button value names request B while Slack says it sat on request A's message (or on
any other message) decides nothing: it is audited as denied and the clicker is told.
Every press here is a `block_actions` body signed as Slack signs it; only the
`container` (where Slack says the button was) or the value differs from a real press.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode

import pytest
from sqlalchemy import select, update

from bot.blocks import ids
from snapbot_local.slack.signing import block_actions_body, button_press_body
from snapbot_local.stack import INCIDENT_CHANNEL, LocalStack
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import Outbox, RestoreRequest
from tests.conftest import wait_until

APPROVER = "UAPPROVER1"


@pytest.fixture
def stack(db_url):
    stack = LocalStack(
        database_url=db_url,
        poll_seconds=0.2,
        restore_seconds=0.2,
        settings_overrides={"snapshot_approvers": frozenset({APPROVER})},
    ).start()
    yield stack
    problems = stack.slack.invalid_payloads
    stack.stop()
    assert problems == [], "Slack would have refused a payload"


def open_request(stack: LocalStack, user: str, snapshot_id: int):
    """(request row, its message) once the request message is posted and remembered."""
    assert stack.user(user).command(f"restore {snapshot_id} drill").status_code == 200
    stack.wait_settled(30)
    with session_scope(stack.runtime.engine, readonly=True) as s:
        (req,) = [
            r for r in repo.requests_in_state(s, states=["pending"]) if r.snapshot_id == snapshot_id
        ]
    assert req.message_ts
    return req, stack.slack.message(req.channel, req.message_ts)


def two_requests(stack: LocalStack):
    second = stack.sim.state.create_snapshot({"server_id": 12346, "name": "db-drill"})["id"]
    stack.sim.state.advance(10)  # completed
    return open_request(stack, "UALICE", 801), open_request(stack, "UBOB", second)


def press(stack: LocalStack, action_id: str, value: str, *, channel: str, ts: str, **container):
    """A signed press of ``action_id`` carrying ``value``, on the message Slack names by
    ``channel`` and ``ts`` (and ``container`` extras such as ``thread_ts``)."""
    body = block_actions_body(
        action_id,
        value,
        user_id=APPROVER,
        channel_id=channel,
        message_ts=ts,
        response_url=stack.slack.response_url(
            "button", channel=channel, user=APPROVER, message_ts=ts
        ),
    )
    if container:
        payload = json.loads(parse_qs(body.decode())["payload"][0])
        payload["container"].update(container)
        payload["message"].update(container)
        body = urlencode({"payload": json.dumps(payload)}).encode()
    assert stack.client.post(body).status_code == 200
    stack.wait_settled(30)


def state_of(stack: LocalStack, request_id: int) -> str:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        return repo.get_restore_request(s, request_id=request_id).state


def audit_of(stack: LocalStack, request_id: int) -> list[tuple[str, str, str]]:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        rows = reversed(repo.latest_audit(s, limit=500))
        return [
            (r.action, r.outcome, r.detail) for r in rows if r.target == f"request:{request_id}"
        ]


def told(stack: LocalStack) -> list[str]:
    return [e.text or "" for e in stack.slack.ephemerals(user=APPROVER)]


@pytest.mark.parametrize(
    ("action_id", "action"), [(ids.APPROVE, "restore.approve"), (ids.REJECT, "restore.reject")]
)
def test_a_button_on_request_a_carrying_request_b_does_nothing_to_b(stack, action_id, action):
    (a, a_message), (b, _) = two_requests(stack)
    press(stack, action_id, str(b.id), channel=a_message.channel, ts=a_message.ts)

    assert (state_of(stack, a.id), state_of(stack, b.id)) == ("pending", "pending")
    with session_scope(stack.runtime.engine, readonly=True) as s:
        assert repo.approvers_of(s, request_id=b.id) == frozenset()
    assert audit_of(stack, b.id)[-1] == (action, "denied", "not its message")
    assert stack.sim.state.calls["POST snapshots/{id}/restore/"] == 0
    assert any(
        f"not on a message snapbot posted for restore request #{b.id}" in t for t in told(stack)
    ), told(stack)


def test_a_press_on_another_message_or_in_another_channel_is_refused(stack):
    (a, a_message), _ = two_requests(stack)
    elsewhere = [
        ("C1", "1600000000.000100"),  # a message before any the fake issues
        ("C2", a_message.ts),  # the request's ts, but in another channel
        (INCIDENT_CHANNEL, a_message.ts),  # the incident channel, but not the notice
    ]
    for channel, ts in elsewhere:
        press(stack, ids.APPROVE, str(a.id), channel=channel, ts=ts)
    assert state_of(stack, a.id) == "pending"
    assert [d for _, outcome, d in audit_of(stack, a.id) if outcome == "denied"] == [
        "not its message"
    ] * 3


def test_approve_counts_on_the_request_message_in_its_thread_and_on_its_incident_notice(stack):
    (a, _), (b, _) = two_requests(stack)
    # In the request's thread (Slack names the thread in the container).
    press(
        stack, ids.APPROVE, str(a.id), channel="C1", ts="1800000000.000200", thread_ts=a.message_ts
    )
    wait_until(lambda: state_of(stack, a.id) == "succeeded", 20, what="the restore of A")

    # On B's incident notice: the outbox kept the ts Slack gave it.
    with session_scope(stack.runtime.engine, readonly=True) as s:
        _, notice_ts = repo.message_by_key(s, key=f"incident:req:{b.id}:opened")
    assert notice_ts and stack.slack.message(INCIDENT_CHANNEL, notice_ts) is not None
    press(stack, ids.APPROVE, str(b.id), channel=INCIDENT_CHANNEL, ts=notice_ts)
    wait_until(lambda: state_of(stack, b.id) == "succeeded", 20, what="the restore of B")
    assert stack.sim.state.calls["POST snapshots/{id}/restore/"] == 2
    assert not any("not on a message" in t for t in told(stack))


def test_a_real_press_on_the_request_message_still_approves(stack):
    (a, a_message), _ = two_requests(stack)
    body = button_press_body(
        a_message,
        ids.APPROVE,
        user_id=APPROVER,
        response_url=stack.slack.response_url(
            "button", channel="C1", user=APPROVER, message_ts=a_message.ts
        ),
    )
    assert stack.client.post(body).status_code == 200
    wait_until(lambda: state_of(stack, a.id) == "succeeded", 20, what="the restore")
    assert [o for act, o, _ in audit_of(stack, a.id) if act == "restore.approve"] == ["ok"]


def test_a_press_that_comes_before_the_bot_has_stored_the_messages_ts_still_counts(stack):
    """Slack shows the request message a moment before its answer (with the ts) is
    back at the bot. A press in that moment waits for the ts instead of being refused
    as 'not its message'. Staged: the request message's row is put back to 'being
    sent by someone' (claimed, no ts), the press is acknowledged, then the send ends."""
    (a, a_message), _ = two_requests(stack)
    with session_scope(stack.runtime.engine) as s:
        s.execute(
            update(Outbox)
            .where(Outbox.key == f"req:{a.id}:msg")
            .values(
                state="pending", result_ts=None, lease_until=datetime.now(UTC) + timedelta(hours=1)
            )
        )
        s.execute(update(RestoreRequest).where(RestoreRequest.id == a.id).values(message_ts=None))
    body = button_press_body(
        a_message,
        ids.APPROVE,
        user_id=APPROVER,
        response_url=stack.slack.response_url(
            "button", channel="C1", user=APPROVER, message_ts=a_message.ts
        ),
    )
    assert stack.client.post(body).status_code == 200
    with session_scope(stack.runtime.engine) as s:
        message_id = s.execute(
            select(Outbox.id).where(Outbox.key == f"req:{a.id}:msg")
        ).scalar_one()
        repo.mark_message_sent(s, message_id=message_id, now=datetime.now(UTC), ts=a_message.ts)
    wait_until(lambda: state_of(stack, a.id) == "succeeded", 30, what="the restore")
    assert ("restore.approve", "denied", "not its message") not in audit_of(stack, a.id)
    assert stack.sim.state.calls["POST snapshots/{id}/restore/"] == 1
