"""Restore approval across real processes on one PostgreSQL database (SPEC §3, §5.4).

Two gunicorn `web` processes (snapbot_local/harness.py, the Procfile's command) share a fresh
PostgreSQL schema; the provider simulator and the fake Slack API are served from this
test process, so the simulator's per-snapshot write log and Slack's state are read
directly. Approvals are pressed from several people at the same moment, half of them
sent to each process; processes are killed with SIGKILL mid-flight.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from bot.blocks import ids
from snapbot_local.harness import HANG_GUARD_S, Proc, start_webs, web_settings
from snapbot_local.provider import start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import SlackClientSim, button_press_body, slash_command_body
from snapbot_local.stack import INCIDENT_CHANNEL, SIGNING_SECRET, VPS_TOKEN
from storage import repositories as repo
from storage.db import make_engine, session_scope
from storage.tables import Lease, RestoreRequest
from tests.conftest import wait_until

pytestmark = pytest.mark.postgres

POLL = 0.2
RESTORE = "POST snapshots/{id}/restore/"
ROUNDS = 50
APPROVERS_PER_ROUND = 4


@pytest.fixture
def fake():
    slack = FakeSlack().start()
    yield slack
    assert slack.invalid_payloads == []
    slack.stop()


@pytest.fixture
def sims():
    made = []

    def make(*, restore_seconds: float = 0.05):
        handle = start_simulator(
            token=VPS_TOKEN, create_seconds=0.0, restore_seconds=restore_seconds
        )
        made.append(handle)
        return handle

    yield make
    for handle in made:
        handle.stop()


class Deployment:
    """snapbot web processes on one PostgreSQL schema, and what the test reads of them."""

    def __init__(self, tmp_path, db_url: str, sim, fake: FakeSlack) -> None:
        self.tmp_path, self.db_url, self.sim, self.fake = tmp_path, db_url, sim, fake
        self.procs: list[Proc] = []
        self.engine = make_engine(db_url)
        self._clients: dict[str, SlackClientSim] = {}

    def start(self, *names: str) -> list[Proc]:
        settings = web_settings(
            slack_api_url=self.fake.api_url,
            vps_api_url=self.sim.url,
            database_url=self.db_url,
            INCIDENT_CHANNEL=INCIDENT_CHANNEL,
            SNAPSHOT_POLL_SECONDS=str(POLL),
        )
        started = start_webs(settings, self.tmp_path, names)
        self.procs += started
        return started

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill9()
        for client in self._clients.values():
            client.close()
        self.engine.dispose()

    def client(self, proc: Proc) -> SlackClientSim:
        if proc.url not in self._clients:
            self._clients[proc.url] = SlackClientSim(proc.url + "/slack/events", SIGNING_SECRET)
        return self._clients[proc.url]

    # --- Slack side

    def open_request(self, proc: Proc, snapshot_id: int, user: str = "UREQ"):
        """/snapshot restore through ``proc``; the request message once it is posted."""
        before = {m.ts for m in self.fake.messages("C1")}
        body = slash_command_body(
            f"restore {snapshot_id} round",
            user_id=user,
            channel_id="C1",
            response_url=self.fake.response_url("command", channel="C1", user=user),
            trigger_id=self.fake.new_trigger_id(),
        )
        assert self.client(proc).post(body).status_code == 200

        def posted():
            return next(
                (
                    m
                    for m in self.fake.messages("C1")
                    if m.ts not in before
                    and not m.is_reply
                    and (m.text or "").startswith("Restore request #")
                ),
                None,
            )

        message = self.fake.wait_for(posted, HANG_GUARD_S, what="the request message")
        rid = int(message.text.split("#", 1)[1].split(" ", 1)[0])
        wait_until(lambda: self.request(rid).message_ts == message.ts, what="message remembered")
        return rid, message

    def approve_body(self, message, user: str) -> bytes:
        return button_press_body(
            message,
            ids.APPROVE,
            user_id=user,
            response_url=self.fake.response_url(
                "button", channel="C1", user=user, message_ts=message.ts
            ),
        )

    def thread(self, message) -> list[str]:
        return [m.text or "" for m in self.fake.thread("C1", message.ts)]

    def incidents(self) -> list[str]:
        return [m.text or "" for m in self.fake.messages(INCIDENT_CHANNEL)]

    # --- database side

    def request(self, rid: int) -> RestoreRequest:
        with session_scope(self.engine, readonly=True) as s:
            return repo.get_restore_request(s, request_id=rid)

    def approvers(self, rid: int) -> frozenset[str]:
        with session_scope(self.engine, readonly=True) as s:
            return repo.approvers_of(s, request_id=rid)

    def idle(self) -> bool:
        """Every press handled and every Slack message sent."""
        return self.jobs_done() and self.delivered()

    def jobs_done(self) -> bool:
        with session_scope(self.engine, readonly=True) as s:
            return repo.count_jobs(s, states=["queued", "running"]) == 0

    def delivered(self) -> bool:
        """Every Slack message sent. (A job a killed process was running stays `running`
        until its lease lapses; it is not waited for.)"""
        with session_scope(self.engine, readonly=True) as s:
            return repo.count_messages(s, state="pending") == 0

    def audit(self, action: str, target: str) -> list:
        with session_scope(self.engine, readonly=True) as s:
            return [
                e
                for e in repo.latest_audit(s, limit=100_000)
                if e.action == action and e.target == target
            ]

    def age_request(self, rid: int, **columns: datetime) -> None:
        with session_scope(self.engine) as s:
            s.execute(update(RestoreRequest).where(RestoreRequest.id == rid).values(**columns))

    def lapse_lease(self) -> None:
        """What max(3 x poll, 10 s) after a kill -9 brings: the dead holder's lease is over."""
        with session_scope(self.engine) as s:
            s.execute(
                update(Lease)
                .where(Lease.name == "duties")
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )

    # --- provider side

    def restore_writes(self, snapshot_id: int) -> list[float]:
        path = f"snapshots/{snapshot_id}/restore/"
        return [t for t, m, p in list(self.sim.state.writes) if m == "POST" and p == path]


