"""Every listener writes its audit row (SPEC §7): commands, buttons and the create modal,
driven through the loopback stack with signed requests, for success, denial and
provider errors, each with the right action, actor, channel, team, target and outcome.
Also: `/snapshot audit n`, the checkpoint posted after a restore (and what
`snapbot audit verify --checkpoint` makes of it), and the daily checkpoint with two
Duties instances on one database."""

from __future__ import annotations

import logging
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from bot.__main__ import main
from bot.blocks import ids
from bot.runtime import build_runtime
from bot.watcher import Duties
from snapbot_local.stack import INCIDENT_CHANNEL, LocalStack
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import AuditEvent, Outbox
from tests.conftest import wait_until
from tests.e2e_helpers import request_message, restore_calls, wait_for_ephemeral

SERVER = 12345  # web-server-01: snapshots 801 and 798 (vps-api.md)
EMPTY_SERVER = 12346  # db-server-01: no snapshots
CHECKPOINT = re.compile(r"Audit checkpoint \(([^)]*)\): `(\d+):([0-9a-f]{64})`")


def start(tmp_path, name: str, **kw) -> LocalStack:
    kw = {"create_seconds": 1.0, "restore_seconds": 1.0, "poll_seconds": 0.2, **kw}
    return LocalStack(database_url=f"sqlite:///{tmp_path / f'{name}.db'}", **kw).start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # No background duties: nothing but the requests below touches the provider, so a
    # fault injected for one request is met by that request.
    s = start(tmp_path_factory.mktemp("audit-listeners"), "main", start_duties=False)
    yield s
    assert s.slack.invalid_payloads == []
    s.stop()


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """Only UOPS may operate, and the provider token is wrong (401 on every call)."""
    s = start(
        tmp_path_factory.mktemp("audit-locked"),
        "locked",
        start_duties=False,
        settings_overrides={
            "snapshot_operators": frozenset({"UOPS"}),
            "vps_api_token": "not-the-providers-token",
        },
    )
    yield s
    assert s.slack.invalid_payloads == []
    s.stop()


def last_id(stack: LocalStack) -> int:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return repo.audit_head(s)[0]


def rows_after(stack: LocalStack, after: int) -> list[AuditEvent]:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return list(
            s.execute(
                select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id)
            ).scalars()
        )


def wait_row(stack: LocalStack, after: int, action: str, *, actor: str | None = None) -> AuditEvent:
    def find():
        return next(
            (
                r
                for r in rows_after(stack, after)
                if r.action == action and (actor is None or r.actor == actor)
            ),
            None,
        )

    return wait_until(find, 15, interval=0.05, what=f"an audit row {action} by {actor}")


def jobs_left(stack: LocalStack) -> int:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return repo.count_jobs(s, states=("queued", "running"))


def assert_row(row: AuditEvent, *, actor, channel, outcome, target="", team="T1") -> None:
    assert (row.actor, row.channel, row.team, row.target, row.outcome) == (
        actor,
        channel,
        team,
        target,
        outcome,
    ), row


def ephemeral_with_button(stack: LocalStack, user: str, action_id: str, needle: str = ""):
    def find():
        for e in reversed(stack.slack.ephemerals(user=user)):
            if needle in str(e.blocks) and action_id in str(e.blocks):
                return e
        return None

    return wait_until(find, 15, what=f"an ephemeral to {user} with a {action_id} button")


# --- commands -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "action", "outcome", "target"),
    [
        ("", "command.help", "ok", ""),
        ("help", "command.help", "ok", ""),
        ("list", "snapshot.list", "ok", ""),
        ("list web-server-01", "snapshot.list", "ok", "web-server-01"),
        ("pending", "pending.show", "ok", ""),
        ("audit 3", "audit.show", "ok", ""),
        ("frobnicate", "command.invalid", "denied", ""),
        ("restore abc", "command.invalid", "denied", ""),
        ('create web "unbalanced', "command.invalid", "denied", ""),
        ("create web-server-01 bad!name", "command.invalid", "denied", ""),
        ("delete 999999", "snapshot.delete", "error", "snapshot:999999"),
        ("restore 999999", "restore.request", "denied", "snapshot:999999"),
        (
            "create web-server-01 pre-migration-snapshot",
            "snapshot.create",
            "denied",
            f"server:{SERVER} name:pre-migration-snapshot",
        ),
    ],
)
def test_each_command_writes_one_row_with_who_where_what_and_outcome(
    stack, command, action, outcome, target
):
    mark = last_id(stack)
    assert stack.user("UCMD", "CCMD").command(command).status_code == 200
    row = wait_row(stack, mark, action, actor="UCMD")
    assert_row(row, actor="UCMD", channel="CCMD", outcome=outcome, target=target)
    assert row.at.tzinfo is not None and abs(datetime.now(UTC) - row.at) < timedelta(minutes=1)
    # One request, one row (once its job is done).
    wait_until(lambda: jobs_left(stack) == 0, what="the command's job to finish")
    assert [r.action for r in rows_after(stack, mark)] == [action]


