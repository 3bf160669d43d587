"""Every Block Kit builder in bot/blocks/, on plain data, against the
checks Slack applies (snapbot_local/slack/blockkit.py): the normal case, the empty case,
and inputs far past Slack's limits (200 snapshots, 10,000-character names, reasons
and descriptions, markup characters that escaping makes longer)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bot.blocks import ids
from bot.blocks.answers import error_message, text_message
from bot.blocks.audit import AUDIT_TEXT_BUDGET, audit_list
from bot.blocks.help import usage_message
from bot.blocks.notices import incident_notice
from bot.blocks.pending import pending_list
from bot.blocks.restore import restore_request, thread_note
from bot.blocks.snapshots import (
    CREATE_ESTIMATE,
    RUNNING_SERVER_ADVICE,
    create_ended_detail,
    create_message,
    create_modal,
    create_started_detail,
    create_thread_reply,
    delete_prompt,
    limit_reached,
    snapshot_deleted,
    snapshot_list,
)
from bot.core import commands as cmd
from bot.vps.models import Server, Snapshot
from snapbot_local.slack.blockkit import (
    MAX_BLOCKS_MESSAGE,
    MAX_SECTION_TEXT,
    message_warnings,
    validate_message_blocks,
    validate_view,
)
from storage.tables import AuditEvent, RestoreRequest, Watch

NOW = datetime(2025, 1, 27, 12, 0, tzinfo=UTC)
LONG = "x" * 10_000
MARKUP = "<&>" * 3_000  # every character becomes 4 or 5 once escaped for mrkdwn


def snapshot(i: int = 801, *, name: str = "pre-migration", description: str | None = "Before it"):
    return Snapshot(
        id=i,
        server=Server(id=12345, name="web-server-01"),
        name=name,
        status="completed",
        size_mb=5120,
        created_at=NOW - timedelta(days=12, minutes=i % 1000),
        description=description,
    )


def request(state: str = "pending", *, reason: str = "bad deploy", name: str = "web-server-01"):
    return RestoreRequest(
        id=7,
        snapshot_id=801,
        snapshot_name=name,
        snapshot_created_at=NOW - timedelta(days=12),
        server_id=12345,
        server_name=name,
        requester="UALICE",
        channel="C1",
        reason=reason,
        state=state,
        required_approvals=2,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        decided_by="UBOB" if state not in ("pending", "expired") else None,
        outcome_detail=reason if state in ("failed", "interrupted") else "",
    )


def assert_sendable(payload: dict) -> dict:
    """What Slack accepts for a message: valid blocks, at most 50, a text fallback
    of at most 3,000 characters (what Slack shows in notifications), no warnings."""
    assert validate_message_blocks(payload["blocks"]) == []
    assert 0 < len(payload["blocks"]) <= MAX_BLOCKS_MESSAGE
    assert payload["text"].strip() and len(payload["text"]) <= MAX_SECTION_TEXT
    assert message_warnings(payload) == []
    for block in payload["blocks"]:
        text = (block.get("text") or {}).get("text", "")
        assert len(text) <= MAX_SECTION_TEXT
    return payload


def action_ids(payload_or_view: dict) -> set[str]:
    found = set()
    for block in payload_or_view["blocks"]:
        for element in block.get("elements") or []:
            if isinstance(element, dict) and "action_id" in element:
                found.add(element["action_id"])
    return found


# -- plain answers ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Done.", LONG, MARKUP])
def test_text_error_and_thread_notes_stay_within_limits(text):
    for builder in (text_message, error_message, thread_note):
        assert_sendable(builder(text))
    assert_sendable(incident_notice(text, "https://fake.slack.test/archives/C1/p1"))
    assert_sendable(incident_notice(text, None))


@pytest.mark.parametrize("problem", [None, "unknown subcommand 'frobnicate'", LONG, MARKUP])
def test_usage_message_carries_the_usage_and_the_problem(problem):
    payload = assert_sendable(usage_message(cmd.USAGE, problem))
    assert "/snapshot list [server]" in json.dumps(payload)
    if problem == "unknown subcommand 'frobnicate'":
        assert "frobnicate" in payload["blocks"][0]["text"]["text"]


# -- list ---------------------------------------------------------------------------------


def test_an_empty_list_says_so():
    payload = assert_sendable(snapshot_list([], NOW, scope="server 12346"))
    assert "No snapshots for server 12346." in json.dumps(payload)
    assert action_ids(payload) == set()


def test_a_list_shows_every_field_newest_first_with_both_buttons():
    snaps = [snapshot(798, name="older"), snapshot(801, name="newer")]
    snaps[0] = snaps[0].model_copy(update={"created_at": NOW - timedelta(days=20)})
    payload = assert_sendable(snapshot_list(snaps, NOW, scope="all servers"))
    text = json.dumps(payload)
    assert text.index("newer") < text.index("older")
    for needle in ("web-server-01", "12345", "completed", "5.0 GB", "12 days", "Before it"):
        assert needle in text
    actions = [b for b in payload["blocks"] if b["type"] == "actions"]
    assert [[e["value"] for e in a["elements"]] for a in actions] == [["801", "801"], ["798"] * 2]
    assert action_ids(payload) == {ids.RESTORE_OPEN, ids.DELETE_OPEN}


def test_a_list_of_200_snapshots_stays_under_50_blocks_and_says_how_many_are_hidden():
    snaps = [snapshot(i, name=f"snap-{i}") for i in range(1, 201)]
    payload = assert_sendable(snapshot_list(snaps, NOW, scope="all servers"))
    assert "200 snapshot(s)" in payload["text"]
    footer = payload["blocks"][-1]["elements"][0]["text"]
    shown = sum(1 for b in payload["blocks"] if b["type"] == "actions")
    assert f"the {200 - shown} oldest are not shown" in footer
    assert shown >= 10


def test_a_list_with_huge_names_and_descriptions_stays_within_limits():
    snaps = [
        snapshot(i, name=LONG if i % 2 else MARKUP, description=LONG if i % 3 else MARKUP)
        for i in range(1, 60)
    ]
    assert_sendable(snapshot_list(snaps, NOW, scope=LONG))
    assert_sendable(snapshot_list(snaps, NOW, scope=MARKUP))


def test_a_list_of_snapshots_without_dates_or_sizes_is_still_valid():
    bare = [Snapshot(id=i, server=Server(id=1), name="n", status="weird-status") for i in (5, 6)]
    payload = assert_sendable(snapshot_list(bare, NOW, scope="server 1"))
    assert "size pending" in json.dumps(payload)


# -- create ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state", ["starting", "in_progress", "completed", "failed", "gone", "stuck", "error", "odd"]
)
@pytest.mark.parametrize("name", ["before-fix", LONG, MARKUP])
def test_the_create_message_is_valid_in_every_state(state, name):
    payload = create_message(
        server_name=name,
        server_id=12345,
        name=name,
        requester="U1",
        state=state,
        detail=f"{CREATE_ESTIMATE} {RUNNING_SERVER_ADVICE} {name}",
        snapshot_id=802,
    )
    assert_sendable(payload)


def test_the_in_progress_create_message_carries_estimate_and_advice():
    payload = create_message(
        server_name="web-server-01",
        server_id=12345,
        name="before-fix",
        requester="U1",
        state="in_progress",
        detail=f"{CREATE_ESTIMATE} {RUNNING_SERVER_ADVICE}",
        snapshot_id=802,
    )
    text = json.dumps(assert_sendable(payload))
    assert "3-10 minutes" in text and "inconsistent" in text and "<@U1>" in text


@pytest.mark.parametrize("status", ["completed", "failed", "gone", "stuck", "error"])
@pytest.mark.parametrize("name", ["before-fix", LONG])
def test_the_create_thread_reply_is_valid_for_every_outcome(status, name):
    payload = create_thread_reply(
        status=status,
        name=name,
        requester="U1",
        size_mb=4096 if status == "completed" else None,
        duration=timedelta(minutes=7),
        snapshot_id=802,
    )
    assert "<@U1>" in assert_sendable(payload)["text"][:200]


def test_a_create_message_detail_while_running_and_once_ended():
    assert create_started_detail(None) == f"{CREATE_ESTIMATE} {RUNNING_SERVER_ADVICE}"
    assert create_started_detail("Provider says 2 min.") == (
        f"Provider says 2 min. {RUNNING_SERVER_ADVICE}"
    )
    took = timedelta(minutes=7)
    assert create_ended_detail("completed", "completed", took) == (
        "Completed in 7 min; see the thread."
    )
    assert create_ended_detail("failed", "error", took) == (
        "Ended as error after 7 min; see the thread."
    )


def test_a_deletion_is_confirmed_with_who_deleted_it():
    shown = assert_sendable(snapshot_deleted(801, "UBOB"))
    assert shown["text"] == ":wastebasket: Snapshot 801 deleted by <@UBOB>."


@pytest.mark.parametrize("oldest", ["weekly-snapshot-2025-01-08", LONG, MARKUP])
def test_the_limit_message_offers_to_delete_the_oldest(oldest):
    text = f"Server web-server-01 already has 5 snapshots; the oldest is {oldest} (id 798)."
    payload = assert_sendable(limit_reached(text, 798, oldest))
    (button,) = payload["blocks"][1]["elements"]
    assert button["action_id"] == ids.DELETE_OPEN and button["value"] == "798"


@pytest.mark.parametrize(
    "servers",
    [None, [], [(12345, "web-server-01")], [(i, LONG) for i in range(1, 250)]],
    ids=["loading", "none", "one", "250-long-names"],
)
def test_the_create_modal_is_a_valid_view(servers):
    view = create_modal(metadata="C1", servers=servers, note="Loading servers…")
    assert validate_view(view) == []
    assert view["callback_id"] == ids.CREATE_MODAL and view["private_metadata"] == "C1"
    blocks = {b.get("block_id"): b for b in view["blocks"]}
    picker = blocks[ids.CREATE_SERVER_BLOCK]["element"]
    assert picker["action_id"] == ids.CREATE_SERVER_ACTION
    assert picker["type"] == ("static_select" if servers else "plain_text_input")
    assert blocks[ids.CREATE_NAME_BLOCK]["element"]["action_id"] == ids.CREATE_NAME_ACTION
    assert blocks[ids.CREATE_DESCRIPTION_BLOCK]["optional"] is True


def test_the_create_modal_shows_a_long_note_within_limits():
    assert validate_view(create_modal(metadata="C1", servers=None, note=LONG)) == []


# -- delete ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pre-migration", LONG, MARKUP])
def test_the_delete_prompt_has_a_confirm_dialog_and_names_the_asker(name):
    payload = assert_sendable(delete_prompt(snapshot(801, name=name), "U1", NOW))
    actions = payload["blocks"][1]["elements"]
    confirm, cancel = actions
    assert confirm["action_id"] == ids.DELETE_CONFIRM and confirm["value"] == "801:U1"
    assert cancel["action_id"] == ids.DELETE_CANCEL and cancel["value"] == "801:U1"
    dialog = confirm["confirm"]
    assert dialog["confirm"]["text"] == "Delete" and dialog["deny"]["text"]
    assert len(dialog["text"]["text"]) <= 300


# -- restore requests, audit, pending ------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        "pending",
        "approved",
        "executing",
        "succeeded",
        "failed",
        "interrupted",
        "rejected",
        "cancelled",
        "expired",
    ],
)
@pytest.mark.parametrize("text", ["bad deploy", LONG, MARKUP])
def test_the_restore_request_message_is_valid_in_every_state(state, text):
    payload = assert_sendable(restore_request(request(state, reason=text, name=text), [], NOW))
    if state == "pending":
        assert action_ids(payload) == {ids.APPROVE, ids.REJECT}
    else:
        assert action_ids(payload) == set()


def test_the_pending_restore_request_warns_what_is_lost():
    payload = assert_sendable(restore_request(request(), ["UCAROL"], NOW))
    text = json.dumps(payload)
    assert "everything written to *web-server-01* since 2025-01-15 12:00 UTC, 12 days" in text
    assert "<@UCAROL>" in text and "cannot be undone" in text


def audit_event(i: int, *, detail: str = "ok", target: str = "snapshot:801") -> AuditEvent:
    return AuditEvent(
        id=i,
        at=NOW,
        actor="U1",
        action="snapshot.list",
        target=target,
        outcome="ok",
        detail=detail,
        prev_hash="0" * 64,
        hash="1" * 64,
    )


@pytest.mark.parametrize(
    "events",
    [
        [],
        [audit_event(1)],
        [audit_event(i) for i in range(1, 1001)],
        [audit_event(i, detail=LONG, target=LONG) for i in range(1, 60)],
        [audit_event(i, detail=MARKUP, target=MARKUP) for i in range(1, 60)],
    ],
    ids=["empty", "one", "1000", "long", "markup"],
)
def test_the_audit_list_stays_within_limits(events):
    payload = assert_sendable(audit_list(events))
    text = json.dumps(payload)
    if events:
        # The newest events are shown, and whatever does not fit is counted.
        assert f"#{events[0].id} " in text
        shown = sum(text.count(f"#{e.id} ") for e in events)
        hidden = len(events) - shown
        assert hidden == 0 or f"{hidden} older event(s) not shown" in text
    else:
        assert "The audit log is empty." in text


def test_the_pending_list_stays_within_limits_however_much_is_pending():
    requests = [request(reason=LONG, name=LONG) for _ in range(300)]
    watches = [
        Watch(
            kind="snapshot",
            snapshot_id=i,
            snapshot_name=LONG,
            server_id=1,
            server_name=MARKUP,
            channel="C1",
            started_at=NOW - timedelta(minutes=3),
            last_status="in_progress",
        )
        for i in range(300)
    ]
    assert_sendable(pending_list(requests, watches, NOW))
    assert "Nothing is pending" in json.dumps(assert_sendable(pending_list([], [], NOW)))


def test_a_thousand_event_audit_list_stays_within_what_slack_takes_in_one_message():
    from types import SimpleNamespace

    events = [
        SimpleNamespace(
            id=i,
            at=datetime(2026, 12, 3, tzinfo=UTC),
            actor="U0123ABCD",
            action="restore.approve",
            target=f"request:{i} snapshot:801 server:12345",
            detail="x" * 200,
            outcome="ok",
        )
        for i in range(1000, 0, -1)
    ]
    payload = audit_list(events)
    text = sum(len((b.get("text") or {}).get("text", "")) for b in payload["blocks"])
    assert text <= AUDIT_TEXT_BUDGET + 100
    assert "older event(s) not shown; use `snapbot audit export`" in str(payload["blocks"][-1])
