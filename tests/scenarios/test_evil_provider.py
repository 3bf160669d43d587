"""An evil provider (SPEC §14.5): the real client, and the real app, against the
simulator's public fault modes over loopback HTTP.

The provider may answer without end, drip its answer a byte at a time, say 200 to a
restore that did not start, echo the bot's token back, redirect, send ids of the wrong
type, or list one snapshot id on two servers. None of it may hold a call past its
deadline, grow the worker without bound, leak the token, pass for a success, or put
two buttons with one block id in a message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from bot.blocks import ids
from bot.vps import VpsBadRequest, VpsClient, VpsUnavailable
from bot.vps.client import MAX_ANSWER_BYTES
from snapbot_local.provider import SimHandle, start_simulator
from snapbot_local.stack import INCIDENT_CHANNEL, VPS_TOKEN, LocalStack
from tests.conftest import wait_until

TOKEN = "evil-provider-test-token-0123456789"


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with start_simulator(port=0, token=TOKEN) as handle:
        yield handle


def client_for(sim: SimHandle, **kw) -> VpsClient:
    kw.setdefault("retries", 0)
    kw.setdefault("backoff_base", 0)
    return VpsClient(sim.url, TOKEN, **kw)


# --- the client ------------------------------------------------------------------------------


def test_an_endless_answer_is_cut_off_at_the_size_limit_not_read_whole(sim):
    huge = 16 * MAX_ANSWER_BYTES
    sim.state.huge_answer(huge)
    with client_for(sim) as vps, pytest.raises(VpsUnavailable) as raised:
        vps.list_snapshots()
    assert "too large" in str(raised.value)
    assert raised.value.nothing_changed
    # The client hung up: the simulator could not send the rest.
    wait_until(lambda: sim.state.stats()["streamed"] > 0, what="the simulator to give up")
    assert sim.state.stats()["streamed"] < huge


@pytest.mark.parametrize("pooled", [False, True], ids=["new connection", "pooled connection"])
def test_a_dripping_answer_ends_at_the_calls_deadline(sim, pooled):
    # ~400 bytes at 0.25 s each would take 100 s; per-read timeouts (10 s) never trip.
    with client_for(sim, deadline=1.0, retries=2) as vps:
        if pooled:
            assert vps.list_snapshots()  # leaves a kept-alive connection in the pool
        sim.state.drip_answers(0.25)
        with pytest.raises(VpsUnavailable) as raised:
            vps.list_snapshots()
    assert "timed out" in str(raised.value)


def test_a_200_to_a_restore_that_did_not_start_is_a_failure(sim):
    sim.state.lie_about_restores("error")
    with client_for(sim) as vps, pytest.raises(VpsBadRequest) as raised:
        vps.restore_snapshot(801)
    assert "could not be started" in raised.value.reason
    assert raised.value.status == 200


def test_a_restore_status_the_client_does_not_know_leaves_the_outcome_unknown(sim):
    sim.state.lie_about_restores("queued-maybe")
    with client_for(sim) as vps, pytest.raises(VpsUnavailable) as raised:
        vps.restore_snapshot(801)
    assert raised.value.nothing_changed is False
    assert sim.state.calls["POST snapshots/{id}/restore/"] == 1  # never sent twice


@pytest.mark.parametrize("call", ["restore", "list", "create-refused", "list-refused"])
def test_a_token_the_provider_echoes_is_redacted_from_every_answer(sim, call):
    sim.state.echo_token()
    with client_for(sim) as vps:
        if call == "restore":
            shown = vps.restore_snapshot(801).message
        elif call == "list":
            shown = repr(vps.list_snapshots())
        elif call == "create-refused":
            with pytest.raises(VpsBadRequest) as raised:
                vps.create_snapshot(12345, "bad name!")
            shown = str(raised.value) + raised.value.reason
        else:
            sim.state.fail_next(1, 400, detail="bad filter")
            with pytest.raises(VpsBadRequest) as raised:
                vps.list_snapshots()
            shown = str(raised.value)
    assert "[redacted]" in shown
    assert TOKEN not in shown


def test_a_redirect_is_refused_never_followed(sim):
    with start_simulator(port=0, token=TOKEN) as elsewhere:
        sim.state.redirect_to(elsewhere.url + "snapshots/801/restore/", status=307)
        with client_for(sim) as vps, pytest.raises(VpsUnavailable) as raised:
            vps.restore_snapshot(801)
        assert "redirect" in str(raised.value)
        assert elsewhere.state.stats()["total"] == 0


def test_ids_names_and_statuses_of_the_wrong_type_are_never_read_as_snapshots(sim):
    sim.state.add_snapshot(12346, "third")
    sim.state.add_snapshot(12346, "fourth")
    sim.state.wrong_types()
    with client_for(sim) as vps:
        # `true` is not snapshot 1, "12345" is not server 12345, 42 is not a name.
        assert vps.list_snapshots() == []
        assert vps.find_snapshot(1) is None


def test_one_snapshot_id_listed_on_two_servers_is_an_inconsistent_answer(sim):
    sim.state.duplicate_ids()
    with client_for(sim) as vps, pytest.raises(VpsUnavailable) as raised:
        vps.list_snapshots()
    assert "inconsistent" in str(raised.value) and "801" in str(raised.value)


def test_the_simulators_evil_modes_can_be_set_over_http_too(sim):
    import httpx

    answer = httpx.post(
        sim.admin_url + "faults",
        json={"restore_status": "error", "duplicate_ids": True, "drip_seconds": 0},
        timeout=5,
    ).json()
    assert answer["restore_status"] == "error" and answer["duplicate_ids"] is True
    httpx.post(sim.admin_url + "reset", timeout=5)
    assert sim.state.stats()["faults"]["restore_status"] is None


# --- the app -------------------------------------------------------------------------------


@pytest.fixture
def stack(db_url) -> Iterator[LocalStack]:
    s = LocalStack(database_url=db_url, poll_seconds=0.2, restore_seconds=0.5).start()
    yield s
    problems = s.slack.invalid_payloads
    s.stop()
    assert problems == [], f"Slack would refuse these payloads: {problems}"


def open_and_approve(stack: LocalStack, snapshot: int = 801):
    assert stack.user("UALICE").command(f"restore {snapshot} evil provider").status_code == 200
    request = wait_until(
        lambda: next(
            (m for m in stack.slack.messages("C1") if (m.text or "").startswith("Restore request")),
            None,
        ),
        what="the request message",
    )
    wait_until(
        lambda: any(c.method == "chat.getPermalink" for c in stack.slack.calls()),
        what="the request to be announced",
    )
    assert stack.user("UBOB").press(request, ids.APPROVE).status_code == 200
    return request


def thread_texts(stack: LocalStack, request) -> list[str]:
    return [m.text or "" for m in stack.slack.thread(request.channel, request.ts)]


def everything_stored(stack: LocalStack) -> str:
    """Every row of every table the bot writes, as text."""
    with stack.runtime.engine.connect() as conn:
        tables = ["restore_request", "audit_event", "outbox", "job", "watch"]
        return "\n".join(
            repr(tuple(row))
            for table in tables
            for row in conn.execute(text(f"SELECT * FROM {table}")).fetchall()
        )


def test_a_restore_the_provider_says_did_not_start_is_reported_failed_not_started(stack):
    stack.sim.state.lie_about_restores("error")
    request = open_and_approve(stack)
    failed = wait_until(
        lambda: next((t for t in thread_texts(stack, request) if "Restore failed" in t), None),
        what="the thread to say the restore failed",
    )
    assert "could not be started" in failed
    stack.wait_settled()
    assert not any("Restore started" in t for t in thread_texts(stack, request))
    incident = [m.text or "" for m in stack.slack.messages(INCIDENT_CHANNEL)]
    assert any("Restore #1 of *web-server-01* failed" in t for t in incident)
    assert not any(":arrows_counterclockwise:" in t for t in incident)
    with stack.runtime.engine.connect() as conn:
        state = conn.execute(text("SELECT state FROM restore_request")).scalar_one()
    assert state == "failed"


def test_a_token_echoed_in_the_restore_answer_reaches_no_thread_row_or_audit(stack):
    stack.sim.state.echo_token()
    request = open_and_approve(stack)
    started = wait_until(
        lambda: next((t for t in thread_texts(stack, request) if "Restore started" in t), None),
        what="the restore to start",
    )
    assert "[redacted]" in started
    stack.wait_settled()
    assert VPS_TOKEN not in json.dumps([c.params for c in stack.slack.calls()], default=str)
    stored = everything_stored(stack)
    assert "[redacted]" in stored  # the restore's answer was stored, without the token
    assert VPS_TOKEN not in stored


def test_a_list_with_one_id_on_two_servers_is_answered_as_an_error_with_no_buttons(stack):
    stack.sim.state.duplicate_ids()
    assert stack.user("UALICE").command("list").status_code == 200
    answer = wait_until(
        lambda: next(
            (e for e in stack.slack.ephemerals(user="UALICE") if "inconsistent" in (e.text or "")),
            None,
        ),
        what="the list to be refused",
    )
    assert "801" in answer.text
    assert stack.user("UALICE").command("restore 801 dup").status_code == 200
    wait_until(
        lambda: sum("inconsistent" in (e.text or "") for e in stack.slack.ephemerals()) >= 2,
        what="the restore request to be refused too",
    )
    stack.wait_settled()
    assert not any((m.text or "").startswith("Restore request") for m in stack.slack.messages())


@pytest.mark.slow
def test_a_dripping_provider_still_lets_the_user_hear_back(stack):
    stack.sim.state.drip_answers(0.5)
    assert stack.user("UALICE").command("list").status_code == 200
    answer = wait_until(
        lambda: next(iter(stack.slack.ephemerals(user="UALICE")), None),
        timeout=45,
        what="an answer despite the dripping provider",
    )
    assert "unreachable or failing" in answer.text