def test_list_row_says_how_many_snapshots_were_shown(stack):
    mark = last_id(stack)
    stack.user("U1", "CLIST").command("list web-server-01")
    row = wait_row(stack, mark, "snapshot.list", actor="U1")
    assert re.fullmatch(r"\d+ snapshot\(s\)", row.detail) and int(row.detail.split()[0]) >= 1


def test_create_writes_the_provider_create_row_with_the_new_snapshot(stack):
    mark = last_id(stack)
    stack.user("UCREATE", "CCREATE").command(f"create {EMPTY_SERVER} audit-snap before the fix")
    row = wait_row(stack, mark, "provider.create", actor="UCREATE")
    snapshot_id = stack.sim.state.list_snapshots(EMPTY_SERVER)["results"][0]["id"]
    assert_row(
        row,
        actor="UCREATE",
        channel="CCREATE",
        outcome="ok",
        target=f"server:{EMPTY_SERVER} snapshot:{snapshot_id}",
    )
    assert row.detail == "audit-snap"


def test_create_modal_submission_writes_the_same_row(stack):
    mark = last_id(stack)
    stack.user("UMODAL", "CMODAL").submit(
        ids.CREATE_MODAL,
        {
            ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: str(EMPTY_SERVER)},
            ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: "from-the-modal"},
            ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: None},
        },
    )
    row = wait_row(stack, mark, "provider.create", actor="UMODAL")
    assert row.channel == "CMODAL" and row.outcome == "ok" and row.detail == "from-the-modal"


def test_a_create_form_refused_for_its_input_is_audited_as_denied(stack):
    mark = last_id(stack)
    r = stack.user("UMODAL", "CMODAL").submit(
        ids.CREATE_MODAL,
        {
            ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: str(EMPTY_SERVER)},
            ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: "no spaces allowed"},
            ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: None},
        },
    )
    assert r.status_code == 200 and r.json()["response_action"] == "errors"
    row = wait_row(stack, mark, "snapshot.create", actor="UMODAL")
    assert_row(
        row,
        actor="UMODAL",
        channel="CMODAL",
        outcome="denied",
        target=f"server:{EMPTY_SERVER} name:no spaces allowed",
    )
    assert row.detail.startswith("invalid form: ")


def test_delete_writes_a_row_when_asked_and_one_when_confirmed(stack):
    user = stack.user("UDEL", "CDEL")
    mark = last_id(stack)
    user.command("delete 798")
    asked = wait_row(stack, mark, "snapshot.delete_asked", actor="UDEL")
    assert_row(asked, actor="UDEL", channel="CDEL", outcome="ok", target="snapshot:798")
    assert stack.sim.state.calls["DELETE snapshots/{id}/"] == 0
    prompt = ephemeral_with_button(stack, "UDEL", ids.DELETE_CONFIRM, "798")
    user.press(prompt, ids.DELETE_CONFIRM)
    done = wait_row(stack, asked.id, "provider.delete", actor="UDEL")
    assert_row(done, actor="UDEL", channel="CDEL", outcome="ok", target="snapshot:798")
    assert stack.sim.state.calls["DELETE snapshots/{id}/"] == 1


def test_buttons_on_the_list_write_their_rows(stack):
    user = stack.user("UBTN", "CBTN")
    user.command("list web-server-01")
    listing = ephemeral_with_button(stack, "UBTN", ids.DELETE_OPEN, "801")
    mark = last_id(stack)
    user.press(listing, ids.DELETE_OPEN, value="801")
    asked = wait_row(stack, mark, "snapshot.delete_asked", actor="UBTN")
    assert_row(asked, actor="UBTN", channel="CBTN", outcome="ok", target="snapshot:801")
    prompt = ephemeral_with_button(stack, "UBTN", ids.DELETE_CANCEL, "801")
    user.press(prompt, ids.DELETE_CANCEL)
    cancelled = wait_row(stack, asked.id, "snapshot.delete_cancelled", actor="UBTN")
    assert_row(cancelled, actor="UBTN", channel="CBTN", outcome="ok", target="snapshot:801")


