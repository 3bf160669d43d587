"""Failure drills (SPEC §3, §5, §6, §8): everything around the bot fails, and it keeps
its promises. Each drill breaks one real part and checks what people are told, what
reached the provider, and that nothing was lost:

* the provider: 5xx bursts, timeouts, slow answers, an answer lost after the write,
  the whole provider down and back (reads are retried, writes never sent twice, the
  user gets SPEC §8's words);
* Slack: 5xx and 429 on every method the bot uses (messages still arrive, or the
  user is told honestly; no approval is lost);
* the database: PostgreSQL connections killed mid-run (as in a restart), SQLite under
  16 concurrent writers;
* the process: SIGTERM to the real gunicorn `web` while a restore is in flight and
  while it holds the duties lease.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from bot.audit_tools import verify
from bot.blocks import ids
from bot.runtime import make_deps, make_slack_client
from bot.services import auditing, dispatch, door
from bot.services.actors import Actor
from bot.services.restores import decisions
from bot.vps.client import VpsClient
from bot.worker import JOB_THREADS
from snapbot_local.harness import HANG_GUARD_S, start_web
from snapbot_local.provider import SimHandle, SimServer, start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import (
    SlackClientSim,
    button_press_body,
    sign,
    slash_command_body,
)
from snapbot_local.stack import BOT_TOKEN, INCIDENT_CHANNEL, SIGNING_SECRET, VPS_TOKEN, LocalStack
from storage import repositories as repo
from storage.db import make_engine, normalise_url, session_scope
from storage.tables import Approval, AuditEvent, Job, Lease, RestoreRequest
from tests.conftest import PG_URL, wait_until

UNREACHABLE = "The provider is unreachable or failing right now; nothing was changed."
LIST = "GET snapshots/"
CREATE = "POST snapshots/"
RESTORE = "POST snapshots/{id}/restore/"


# --- per-endpoint provider faults -----------------------------------------------------------


@dataclass
class Rule:
    method: str
    template: str
    status: int | None
    latency: float
    after_apply: bool
    times: int  # -1: every time


class EndpointFaults:
    """Faults for one endpoint of the in-process simulator (its own switches apply to
    every request alike): wraps ``SimState.begin``, which decides each request's fate."""

    def __init__(self, state) -> None:
        self.rules: list[Rule] = []
        self._lock = threading.Lock()
        original = state.begin

        def begin(method: str, template: str, path: str):
            latency, status, after = original(method, template, path)
            with self._lock:
                for rule in self.rules:
                    if rule.times and (rule.method, rule.template) == (method, template):
                        rule.times -= rule.times > 0
                        if rule.status is not None:
                            status, after = rule.status, rule.after_apply
                        return max(latency, rule.latency), status, after
            return latency, status, after

        state.begin = begin

    def add(
        self,
        method: str,
        template: str,
        *,
        status: int | None = None,
        latency: float = 0.0,
        after_apply: bool = False,
        times: int = 1,
    ) -> None:
        with self._lock:
            self.rules.append(Rule(method, template, status, latency, after_apply, times))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()


# --- helpers ------------------------------------------------------------------------------


def told(stack: LocalStack, user: str, needle: str, timeout: float = 15.0) -> str:
    """The first thing ``user`` was told (ephemerally) that contains ``needle``."""

    def find():
        return next(
            (e.text for e in stack.slack.ephemerals(user=user) if needle in (e.text or "")), None
        )

    return stack.slack.wait_for(
        find, max(timeout, HANG_GUARD_S), what=f"{user} to be told {needle!r}"
    )


def posted(stack: LocalStack, needle: str, channel: str = "C1", timeout: float = 15.0):
    def find():
        return next(
            (
                m
                for m in stack.slack.messages(channel)
                if not m.is_reply and needle in (m.text or "")
            ),
            None,
        )

    return stack.slack.wait_for(
        find, max(timeout, HANG_GUARD_S), what=f"a message in {channel} with {needle!r}"
    )


def replied(stack: LocalStack, parent, needle: str, timeout: float = 15.0):
    def find():
        return next(
            (m for m in stack.slack.thread(parent.channel, parent.ts) if needle in (m.text or "")),
            None,
        )

    return stack.slack.wait_for(find, max(timeout, HANG_GUARD_S), what=f"a reply with {needle!r}")


def settled(stack: LocalStack) -> bool:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        busy = repo.count_jobs(s, states=("queued", "running"))
        unsent = repo.count_messages(s, state="pending")
    return busy == 0 and unsent == 0


