"""The restore confirmation modal (SPEC 9.3) on plain data: what it shows, and that
Slack takes it (slack_sdk's own validation of the view, and the fake Slack's checks)
however long or hostile the names and reasons, and however many other requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from slack_sdk.models.views import View

from bot.blocks import ids
from bot.blocks.format import from_now, local_time
from bot.blocks.restore_confirm import confirm_closed, confirm_modal, name_mismatch
from snapbot_local.slack.blockkit import validate_view
from storage.tables import RestoreRequest

NOW = datetime(2025, 1, 27, 12, 0, tzinfo=UTC)
TAKEN = datetime(2025, 1, 15, 18, 30, tzinfo=UTC)
LONG = "x" * 10_000
MARKUP = "<!channel> <@U1> <http://evil|x> &amp;" * 200
MAX_MODAL_BLOCKS = 100


def request(rid: int = 7, *, name: str = "web-server-01", reason: str = "bad deploy", **kw):
    fields = {
        "snapshot_id": 801,
        "snapshot_name": "pre-migration-snapshot",
        "snapshot_created_at": TAKEN,
        "server_id": 12345,
        "server_name": name,
        "requester": "UALICE",
        "channel": "C1",
        "reason": reason,
        "state": "pending",
        "required_approvals": 2,
        "created_at": NOW - timedelta(minutes=18),
        "expires_at": NOW + timedelta(minutes=42),
        **kw,
    }
    return RestoreRequest(id=rid, **fields)


def valid(view: dict) -> dict:
    """Slack would take it: slack_sdk's validation and the fake's, and no confirm
    object anywhere (one inside a modal closes the modal)."""
    View(**view).validate_json()
    assert validate_view(view) == []
    assert len(view["blocks"]) <= MAX_MODAL_BLOCKS
    assert '"confirm"' not in json.dumps(view)
    return view


def mrkdwn_of(node) -> list[str]:
    """Every mrkdwn text in a view: where Slack would read markup."""
    if isinstance(node, dict):
        own = [node["text"]] if node.get("type") == "mrkdwn" else []
        return own + [t for v in node.values() for t in mrkdwn_of(v)]
    if isinstance(node, list):
        return [t for v in node for t in mrkdwn_of(v)]
    return []


def text_of(view: dict) -> str:
    return json.dumps(view)


def test_the_modal_shows_the_whole_impact_preview():
    view = valid(confirm_modal(request(), {"UBOB"}, [], NOW, metadata="sealed"))
    text = text_of(view)
    assert view["callback_id"] == ids.RESTORE_CONFIRM_MODAL
    assert view["private_metadata"] == "sealed"
    assert view["submit"]["text"] == "Approve"
    assert "*web-server-01* (`12345`) will be overwritten" in text
    assert "*pre-migration-snapshot* (ID `801`" in text and "11 days ago" in text
    taken = int(TAKEN.timestamp())
    assert f"everything written to *web-server-01* since <!date^{taken}^" in text
    assert "|2025-01-15 18:30 UTC>" in text  # the fallback where the date cannot render
    assert "files, database changes" in text and "for good" in text
    assert "<@UALICE>" in text and "bad deploy" in text
    assert "Approvals so far:* <@UBOB> (1 of 2)" in text and "Still needed:* 1" in text
    assert "(in 42 min)" in text
    (field,) = [b for b in view["blocks"] if b["type"] == "input"]
    assert field["block_id"] == ids.RESTORE_CONFIRM_BLOCK
    assert field["element"]["action_id"] == ids.RESTORE_CONFIRM_ACTION
    assert field["label"]["text"] == "Type the server's name to approve"


def test_the_modal_names_the_safety_snapshot_and_the_one_deleted_for_it():
    req = request(safety_plan="on", evict_snapshot_id=790, evict_snapshot_name="oldest-one")
    text = text_of(valid(confirm_modal(req, set(), [], NOW, metadata="m")))
    assert "pre-restore-r7" in text and "*oldest-one* (ID `790`" in text
    assert "unless it is restored from the safety snapshot" in text


def test_an_opted_out_request_warns_first_that_nothing_is_kept():
    req = request(safety_plan="opted_out")
    view = valid(confirm_modal(req, set(), [], NOW, metadata="m"))
    assert "No safety snapshot" in view["blocks"][0]["text"]["text"]
    assert "for good" in text_of(view)


def test_a_newer_snapshot_is_flagged():
    req = request(
        newer_snapshot_name="before-fix", newer_snapshot_created_at=NOW - timedelta(minutes=12)
    )
    text = text_of(valid(confirm_modal(req, set(), [], NOW, metadata="m")))
    assert "a newer snapshot, *before-fix*, is 12 min old" in text


def test_other_requests_on_the_server_are_listed_and_a_long_list_is_cut():
    others = [request(rid, state="executing" if rid == 8 else "pending") for rid in range(8, 30)]
    text = text_of(valid(confirm_modal(request(), set(), others, NOW, metadata="m")))
    assert "#8 (executing)" in text and "#12 (pending)" in text
    assert "#13 " not in text and "and 17 more" in text


@pytest.mark.parametrize("hostile", [LONG, MARKUP])
def test_hostile_names_and_reasons_stay_within_limits_and_are_escaped(hostile):
    req = request(
        name=hostile,
        reason=hostile,
        snapshot_name=hostile,
        safety_plan="on",
        evict_snapshot_id=1,
        evict_snapshot_name=hostile,
        newer_snapshot_name=hostile,
        newer_snapshot_created_at=NOW,
    )
    others = [request(rid, snapshot_name=hostile) for rid in range(8, 20)]
    view = valid(
        confirm_modal(req, {f"UAPPROVER{i}" for i in range(40)}, others, NOW, metadata="m")
    )
    shown = json.dumps(mrkdwn_of(view))  # plain_text (the hint) renders no markup at all
    assert "<!channel>" not in shown and "<http://evil" not in shown and "<@U1>" not in shown
    assert len(name_mismatch(hostile)) <= 2000


def test_a_request_without_a_snapshot_time_or_approvals_still_reads():
    req = request(snapshot_created_at=None)
    text = text_of(valid(confirm_modal(req, set(), [], NOW, metadata="m")))
    assert "since the snapshot was taken" in text and "none yet (0 of 2)" in text


def test_the_closed_view_says_why_and_has_nothing_to_submit():
    view = valid(confirm_closed(7, "This request was already rejected by <@UBOB>."))
    assert "submit" not in view and "already rejected by <@UBOB>" in text_of(view)


def test_times_render_in_the_readers_zone_with_a_utc_fallback():
    assert local_time(TAKEN) == (
        f"<!date^{int(TAKEN.timestamp())}^{{date_short_pretty}} {{time}}|2025-01-15 18:30 UTC>"
    )
    assert local_time(TAKEN.replace(tzinfo=None)) == local_time(TAKEN)  # stored naive = UTC
    assert local_time(None) == "unknown time"
    assert from_now(NOW + timedelta(minutes=42, seconds=30), NOW) == "in 42 min"
    assert from_now(NOW - timedelta(seconds=1), NOW) == "now"
