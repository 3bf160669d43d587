"""Restart drills for the safety snapshot (SPEC 9.4, 9.5): ``kill -9`` at each step of a
safeguarding request, then a survivor carries on from the database and the provider's
list. Per request at most one eviction DELETE, one safety create and one restore POST
reach the provider, and the request ends in a truthful state, told in its thread.

Each drill runs on a SQLite file (the one process killed, a new one started on the same
file) and on PostgreSQL with two replicas (the one doing the step, which also holds the
duties lease, is killed; the other takes over). The provider simulator and the fake
Slack are served from this test process: ``sim.state.hold`` keeps a provider call in
flight while its caller is killed, and the safety snapshot completes only when the test
moves the simulator's time on. Nothing waits minutes: ageing ``safety_step_at`` (or
``executing_at``) stands for STEP_GRACE (EXECUTING_GRACE) going by, and lapsing the
lease for the dead holder's lease running out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from snapbot_local.harness import HANG_GUARD_S, Proc, start_webs, web_settings
from snapbot_local.provider import start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.stack import INCIDENT_CHANNEL, VPS_TOKEN
from storage.db import session_scope
from storage.tables import Lease
from tests.conftest import wait_until
from tests.processes.test_approval_processes import Deployment, press_together

POLL = 0.2
HOUR = 3600.0
TARGET = 801  # pre-migration-snapshot of web-server-01, 2025-01-15
SERVER = 12345
DELETE = "DELETE snapshots/{id}/"
CREATE = "POST snapshots/"
RESTORE = "POST snapshots/{id}/restore/"
LONG_AGO = timedelta(minutes=10)  # past STEP_GRACE and EXECUTING_GRACE (2 min each)


@pytest.fixture
def fake():
    slack = FakeSlack().start()
    yield slack
    assert slack.invalid_payloads == []
    slack.stop()


@pytest.fixture
def sim():
    # A safety snapshot never completes by itself (the drill moves time on), and a
    # restore stays `restoring` long enough to be confirmed from the server's state.
    handle = start_simulator(token=VPS_TOKEN, create_seconds=HOUR, restore_seconds=HOUR)
    yield handle
    handle.stop()


class SafetyDeployment(Deployment):
    """snapbot web processes with RESTORE_SAFETY_SNAPSHOT=on and one-click Approve."""

    def start(self, *names: str) -> list[Proc]:
        settings = web_settings(
            slack_api_url=self.fake.api_url,
            vps_api_url=self.sim.url,
            database_url=self.db_url,
            INCIDENT_CHANNEL=INCIDENT_CHANNEL,
            SNAPSHOT_POLL_SECONDS=str(POLL),
            RESTORE_SAFETY_SNAPSHOT="on",
            RESTORE_CONFIRM="button",
        )
        started = start_webs(settings, self.tmp_path, names)
        self.procs += started
        return started

    # --- who is who

    def proc_of(self, owner: str) -> Proc:
        """The web process (gunicorn master) whose child, or grandchild, an owner id names:
        the job worker beside its HTTP workers runs the jobs and the duties."""
        pid: int | None = int(owner.split(":")[1])
        masters = {proc.popen.pid: proc for proc in self.procs}
        for _ in range(4):
            if pid in masters:
                return masters[pid]
            pid = _parent_pid(pid) if pid else None
        raise AssertionError(f"no process of ours is {owner}")

    def others(self, proc: Proc) -> list[Proc]:
        return [p for p in self.procs if p is not proc and p.popen.poll() is None]

    def holder(self) -> Proc | None:
        with session_scope(self.engine, readonly=True) as s:
            lease = s.get(Lease, "duties")
        if lease is None or lease.expires_at is None:
            return None
        expires = lease.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return self.proc_of(lease.owner) if expires > datetime.now(UTC) else None

    def start_holder(self, name: str = "a") -> Proc:
        """A first process, holding the duties lease before any other starts."""
        (proc,) = self.start(name)
        wait_until(lambda: self.holder() is proc, 10, what=f"{name} holding the lease")
        return proc

    # --- the provider

    def snapshot_named(self, name: str) -> dict | None:
        listed = self.sim.state.list_snapshots(SERVER)["results"]
        return next((s for s in listed if s["name"] == name), None)

    def server_snapshot_ids(self) -> set[int]:
        return {s["id"] for s in self.sim.state.list_snapshots(SERVER)["results"]}

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for _, m, p in list(self.sim.state.writes)]

    def complete_safety_snapshot(self) -> None:
        self.sim.state.advance(HOUR + 1)

    # --- the request

    def wait_state(self, rid: int, wanted: str):
        return wait_until(
            lambda: (r := self.request(rid)).state == wanted and r,
            20,
            what=f"request #{rid} {wanted} (it is {self.request(rid).state})",
        )

    def wait_reply(self, message, text: str) -> str:
        return wait_until(
            lambda: next((t for t in self.thread(message) if text in t), None),
            10,
            what=f"a reply with {text!r}",
        )

    def hand_over(self, rid: int, **aged: datetime) -> None:
        """What minutes after a kill -9 bring: the step (or call) claimed long ago, and
        the dead holder's lease over."""
        if aged:
            self.age_request(rid, **aged)
        self.lapse_lease()


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