def wait_settled(stack: LocalStack, timeout: float = 20.0) -> None:
    stack.slack.wait_for(
        lambda: settled(stack), max(timeout, HANG_GUARD_S), what="the app to finish its work"
    )


def requests_of(engine) -> list[RestoreRequest]:
    with session_scope(engine, readonly=True) as s:
        return list(s.execute(select(RestoreRequest).order_by(RestoreRequest.id)).scalars())


def snapshot_names(stack: LocalStack) -> list[str]:
    return [s["name"] for s in stack.sim.state.list_snapshots()["results"]]


def writes(stack: LocalStack) -> Counter:
    return Counter({k: n for k, n in stack.sim.state.calls.items() if not k.startswith("GET")})


def fast_client(stack: LocalStack, timeout: float) -> None:
    """The bot's real provider client with a short timeout (production: 5 s), so a
    timeout drill takes a second, not five."""
    fast = VpsClient(stack.sim.url, VPS_TOKEN, timeout=timeout, retries=2, backoff_base=0.05)
    # Jobs run with the fast client from here on (the shared Deps is frozen: a copy).
    dispatch.register(replace(stack.deps, vps=fast))


@pytest.fixture
def stack(tmp_path):
    s = LocalStack(
        database_url=f"sqlite:///{tmp_path / 'drill.db'}",
        create_seconds=1.0,
        restore_seconds=0.5,
        poll_seconds=0.3,
    ).start()
    s.faults = EndpointFaults(s.sim.state)
    yield s
    assert s.slack.invalid_payloads == []
    s.stop()


# --- the provider ---------------------------------------------------------------------------


def test_a_burst_of_provider_5xx_on_reads_is_retried_and_the_user_gets_the_list(stack):
    stack.faults.add("GET", "snapshots/", status=503, times=1)
    stack.faults.add("GET", "snapshots/", status=502, times=1)
    stack.user("U1").command("list")
    assert "2 snapshot(s)" in told(stack, "U1", "snapshot(s)")
    assert stack.sim.state.calls[LIST] == 3  # two failures, retried with backoff, then the answer


def test_a_provider_failing_for_longer_is_reported_as_spec_says_and_nothing_changes(stack):
    stack.faults.add("GET", "snapshots/", status=500, times=-1)
    commands = {
        "U1": "list",
        "U2": "restore 801 the deploy broke it",
        "U3": "delete 801",
        "U4": "create 12345 drill-down before the fix",
    }
    for user, command in commands.items():
        assert stack.user(user).command(command).status_code == 200
    for user in commands:
        told(stack, user, UNREACHABLE)
    wait_settled(stack)
    # Every read was tried three times (two retries), though commands in flight together
    # share reads (bot/vps/coalesce.py); nothing was written, nothing opened.
    calls = stack.sim.state.calls[LIST]
    assert calls % 3 == 0 and 3 <= calls <= 3 * len(commands), calls
    assert writes(stack) == Counter()
    assert requests_of(stack.runtime.engine) == []
    assert "drill-down" not in snapshot_names(stack)
    with session_scope(stack.runtime.engine, readonly=True) as s:
        errors = s.execute(select(AuditEvent.actor).where(AuditEvent.outcome == "error")).scalars()
        assert set(errors) >= set(commands)


def test_a_create_whose_answer_is_lost_is_found_by_name_not_sent_twice(stack):
    # The provider creates the snapshot, then the gateway answers 502.
    stack.faults.add("POST", "snapshots/", status=502, after_apply=True)
    stack.user("U1").command("create 12346 drill-lost before the upgrade")
    parent = posted(stack, "drill-lost")
    reply = replied(stack, parent, "completed")
    assert "<@U1>" in reply.text
    assert stack.sim.state.calls[CREATE] == 1
    assert snapshot_names(stack).count("drill-lost") == 1
    wait_settled(stack)
    assert len(stack.slack.thread(parent.channel, parent.ts)) == 1


def test_a_create_refused_with_a_5xx_is_reported_and_never_sent_again(stack):
    stack.faults.add("POST", "snapshots/", status=503)
    stack.user("U1").command("create 12346 drill-refused")
    said = told(stack, "U1", "provider")
    wait_settled(stack)
    assert stack.sim.state.calls[CREATE] == 1
    assert "drill-refused" not in snapshot_names(stack)
    assert "unreachable or failing" in said and "Check `/snapshot list`" in said, said
    # The channel message that was to carry the thread says it was not created.
    parent = posted(stack, "drill-refused")
    assert "was not created" in stack.slack.message(parent.channel, parent.ts).text


