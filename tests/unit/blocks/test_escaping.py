"""Every text from a user or the provider is escaped exactly once (SPEC §14.4).

The property: ``escape`` is undone by ``unescape`` and leaves no ``<…>`` token Slack
would read as a mention, a broadcast or a link. The builders: every field that may
carry someone else's words shows them escaped once. End to end: markup typed by a user
(escaped by Slack on the way in, as Slack does) and written by the provider (names,
descriptions, statuses, a 400's reason, the restore answer's message) reaches every
recorded Slack call escaped exactly once, never live and never twice.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.blocks import ids
from bot.blocks.answers import error_message, error_mrkdwn
from bot.blocks.audit import audit_list
from bot.blocks.format import escape, unescape
from bot.blocks.help import usage_message
from bot.blocks.notices import (
    checkpoint_notice,
    provider_down_notice,
    request_approved_notice,
    request_decided_notice,
    request_expired_notice,
    request_opened_notice,
    restore_finished_notice,
    restore_outcome_notice,
    snapshot_ended_notice,
)
from bot.blocks.pending import pending_list
from bot.blocks.refusals import cannot_post
from bot.blocks.restore import restore_finished_note, restore_outcome_note, restore_request
from bot.blocks.snapshots import (
    create_message,
    create_modal,
    create_thread_reply,
    delete_prompt,
    limit_reached,
    snapshot_list,
)
from bot.vps.models import Server, Snapshot
from snapbot_local.stack import INCIDENT_CHANNEL, LocalStack
from tests.conftest import wait_until

# What a hostile name, reason or provider sentence carries: each would ping, mention or
# link if it reached Slack as typed.
LIVE = ["<!channel>", "<@UEVIL>", "<!subteam^SEVIL>", "<http://evil.example|click>"]
MARKUP = " ".join(LIVE) + " R&D"
ONCE = escape(MARKUP)  # &lt;!channel&gt; … R&amp;D
TWICE = escape(ONCE)  # &amp;lt;!channel&amp;gt; … R&amp;amp;D
NOW = datetime(2025, 1, 16, 12, 0, tzinfo=UTC)


def slack_typed(text: str) -> str:
    """Text as Slack delivers what a user typed: &, < and > escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def live_tokens(text: str) -> list[str]:
    return [t for t in LIVE if t in text]


def strings_in(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings_in(v)]
    return []


def mrkdwn_texts(payload: dict) -> list[str]:
    """The fallback text and every mrkdwn text object of a message payload."""
    found = [payload.get("text") or ""]

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                found.append(node.get("text", ""))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(payload.get("blocks") or [])
    return found


def assert_escaped_once(payload: dict, *, expect: str = ONCE) -> None:
    texts = mrkdwn_texts(payload)
    joined = "\n".join(texts)
    assert live_tokens(joined) == [], joined
    assert TWICE not in joined and "&amp;lt;" not in joined, joined
    assert any(expect[:40] in t for t in texts), joined


# --- the function ----------------------------------------------------------------------------


@given(st.text())
def test_unescape_undoes_escape_and_escaped_text_has_no_live_token(text):
    escaped = escape(text)
    assert unescape(escaped) == text
    assert "<" not in escaped and ">" not in escaped
    assert re.search(r"<[^>]*>", escaped) is None


@given(st.text())
def test_text_as_slack_delivers_it_is_unescaped_to_what_was_typed(text):
    assert unescape(slack_typed(text)) == text


def test_a_reason_slack_delivered_escaped_is_shown_as_typed_not_escaped_twice():
    typed = unescape("R&amp;D &lt;urgent&gt;")
    assert typed == "R&D <urgent>"
    assert escape(typed) == "R&amp;D &lt;urgent&gt;"


# --- the builders ----------------------------------------------------------------------------


def hostile_request(**kw):
    fields = dict(
        id=7,
        snapshot_id=801,
        snapshot_name=MARKUP,
        snapshot_created_at=NOW - timedelta(days=1),
        server_id=12345,
        server_name=MARKUP,
        requester="UALICE",
        reason=MARKUP,
        state="pending",
        required_approvals=1,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        decided_by=None,
        outcome_detail=MARKUP,
        message_ts=None,
        safety_plan="off",
        evict_snapshot_id=None,
        evict_snapshot_name="",
        newer_snapshot_name="",
        newer_snapshot_created_at=None,
        safety_step="",
        safety_snapshot_id=None,
    )
    fields.update(kw)
    return SimpleNamespace(**fields)


