"""Two-person restore approval end to end (SPEC §5), on SQLite and on PostgreSQL.

Each test runs a whole snapbot on loopback (snapbot_local.stack.LocalStack): the real
app behind HTTP, requests signed as Slack signs them, the provider simulator over real
HTTP and the fake Slack Web API. Assertions are on what people would see (the request
message, its thread, ephemerals, the incident channel), on the provider's call log and
on the audit rows.
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update

from bot.blocks import ids
from snapbot_local.slack.signing import SlackClientSim, button_press_body
from snapbot_local.stack import INCIDENT_CHANNEL, SIGNING_SECRET, VPS_TOKEN, LocalStack
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import AuditEvent, RestoreRequest
from tests.conftest import wait_until

RESTORE = "POST snapshots/{id}/restore/"
SNAPSHOT = 801  # seeded: pre-migration-snapshot of web-server-01 (12345)
SERVER = 12345


# --- the stack ------------------------------------------------------------------------------


@pytest.fixture
def start(db_url):
    """Start a LocalStack on this test's database (SQLite file or PostgreSQL schema)."""
    stacks: list[LocalStack] = []

    def _start(**kw) -> LocalStack:
        kw.setdefault("poll_seconds", 0.2)
        kw.setdefault("restore_seconds", 1.0)
        stack = LocalStack(database_url=db_url, **kw).start()
        stacks.append(stack)
        return stack

    yield _start
    for stack in stacks:
        problems = stack.slack.invalid_payloads
        stack.stop()
        assert problems == [], "Slack would have refused a payload"


# --- helpers --------------------------------------------------------------------------------


def restore_calls(stack: LocalStack) -> int:
    return stack.sim.state.calls[RESTORE]


def restore_writes(stack: LocalStack, snapshot_id: int = SNAPSHOT) -> list[float]:
    path = f"snapshots/{snapshot_id}/restore/"
    return [t for t, method, p in list(stack.sim.state.writes) if method == "POST" and p == path]


def request_id_of(message) -> int:
    return int(re.search(r"Restore request #(\d+)", message.text).group(1))


def open_request(stack: LocalStack, requester: str = "UALICE", snapshot: int = SNAPSHOT):
    before = len(stack.slack.messages("C1"))
    assert stack.user(requester).command(f"restore {snapshot} bad deploy").status_code == 200

    def posted():
        new = [
            m
            for m in stack.slack.messages("C1")[before:]
            if not m.is_reply and (m.text or "").startswith("Restore request #")
        ]
        return new[-1] if new else None

    message = wait_until(posted, what="a new restore request message")
    wait_until(
        lambda: load(stack, request_id_of(message)).message_ts == message.ts,
        what="the request to remember its message",
    )
    return message


def load(stack: LocalStack, request_id: int) -> RestoreRequest:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return repo.get_restore_request(s, request_id=request_id)


def state_of(stack: LocalStack, request_id: int) -> str:
    return load(stack, request_id).state


def quiet(stack: LocalStack, timeout: float = 15.0) -> None:
    """Every acknowledged request has been handled and every message delivered."""

    def done():
        with session_scope(stack.deps.engine, readonly=True) as s:
            return (
                repo.count_jobs(s, states=["queued", "running"]) == 0
                and repo.count_messages(s, state="pending") == 0
            )

    wait_until(done, timeout, what="all jobs done and the outbox empty")


def audit(stack: LocalStack, action: str | None = None, actor: str | None = None):
    with session_scope(stack.deps.engine, readonly=True) as s:
        rows = list(reversed(repo.latest_audit(s, limit=1000)))
    return [
        r
        for r in rows
        if (action is None or r.action == action) and (actor is None or r.actor == actor)
    ]


def ephemerals(stack: LocalStack, user: str) -> list[str]:
    return [e.text or "" for e in stack.slack.ephemerals(user=user)]


def wait_ephemeral(stack: LocalStack, user: str, needle: str, timeout: float = 10.0) -> str:
    return wait_until(
        lambda: next((t for t in ephemerals(stack, user) if needle in t), None),
        timeout,
        what=f"an ephemeral to {user} containing {needle!r}: {ephemerals(stack, user)}",
    )


def thread_texts(stack: LocalStack, message) -> list[str]:
    return [m.text or "" for m in stack.slack.thread(message.channel, message.ts)]