def test_a_button_snapbot_does_not_know_is_denied_and_audited(stack):
    user = stack.user("USTALE", "CSTALE")
    fake_message = {
        "ts": "1700000000.000100",
        "channel": "CSTALE",
        "blocks": [
            {
                "type": "actions",
                "block_id": "b",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "retired_button",
                        "text": {"type": "plain_text", "text": "Old"},
                        "value": "1",
                    }
                ],
            }
        ],
    }
    mark = last_id(stack)
    user.press(fake_message, "retired_button")
    row = wait_row(stack, mark, "button.unknown", actor="USTALE")
    assert_row(row, actor="USTALE", channel="CSTALE", outcome="denied")
    assert row.detail == "retired_button"


# --- restores -------------------------------------------------------------------------


def test_restore_request_self_approval_and_approval_write_their_rows(stack):
    alice, bob = stack.user("UALICE", "CREST"), stack.user("UBOB", "CREST")
    mark = last_id(stack)
    alice.command("restore 801 bad deploy")
    requested = wait_row(stack, mark, "restore.request", actor="UALICE")
    request_id = int(re.match(r"request:(\d+) ", requested.target).group(1))
    assert_row(
        requested,
        actor="UALICE",
        channel="CREST",
        outcome="ok",
        target=f"request:{request_id} snapshot:801 server:{SERVER}",
    )
    assert requested.detail == "bad deploy"
    message = request_message(stack, "CREST")

    alice.press(message, ids.APPROVE)
    refused = wait_row(stack, requested.id, "restore.approve", actor="UALICE")
    assert_row(
        refused, actor="UALICE", channel="CREST", outcome="denied", target=f"request:{request_id}"
    )
    assert restore_calls(stack) == 0

    bob.press(message, ids.APPROVE)
    approved = wait_row(stack, refused.id, "restore.approve", actor="UBOB")
    assert_row(
        approved, actor="UBOB", channel="CREST", outcome="ok", target=f"request:{request_id}"
    )
    called = wait_row(stack, approved.id, "provider.restore")
    # The provider call is snapbot's own act, in the request's channel.
    assert_row(
        called,
        actor="",
        channel="CREST",
        outcome="ok",
        target=f"request:{request_id} snapshot:801 server:{SERVER}",
    )
    assert restore_calls(stack) == 1

    bob.press(message, ids.APPROVE)  # a late click is told, and audited as denied
    late = wait_row(stack, called.id, "restore.approve", actor="UBOB")
    assert late.outcome == "denied"


def _message_ts(stack, request_id: int) -> str | None:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        req = repo.get_restore_request(s, request_id=request_id)
        return req.message_ts if req else None


def test_rejecting_and_cancelling_write_their_rows(stack):
    carol, dave = stack.user("UCAROL", "CREJ"), stack.user("UDAVE", "CREJ")
    for who, action in ((dave, "restore.reject"), (carol, "restore.cancel")):
        wait_until(lambda: not _open_requests(stack), what="no open request on 801")
        mark = last_id(stack)
        carol.command("restore 801")
        requested = wait_row(stack, mark, "restore.request", actor="UCAROL")
        request_id = requested.target.split()[0].removeprefix("request:")
        message = wait_until(
            lambda rid=request_id: next(
                (
                    m
                    for m in stack.slack.messages("CREJ")
                    if f"Restore request #{rid}" in (m.text or "")
                ),
                None,
            ),
            what=f"request #{request_id} in CREJ",
        )
        # A press is bound to the message the bot recorded (it stores the ts just after
        # the fake shows the message).
        wait_until(
            lambda rid=int(request_id), ts=message.ts: _message_ts(stack, rid) == ts,
            what="the request's message recorded",
        )
        who.press(message, ids.REJECT)
        row = wait_row(stack, requested.id, action, actor=who.user_id)
        assert_row(
            row, actor=who.user_id, channel="CREJ", outcome="ok", target=f"request:{request_id}"
        )


def _open_requests(stack):
    with session_scope(stack.deps.engine, readonly=True) as s:
        return repo.open_request_for_snapshot(s, snapshot_id=801)