# Each drill boots two or three gunicorn processes: on SQLite that is ~15 s on a loaded
# machine; with two PostgreSQL replicas over 20 s, so those run with the slow ones.
@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])]
)
def topology(request) -> str:
    return request.param


@pytest.fixture
def deploy(request, tmp_path, sim, fake, topology):
    """A deployment whose first process ``a`` holds the duties lease, and (PostgreSQL) a
    replica ``b``; ``d.survivor(victim)`` is who carries on after ``victim`` was killed:
    the other replica, or a new process on the same SQLite file."""
    if topology == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'snapbot.db'}"
    else:
        db_url = request.getfixturevalue("pg_url")
    d = SafetyDeployment(tmp_path, db_url, sim, fake)
    d.start_holder("a")
    if topology == "postgres":
        d.start("b")

    def survivor(victim: Proc) -> Proc:
        assert victim.popen.poll() is not None, "the victim is still running"
        if topology == "sqlite":
            return d.start("second")[0]
        (other,) = d.others(victim)
        return other

    d.survivor = survivor
    yield d
    d.stop()


def seed_full_server(sim) -> int:
    """Three more snapshots of web-server-01, older than its two: 5 of 5. The oldest's id."""
    base = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    ids = [
        sim.state.seed_snapshot(SERVER, f"old-{i}", created_at=base + i * 86400) for i in range(3)
    ]
    return ids[0]


def approve_at(d: SafetyDeployment, proc: Proc, message, user: str = "UBOB") -> None:
    assert d.client(proc).post(d.approve_body(message, user)).status_code == 200


def kill_while_held(d: SafetyDeployment, held, rid: int) -> Proc:
    """The held call reached the provider: kill -9 the process that made it (the one
    executing the request, whichever replica's job worker took the approval), then let
    the provider carry the call out. The process killed."""
    held.wait_arrived(1)
    victim = d.proc_of(d.request(rid).executor)
    victim.kill9()
    held.release()
    return victim


@contextmanager
def slack_hold(fake: FakeSlack, method: str) -> Iterator[threading.Event]:
    """Keep the fake Slack's calls of ``method`` waiting (the fake runs in this process:
    its per-method delay is where a call waits); the event is set once one arrived."""
    arrived, released = threading.Event(), threading.Event()
    delay_for = fake._delay_for

    def held(name: str) -> float:
        if name != method:
            return delay_for(name)
        arrived.set()
        released.wait(HOUR)
        return 0.0

    fake._delay_for = held
    try:
        yield arrived
    finally:
        released.set()
        fake._delay_for = delay_for


def assert_once(d: SafetyDeployment, rid: int, *, evicted: int | None = None) -> None:
    """One eviction DELETE (or none), one safety create, one restore, in that order."""
    expected = [("DELETE", f"snapshots/{evicted}/")] if evicted is not None else []
    expected += [("POST", "snapshots/"), ("POST", f"snapshots/{TARGET}/restore/")]
    assert d.writes() == expected
    assert d.sim.state.calls[DELETE] == (1 if evicted is not None else 0)
    assert d.sim.state.calls[CREATE] == 1
    assert d.sim.state.calls[RESTORE] == 1
    created = d.audit(
        "safety.create",
        f"request:{rid} snapshot:{d.request(rid).safety_snapshot_id} server:{SERVER}",
    )
    assert len(created) == 1


def finish_and_check(d: SafetyDeployment, rid: int, message, *, evicted: int | None = None):
    """Complete the safety snapshot; the survivor restores once and says so."""
    safety = d.request(rid).safety_snapshot_id
    d.complete_safety_snapshot()
    req = d.wait_state(rid, "succeeded")
    d.wait_reply(message, "completed in")
    d.wait_reply(message, "Restore started")
    wait_until(d.delivered, 10, what="everything delivered")
    assert req.safety_snapshot_id == safety
    assert_once(d, rid, evicted=evicted)
    return req


# --- the drills ---------------------------------------------------------------------------------