def test_a_create_that_times_out_is_never_sent_twice_and_the_user_is_told_to_check(stack):
    fast_client(stack, timeout=1.0)
    # The provider takes 2.5 s before it creates; the bot gives up after 1 s.
    stack.faults.add("POST", "snapshots/", latency=2.5)
    stack.user("U1").command("create 12346 drill-slow")
    said = told(stack, "U1", "/snapshot list")
    assert "timed out" in said and "outcome is unknown" in said, said
    # It did get created in the end; the bot never sent it a second time.
    wait_until(lambda: "drill-slow" in snapshot_names(stack), 10, interval=0.2, what="the create")
    wait_settled(stack)
    assert stack.sim.state.calls[CREATE] == 1
    assert snapshot_names(stack).count("drill-slow") == 1


def test_reads_that_time_out_are_retried_then_reported(stack):
    fast_client(stack, timeout=0.5)
    stack.faults.add("GET", "snapshots/", latency=1.0, times=-1)
    stack.user("U1").command("list")
    told(stack, "U1", UNREACHABLE)
    assert stack.sim.state.calls[LIST] == 3


def test_slow_provider_answers_are_acked_at_once_and_answered_later(stack):
    """The provider holds each call until the drill has its ack: an ack that waited for
    the provider could never come back. (How fast acks come is bench/ack_latency.py's.)"""
    fake = stack.slack

    def ack(body: bytes) -> httpx.Response:
        return httpx.post(
            stack.url, content=body, headers=sign(SIGNING_SECRET, body), timeout=HANG_GUARD_S
        )

    url = fake.response_url("alice", channel="C1", user="UALICE")
    with stack.sim.state.hold("GET", "snapshots/") as held:
        assert (
            ack(slash_command_body("list", user_id="UALICE", response_url=url)).status_code == 200
        )
        held.wait_arrived(1)
        assert not any("snapshot(s)" in (e.text or "") for e in fake.ephemerals())
    told(stack, "UALICE", "2 snapshot(s)")
    ack(slash_command_body("restore 801 slow", user_id="UALICE", response_url=url))
    request = posted(stack, "Restore request #")
    approve = button_press_body(
        request,
        ids.APPROVE,
        user_id="UBOB",
        response_url=fake.response_url("bob", channel="C1", user="UBOB"),
    )
    with stack.sim.state.hold("POST", "snapshots/{id}/restore/") as held:
        assert ack(approve).status_code == 200
        held.wait_arrived(1)
        assert not any("Restore started" in (m.text or "") for m in fake.thread("C1", request.ts))
    replied(stack, request, "Restore started")
    wait_settled(stack)
    assert stack.sim.state.calls[RESTORE] == 1


