"""One active restore request per snapshot is a database guarantee (SPEC 14.2).

Two `/snapshot restore N` at the same instant used to both pass the "is one open?"
check and both insert: two pending requests, and approving both restored twice. Now
a partial unique index refuses the second insert, on SQLite and on PostgreSQL, and
the second requester is told which request holds the snapshot and whose it is.

Three depths: the repository, with a barrier that makes two writers race past the
check; the whole bot in one process, with both commands held at the snapshot lookup
until both arrived; and a drill of two gunicorn `web` processes on one database.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import MetaData, Table, insert

from bot.blocks import ids
from snapbot_local.harness import Proc, start_web, web_settings
from snapbot_local.provider import start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import SlackClientSim, button_press_body, slash_command_body
from snapbot_local.stack import INCIDENT_CHANNEL, SIGNING_SECRET, VPS_TOKEN, LocalStack
from storage import repositories as repo
from storage.db import alembic_config, make_engine, migrate, session_scope
from storage.tables import AuditEvent, RestoreRequest
from tests.conftest import wait_until

SNAPSHOT = 801  # seeded: pre-migration-snapshot of web-server-01
ACTIVE = ("pending", "approved", "executing")
CLOSED = ("rejected", "cancelled", "expired", "failed", "succeeded", "interrupted")
APPROVERS = "UAPPROVER1,UAPPROVER2"
RESTORE = "POST snapshots/{id}/restore/"


def new_request(requester: str, snapshot_id: int = SNAPSHOT) -> RestoreRequest:
    now = datetime.now(UTC)
    return RestoreRequest(
        snapshot_id=snapshot_id,
        snapshot_name="pre-migration-snapshot",
        server_id=12345,
        server_name="web-server-01",
        requester=requester,
        channel="C1",
        state="pending",
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )


# The legal way into each state (bot.core.approval.TRANSITIONS; the repository refuses others).
PATH = {
    "approved": ("approved",),
    "executing": ("approved", "executing"),
    "succeeded": ("approved", "executing", "succeeded"),
    "failed": ("approved", "executing", "failed"),
    "interrupted": ("approved", "executing", "interrupted"),
}


def move_to(s, request_id: int, state: str) -> bool:
    """Move a pending request on to ``state`` through the states before it."""
    current = "pending"
    for step in PATH.get(state, (state,)):
        if not repo.transition_request(
            s, request_id=request_id, from_states=[current], to_state=step
        ):
            return False
        current = step
    return True


def active_requests(engine, snapshot_id: int = SNAPSHOT) -> list[RestoreRequest]:
    with session_scope(engine, readonly=True) as s:
        return [r for r in repo.requests_in_state(s, states=ACTIVE) if r.snapshot_id == snapshot_id]


# --- the repository: the insert itself refuses the second ----------------------------------------


def test_two_writers_past_the_open_request_check_store_only_one_active_request(engine):
    barrier = threading.Barrier(2, timeout=30)
    stored: dict[str, RestoreRequest | None] = {}
    errors: list[BaseException] = []

    def open_one(user: str) -> None:
        try:
            # The old check-then-insert: both look, both see nothing open, then both insert.
            with session_scope(engine, readonly=True) as s:
                assert repo.open_request_for_snapshot(s, snapshot_id=SNAPSHOT) is None
            barrier.wait()
            with session_scope(engine) as s:
                row = repo.open_restore_request(s, new_request(user))
                stored[user] = None if row is None else row.id
        except BaseException as exc:  # reported below, with the thread's name
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(u,)) for u in ("UALICE", "UBOB")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(v is None for v in stored.values()) == [False, True], stored
    (winner,) = [u for u, v in stored.items() if v is not None]
    (held,) = active_requests(engine)
    assert (held.id, held.requester) == (stored[winner], winner)


@pytest.mark.parametrize("closed", CLOSED)
def test_a_closed_request_frees_its_snapshot_for_a_new_one(engine, closed):
    with session_scope(engine) as s:
        first = repo.open_restore_request(s, new_request("UALICE"))
    with session_scope(engine) as s:
        assert repo.open_restore_request(s, new_request("UBOB")) is None
        assert move_to(s, first.id, closed)
    with session_scope(engine) as s:
        second = repo.open_restore_request(s, new_request("UBOB"))
    assert second is not None and second.id != first.id
    assert [r.id for r in active_requests(engine)] == [second.id]


@pytest.mark.parametrize("still_active", ["approved", "executing"])
def test_an_approved_or_executing_request_still_holds_its_snapshot(engine, still_active):
    with session_scope(engine) as s:
        first = repo.open_restore_request(s, new_request("UALICE"))
        assert move_to(s, first.id, still_active)
    with session_scope(engine) as s:
        assert repo.open_restore_request(s, new_request("UBOB")) is None
        # Another snapshot is not held by it.
        assert repo.open_restore_request(s, new_request("UBOB", snapshot_id=802)) is not None


def test_the_migration_closes_duplicates_the_race_left_behind_then_builds_the_index(db_url):
    """A database the old race wrote duplicates into still upgrades: the later pending
    one is cancelled; an approved one is kept over an older pending one; of approved and
    executing ones, the executing (or the oldest) stays and no two stay active."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002_snapshot_deletion")
            conn.commit()
        rows = [
            (801, "pending"),
            (801, "pending"),
            (802, "pending"),
            (802, "approved"),
            (803, "approved"),  # beside a restoring one: never reaches the provider
            (803, "executing"),
            (804, "executing"),
            (804, "executing"),  # two restoring: the later is marked interrupted
            (805, "approved"),
            (805, "approved"),
        ]
        # Rows as the old schema holds them: only the columns it has (later revisions
        # add more, which the model already names).
        old_table = Table("restore_request", MetaData(), autoload_with=engine)
        with engine.begin() as conn:
            for i, (snapshot_id, state) in enumerate(rows):
                row = new_request(f"U{i}", snapshot_id=snapshot_id)
                row.state = state
                values = {c.name: getattr(row, c.name) for c in old_table.columns if c.name != "id"}
                conn.execute(insert(old_table).values(**values))  # ids in this order
        migrate(engine)
        with session_scope(engine, readonly=True) as s:
            states = {r.id: r.state for r in repo.requests_in_state(s, states=ACTIVE + CLOSED)}
        assert states == {
            1: "pending",
            2: "cancelled",
            3: "cancelled",
            4: "approved",
            5: "failed",
            6: "executing",
            7: "executing",
            8: "interrupted",
            9: "approved",
            10: "failed",
        }
        with session_scope(engine) as s:
            assert repo.open_restore_request(s, new_request("U9", snapshot_id=801)) is None
    finally:
        engine.dispose()


