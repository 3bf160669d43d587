"""The watcher across real processes (SPEC §3, §6; issue 5): snapbot's gunicorn `web`
process (snapbot_local/harness.py), killed with SIGKILL or stopped with SIGTERM, next to the
provider simulator and the fake Slack API, both served from this test process so
their state can be read and steered directly.

Snapshots never finish by themselves here (the simulator's create takes an hour):
a test finishes them by moving the simulator's clock, failing or vanishing them,
at a moment it chooses, so every count is exact.
"""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import select

from snapbot_local.harness import Proc, start_webs, web_settings
from snapbot_local.provider import start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import SlackClientSim, slash_command_body
from snapbot_local.stack import INCIDENT_CHANNEL, SIGNING_SECRET, VPS_TOKEN
from storage import repositories as repo
from storage.db import make_engine, session_scope
from storage.tables import Lease, Watch
from tests.conftest import wait_until

NEVER = 3600.0
POLL = 0.2
LAPSE = max(3 * POLL, 10.0)  # SPEC §3: the lease lapses after max(3 x interval, 10 s)
LIST = "GET snapshots/"


@pytest.fixture
def sim():
    handle = start_simulator(token=VPS_TOKEN, create_seconds=NEVER, restore_seconds=NEVER)
    yield handle
    handle.stop()


@pytest.fixture
def fake():
    slack = FakeSlack().start()
    yield slack
    assert slack.invalid_payloads == []
    slack.stop()


class Deployment:
    """snapbot processes sharing one database, and what the test reads of them."""

    def __init__(self, tmp_path, db_url: str, sim, fake: FakeSlack) -> None:
        self.tmp_path, self.db_url, self.sim, self.fake = tmp_path, db_url, sim, fake
        self.procs: list[Proc] = []
        self.engine = None

    def settings(self) -> dict[str, str]:
        return web_settings(
            slack_api_url=self.fake.api_url,
            vps_api_url=self.sim.url,
            database_url=self.db_url,
            log_level="INFO",
            INCIDENT_CHANNEL=INCIDENT_CHANNEL,
            SNAPSHOT_POLL_SECONDS=str(POLL),
        )

    def start(self, *names: str) -> list[Proc]:
        """Start processes together (as replicas would), one gunicorn worker each."""
        started = start_webs(self.settings(), self.tmp_path, names)
        self.procs += started
        if self.engine is None:
            self.engine = make_engine(self.db_url)
        return started

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill9()
        if self.engine is not None:
            self.engine.dispose()

    def command(self, proc: Proc, text: str, user: str = "U1") -> None:
        body = slash_command_body(
            text,
            user_id=user,
            channel_id="C1",
            response_url=self.fake.response_url("command", channel="C1", user=user),
            trigger_id=self.fake.new_trigger_id(),
        )
        with SlackClientSim(proc.url + "/slack/events", SIGNING_SECRET) as client:
            assert client.post(body).status_code == 200

    def watches(self) -> list[Watch]:
        with session_scope(self.engine, readonly=True) as s:
            return list(s.execute(select(Watch).order_by(Watch.id)).scalars())

    def pending_messages(self) -> int:
        with session_scope(self.engine, readonly=True) as s:
            return repo.count_messages(s, state="pending")

    def lease(self) -> Lease | None:
        with session_scope(self.engine, readonly=True) as s:
            return s.get(Lease, "duties")

    def parents(self) -> dict[str, object]:
        """Snapshot name -> its channel message."""
        found = {}
        names = [w.snapshot_name for w in self.watches()]
        for m in self.fake.messages("C1"):
            if m.is_reply:
                continue
            for name in names:
                if f"*{name}*" in (m.text or ""):
                    found[name] = m
        return found

    def replies(self) -> list:
        return [m for m in self.fake.messages("C1") if m.is_reply]

    def settled(self, n_watches: int, *, done: int) -> bool:
        """n watches exist, ``done`` of them reported, and Slack has every message."""
        ws = self.watches()
        return (
            len(ws) == n_watches
            and sum(w.state == "done" for w in ws) == done
            and self.pending_messages() == 0
        )


def is_holder(proc: Proc) -> bool:
    try:
        return httpx.get(proc.url + "/healthz", timeout=2).json()["duties_holder"]
    except httpx.HTTPError:
        return False


@pytest.fixture
def deployment_factory(tmp_path, sim, fake):
    made = []

    def make(db_url: str) -> Deployment:
        d = Deployment(tmp_path, db_url, sim, fake)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def add_servers(sim, servers: dict[int, str]) -> None:
    """vps-api.md's three servers hold 13 more snapshots at 5 each; 20 need more room."""
    for sid, name in servers.items():
        sim.state.add_server(sid, name)


def test_kill_9_during_a_watch_then_restart_posts_exactly_one_reply(
    tmp_path, sim, fake, deployment_factory
):
    d = deployment_factory(f"sqlite:///{tmp_path / 'snapbot.db'}")
    (first,) = d.start("first")
    d.command(first, "create 12346 before-crash", user="UREQ")
    wait_until(lambda: d.settled(1, done=0), timeout=15, what="the watch and its parent message")
    parent = d.parents()["before-crash"]
    assert "being created" in parent.text
    wait_until(lambda: is_holder(first), timeout=5, what="the process holding the lease")

    first.kill9()  # no clean-up runs: the lease stays taken until it lapses
    sim.state.advance(NEVER)  # the snapshot completes while nobody watches
    (second,) = d.start("second")
    wait_until(lambda: d.settled(1, done=1), timeout=LAPSE + 15, what="the report after restart")

    (reply,) = fake.thread("C1", parent.ts)
    assert "<@UREQ>" in reply.text and "completed" in reply.text
    assert "is ready" in fake.message("C1", parent.ts).text
    threaded = [c for c in fake.calls("chat.postMessage") if c.params.get("thread_ts")]
    assert len(threaded) == 1
    assert is_holder(second)