def _restart_provider(stack: LocalStack) -> None:
    """The same provider (same state) back on the same port, as after an outage."""
    server = SimServer(("127.0.0.1", stack.sim.port), stack.sim.state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    stack.sim = SimHandle(server, thread, "127.0.0.1")


def test_provider_down_is_reported_plainly_and_everything_resumes_when_it_is_back(stack):
    alice = stack.user("UALICE")
    alice.command("create 12346 drill-outage before the outage")
    parent = posted(stack, "drill-outage")
    stack.slack.wait_for(
        lambda: "being created" in (stack.slack.message(parent.channel, parent.ts).text or ""),
        HANG_GUARD_S,
        what="the create to be under way",
    )
    stack.sim.stop()  # connection refused from now on

    stack.user("UBOB").command("list")
    told(stack, "UBOB", UNREACHABLE)
    stack.user("UCAROL").command("restore 801 during the outage")
    told(stack, "UCAROL", UNREACHABLE)
    posted(stack, "cannot reach the provider", channel=INCIDENT_CHANNEL)
    assert requests_of(stack.runtime.engine) == []

    _restart_provider(stack)
    stack.user("UDAVE").command("list")
    told(stack, "UDAVE", "snapshot(s)")
    # The watcher picks up where it was: the snapshot's thread gets its one reply.
    reply = replied(stack, parent, "completed")
    assert "<@UALICE>" in reply.text
    posted(stack, "answers again", channel=INCIDENT_CHANNEL)
    wait_settled(stack)
    assert len(stack.slack.thread(parent.channel, parent.ts)) == 1
    assert stack.sim.state.calls[CREATE] == 1


# --- Slack ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slack_stack(tmp_path_factory):
    """No incident channel and no server status endpoint: every Slack call made here
    is one the drill itself caused, so a queued fault hits the call it aims at."""
    path = tmp_path_factory.mktemp("slack-drills")
    s = LocalStack(
        database_url=f"sqlite:///{path / 'slack.db'}",
        restore_seconds=0.1,
        poll_seconds=0.3,
        settings_overrides={"incident_channel": None},
    ).start()
    s.sim.state.servers_endpoint_enabled = False
    yield s
    assert s.slack.invalid_payloads == []
    s.stop()


def _open_request(stack: LocalStack, user: str):
    before = {r.id for r in requests_of(stack.runtime.engine)}
    stack.user(user).command("restore 801 slack drill")
    req = wait_until(
        lambda: next((r for r in requests_of(stack.runtime.engine) if r.id not in before), None),
        10,
        interval=0.05,
        what="a new request",
    )
    message = posted(stack, f"Restore request #{req.id}")
    # A press is bound to the message the bot recorded for the request; the fake shows
    # the message a moment before the bot has stored its ts.
    wait_until(
        lambda: (
            next(r for r in requests_of(stack.runtime.engine) if r.id == req.id).message_ts
            == message.ts
        ),
        what="the request's message recorded",
    )
    return req, message


def _approved_once(stack: LocalStack, req, message, calls_before: int) -> None:
    replied(stack, message, "Restore started")
    wait_settled(stack)
    assert stack.sim.state.calls[RESTORE] == calls_before + 1
    state = next(r.state for r in requests_of(stack.runtime.engine) if r.id == req.id)
    assert state == "succeeded"


def drill_post_message(stack: LocalStack, status: int, tag: str) -> None:
    """The restore request's channel message fails once, then arrives (once)."""
    stack.slack.fail_next("chat.postMessage", status=status)
    req, message = _open_request(stack, f"UREQ{tag}")
    assert len([m for m in stack.slack.messages("C1") if m.text == message.text]) == 1
    calls = stack.sim.state.calls[RESTORE]
    stack.user(f"UAPP{tag}").press(message, ids.APPROVE)
    _approved_once(stack, req, message, calls)


def drill_update(stack: LocalStack, status: int, tag: str) -> None:
    """The approval's edit of the request message fails once: the approval stands, the
    restore runs once, and the edit arrives later."""
    req, message = _open_request(stack, f"UREQ{tag}")
    calls = stack.sim.state.calls[RESTORE]
    stack.slack.fail_next("chat.update", status=status)
    stack.user(f"UAPP{tag}").press(message, ids.APPROVE)
    _approved_once(stack, req, message, calls)
    stack.slack.wait_for(
        lambda: "Approved by" in str(stack.slack.message(message.channel, message.ts).blocks),
        HANG_GUARD_S,
        what="the request message to show the approval",
    )
    with session_scope(stack.runtime.engine, readonly=True) as s:
        approvers = s.execute(
            select(Approval.approver).where(Approval.request_id == req.id)
        ).scalars()
        assert list(approvers) == [f"UAPP{tag}"]


def drill_post_ephemeral(stack: LocalStack, status: int, tag: str) -> None:
    """The refusal of a self-approval fails once and still reaches the requester."""
    requester = f"UREQ{tag}"
    req, message = _open_request(stack, requester)
    stack.slack.fail_next("chat.postEphemeral", status=status)
    stack.user(requester).press(message, ids.APPROVE)
    told(stack, requester, "cannot approve your own")
    stack.user(requester).press(message, ids.REJECT)  # withdraw it: 801 is free again
    wait_settled(stack)
    assert next(r.state for r in requests_of(stack.runtime.engine) if r.id == req.id) == (
        "cancelled"
    )


def drill_response_url(stack: LocalStack, status: int, tag: str) -> None:
    """A list answered through response_url: the post fails once, then arrives."""
    user = f"ULIST{tag}"
    stack.slack.fail_next("response_url", status=status)
    stack.user(user).command("list")
    told(stack, user, "snapshot(s)")
    wait_settled(stack)
    failed = [r for r in stack.slack.responses("command") if r.status == status]
    assert failed, "the fault did not hit a response_url post"


def drill_views_open(stack: LocalStack, status: int, tag: str) -> None:
    """The create form: opened after Slack's Retry-After, or the user is told plainly to
    type the command instead."""
    user = f"UFORM{tag}"
    views_before = len(stack.slack.views())
    stack.slack.fail_next("views.open", status=status)
    stack.user(user).command("create")
    stack.slack.wait_for(
        lambda: (
            len(stack.slack.views()) > views_before
            or any("did not open the form" in (e.text or "") for e in stack.slack.ephemerals(user))
        ),
        HANG_GUARD_S,
        what="the form, or a word on why not",
    )
    wait_settled(stack)


SLACK_DRILLS = {
    "chat.postMessage": drill_post_message,
    "chat.update": drill_update,
    "chat.postEphemeral": drill_post_ephemeral,
    "response_url": drill_response_url,
    "views.open": drill_views_open,
}


@pytest.mark.parametrize("status", [500, 429])
@pytest.mark.parametrize("method", list(SLACK_DRILLS))
def test_slack_failing_on_a_method_the_bot_uses_loses_nothing(slack_stack, method, status):
    wait_settled(slack_stack)
    # The previous drill's restore of 801 is over (the provider refuses a restore of a
    # server still restoring), however soon this drill comes after it.
    slack_stack.sim.state.advance(10 * slack_stack.sim.state.restore_seconds)
    failed_before = sum(1 for c in slack_stack.slack.calls(method) if c.status == status)
    # Tags become parts of user IDs, which are U + upper-case letters and digits.
    tag = f"{method.split('.')[-1].upper().replace('_', '')}{status}"
    SLACK_DRILLS[method](slack_stack, status, tag)
    if method != "response_url":
        hit = sum(1 for c in slack_stack.slack.calls(method) if c.status == status)
        assert hit == failed_before + 1, f"the fault did not hit {method}"
    with session_scope(slack_stack.runtime.engine, readonly=True) as s:
        assert repo.count_jobs(s, states=("failed",)) == 0
        assert repo.count_messages(s, state="failed") == 0


@pytest.mark.parametrize("status", [500, 429])
def test_slack_failing_to_list_a_user_group_is_said_and_the_next_try_works(tmp_path, status):
    stack = LocalStack(
        database_url=f"sqlite:///{tmp_path / 'groups.db'}",
        settings_overrides={"snapshot_operators": frozenset({"S0OPS"})},
    ).start()
    try:
        stack.slack.usergroups = {"S0OPS": ["UOPS"]}
        stack.slack.fail_next("usergroups.users.list", status=status)
        ops = stack.user("UOPS")
        ops.command("delete 798")
        if status == 429:  # Retry-After is waited out: the member is let in
            told(stack, "UOPS", "Delete snapshot")
        else:  # fail closed, and say why: Slack, not the person
            said = told(stack, "UOPS", "You may not delete snapshots")
            assert "Slack did not say who is in <!subteam^S0OPS>" in said
            ops.command("delete 798")
            told(stack, "UOPS", "Delete snapshot")
        assert any(c.status == status for c in stack.slack.calls("usergroups.users.list")), (
            "the fault did not hit usergroups.users.list"
        )
        wait_settled(stack)
        assert writes(stack) == Counter()
    finally:
        stack.stop()


# --- the database ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_connections_killed_mid_run_cost_at_most_an_error_then_all_works(pg_url):
    """A PostgreSQL restart, as the bot sees it: every connection it holds is killed.
    Only this stack's connections are (by application_name): the database is shared."""
    name = f"snapbot_drill_{uuid.uuid4().hex[:8]}"
    stack = LocalStack(
        database_url=f"{pg_url}&application_name={name}",
        create_seconds=1.5,
        poll_seconds=0.3,
    ).start()
    admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")

    def kill() -> int:
        with admin.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                ).all()
            )

    try:
        alice = stack.user("UALICE")
        alice.command("list")
        told(stack, "UALICE", "snapshot(s)")
        alice.command("create 12346 drill-pg across the restart")
        parent = posted(stack, "drill-pg")
        stack.slack.wait_for(  # created and watched: the watcher must carry it through
            lambda: "being created" in (stack.slack.message(parent.channel, parent.ts).text or ""),
            HANG_GUARD_S,
            what="the create to be under way",
        )
        assert kill() > 0
        # Right after the "restart": an answer (the pool's pre-ping reconnects), or at
        # worst an error status and a word to the user; never a hang or a dead bot.
        statuses = []
        for i in range(5):
            statuses.append(stack.user(f"U{i}").command("list").status_code)
            kill()
        assert all(s in (200, 500) for s in statuses), statuses
        assert statuses.count(200) >= 1
        for i, status in enumerate(statuses):
            if status == 200:  # acknowledged: answered, with the list or an error
                told(stack, f"U{i}", "", timeout=20)
        # And without a restart of the bot, everything works again.
        stack.user("UAFTER").command("list")
        told(stack, "UAFTER", "snapshot(s)")
        reply = replied(stack, parent, "completed", timeout=20)
        assert "<@UALICE>" in reply.text
        health = httpx.get(stack.url.replace("/slack/events", "/healthz"), timeout=5)
        assert health.status_code == 200
        wait_settled(stack)
        assert len(stack.slack.thread(parent.channel, parent.ts)) == 1
        assert stack.sim.state.calls[CREATE] == 1
        assert verify(stack.runtime.engine, stack.settings.audit_key.get_secret_value().encode()).ok
    finally:
        stack.stop()
        admin.dispose()