# --- the bot in one process: the second requester is told ---------------------------------------


@pytest.fixture
def stack(db_url):
    stack = LocalStack(
        database_url=db_url,
        poll_seconds=0.2,
        restore_seconds=0.2,
        settings_overrides={"snapshot_approvers": frozenset(APPROVERS.split(","))},
    ).start()
    yield stack
    problems = stack.slack.invalid_payloads
    stack.stop()
    assert problems == [], "Slack would have refused a payload"


def hold_snapshot_lookups(stack: LocalStack, monkeypatch, parties: int) -> None:
    """Each restore request waits after its snapshot lookup until ``parties`` arrived,
    so they all reach "is a request open?" together."""
    barrier = threading.Barrier(parties, timeout=30)
    held_so_far = iter(range(parties))
    vps = stack.deps.vps
    real = vps.list_snapshots

    def held(server_id=None, **kwargs):
        # A request looks its snapshot up in the whole list; the execution's re-read
        # (one server's list) and later lookups pass.
        found = real(server_id, **kwargs)
        if server_id is None and next(held_so_far, None) is not None:
            barrier.wait()
        return found

    monkeypatch.setattr(vps, "list_snapshots", held)


def ephemeral_texts(stack: LocalStack, user: str) -> list[str]:
    return [e.text or "" for e in stack.slack.ephemerals(user=user)]