# --- denials: who may operate ------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "action", "target"),
    [
        (f"create {SERVER} nightly", "snapshot.create", f"server:{SERVER} name:nightly"),
        ("restore 801 because", "restore.request", "snapshot:801"),
        ("delete 801", "snapshot.delete", "snapshot:801"),
    ],
)
def test_a_non_operator_is_denied_and_audited_before_the_provider_is_asked(
    locked, command, action, target
):
    before = locked.sim.state.stats()["total"]
    mark = last_id(locked)
    locked.user("UOUTSIDER", "CLOCK").command(command)
    row = wait_row(locked, mark, action, actor="UOUTSIDER")
    assert_row(row, actor="UOUTSIDER", channel="CLOCK", outcome="denied", target=target)
    assert row.detail == "not an operator"
    assert locked.sim.state.stats()["total"] == before


# --- provider errors -----------------------------------------------------------------------


def test_a_rejected_provider_token_is_audited_as_an_error(locked):
    mark = last_id(locked)
    locked.user("UOPS", "CLOCK").command("list")
    row = wait_row(locked, mark, "snapshot.list", actor="UOPS")
    assert_row(row, actor="UOPS", channel="CLOCK", outcome="error")
    assert "VPS_API_TOKEN" in row.detail and "not-the-providers-token" not in row.detail


def test_an_unreachable_provider_is_audited_as_an_error(stack):
    stack.sim.state.fail_next(10, 503)
    try:
        mark = last_id(stack)
        stack.user("UFAIL", "CFAIL").command("list")
        row = wait_row(stack, mark, "snapshot.list", actor="UFAIL")
    finally:
        stack.sim.state.apply_faults({"fail_next": 0})
    assert_row(row, actor="UFAIL", channel="CFAIL", outcome="error")
    assert "nothing was changed" in row.detail.lower() or "unreachable" in row.detail.lower()


def test_a_provider_refusing_a_create_is_audited_as_an_error(stack):
    mark = last_id(stack)
    stack.user("UFAIL", "CFAIL").command("create 99999 nightly")
    row = wait_row(stack, mark, "provider.create", actor="UFAIL")
    assert_row(
        row, actor="UFAIL", channel="CFAIL", outcome="error", target="server:99999 name:nightly"
    )
    assert "99999" in row.detail


# --- logs -------------------------------------------------------------------------------------


def test_each_audited_event_is_also_one_structured_log_line(stack, caplog):
    caplog.set_level(logging.INFO, logger="bot.services")
    wait_until(lambda: not _open_requests(stack), what="no open request on 801")
    mark = last_id(stack)
    stack.user("ULOG", "CLOG").command("restore 801 logged reason")
    row = wait_row(stack, mark, "restore.request", actor="ULOG")
    request_id = row.target.split()[0].removeprefix("request:")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=")]
    assert (
        f"event=restore.request request={request_id} snapshot=801 server={SERVER} actor=ULOG "
        f'channel=CLOG team=T1 outcome=ok audit={row.id} detail="logged reason"'
    ) in lines
    assert all("\n" not in line for line in lines)
    stack.user("UOTHER", "CLOG").press(request_message(stack, "CLOG"), ids.REJECT)
    wait_row(stack, row.id, "restore.reject", actor="UOTHER")
    assert any(
        line.startswith(f"event=restore.reject request={request_id} actor=UOTHER ")
        and "outcome=ok" in line
        for line in (r.getMessage() for r in caplog.records)
    )


# --- /snapshot audit ------------------------------------------------------------------------


def test_snapshot_audit_answers_ephemerally_with_the_last_n_newest_first(stack):
    user = stack.user("UAUDIT", "CAUDIT")
    for _ in range(3):
        mark = last_id(stack)
        user.command("help")
        wait_row(stack, mark, "command.help", actor="UAUDIT")
    mark = last_id(stack)
    user.command("audit 5")
    shown_row = wait_row(stack, mark, "audit.show", actor="UAUDIT")
    answer = wait_for_ephemeral(stack, "UAUDIT", "last 5 event(s)")
    ephemeral = next(e for e in stack.slack.ephemerals(user="UAUDIT") if e.text == answer)
    lines = "\n".join(
        b["text"]["text"] for b in ephemeral.blocks if b.get("type") == "section"
    ).splitlines()
    shown = [int(re.search(r"#(\d+) ", line).group(1)) for line in lines]
    assert shown == list(range(shown_row.id - 1, shown_row.id - 6, -1))
    assert all("command.help" in line and "<@UAUDIT>" in line for line in lines[:3])
    assert not any("last 5" in (m.text or "") for m in stack.slack.messages("CAUDIT"))


