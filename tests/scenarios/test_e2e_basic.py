import pytest

from bot.blocks import ids
from snapbot_local.stack import LocalStack
from tests.conftest import wait_until
from tests.e2e_helpers import (
    fresh,
    request_message,
    restore_calls,
    wait_for_ephemeral,
    wait_for_message,
    wait_for_reply,
)


@pytest.fixture
def stack(tmp_path):
    s = LocalStack(database_url=f"sqlite:///{tmp_path / 'e2e.db'}").start()
    yield s
    assert s.slack.invalid_payloads == []
    s.stop()


def test_list_shows_snapshots_newest_first(stack):
    r = stack.user("U1").command("list")
    assert r.status_code == 200
    text = wait_for_ephemeral(stack, "U1", "snapshot(s)")
    assert "2 snapshot(s)" in text


def test_restore_flow_self_approval_refused_then_second_person_restores_once(stack):
    alice, bob = stack.user("UALICE"), stack.user("UBOB")
    assert alice.command("restore 801 bad deploy").status_code == 200
    req = request_message(stack)
    assert alice.press(req, ids.APPROVE).status_code == 200
    wait_for_ephemeral(stack, "UALICE", "cannot approve your own")
    assert restore_calls(stack) == 0
    bob.press(req, ids.APPROVE)
    wait_until(lambda: restore_calls(stack) == 1, what="one restore call")
    wait_for_reply(stack, req, "Restore started")
    wait_until(
        lambda: "Approved by" in str(fresh(stack, req).blocks), what="request message updated"
    )
    bob.press(req, ids.APPROVE)
    wait_for_ephemeral(stack, "UBOB", "already")
    assert restore_calls(stack) == 1


def test_create_posts_channel_message_and_threaded_completion(stack):
    stack.user("U1").command("create web-server-01 before-fix testing the fix")
    parent = wait_for_message(stack, "before-fix")
    reply = wait_for_reply(stack, parent, "completed", timeout=15)
    assert "<@U1>" in reply.text