def test_sqlite_under_sixteen_concurrent_writers_never_says_database_is_locked(tmp_path):
    """Sixteen threads in two engines (as two gunicorn workers on one file) append audit
    rows, queue jobs and approve restores through the app's own services at once."""
    url = f"sqlite:///{tmp_path / 'writers.db'}"
    stack = LocalStack(
        database_url=url,
        settings_overrides={"restore_approvals": 3},
        start_duties=False,
    ).start()
    second = None
    try:
        state = stack.sim.state
        snapshots = [
            state.create_snapshot({"server_id": server, "name": f"w-{i}"})["id"]
            for i, server in enumerate((12346, 12346, 12347, 12347))
        ]
        state.advance(10)
        for i, sid in enumerate(snapshots):
            stack.user(f"UREQ{i}").command(f"restore {sid} writers")
        wait_until(
            lambda: sum(1 for r in requests_of(stack.runtime.engine) if r.message_ts) == 4,
            10,
            interval=0.05,
        )
        requests = [r.id for r in requests_of(stack.runtime.engine)]
        # Each approver presses on the request's own message (SPEC 14.7).
        posted = {r.id: r.message_ts for r in requests_of(stack.runtime.engine)}

        other_engine = make_engine(url)
        second = make_deps(
            stack.settings,
            engine=other_engine,
            vps=VpsClient(stack.sim.url, VPS_TOKEN),
            slack=make_slack_client(stack.settings),
        )
        services = [stack.deps, second]
        errors: list[str] = []
        rounds = 6
        barrier = threading.Barrier(16)

        def writer(n: int) -> None:
            svc = services[n % 2]
            actor = Actor(
                user=f"UW{n:02d}", channel="C1", team="T1", message_ts=posted[requests[n % 4]]
            )
            try:
                barrier.wait()
                for k in range(rounds):
                    auditing.record(svc, actor, "drill.write", "ok", detail=f"{n}/{k}")
                    door.accept(
                        svc, "pending.show", {"user": actor.user, "channel": "C1", "command": {}}
                    )
                decisions.approve(svc, actor, requests[n % 4])
            except Exception as exc:  # what a writer saw, e.g. "database is locked"
                errors.append(f"{n}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        for svc in services:
            svc.jobs.shutdown(wait=True)  # every queued `pending` has run
        engine = stack.runtime.engine
        with session_scope(engine, readonly=True) as s:
            audit_rows = s.execute(
                select(AuditEvent.detail).where(AuditEvent.action == "drill.write")
            ).scalars()
            assert sorted(audit_rows) == sorted(
                f"{n}/{k}" for n in range(16) for k in range(rounds)
            )
            jobs = s.execute(
                select(Job.state, Job.error).where(
                    Job.kind.in_(("pending.show", "restore.request"))
                )
            ).all()
            approvals = s.execute(select(Approval.request_id, Approval.approver)).all()
        assert Counter(j.state for j in jobs) == Counter({"done": 16 * rounds + 4})
        assert all(not j.error for j in jobs)
        # 4 approvers per request, quorum 3: the fourth finds it decided; each request is
        # approved (and restored) once.
        assert Counter(a.request_id for a in approvals) == Counter({r: 3 for r in requests})
        assert stack.sim.state.calls[RESTORE] == 4
        assert {r.state for r in requests_of(engine)} <= {"succeeded", "failed"}
        result = verify(engine, stack.settings.audit_key.get_secret_value().encode())
        assert result.ok, result.broken
    finally:
        if second is not None:
            second.jobs.shutdown(wait=True)
            second.vps.close()
            second.engine.dispose()
        stack.stop()


# --- the process: SIGTERM -------------------------------------------------------------------


def _post(url: str, body: bytes) -> httpx.Response:
    with SlackClientSim(url, SIGNING_SECRET) as client:
        return client.post(body)


def test_sigterm_mid_restore_and_holding_the_lease_loses_nothing(tmp_path):
    """SIGTERM to the real gunicorn `web` while a restore call is in flight, every job
    thread is busy, more jobs wait and a snapshot is being watched: the restore ends
    once, the lease is handed back at once, and the next process runs what was left and
    reports the snapshot.

    Nothing here races the clock: the provider holds each call in flight until the
    drill has seen the state it needs (every thread busy, jobs queued behind them, the
    job worker taking no more jobs), and the snapshot completes when the drill moves
    the provider's time on. A held call must still come back within the bot's own
    provider timeout, so each is released as soon as its state is reached."""
    sim = start_simulator(token=VPS_TOKEN, create_seconds=600.0, restore_seconds=1.0)
    fake = FakeSlack().start()
    db = f"sqlite:///{tmp_path / 'sigterm.db'}"
    settings = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": fake.api_url,
        "VPS_API_URL": sim.url,
        "VPS_API_TOKEN": VPS_TOKEN,
        "DATABASE_URL": db,
        "SNAPSHOT_POLL_SECONDS": "0.5",
        "AUDIT_KEY": "drill-audit-key-" + secrets.token_hex(8),
    }
    engine = make_engine(db)
    web_b = None
    web_a = start_web(settings, tmp_path, name="web-a")
    slack = SlackClientSim(web_a.url + "/slack/events", SIGNING_SECRET)
    try:

        def command(user: str, text_: str) -> httpx.Response:
            response_url = fake.response_url(user, channel="C1", user=user)
            return slack.post(slash_command_body(text_, user_id=user, response_url=response_url))

        def message(needle: str):
            return fake.wait_for(
                lambda: next(
                    (m for m in fake.messages("C1") if needle in (m.text or "") and not m.is_reply),
                    None,
                ),
                60,
                what=needle,
            )

        def jobs(state: str) -> int:
            with session_scope(engine, readonly=True) as s:
                return repo.count_jobs(s, states=(state,))

        # A snapshot under way, watched by web A (the lease holder); it stays in
        # progress until the drill advances the provider's clock.
        assert command("UALICE", "create 12346 drill-sigterm").status_code == 200
        parent = message("drill-sigterm")
        fake.wait_for(lambda: "being created" in (fake.message("C1", parent.ts).text or ""), 60)
        command("UBOB", "restore 801 sigterm drill")
        request = message("Restore request #")
        wait_until(lambda: jobs("queued") + jobs("running") == 0, 60, what="the request's job")

        # Every job thread but one busy with a list held at the provider (lists of one
        # server; every other call goes through) ...
        lists_held = sim.state.hold("GET", "snapshots/", query="server_id=12346")
        restore_held = sim.state.hold("POST", "snapshots/{id}/restore/")
        users = [f"UL{i:02d}" for i in range(JOB_THREADS + 2)]
        for user in users[: JOB_THREADS - 1]:
            assert command(user, "list 12346").status_code == 200
        wait_until(lambda: jobs("running") == JOB_THREADS - 1, 60, what="the lists to start")
        lists_held.wait_arrived(1)
        # ... the last one with the approved restore, whose provider call is held ...
        approve = button_press_body(
            request,
            ids.APPROVE,
            user_id="UCAROL",
            response_url=fake.response_url("approve", channel="C1", user="UCAROL"),
        )
        assert slack.post(approve).status_code == 200
        restore_held.wait_arrived(1)
        # ... and three more lists queued behind them: no thread is free to take them.
        for user in users[JOB_THREADS - 1 :]:
            assert command(user, "list 12346").status_code == 200
        assert (jobs("running"), jobs("queued")) == (JOB_THREADS, 3)

        web_a.send_sigterm()
        # The restore's answer comes back after SIGTERM; its thread may then take one
        # queued list, which waits at the provider like the others.
        restore_held.release()
        with session_scope(engine, readonly=True) as s:
            job_worker = (
                s.execute(
                    select(Job.owner).where(Job.state == "running", Job.kind == "snapshot.list")
                )
                .scalars()
                .first()
            )
        wait_until(
            lambda: f"job runner {job_worker} takes no more jobs" in web_a.log(),
            60,
            interval=0.05,
            what="the job worker to stop taking jobs",
        )
        lists_held.release()
        assert web_a.wait(timeout=60) == 0  # a clean exit
        # The job worker got the SIGTERM too and left first: it was not replaced by one
        # that would take the queued jobs while the master stopped.
        assert "the job worker is not replaced" in web_a.log()
        assert "starting another" not in web_a.log()

        # The restore in flight finished before the process left: once, and recorded.
        req = requests_of(engine)[0]
        assert req.state == "succeeded"
        assert sim.state.calls[RESTORE] == 1
        with session_scope(engine, readonly=True) as s:
            lease = s.get(Lease, "duties")
            left = repo.count_jobs(s, states=("queued",))
            assert repo.count_jobs(s, states=("running",)) == 0
        assert lease.owner == "" and lease.expires_at <= datetime.now(UTC)
        assert left >= 2, f"{left} queued job(s) left to hand over"

        # The snapshot completes while nobody runs; the next process takes the lease at
        # once, runs what was left and reports the snapshot.
        sim.state.advance(600)
        web_b = start_web(settings, tmp_path, name="web-b")
        for user in users:
            fake.wait_for(
                lambda u=user: any(
                    "snapshot(s)" in (e.text or "") for e in fake.ephemerals(user=u)
                ),
                60,
                what=f"{user}'s list",
            )
        reply = fake.wait_for(
            lambda: next(
                (m for m in fake.thread("C1", parent.ts) if "completed" in (m.text or "")), None
            ),
            60,
            what="the snapshot's reply",
        )
        assert "<@UALICE>" in reply.text
        fake.wait_for(
            lambda: any("Restore started" in (m.text or "") for m in fake.thread("C1", request.ts)),
            60,
        )
        wait_until(lambda: jobs("queued") + jobs("running") == 0, 60, interval=0.2)
        assert len(fake.thread("C1", parent.ts)) == 1
        assert sim.state.calls[RESTORE] == 1
        assert sim.state.calls[CREATE] == 1
        assert _count(engine, "SELECT count(*) FROM job WHERE error != ''") == 0
        assert verify(engine, settings["AUDIT_KEY"].encode()).ok
        assert "Traceback" not in web_a.log()
    finally:
        sim.state.release_holds()
        slack.close()
        web_a.kill9()
        if web_b is not None:
            web_b.terminate()
        engine.dispose()
        fake.stop()
        sim.stop()