def wait_thread(stack: LocalStack, message, needle: str, timeout: float = 10.0) -> str:
    return wait_until(
        lambda: next((t for t in thread_texts(stack, message) if needle in t), None),
        timeout,
        what=f"a reply containing {needle!r} under the request: {thread_texts(stack, message)}",
    )


def incidents(stack: LocalStack) -> list[str]:
    return [m.text or "" for m in stack.slack.messages(INCIDENT_CHANNEL)]


def wait_incident(stack: LocalStack, needle: str, *, link_to=None, timeout: float = 10.0) -> str:
    """The incident notice containing ``needle``; with ``link_to``, it must link to that
    request message (SPEC §5.8: one concise message per event, linking to the request)."""
    notice = wait_until(
        lambda: next(
            (m for m in stack.slack.messages(INCIDENT_CHANNEL) if needle in (m.text or "")), None
        ),
        timeout,
        what=f"an incident notice containing {needle!r}: {incidents(stack)}",
    )
    if link_to is not None:
        assert permalink_path(link_to) in str(notice.blocks), f"{needle!r} does not link"
    return notice.text


def permalink_path(message) -> str:
    return f"/archives/{message.channel}/p{message.ts.replace('.', '')}"


def current(stack: LocalStack, message):
    return stack.slack.message(message.channel, message.ts)


def has_buttons(message) -> bool:
    return any(b.get("type") == "actions" for b in message.blocks or [])


def blocks_text(message) -> str:
    return str(message.blocks)


def wait_message_shows(stack: LocalStack, message, needle: str, timeout: float = 10.0):
    return wait_until(
        lambda: (m := current(stack, message)) is not None and needle in blocks_text(m) and m,
        timeout,
        what=f"the request message to show {needle!r}",
    )


def wait_edit_shows(stack: LocalStack, message, needle: str, timeout: float = 10.0) -> dict:
    """The params of the first edit of the request message Slack accepted showing
    ``needle``: a state the message passes through (the restore then ends, and the
    message moves on to show that, SPEC 13.9)."""
    return wait_until(
        lambda: next(
            (
                c.params
                for c in stack.slack.calls("chat.update")
                if c.ok and c.params.get("ts") == message.ts and needle in str(c.params["blocks"])
            ),
            None,
        ),
        timeout,
        what=f"an edit of the request message showing {needle!r}",
    )


def approve_body(stack: LocalStack, message, user: str) -> bytes:
    return button_press_body(
        message,
        ids.APPROVE,
        user_id=user,
        response_url=stack.slack.response_url(
            "button", channel=message.channel, user=user, message_ts=message.ts
        ),
    )


def test_request_message_refused_once_by_slack_is_retried_and_the_request_keeps_its_ts(start):
    stack = start()
    wait_incident(stack, "Audit checkpoint (daily")  # posted at start-up
    quiet(stack)
    stack.slack.fail_next("chat.postMessage", 1, status=500)
    req = open_request(stack)  # waits until the request row holds the message's ts
    rid = request_id_of(req)
    failed = [c for c in stack.slack.calls("chat.postMessage") if not c.ok]
    assert [c.params["channel"] for c in failed] == ["C1"]
    wait_incident(stack, "Restore requested", link_to=req)
    stack.user("UBOB").press(req, ids.APPROVE)
    wait_until(lambda: state_of(stack, rid) == "succeeded", what="the restore")
    quiet(stack)
    assert restore_calls(stack) == 1


# --- SPEC §5.2: no self-approval -----------------------------------------------------------------


def test_requester_cannot_approve_own_restore(start):
    stack = start()
    req = open_request(stack, "UALICE")
    rid = request_id_of(req)
    assert stack.user("UALICE").press(req, ids.APPROVE).status_code == 200
    text = wait_ephemeral(stack, "UALICE", "cannot approve your own")
    assert "second person" in text
    quiet(stack)
    denied = audit(stack, "restore.approve", "UALICE")
    assert [(r.outcome, r.detail, r.target) for r in denied] == [
        ("denied", "self_approval", f"request:{rid}")
    ]
    assert restore_calls(stack) == 0
    assert state_of(stack, rid) == "pending"
    assert has_buttons(current(stack, req))
    assert load(stack, rid).decided_by is None


# --- SPEC §5.4: RESTORE_APPROVALS distinct approvers ---------------------------------------------