SAFETY_ON = dict(
    safety_plan="on",
    evict_snapshot_id=798,
    evict_snapshot_name=MARKUP,
    newer_snapshot_name=MARKUP,
    newer_snapshot_created_at=NOW,
    safety_snapshot_id=905,
)


def hostile_watch():
    return SimpleNamespace(
        id=3,
        request_id=7,
        snapshot_name=MARKUP,
        server_name=MARKUP,
        requester="UALICE",
        kind="restore",
        last_status=MARKUP,
        started_at=NOW - timedelta(minutes=5),
    )


def hostile_snapshot() -> Snapshot:
    return Snapshot(
        id=801,
        server=Server(id=12345, name=MARKUP),
        name=MARKUP,
        status=MARKUP,
        description=MARKUP,
        created_at=NOW,
    )


BUILDERS = {
    "error": lambda: error_message(MARKUP),
    "usage": lambda: usage_message("/snapshot list", MARKUP),
    "list": lambda: snapshot_list([hostile_snapshot()], NOW, scope=MARKUP),
    "create": lambda: create_message(
        server_name=MARKUP, server_id=1, name=MARKUP, requester="U1", state="error", detail=MARKUP
    ),
    "create-unknown-state": lambda: create_message(
        server_name="s", server_id=1, name="n", requester="U1", state=MARKUP
    ),
    "create-reply": lambda: create_thread_reply(
        status=MARKUP,
        name=MARKUP,
        requester="U1",
        size_mb=1,
        duration=timedelta(seconds=5),
        snapshot_id=1,
    ),
    "limit": lambda: limit_reached(MARKUP, 798, MARKUP),
    "create-modal-note": lambda: {
        "text": "",
        "blocks": create_modal(metadata="sealed", servers=None, note=MARKUP)["blocks"],
    },
    "delete": lambda: delete_prompt(hostile_snapshot(), "U1", NOW),
    "request": lambda: restore_request(hostile_request(), [], NOW),
    "request-safety": lambda: restore_request(hostile_request(**SAFETY_ON), [], NOW),
    "request-undo": lambda: restore_request(
        hostile_request(**SAFETY_ON, state="succeeded", decided_by="UBOB"), ["UBOB"], NOW
    ),
    "request-opted-out": lambda: restore_request(hostile_request(safety_plan="opted_out"), [], NOW),
    "request-failed": lambda: restore_request(
        hostile_request(state="failed", decided_by="UBOB"), ["UBOB"], NOW
    ),
    "pending": lambda: pending_list([hostile_request()], [hostile_watch()], NOW),
    "cannot-post": lambda: error_mrkdwn(cannot_post(MARKUP, "C1")),
    "opened-notice": lambda: request_opened_notice(hostile_request(), MARKUP, None),
    "approved-notice": lambda: request_approved_notice(hostile_request(), ["UBOB"], None),
    "decided-notice": lambda: request_decided_notice(hostile_request(), "rejected", "U", None),
    "outcome-note": lambda: restore_outcome_note("succeeded", MARKUP),
    "outcome-failed-note": lambda: restore_outcome_note("failed", MARKUP),
    "outcome-notice": lambda: restore_outcome_notice(hostile_request(), "failed", MARKUP, None),
    "started-notice": lambda: restore_outcome_notice(hostile_request(), "succeeded", "", None),
    "expired-notice": lambda: request_expired_notice(hostile_request(), None),
    "ended-notice": lambda: snapshot_ended_notice(hostile_watch(), MARKUP),
    "finished-note": lambda: restore_finished_note(hostile_watch(), MARKUP, "5 min"),
    "finished-notice": lambda: restore_finished_notice(hostile_watch(), MARKUP, "5 min", None),
    "provider-down": lambda: provider_down_notice(MARKUP),
    "checkpoint": lambda: checkpoint_notice(MARKUP, 3, "abc"),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_builder_shows_user_and_provider_text_escaped_exactly_once(name):
    assert_escaped_once(BUILDERS[name]())


def test_audit_list_shows_hostile_targets_and_details_escaped_once():
    event = SimpleNamespace(
        id=1, at=NOW, actor="U1", action=MARKUP, target=MARKUP, detail=MARKUP, outcome="ok"
    )
    assert_escaped_once(audit_list([event]), expect=escape(MARKUP)[:40])


# --- end to end: every text path, every recorded Slack call -------------------------------------


@pytest.fixture
def stack(tmp_path):
    s = LocalStack(
        database_url=f"sqlite:///{tmp_path / 'escaping.db'}",
        poll_seconds=0.2,
        create_seconds=0.5,
        restore_seconds=0.5,
    ).start()
    yield s
    problems = s.slack.invalid_payloads
    s.stop()
    assert problems == [], f"Slack would refuse these payloads: {problems}"


def test_markup_through_every_text_path_reaches_slack_escaped_exactly_once(stack):
    state = stack.sim.state
    state.add_server(55501, MARKUP)
    hostile = state.add_snapshot(55501, MARKUP, description=MARKUP)
    odd_status = state.add_snapshot(55501, "odd-status", status=MARKUP)
    state.answer_restores_with(MARKUP)
    alice, bob = stack.user("UALICE"), stack.user("UBOB")
    acks = []

    def command(user, text: str) -> None:
        response = user.command(slack_typed(text))
        assert response.status_code == 200
        if response.headers.get("content-type", "").startswith("application/json"):
            acks.append(response.json())
        elif response.text:
            acks.append({"text": response.text})
        stack.wait_settled()  # one at a time: a fault set next is for the next command

    # Provider-written names, descriptions and statuses; a user's create description.
    command(alice, "list")
    # A provider 400 with markup in its reason. Before the create: while a snapshot is
    # watched, the watcher's poll could be the request that takes the fault.
    state.fail_next(1, 400, detail=MARKUP)
    command(alice, "list 12345")
    command(alice, f"create 12346 markup-desc {MARKUP}")
    command(alice, f"restore {odd_status} {MARKUP}")  # refused: the status is shown
    # The user's reason, provider names, the restore answer's message, in the channel,
    # the thread and the incident channel.
    command(alice, f"restore {hostile} {MARKUP}")
    request = wait_until(
        lambda: next(
            (m for m in stack.slack.messages("C1") if (m.text or "").startswith("Restore request")),
            None,
        ),
        what="the request message",
    )
    bob.press(request, ids.APPROVE)
    wait_until(
        lambda: any(
            "has left `restoring`" in (m.text or "")
            for m in stack.slack.thread(request.channel, request.ts)
        ),
        timeout=20,
        what="the restore to be followed to its end",
    )
    wait_until(
        lambda: any("markup-desc" in json.dumps(c.params) for c in stack.slack.calls()),
        what="the create to be answered",
    )
    state.fail_next(0)
    command(alice, "list")
    command(alice, "pending")
    stack.wait_settled()

    payloads = [c.params for c in stack.slack.calls() if isinstance(c.params, dict)] + acks
    everything = "\n".join(s for p in payloads for s in strings_in(p))
    assert live_tokens(everything) == [], "live markup reached Slack"
    assert "&amp;lt;" not in everything and "R&amp;amp;D" not in everything, "escaped twice"
    shown = "\n".join(t for p in payloads for t in mrkdwn_texts(p))
    for path, needle in {
        "a provider-written name": f"*{ONCE}*",
        "the restore answer's message": f"Restore started: {ONCE}",
        "a provider 400's reason": f"The provider refused: {ONCE}",
        "a provider-written status": f"is {ONCE}; only a completed snapshot",
        "the user's reason": f"*Reason:* {ONCE}",
    }.items():
        assert needle in shown, f"{path} is not shown escaped once"
    incident = "\n".join(m.text or "" for m in stack.slack.messages(INCIDENT_CHANNEL))
    assert f"Reason: {ONCE}." in incident
    # The create's description went to the provider as typed, not Slack-escaped.
    descriptions = [s["description"] for s in state.list_snapshots(12346)["results"]]
    assert MARKUP in descriptions