def test_a_web_process_told_to_stop_never_starts_another_job_worker(tmp_path):
    """SIGTERM reaches the whole process group, so the job worker (with nothing to
    finish) leaves while gunicorn's master still waits for its HTTP workers; once it
    replaced it, and the new one took jobs queued for the next process."""
    with start_simulator(token=VPS_TOKEN) as sim, FakeSlack().start() as fake:
        settings = {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": fake.api_url,
            "VPS_API_URL": sim.url,
            "VPS_API_TOKEN": VPS_TOKEN,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'stop.db'}",
            "AUDIT_KEY": "drill-audit-key-" + secrets.token_hex(8),
        }
        web = start_web(settings, tmp_path)
        try:
            wait_until(lambda: "job worker ready" in web.log(), 60, what="the job worker")
            assert web.terminate(timeout=60) == 0
        finally:
            web.kill9()
        assert "the job worker is not replaced" in web.log()
        assert "starting another" not in web.log()


def _count(engine, sql: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


# --- the secret scan itself -----------------------------------------------------------------


@pytest.mark.secrets_planted
def test_the_secret_scan_finds_a_token_planted_in_logs_database_and_slack(tmp_path, caplog):
    from tests import secret_scan

    stack = LocalStack(database_url=f"sqlite:///{tmp_path / 'planted.db'}").start()
    try:
        token = stack.settings.vps_api_token.get_secret_value()
        watched = secret_scan._live[id(stack)]
        assert secret_scan.scan_stack(watched) == []
        auditing.record(stack.deps, Actor(user="U1"), "drill.plant", "ok", detail=f"oops {token}")
        stack.slack.reset()
        stack.user("U1").command(f"restore 801 {stack.settings.slack_bot_token.get_secret_value()}")
        wait_settled(stack)
        found = secret_scan.scan_stack(watched)
        assert any("VPS_API_TOKEN found in audit_event" in f for f in found), found
        assert any("SLACK_BOT_TOKEN found in job" in f for f in found), found
        assert any("SLACK_BOT_TOKEN found in a fake Slack" in f for f in found), found
        assert secret_scan.scan_stack(watched) == []  # incremental: each row read once
        import logging

        logging.getLogger("drill").warning(
            "leaked %s", stack.settings.slack_signing_secret.get_secret_value()
        )
        logs = secret_scan._scan_logs(caplog.records, secret_scan.secrets_of(stack))
        assert logs == ["SLACK_SIGNING_SECRET found in a log record of drill"]
    finally:
        stack.stop()