@pytest.mark.postgres
def test_two_processes_report_twenty_snapshots_once_each_through_a_kill_9_of_the_holder(
    pg_url, sim, fake, deployment_factory
):
    add_servers(sim, {12348: "app-server-01", 12349: "app-server-02"})
    # Room: 3 on 12345 (it holds the two seeded snapshots), 5 on each of the others.
    servers = [12345] * 3 + [12346] * 5 + [12347] * 5 + [12348] * 5 + [12349] * 2
    d = deployment_factory(pg_url)
    a, b = d.start("a", "b")
    for i, server in enumerate(servers):
        d.command((a, b)[i % 2], f"create {server} bulk-{i:02d}", user=f"U{i:02d}")
    wait_until(lambda: d.settled(20, done=0), timeout=20, what="20 watches, parents posted")
    parents = d.parents()
    assert len(parents) == 20
    calls0, t0 = sim.state.calls[LIST], time.monotonic()
    # A steady stretch with all 20 in progress: ten polls' worth of list calls must
    # take ten cycles (one caller, one call each), not one cycle of one call per snapshot
    # or two processes polling side by side.
    wait_until(lambda: sim.state.calls[LIST] >= calls0 + 10, timeout=15, what="ten polls")
    steady_calls, steady_t = sim.state.calls[LIST] - calls0, time.monotonic() - t0
    assert steady_calls <= steady_t / POLL + 2, f"{steady_calls} list calls in {steady_t:.2f} s"

    ids = {w.snapshot_name: w.snapshot_id for w in d.watches()}
    for i in range(5):
        sim.state.fail_snapshot(ids[f"bulk-{i:02d}"])
        sim.state.vanish_snapshot(ids[f"bulk-{i + 5:02d}"])
    wait_until(lambda: d.settled(20, done=10), timeout=10, what="the first 10 reported")

    holder = next(p for p in (a, b) if is_holder(p))
    other = b if holder is a else a
    dead_owner = d.lease().owner
    holder.kill9()
    killed_at = time.monotonic()
    sim.state.advance(NEVER)  # the other 10 complete while the lease is orphaned
    wait_until(lambda: is_holder(other), timeout=LAPSE + 5, what="the survivor taking over")
    took = time.monotonic() - killed_at
    lease = d.lease()
    assert lease.owner and lease.owner != dead_owner
    wait_until(lambda: d.settled(20, done=20), timeout=10, what="all 20 reported")
    calls1, t1 = sim.state.calls[LIST], time.monotonic()

    for i in range(20):
        name = f"bulk-{i:02d}"
        (reply,) = fake.thread("C1", parents[name].ts)
        assert f"<@U{i:02d}>" in reply.text
        expected = "ended with status *failed*" if i < 5 else "is gone" if i < 10 else "completed"
        assert expected in reply.text, (name, reply.text)
    assert len(d.replies()) == 20
    threaded = [c for c in fake.calls("chat.postMessage") if c.ok and c.params.get("thread_ts")]
    assert len(threaded) == 20
    print(
        f"takeover {took:.1f} s after kill -9 (lapse {LAPSE:g} s); steady: {steady_calls} list "
        f"calls in {steady_t:.2f} s; whole run: {calls1 - calls0} in {t1 - t0:.1f} s "
        f"(poll {POLL} s)"
    )
    assert (calls1 - calls0) <= (t1 - t0) / POLL + 2, (
        f"{calls1 - calls0} list calls in {t1 - t0:.1f} s at one per {POLL} s; takeover {took:.1f} s"
    )


@pytest.mark.postgres
def test_sigterm_hands_the_lease_over_at_once(pg_url, sim, fake, deployment_factory):
    d = deployment_factory(pg_url)
    a, b = d.start("a", "b")
    holder = wait_until(
        lambda: next((p for p in (a, b) if is_holder(p)), None), timeout=5, what="a holder"
    )
    other = b if holder is a else a
    d.command(holder, "create 12346 across-sigterm", user="UREQ")
    wait_until(lambda: d.settled(1, done=0), timeout=10, what="the watch and its parent")
    leaving = d.lease().owner

    assert holder.terminate() == 0
    # Released on the way out (not left to lapse): nobody holds it, or the survivor
    # already took it.
    assert d.lease().owner != leaving
    wait_until(lambda: is_holder(other), timeout=LAPSE / 2, what="the survivor taking over")
    assert d.lease().owner not in ("", leaving)

    sim.state.advance(NEVER)
    wait_until(lambda: d.settled(1, done=1), timeout=10, what="the report by the survivor")
    parent = d.parents()["across-sigterm"]
    (reply,) = fake.thread("C1", parent.ts)
    assert "<@UREQ>" in reply.text and "completed" in reply.text