@pytest.mark.slow  # a restart drill at every step: after the README suite, in CI
def test_killed_after_the_eviction_the_survivor_creates_and_restores_once(deploy):
    d = deploy
    oldest = seed_full_server(d.sim)
    a = d.procs[0]
    rid, message = d.open_request(a, TARGET, user="UALICE")
    assert d.request(rid).evict_snapshot_id == oldest
    wait_until(d.idle, 10, what="the request fully posted")

    with d.sim.state.hold("DELETE", "snapshots/{id}/") as held:
        approve_at(d, a, message)
        victim = kill_while_held(d, held, rid)
    wait_until(lambda: oldest not in d.server_snapshot_ids(), 5, what="the eviction applied")
    req = d.request(rid)
    assert (req.state, req.safety_step) == ("safeguarding", "evict")

    d.survivor(victim)
    d.hand_over(rid, safety_step_at=datetime.now(UTC) - LONG_AGO)
    req = wait_until(
        lambda: (r := d.request(rid)).safety_step == "watch" and r, 20, what="the create"
    )
    d.wait_reply(message, "Taking the safety snapshot `pre-restore-r")
    finish_and_check(d, rid, message, evicted=oldest)
    # The eviction the dead process made is audited and told (SPEC 9.7), once.
    (evicted,) = d.audit("safety.evict", f"request:{rid} snapshot:{oldest} server:{SERVER}")
    assert "old-0" in evicted.detail
    (note,) = [t for t in d.thread(message) if f"`{oldest}`" in t]
    assert "old-0" in note and "make room" in note


def test_killed_before_the_create_was_stored_the_survivor_finds_it_by_name(deploy):
    d = deploy
    a = d.procs[0]
    rid, message = d.open_request(a, TARGET, user="UALICE")
    wait_until(d.idle, 10, what="the request fully posted")

    with d.sim.state.hold("POST", "snapshots/") as held:
        approve_at(d, a, message)
        victim = kill_while_held(d, held, rid)
    name = f"pre-restore-r{rid}"
    made = wait_until(lambda: d.snapshot_named(name), 5, what="the create applied")
    req = d.request(rid)
    assert (req.state, req.safety_step, req.safety_snapshot_id) == ("safeguarding", "create", None)

    d.survivor(victim)
    d.hand_over(rid, safety_step_at=datetime.now(UTC) - LONG_AGO)
    req = wait_until(
        lambda: (r := d.request(rid)).safety_step == "watch" and r, 20, what="the adoption"
    )
    assert req.safety_snapshot_id == made["id"]
    d.wait_reply(message, f"(ID `{made['id']}`)")
    (created,) = d.audit("safety.create", f"request:{rid} snapshot:{made['id']} server:{SERVER}")
    assert "found by name after a restart" in created.detail
    finish_and_check(d, rid, message)


@pytest.mark.slow  # a restart drill at every step: after the README suite, in CI
def test_killed_while_the_safety_snapshot_is_in_progress_the_survivor_watches_it(deploy):
    d = deploy
    a = d.procs[0]
    rid, message = d.open_request(a, TARGET, user="UALICE")
    wait_until(d.idle, 10, what="the request fully posted")

    approve_at(d, a, message)
    wait_until(
        lambda: (r := d.request(rid)).safety_step == "watch" and r, 20, what="the watch step"
    )
    d.wait_reply(message, "Taking the safety snapshot")
    assert d.holder() is a  # the watcher: it polls the safety snapshot
    a.kill9()
    assert d.sim.state.calls[CREATE] == 1 and d.sim.state.calls[RESTORE] == 0

    survivor = d.survivor(a)
    d.hand_over(rid)
    wait_until(lambda: d.holder() is survivor, 20, what="the survivor holding the lease")
    # It watches: while the snapshot is in progress nothing is restored.
    polls = d.sim.state.calls["GET snapshots/"]
    wait_until(lambda: d.sim.state.calls["GET snapshots/"] >= polls + 3, 10, what="three polls")
    assert d.request(rid).state == "safeguarding" and d.sim.state.calls[RESTORE] == 0
    finish_and_check(d, rid, message)


@pytest.mark.slow  # a restart drill at every step: after the README suite, in CI
def test_killed_during_the_restore_call_it_is_reconciled_not_called_again(deploy):
    d = deploy
    a = d.procs[0]
    rid, message = d.open_request(a, TARGET, user="UALICE")
    wait_until(d.idle, 10, what="the request fully posted")
    approve_at(d, a, message)
    wait_until(lambda: d.request(rid).safety_step == "watch", 20, what="the watch step")
    d.wait_reply(message, "Taking the safety snapshot")

    with d.sim.state.hold("POST", "snapshots/{id}/restore/") as held:
        d.complete_safety_snapshot()  # the holder a sees it completed and calls restore
        held.wait_arrived(1)
        assert d.holder() is a
        a.kill9()
        held.release()
    wait_until(
        lambda: d.sim.state.get_server(SERVER)["status"] == "restoring", 5, what="restore applied"
    )
    assert d.request(rid).state == "executing"

    d.survivor(a)
    d.hand_over(rid, executing_at=datetime.now(UTC) - LONG_AGO)
    d.wait_state(rid, "succeeded")
    assert "restoring" in d.wait_reply(message, "confirmed from the provider")
    wait_until(d.delivered, 10, what="everything delivered")
    assert_once(d, rid)