def test_two_approvals_needed_one_approver_clicking_twice_does_not_execute(start):
    stack = start(settings_overrides={"restore_approvals": 2})
    req = open_request(stack)
    rid = request_id_of(req)
    assert "Needs 2 approval(s)" in blocks_text(req)
    bob = stack.user("UBOB")
    bob.press(req, ids.APPROVE)
    wait_ephemeral(stack, "UBOB", "1 more approval(s) needed")
    wait_message_shows(stack, req, "<@UBOB>")  # the message lists who approved so far
    bob.press(current(stack, req), ids.APPROVE)
    wait_ephemeral(stack, "UBOB", "You already approved")
    quiet(stack)
    assert restore_calls(stack) == 0
    assert state_of(stack, rid) == "pending"
    assert has_buttons(current(stack, req))
    with session_scope(stack.deps.engine, readonly=True) as s:
        assert repo.approvers_of(s, request_id=rid) == {"UBOB"}

    stack.user("UCAROL").press(current(stack, req), ids.APPROVE)
    wait_until(lambda: restore_calls(stack) == 1, what="the restore call")
    wait_until(lambda: state_of(stack, rid) == "succeeded", what="the request to succeed")
    shown = wait_edit_shows(stack, req, "the provider is restoring the server")
    assert "<@UBOB>" in str(shown["blocks"]) and "<@UCAROL>" in str(shown["blocks"])
    assert not any(b.get("type") == "actions" for b in shown["blocks"])
    quiet(stack)
    assert restore_calls(stack) == 1
    outcomes = [(r.actor, r.detail) for r in audit(stack, "restore.approve")]
    assert outcomes == [("UBOB", "record"), ("UBOB", "repeat"), ("UCAROL", "approve")]


def test_an_edit_slack_delayed_never_puts_the_buttons_back_after_the_restore(start):
    stack = start(settings_overrides={"restore_approvals": 2})
    req = open_request(stack)
    rid = request_id_of(req)
    quiet(stack)
    # The "1 approval so far" edit meets a rate limit and is sent again 2 s later,
    # after the second approval has already approved and restored.
    stack.slack.fail_next("chat.update", 1, status=429, retry_after=2)
    stack.user("UBOB").press(req, ids.APPROVE)
    wait_ephemeral(stack, "UBOB", "1 more approval(s) needed")
    stack.user("UCAROL").press(req, ids.APPROVE)
    wait_until(lambda: state_of(stack, rid) == "succeeded", what="the restore")
    wait_until(
        lambda: any(c.status == 429 for c in stack.slack.calls("chat.update")),
        what="the rate-limited edit",
    )
    quiet(stack)
    final = current(stack, req)
    assert not has_buttons(final), final.text
    assert "Approved by <@UBOB>, <@UCAROL>;" in blocks_text(final)  # restoring, or finished
    assert restore_calls(stack) == 1


# --- SPEC §5.3: SNAPSHOT_APPROVERS with user groups -----------------------------------------------


def test_only_listed_approvers_or_group_members_may_approve(start):
    stack = start(settings_overrides={"snapshot_approvers": "UBOSS,SOPS"})
    stack.slack.usergroups["SOPS"] = ["UOPS1", "UOPS2"]
    req = open_request(stack)
    rid = request_id_of(req)

    stack.user("UINTERN").press(req, ids.APPROVE)
    text = wait_ephemeral(stack, "UINTERN", "may not approve")
    assert "<@UBOSS>" in text and "<!subteam^SOPS>" in text
    stack.user("UINTERN").press(req, ids.REJECT)
    wait_ephemeral(stack, "UINTERN", "may not reject")
    quiet(stack)
    assert restore_calls(stack) == 0
    assert state_of(stack, rid) == "pending"
    assert [(r.action, r.outcome, r.detail) for r in audit(stack, actor="UINTERN")] == [
        ("restore.approve", "denied", "not_approver"),
        ("restore.reject", "denied", "not_approver"),
    ]

    stack.user("UOPS2").press(req, ids.APPROVE)  # allowed through the user group
    wait_until(lambda: restore_calls(stack) == 1, what="the restore call")
    shown = wait_message_shows(stack, req, "Approved by <@UOPS2>")
    assert not has_buttons(shown)
    assert any(
        c.params.get("usergroup") == "SOPS" for c in stack.slack.calls("usergroups.users.list")
    )


# --- SPEC §5.2/§5.3: reject and cancel --------------------------------------------------------------