def test_two_restore_commands_at_one_instant_open_one_request_and_tell_the_second_whose_it_is(
    stack, monkeypatch
):
    hold_snapshot_lookups(stack, monkeypatch, 2)
    users = ("UALICE", "UBOB")
    replies = [None, None]

    def command(i: int) -> None:
        replies[i] = stack.user(users[i]).command(f"restore {SNAPSHOT} bad deploy").status_code

    threads = [threading.Thread(target=command, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert replies == [200, 200]
    stack.wait_settled(30)

    (held,) = active_requests(stack.runtime.engine)
    (loser,) = [u for u in users if u != held.requester]
    told = wait_until(
        lambda: next((t for t in ephemeral_texts(stack, loser) if "already" in t), None),
        10,
        what=f"the second requester told: {ephemeral_texts(stack, loser)}",
    )
    assert (
        f"Restore request #{held.id} for this snapshot is already pending, "
        f"opened by <@{held.requester}>" in told
    )
    posted = [m for m in stack.slack.messages("C1") if "Restore request #" in (m.text or "")]
    assert len(posted) == 1
    with session_scope(stack.runtime.engine, readonly=True) as s:
        rows = [r for r in repo.latest_audit(s, limit=100) if r.action == "restore.request"]
    assert sorted((r.actor, r.outcome) for r in rows) == sorted(
        [(held.requester, "ok"), (loser, "denied")]
    )
    assert next(r for r in rows if r.actor == loser).detail == f"request #{held.id} already pending"

    # Approving the one request restores once; once it is closed the snapshot is free.
    message = stack.slack.message("C1", held.message_ts)
    stack.user("UAPPROVER1").press(message, ids.APPROVE)
    wait_until(
        lambda: active_requests(stack.runtime.engine) == [], 20, what="the restore to finish"
    )
    assert stack.sim.state.calls[RESTORE] == 1
    stack.wait_settled(30)
    assert stack.user(loser).command(f"restore {SNAPSHOT} again").status_code == 200
    wait_until(
        lambda: [r.requester for r in active_requests(stack.runtime.engine)] == [loser],
        20,
        what="a new request once the first one closed",
    )


def test_a_rejected_request_lets_the_same_snapshot_be_requested_again(stack):
    assert stack.user("UALICE").command(f"restore {SNAPSHOT} first").status_code == 200
    stack.wait_settled(30)
    (first,) = active_requests(stack.runtime.engine)
    stack.user("UAPPROVER1").press(stack.slack.message("C1", first.message_ts), ids.REJECT)
    wait_until(lambda: active_requests(stack.runtime.engine) == [], 20, what="the rejection")
    stack.wait_settled(30)
    assert stack.user("UBOB").command(f"restore {SNAPSHOT} second").status_code == 200
    stack.wait_settled(30)
    (second,) = active_requests(stack.runtime.engine)
    assert second.requester == "UBOB" and second.id != first.id
    assert not any("already" in t for t in ephemeral_texts(stack, "UBOB"))


# --- the drill: two web processes, two requests at one instant, many rounds ----------------------


class TwoReplicas:
    """Two gunicorn `web` processes (the Procfile's command) on one database; the
    provider simulator and the fake Slack API are served from this test process."""

    def __init__(self, tmp_path, db_url: str) -> None:
        self.fake = FakeSlack().start()
        self.sim = start_simulator(token=VPS_TOKEN, create_seconds=0.0, restore_seconds=0.05)
        self.engine = make_engine(db_url)
        settings = web_settings(
            slack_api_url=self.fake.api_url,
            vps_api_url=self.sim.url,
            database_url=db_url,
            INCIDENT_CHANNEL=INCIDENT_CHANNEL,
            SNAPSHOT_APPROVERS=APPROVERS,
            SNAPSHOT_POLL_SECONDS="0.2",
        )
        self.procs: list[Proc] = []
        self.clients: list[SlackClientSim] = []
        for name in ("a", "b"):
            proc = start_web(settings, tmp_path, workers=1, name=name)
            self.procs.append(proc)
            self.clients.append(SlackClientSim(proc.url + "/slack/events", SIGNING_SECRET))

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill9()
        for client in self.clients:
            client.close()
        self.engine.dispose()
        self.sim.stop()
        self.fake.stop()

    def at_once(self, bodies: list[bytes]) -> list[int]:
        """Post bodies[i] to process i % 2, all released from one barrier."""
        barrier = threading.Barrier(len(bodies), timeout=30)
        statuses = [0] * len(bodies)

        def post(i: int) -> None:
            barrier.wait()
            statuses[i] = self.clients[i % 2].post(bodies[i]).status_code

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return statuses

    def idle(self) -> bool:
        with session_scope(self.engine, readonly=True) as s:
            return (
                repo.count_jobs(s, states=["queued", "running"]) == 0
                and repo.count_messages(s, state="pending") == 0
            )

    def requests_for(self, snapshot_id: int, after: int) -> list[RestoreRequest]:
        with session_scope(self.engine, readonly=True) as s:
            rows = repo.requests_in_state(s, states=ACTIVE + CLOSED)
        return [r for r in rows if r.snapshot_id == snapshot_id and r.id > after]

    def last_request_id(self) -> int:
        with session_scope(self.engine, readonly=True) as s:
            rows = repo.requests_in_state(s, states=ACTIVE + CLOSED)
        return max((r.id for r in rows), default=0)

    def restores_of(self, snapshot_id: int) -> int:
        path = f"snapshots/{snapshot_id}/restore/"
        return sum(1 for _, m, p in list(self.sim.state.writes) if m == "POST" and p == path)

    def denied_requests(self) -> list[AuditEvent]:
        with session_scope(self.engine, readonly=True) as s:
            rows = repo.latest_audit(s, limit=100_000)
        return [r for r in rows if r.action == "restore.request" and r.outcome == "denied"]


def snapshots_to_rotate(sim) -> list[int]:
    """One completed snapshot per seeded server, so consecutive rounds restore different
    servers (a server is `restoring` for a moment after each restore)."""
    snaps = [SNAPSHOT]
    for server, name in ((12346, "db-round"), (12347, "cache-round")):
        snaps.append(sim.state.create_snapshot({"server_id": server, "name": name})["id"])
    return snaps


def run_drill(d: TwoReplicas, rounds: int) -> None:
    snaps = snapshots_to_rotate(d.sim)
    for n in range(rounds):
        snapshot = snaps[n % len(snaps)]
        after, restores_before = d.last_request_id(), d.restores_of(snapshot)
        users = [f"UR{n:02d}A", f"UR{n:02d}B"]
        bodies = [
            slash_command_body(
                f"restore {snapshot} round {n}",
                user_id=u,
                channel_id="C1",
                response_url=d.fake.response_url("command", channel="C1", user=u),
                trigger_id=d.fake.new_trigger_id(),
            )
            for u in users
        ]
        assert d.at_once(bodies) == [200, 200], f"round {n}"
        wait_until(d.idle, 30, what=f"round {n}: both commands handled")
        opened = d.requests_for(snapshot, after)
        assert len(opened) == 1, f"round {n}: {[(r.id, r.requester) for r in opened]}"
        (req,) = opened
        (loser,) = [u for u in users if u != req.requester]
        wait_until(
            lambda loser=loser, rid=req.id: any(
                f"#{rid} for this snapshot is already pending" in (e.text or "")
                for e in d.fake.ephemerals(user=loser)
            ),
            10,
            what=f"round {n}: {loser} told about request #{req.id}",
        )
        # Both approvers press at once, one on each process: still one restore.
        message = d.fake.message("C1", req.message_ts)
        presses = [
            button_press_body(
                message,
                ids.APPROVE,
                user_id=u,
                response_url=d.fake.response_url(
                    "button", channel="C1", user=u, message_ts=message.ts
                ),
            )
            for u in APPROVERS.split(",")
        ]
        assert d.at_once(presses) == [200, 200], f"round {n}"
        wait_until(
            lambda rid=req.id, sid=snapshot: d.requests_for(sid, rid - 1)[0].state == "succeeded",
            30,
            what=f"round {n}: the restore",
        )
        wait_until(d.idle, 30, what=f"round {n}: every press handled")
        assert d.restores_of(snapshot) - restores_before == 1, f"round {n}"
    assert len(d.denied_requests()) == rounds
    assert d.sim.state.calls[RESTORE] == rounds


@pytest.fixture
def replicas(tmp_path, db_url):
    made: list[TwoReplicas] = []

    def make() -> TwoReplicas:
        made.append(TwoReplicas(tmp_path, db_url))
        return made[-1]

    yield make
    for d in made:
        d.stop()


def test_two_replicas_given_two_requests_at_once_open_one_and_restore_once_5_rounds(replicas):
    run_drill(replicas(), 5)


@pytest.mark.slow
def test_two_replicas_given_two_requests_at_once_open_one_and_restore_once_50_rounds(replicas):
    run_drill(replicas(), 50)