@pytest.mark.slow  # a restart drill at every step: after the README suite, in CI
def test_killed_after_the_safety_snapshot_completed_before_the_restore_call(deploy):
    """The step `ready` stored, the restore not yet called (the target's re-read held):
    the survivor claims the step again and calls restore, once."""
    d = deploy
    a = d.procs[0]
    rid, message = d.open_request(a, TARGET, user="UALICE")
    wait_until(d.idle, 10, what="the request fully posted")
    approve_at(d, a, message)
    wait_until(lambda: d.request(rid).safety_step == "watch", 20, what="the watch step")

    with d.sim.state.hold("GET", "snapshots/", query=f"server_id={SERVER}") as reread:
        d.complete_safety_snapshot()
        reread.wait_arrived(1)
        assert d.holder() is a
        a.kill9()
    req = d.request(rid)
    assert (req.state, req.safety_step) == ("safeguarding", "ready")
    assert d.sim.state.calls[RESTORE] == 0

    d.survivor(a)
    d.hand_over(rid, safety_step_at=datetime.now(UTC) - LONG_AGO)
    d.wait_state(rid, "succeeded")
    d.wait_reply(message, "Restore started")
    wait_until(d.delivered, 10, what="everything delivered")
    assert_once(d, rid)


@pytest.mark.slow  # a restart drill at every step: after the README suite, in CI
def test_killed_while_failing_on_a_failed_safety_snapshot_the_survivor_fails_it(deploy):
    """The safety snapshot failed; its watch was ended and the process killed before the
    request was failed (while it asked Slack for the request's permalink): the request
    must not stay `safeguarding` (holding the server) for ever."""
    d = deploy
    a = d.procs[0]
    rid, message = d.open_request(a, TARGET, user="UALICE")
    wait_until(d.idle, 10, what="the request fully posted")
    approve_at(d, a, message)
    req = wait_until(
        lambda: (r := d.request(rid)).safety_step == "watch" and r, 20, what="the watch step"
    )
    d.wait_reply(message, "Taking the safety snapshot")

    with slack_hold(d.fake, "chat.getPermalink") as asked:
        d.sim.state.fail_snapshot(req.safety_snapshot_id)
        assert asked.wait(HANG_GUARD_S), "the failure was not reported"
        assert d.holder() is a
        a.kill9()
    assert d.request(rid).state == "safeguarding"

    d.survivor(a)
    d.hand_over(rid, safety_step_at=datetime.now(UTC) - LONG_AGO)
    req = d.wait_state(rid, "failed")
    assert "ended as failed; nothing was restored" in req.outcome_detail
    d.wait_reply(message, "nothing was restored")
    wait_until(lambda: any(f"#{rid}" in t for t in d.incidents()), 10, what="the incident")
    wait_until(d.delivered, 10, what="everything delivered")
    assert d.writes() == [("POST", "snapshots/")]
    assert d.sim.state.calls[RESTORE] == 0


@pytest.mark.postgres
@pytest.mark.slow
def test_two_replicas_approving_at_once_take_one_safety_snapshot_and_restore_once(
    tmp_path, pg_url, sim, fake
):
    d = SafetyDeployment(tmp_path, pg_url, sim, fake)
    try:
        a, b = d.start("a", "b")
        rid, message = d.open_request(a, TARGET, user="UALICE")
        wait_until(d.idle, 10, what="the request fully posted")
        users = [f"UAPP{i}" for i in range(4)]
        bodies = [d.approve_body(message, u) for u in users]
        targets = [((a, b)[i % 2], body) for i, body in enumerate(bodies)]
        assert press_together(d, targets) == [200] * len(targets)
        # Slack redelivers one press to the other process.
        assert d.client(b).post(bodies[0], retry_num=1).status_code == 200
        wait_until(lambda: d.request(rid).safety_step == "watch", 20, what="the watch step")
        wait_until(d.jobs_done, 10, what="every press handled")
        assert d.sim.state.calls[CREATE] == 1 and d.sim.state.calls[RESTORE] == 0
        req = finish_and_check(d, rid, message)
        assert req.decided_by in users and d.approvers(rid) == {req.decided_by}
        assert len(d.thread(message)) == len(set(d.thread(message)))  # no note twice
    finally:
        d.stop()