def test_reject_then_approve_does_not_restore(start):
    stack = start()
    req = open_request(stack)
    rid = request_id_of(req)
    stack.user("UBOB").press(req, ids.REJECT)
    wait_until(lambda: state_of(stack, rid) == "rejected", what="the rejection")
    shown = wait_message_shows(stack, req, "Rejected by <@UBOB>")
    assert not has_buttons(shown)
    wait_thread(stack, req, "rejected: <@UBOB>")
    wait_incident(stack, f"Restore #{rid} of *web-server-01* rejected by <@UBOB>", link_to=req)

    stack.user("UCAROL").press(req, ids.APPROVE)  # the old message, buttons and all
    text = wait_ephemeral(stack, "UCAROL", "already rejected")
    assert "<@UBOB>" in text
    quiet(stack)
    assert restore_calls(stack) == 0
    assert state_of(stack, rid) == "rejected"
    assert [(r.actor, r.outcome, r.detail) for r in audit(stack, "restore.approve")] == [
        ("UCAROL", "denied", "closed")
    ]


def test_requester_cancels_with_reject(start):
    stack = start()
    req = open_request(stack, "UALICE")
    rid = request_id_of(req)
    stack.user("UALICE").press(req, ids.REJECT)
    wait_until(lambda: state_of(stack, rid) == "cancelled", what="the cancellation")
    shown = wait_message_shows(stack, req, "Cancelled by the requester <@UALICE>")
    assert not has_buttons(shown)
    wait_thread(stack, req, "cancelled by the requester")
    wait_incident(
        stack, f"Restore #{rid} of *web-server-01* cancelled by the requester", link_to=req
    )
    stack.user("UBOB").press(req, ids.APPROVE)
    wait_ephemeral(stack, "UBOB", "already cancelled by <@UALICE>")
    quiet(stack)
    assert restore_calls(stack) == 0
    assert [(r.actor, r.outcome) for r in audit(stack, "restore.cancel")] == [("UALICE", "ok")]


# --- SPEC §5.6: expiry ----------------------------------------------------------------------------


def test_expired_request_loses_its_buttons_and_refuses_a_late_approval(start):
    stack = start(settings_overrides={"approval_ttl_minutes": 0.01}, poll_seconds=0.1)
    req = open_request(stack)
    rid = request_id_of(req)
    assert has_buttons(req)
    shown = wait_message_shows(stack, req, "Expired: nobody decided", timeout=10)
    assert not has_buttons(shown)
    assert any(c.params.get("ts") == req.ts for c in stack.slack.calls("chat.update"))
    wait_thread(stack, req, "Request expired")
    wait_incident(stack, f"Restore request #{rid} of *web-server-01* expired", link_to=req)
    assert state_of(stack, rid) == "expired"

    stack.user("UBOB").press(req, ids.APPROVE)  # a client still showing the old buttons
    wait_ephemeral(stack, "UBOB", "expired")
    quiet(stack)
    assert restore_calls(stack) == 0
    assert [(r.actor, r.outcome, r.detail) for r in audit(stack, "restore.approve")] == [
        ("UBOB", "denied", "expired")
    ]
    assert len(audit(stack, "restore.expire")) == 1


# --- SPEC §5.5: the snapshot is re-read before executing ----------------------------------------------


@pytest.mark.parametrize("how", ["vanished", "deleted through the API"])
def test_snapshot_deleted_between_request_and_approval_fails_without_restore(start, how):
    stack = start()
    req = open_request(stack)
    rid = request_id_of(req)
    if how == "vanished":
        stack.sim.state.vanish_snapshot(SNAPSHOT)
    else:
        r = httpx.delete(
            f"{stack.sim.url}snapshots/{SNAPSHOT}/",
            headers={"Authorization": f"Bearer {VPS_TOKEN}"},
        )
        assert r.status_code == 204
    stack.user("UBOB").press(req, ids.APPROVE)
    wait_until(lambda: state_of(stack, rid) == "failed", what="the request to fail")
    reply = wait_thread(stack, req, "the snapshot is gone")
    assert "nothing was restored" in reply
    shown = wait_message_shows(stack, req, "the restore failed")
    assert not has_buttons(shown)
    wait_incident(stack, f"Restore #{rid} of *web-server-01* failed", link_to=req)
    quiet(stack)
    assert restore_calls(stack) == 0
    assert "the snapshot is gone" in load(stack, rid).outcome_detail


# --- SPEC §5.4: exactly once -------------------------------------------------------------------------