@pytest.fixture
def deployment(tmp_path, pg_url, fake):
    made: list[Deployment] = []

    def make(sim) -> Deployment:
        d = Deployment(tmp_path, pg_url, sim, fake)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def completed_snapshots(sim) -> list[int]:
    """One completed snapshot per seeded server, so consecutive rounds restore different
    servers (a server is `restoring` for a moment after each restore)."""
    snaps = [801]
    for server, name in ((12346, "db-round"), (12347, "cache-round")):
        snaps.append(sim.state.create_snapshot({"server_id": server, "name": name})["id"])
    listed = {s["id"]: s["status"] for s in sim.state.list_snapshots()["results"]}
    assert all(listed[s] == "completed" for s in snaps)
    return snaps


def press_together(d: Deployment, targets: list[tuple[Proc, bytes]]) -> list[int]:
    barrier = threading.Barrier(len(targets))
    statuses: list[int] = [0] * len(targets)

    def press(i: int) -> None:
        proc, body = targets[i]
        barrier.wait()
        statuses[i] = d.client(proc).post(body).status_code

    threads = [threading.Thread(target=press, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


# --- exactly once across two processes ---------------------------------------------------------


@pytest.mark.parametrize("rounds", [5, pytest.param(ROUNDS, marks=pytest.mark.slow)])
def test_two_processes_approving_the_same_request_at_once_restore_exactly_once(
    sims, deployment, rounds
):
    sim = sims(restore_seconds=0.05)
    d = deployment(sim)
    a, b = d.start("a", "b")
    snaps = completed_snapshots(sim)
    decided: list[tuple[int, str]] = []

    for n in range(rounds):
        snapshot = snaps[n % len(snaps)]
        before = len(d.restore_writes(snapshot))
        rid, message = d.open_request((a, b)[n % 2], snapshot)
        users = [f"UR{n:02d}X{i}" for i in range(APPROVERS_PER_ROUND)]
        bodies = [d.approve_body(message, u) for u in users]
        targets = [((a, b)[i % 2], body) for i, body in enumerate(bodies)]
        # Slack redelivers one press to the *other* process (X-Slack-Retry-Num).
        statuses = press_together(d, targets)
        assert statuses == [200] * len(targets), f"round {n}: {statuses}"
        retry_to = b if targets[0][0] is a else a
        assert d.client(retry_to).post(bodies[0], retry_num=1).status_code == 200

        wait_until(lambda rid=rid: d.request(rid).state == "succeeded", 10, what=f"round {n}")
        wait_until(d.idle, 10, what=f"round {n}: every press handled")
        writes = d.restore_writes(snapshot)[before:]
        assert len(writes) == 1, f"round {n}: {len(writes)} restore calls for snapshot {snapshot}"
        req = d.request(rid)
        assert req.decided_by in users
        assert d.approvers(rid) == {req.decided_by}
        approvals = d.audit("restore.approve", f"request:{rid}")
        # One row per person: the redelivery was acknowledged and not audited again.
        assert sorted(e.actor for e in approvals) == sorted(users), f"round {n}"
        assert [e.actor for e in approvals if e.outcome == "ok"] == [req.decided_by]
        decided.append((rid, req.decided_by))

    assert sim.state.calls[RESTORE] == rounds
    assert len({rid for rid, _ in decided}) == rounds
    # Both processes won some rounds' races: the test really crossed processes. Which
    # one wins a round is the race itself, so only the long run can count on both
    # having won (over 50 rounds, one process winning every race would be a finding).
    executors = set()
    with session_scope(d.engine, readonly=True) as s:
        for rid, _ in decided:
            executors.add(repo.get_restore_request(s, request_id=rid).executor)
    if rounds >= ROUNDS:
        assert len(executors) == 2, executors


# --- restart safety ---------------------------------------------------------------------------


def test_pending_request_survives_kill_9_and_a_new_process_restores_once(sims, deployment):
    sim = sims()
    d = deployment(sim)
    (first,) = d.start("first")
    rid, message = d.open_request(first, 801, user="UALICE")
    wait_until(d.idle, 10, what="the request fully posted")
    first.kill9()

    (second,) = d.start("second")
    assert d.request(rid).state == "pending"  # nothing was lost with the process
    assert d.client(second).post(d.approve_body(message, "UBOB")).status_code == 200
    wait_until(lambda: d.request(rid).state == "succeeded", 10, what="the restore")
    wait_until(d.idle, 10, what="the approval handled")
    assert len(d.restore_writes(801)) == 1
    assert sim.state.calls[RESTORE] == 1
    assert d.request(rid).executor.split(":")[1] != str(first.popen.pid)
    shown = d.fake.message("C1", message.ts)
    assert "Approved by <@UBOB>" in str(shown.blocks)
    assert any("Restore started" in t for t in d.thread(message))


def _approve_and_kill_during_the_restore_call(
    d: Deployment, proc: Proc, message, *, provider_answers: int | None = None
) -> None:
    """Press Approve and kill -9 ``proc`` while the provider holds its restore call; the
    provider then carries the call out (or, with ``provider_answers``, refuses it with
    that status) after the caller died."""
    with d.sim.state.hold("POST", "snapshots/{id}/restore/") as held:
        assert d.client(proc).post(d.approve_body(message, "UBOB")).status_code == 200
        held.wait_arrived(1)
        proc.kill9()
        held.release(status=provider_answers)


def test_restore_interrupted_after_reaching_the_provider_is_confirmed_not_resent(sims, deployment):
    sim = sims(restore_seconds=60)
    d = deployment(sim)
    (first,) = d.start("first")
    rid, message = d.open_request(first, 801, user="UALICE")
    wait_until(d.idle, 10, what="the request fully posted")
    _approve_and_kill_during_the_restore_call(d, first, message)
    assert d.request(rid).state == "executing"
    # The call had reached the provider, which carries it out after the caller died.
    wait_until(
        lambda: sim.state.get_server(12345)["status"] == "restoring", 5, what="restore applied"
    )
    d.age_request(rid, executing_at=datetime.now(UTC) - timedelta(minutes=10))
    d.lapse_lease()

    d.start("second")
    wait_until(lambda: d.request(rid).state == "succeeded", 15, what="reconciliation")
    reply = wait_until(
        lambda: next((t for t in d.thread(message) if "confirmed from the provider" in t), None),
        10,
        what="the reconciliation in the thread",
    )
    assert "restoring" in reply
    wait_until(
        lambda: any(f"Restore #{rid} started" in t for t in d.incidents()),
        10,
        what="the incident notice",
    )
    wait_until(d.delivered, 10, what="everything delivered")
    assert sim.state.calls[RESTORE] == 1  # asked about, never sent again
    assert len(d.restore_writes(801)) == 1


def test_restore_interrupted_before_the_provider_acted_is_reported_not_retried(sims, deployment):
    sim = sims(restore_seconds=60)
    d = deployment(sim)
    (first,) = d.start("first")
    rid, message = d.open_request(first, 801, user="UALICE")
    wait_until(d.idle, 10, what="the request fully posted")
    # The restore call is sent; the provider refuses it (503) after the caller died.
    _approve_and_kill_during_the_restore_call(d, first, message, provider_answers=503)
    assert sim.state.calls[RESTORE] == 1
    assert d.request(rid).state == "executing"
    d.age_request(rid, executing_at=datetime.now(UTC) - timedelta(minutes=10))
    d.lapse_lease()

    d.start("second")
    wait_until(lambda: d.request(rid).state == "interrupted", 15, what="reconciliation")
    reply = wait_until(
        lambda: next((t for t in d.thread(message) if "Restore interrupted" in t), None),
        10,
        what="the interruption in the thread",
    )
    assert "will not retry" in reply and "the server is running" in reply
    wait_until(
        lambda: any(f"Restore #{rid} of *web-server-01* interrupted" in t for t in d.incidents()),
        10,
        what="the incident notice",
    )
    assert "was interrupted" in str(d.fake.message("C1", message.ts).blocks)
    wait_until(d.delivered, 10, what="everything delivered")
    assert sim.state.calls[RESTORE] == 1
    assert sim.state.get_server(12345)["status"] == "running"


def test_approved_request_whose_process_died_before_the_call_executes_once(sims, deployment):
    sim = sims()
    d = deployment(sim)
    (first,) = d.start("first")
    rid, message = d.open_request(first, 801, user="UALICE")
    wait_until(d.idle, 10, what="the request fully posted")
    # The approval re-reads the snapshot first; the process dies while that read waits.
    with sim.state.hold("GET", "snapshots/", query="server_id=12345") as reread:
        assert d.client(first).post(d.approve_body(message, "UBOB")).status_code == 200
        reread.wait_arrived(1)
        first.kill9()  # approved, the provider not yet called
    assert d.request(rid).state == "approved"
    assert sim.state.calls[RESTORE] == 0
    d.age_request(rid, decided_at=datetime.now(UTC) - timedelta(minutes=1))
    d.lapse_lease()

    d.start("second")
    wait_until(lambda: d.request(rid).state == "succeeded", 15, what="the resumed restore")
    wait_until(d.delivered, 10, what="everything delivered")
    assert sim.state.calls[RESTORE] == 1
    assert any("Restore started" in t for t in d.thread(message))