# --- checkpoints ------------------------------------------------------------------------------


def checkpoints(stack: LocalStack) -> list[tuple[str, int, str]]:
    found = []
    for m in stack.slack.messages(INCIDENT_CHANNEL):
        if match := CHECKPOINT.search(m.text or str(m.blocks)):
            found.append((match.group(1), int(match.group(2)), match.group(3)))
    return found


def test_checkpoint_after_a_restore_verifies_then_catches_a_cut_tail(tmp_path, monkeypatch, capsys):
    s = start(tmp_path, "checkpoint", restore_seconds=3.0)
    try:
        alice, bob = s.user("UALICE"), s.user("UBOB")
        alice.command("restore 801 bad deploy")
        message = request_message(s)
        bob.press(message, ids.APPROVE)
        reason, count, head = wait_until(
            lambda: next((c for c in checkpoints(s) if "after restore" in c[0]), None),
            what="a checkpoint in the incident channel",
        )
        assert reason == "after restore #1"
        with session_scope(s.deps.engine, readonly=True) as db:
            assert db.get(AuditEvent, count).hash == head
            restored = db.execute(
                select(AuditEvent.id).where(AuditEvent.action == "provider.restore")
            ).scalar_one()
        assert restored <= count
        key = s.settings.audit_key.get_secret_value()
    finally:
        s.stop()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'checkpoint.db'}")
    monkeypatch.setenv("AUDIT_KEY", key)
    capsys.readouterr()
    assert main(["audit", "verify", "--checkpoint", f"{count}:{head}"]) == 0
    # Cut the tail at the checkpoint's last row, and move the head back as a careful
    # attacker would: the chain alone still verifies; the checkpoint does not.
    engine = s.deps.engine
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE id >= :c"), {"c": count})
        prev = conn.execute(
            text("SELECT hash FROM audit_event WHERE id = :i"), {"i": count - 1}
        ).scalar_one()
        conn.execute(
            text("UPDATE audit_head SET count = :n, hash = :h WHERE id = 1"),
            {"n": count - 1, "h": prev},
        )
    assert main(["audit", "verify"]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "--checkpoint", f"{count}:{head}"]) == 1
    assert f"BROKEN at row {count}:" in capsys.readouterr().err


def test_the_daily_checkpoint_is_posted_once_a_day_by_two_duties_instances(tmp_path):
    s = start(tmp_path, "daily", start_duties=False)
    other = build_runtime(s.settings, start_duties=False)
    today = [datetime(2025, 3, 1, 9, 0, tzinfo=UTC)]
    duties = [Duties(svc, interval=0.2, clock=lambda: today[0]) for svc in (s.deps, other.deps)]
    try:

        def daily_posts():
            with session_scope(s.deps.engine, readonly=True) as db:
                return [
                    p
                    for p in db.execute(select(Outbox.payload)).scalars()
                    if "Audit checkpoint (daily" in p
                ]

        def race():
            go = threading.Barrier(len(duties) * 3)

            def run(d):
                go.wait()
                d.daily_checkpoint()

            threads = [threading.Thread(target=run, args=(d,)) for d in duties for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        race()
        assert len(daily_posts()) == 1 and "daily, 2025-03-01" in daily_posts()[0]
        # The audit head moves (so a second post would not share the first's outbox key),
        # and the lease changes hands: still one post that day.
        s.user("U1").command("help")
        wait_until(lambda: last_id(s) >= 1, what="an audit row")
        assert duties[0].cycle() and not duties[1].cycle()
        duties[0].stop()
        assert duties[1].cycle()
        race()
        assert len(daily_posts()) == 1
        # The next day: one more.
        today[0] += timedelta(days=1)
        assert duties[1].cycle()
        race()
        posts = daily_posts()
        assert len(posts) == 2 and "daily, 2025-03-02" in posts[1]
        wait_until(
            lambda: len([c for c in checkpoints(s) if c[0].startswith("daily")]) == 2,
            what="both daily checkpoints in the incident channel",
        )
    finally:
        other.stop()
        s.stop()