def test_sixteen_simultaneous_approvers_restore_exactly_once(start):
    stack = start()
    req = open_request(stack)
    rid = request_id_of(req)
    users = [f"UAPP{i:02d}" for i in range(16)]
    bodies = {u: approve_body(stack, req, u) for u in users}
    barrier = threading.Barrier(len(users))
    statuses: dict[str, int] = {}

    def press(user: str) -> None:
        with SlackClientSim(stack.url, SIGNING_SECRET) as client:
            barrier.wait()
            statuses[user] = client.post(bodies[user]).status_code

    threads = [threading.Thread(target=press, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == dict.fromkeys(users, 200)
    wait_until(lambda: state_of(stack, rid) == "succeeded", what="the restore")
    quiet(stack)
    assert restore_calls(stack) == 1
    assert len(restore_writes(stack)) == 1
    winner = load(stack, rid).decided_by
    assert winner in users
    rows = audit(stack, "restore.approve")
    assert sorted(r.actor for r in rows) == users
    assert [r.actor for r in rows if r.outcome == "ok"] == [winner]
    assert {r.detail for r in rows if r.outcome == "denied"} == {"closed"}
    # Every later click is told who already decided.
    for user in users:
        if user != winner:
            wait_ephemeral(stack, user, f"already approved by <@{winner}>")
    with session_scope(stack.deps.engine, readonly=True) as s:
        assert repo.approvers_of(s, request_id=rid) == {winner}


def test_simultaneous_approvers_with_a_quorum_of_two_restore_exactly_once(start):
    stack = start(settings_overrides={"restore_approvals": 2})
    req = open_request(stack)
    rid = request_id_of(req)
    users = [f"UAPP{i:02d}" for i in range(8)]
    bodies = {u: approve_body(stack, req, u) for u in users}
    barrier = threading.Barrier(len(users))
    statuses: dict[str, int] = {}

    def press(user: str) -> None:
        with SlackClientSim(stack.url, SIGNING_SECRET) as client:
            barrier.wait()
            statuses[user] = client.post(bodies[user]).status_code

    threads = [threading.Thread(target=press, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == dict.fromkeys(users, 200)
    # The second distinct approval executes at once; nobody waits for a sweep.
    wait_until(lambda: state_of(stack, rid) == "succeeded", timeout=10, what="the restore")
    quiet(stack)
    assert restore_calls(stack) == 1
    req_row = load(stack, rid)
    with session_scope(stack.deps.engine, readonly=True) as s:
        approvers = repo.approvers_of(s, request_id=rid)
    assert len(approvers) == 2 and req_row.decided_by in approvers
    rows = audit(stack, "restore.approve")
    assert sorted(r.detail for r in rows if r.outcome == "ok") == ["approve", "record"]
    assert {r.detail for r in rows if r.outcome == "denied"} == {"closed"}


def test_slack_redelivery_is_acknowledged_and_never_acted_on_twice(start):
    stack = start()
    req = open_request(stack)
    rid = request_id_of(req)
    body = approve_body(stack, req, "UBOB")
    assert stack.client.post(body).status_code == 200
    # Slack did not see the ack in time and sends the very same bytes again (re-signed).
    for retry in (1, 2):
        assert stack.client.post(body, retry_num=retry).status_code == 200
    wait_until(lambda: state_of(stack, rid) == "succeeded", what="the restore")
    quiet(stack)
    assert stack.client.post(body, retry_num=3).status_code == 200  # even after the fact
    quiet(stack)
    assert restore_calls(stack) == 1
    assert len(audit(stack, "restore.approve", "UBOB")) == 1
    assert len([t for t in ephemerals(stack, "UBOB") if "already" in t]) == 0
    assert len([t for t in thread_texts(stack, req) if "Restore started" in t]) == 1


# --- SPEC §5.7/§5.8: the message, its thread, the incident channel ------------------------------------


def test_approved_restore_is_shown_in_place_threaded_and_reported_to_the_incident_channel(start):
    stack = start(restore_seconds=0.5)
    req = open_request(stack, "UALICE")
    rid = request_id_of(req)
    first = blocks_text(req)
    for needle in (
        "<@UALICE>",
        "web-server-01",
        "pre-migration-snapshot",
        "bad deploy",
        "overwritten",
        "since 2025-01-15 18:30 UTC",
        "expires",
    ):
        assert needle in first, needle
    wait_incident(
        stack,
        f"wants to restore *web-server-01* from *pre-migration-snapshot* (request #{rid}",
        link_to=req,
    )

    stack.user("UBOB").press(req, ids.APPROVE)
    shown = wait_edit_shows(stack, req, "Approved by <@UBOB>; the provider is restoring")
    assert not any(b.get("type") == "actions" for b in shown["blocks"])
    assert "Restore request #" in shown["text"] and "succeeded" in shown["text"]
    started = wait_thread(stack, req, "Restore started")
    assert "restored from snapshot" in started or "being restored" in started
    finished = wait_thread(stack, req, "has left `restoring`", timeout=10)
    assert "now `running`" in finished and "<@UALICE>" in finished
    # The request message itself tells the end too (SPEC 13.9).
    ended = wait_message_shows(stack, req, "the restore is finished")
    assert "Approved by <@UBOB>" in blocks_text(ended) and "(finished)" in ended.text

    wait_incident(stack, f"Restore #{rid} of *web-server-01* approved by <@UBOB>", link_to=req)
    wait_incident(stack, f"Restore #{rid} started", link_to=req)
    wait_incident(stack, f"Restore #{rid} of *web-server-01* finished", link_to=req)
    quiet(stack)
    assert restore_calls(stack) == 1
    assert stack.sim.state.calls["GET servers/{id}/"] >= 2  # followed until it left restoring
    assert [r.action for r in audit(stack) if r.target.startswith(f"request:{rid}")][-1] == (
        "restore.finished"
    )


def test_without_a_servers_endpoint_the_thread_says_how_long_a_restore_usually_takes(start):
    stack = start()
    stack.sim.state.servers_endpoint_enabled = False
    req = open_request(stack)
    rid = request_id_of(req)
    stack.user("UBOB").press(req, ids.APPROVE)
    wait_thread(stack, req, "Restore started")
    reply = wait_thread(stack, req, "usually takes 5-15 minutes")
    assert "check the server" in reply
    quiet(stack)
    assert state_of(stack, rid) == "succeeded"
    assert restore_calls(stack) == 1


# --- SPEC §5.4: interrupted executions are reconciled, never re-sent ------------------------------------


@pytest.mark.parametrize("server_restoring", [True, False], ids=["restoring", "not-restoring"])
def test_execution_caught_in_executing_is_reconciled_from_the_provider(start, server_restoring):
    stack = start(restore_seconds=30)
    req = open_request(stack)
    rid = request_id_of(req)
    if server_restoring:
        stack.sim.state.restore_snapshot(SNAPSHOT)  # the call had reached the provider
    # As if a process died after committing `executing` and before the provider answered.
    with session_scope(stack.deps.engine) as s:
        s.execute(
            update(RestoreRequest)
            .where(RestoreRequest.id == rid)
            .values(
                state="executing",
                decided_by="UBOB",
                executing_at=stack.deps.clock() - timedelta(minutes=10),
                executor="dead-process",
            )
        )
    expected = "succeeded" if server_restoring else "interrupted"
    wait_until(lambda: state_of(stack, rid) == expected, timeout=10, what=expected)
    if server_restoring:
        wait_thread(stack, req, "confirmed from the provider")
        wait_incident(stack, f"Restore #{rid} started", link_to=req)
    else:
        reply = wait_thread(stack, req, "Restore interrupted")
        assert "will not retry" in reply and "the server is running" in reply
        wait_incident(stack, f"Restore #{rid} of *web-server-01* interrupted", link_to=req)
    quiet(stack)
    assert restore_calls(stack) == 0  # never sent again by snapbot
    status = stack.sim.state.get_server(SERVER)["status"]
    assert status == ("restoring" if server_restoring else "running")


def test_the_approval_trail_is_in_the_audit_chain(start):
    """The approval trail is in the tamper-evident log: each row names the request."""
    stack = start()
    req = open_request(stack)
    rid = request_id_of(req)
    stack.user("UALICE").press(req, ids.APPROVE)
    stack.user("UBOB").press(req, ids.APPROVE)
    wait_until(lambda: state_of(stack, rid) == "succeeded", what="the restore")
    quiet(stack)
    rows = audit(stack)
    trail = [(r.action, r.actor, r.outcome) for r in rows if f"request:{rid}" in r.target]
    assert ("restore.request", "UALICE", "ok") in trail
    assert ("restore.approve", "UALICE", "denied") in trail
    assert ("restore.approve", "UBOB", "ok") in trail
    assert ("provider.restore", "", "ok") in trail
    assert all(isinstance(r, AuditEvent) and r.prev_hash for r in rows)
    assert [r.id for r in rows] == list(range(rows[0].id, rows[0].id + len(rows)))
