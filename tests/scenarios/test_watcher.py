"""The snapshot watcher (SPEC §6, issue 5) against the real parts: the provider
simulator over HTTP, the fake Slack Web API, a real database and the real app.

Cycles are driven by calling ``Duties.cycle()`` on a stack started without its
background thread, so every count below is per cycle, exactly. Snapshots never
finish by themselves (the simulator's create takes an hour); a test finishes them
by moving the simulator's clock, failing or vanishing them.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from bot.blocks import ids
from bot.blocks.format import size
from bot.services import watches as watches_
from bot.watcher import MAX_SKIP, PROVIDER_ALERT_AFTER, STUCK_AFTER
from snapbot_local.stack import LocalStack
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import Job, Outbox, Watch
from tests.conftest import wait_until
from tests.e2e_helpers import fresh, incident_texts, wait_for_message

LIST = "GET snapshots/"
NEVER = 3600.0  # the simulator's create time: nothing completes unless a test says so
POLL = 0.2


def new_stack(db_url: str) -> LocalStack:
    """Not started yet: ``with new_stack(url) as stack`` starts and stops it."""
    return LocalStack(
        database_url=db_url, create_seconds=NEVER, poll_seconds=POLL, start_duties=False
    )


def make_stack(db_url: str) -> LocalStack:
    return new_stack(db_url).start()


@pytest.fixture
def stack(sqlite_url):
    s = make_stack(sqlite_url)
    yield s
    assert s.slack.invalid_payloads == []
    s.stop()


@pytest.fixture
def any_stack(db_url):
    """The same, on a SQLite file and on PostgreSQL."""
    s = make_stack(db_url)
    yield s
    assert s.slack.invalid_payloads == []
    s.stop()


# --- helpers ---------------------------------------------------------------------------


def list_calls(stack: LocalStack) -> int:
    return stack.sim.state.calls[LIST]


def watches(stack: LocalStack) -> list[Watch]:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return list(s.execute(select(Watch).order_by(Watch.id)).scalars())


def pending_messages(stack: LocalStack) -> int:
    with session_scope(stack.deps.engine, readonly=True) as s:
        return repo.count_messages(s, state="pending")


def create(stack: LocalStack, name: str, server: int = 12346, user: str = "U1"):
    """/snapshot create through the app; returns (parent message, watch row) once the
    provider accepted it and the parent says so."""
    assert stack.user(user).command(f"create {server} {name}").status_code == 200
    watch = wait_until(
        lambda: next((w for w in watches(stack) if w.snapshot_name == name), None),
        what=f"a watch for {name}",
    )
    parent = wait_for_message(stack, name)
    wait_until(
        lambda: (
            "is being created" in (fresh(stack, parent).text or "") and pending_messages(stack) == 0
        ),
        what=f"the parent of {name} saying it is being created",
    )
    return fresh(stack, parent), watch


def backdate(stack: LocalStack, watch_id: int, by: timedelta) -> None:
    """The watch started ``by`` ago (a duration the reply can be checked against)."""
    with session_scope(stack.deps.engine) as s:
        started = s.get(Watch, watch_id).started_at
        s.execute(update(Watch).where(Watch.id == watch_id).values(started_at=started - by))


def replies(stack: LocalStack, parent) -> list:
    return stack.slack.thread(parent.channel, parent.ts)


def provider_size(stack: LocalStack, snapshot_id: int) -> int:
    found = [s for s in stack.sim.state.list_snapshots()["results"] if s["id"] == snapshot_id]
    return found[0]["size_mb"]


# --- one threaded reply per terminal state ------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reply_says", "parent_says"),
    [
        ("completed", "completed", "is ready"),
        ("failed", "ended with status *failed*", "failed"),
        ("gone", "is gone", "disappeared from the provider"),
    ],
)
def test_terminal_snapshot_gets_one_threaded_reply_and_an_updated_parent(
    any_stack, outcome, reply_says, parent_says
):
    stack = any_stack
    duties = stack.runtime.duties
    parent, watch = create(stack, "nightly-db", user="UREQ")
    backdate(stack, watch.id, timedelta(minutes=7))
    duties.cycle()
    assert replies(stack, parent) == [], "nothing is reported while the snapshot is in progress"

    if outcome == "completed":
        stack.sim.state.advance(NEVER)
        expected_size = size(provider_size(stack, watch.snapshot_id))
    elif outcome == "failed":
        stack.sim.state.fail_snapshot(watch.snapshot_id)
    else:
        stack.sim.state.vanish_snapshot(watch.snapshot_id)
    duties.cycle()
    duties.cycle()  # a second look at the same terminal state reports nothing more

    (reply,) = replies(stack, parent)
    assert reply.thread_ts == parent.ts
    assert "<@UREQ>" in reply.text
    assert reply_says in reply.text
    assert "7 min" in reply.text  # the duration, from the watch's start
    if outcome == "completed":
        assert expected_size in reply.text and "GB" in expected_size
    assert f"`{watch.snapshot_id}`" in reply.text
    now = fresh(stack, parent)
    assert parent_says in now.text and "being created" not in now.text
    assert now.edited
    (row,) = watches(stack)
    assert (row.state, row.final_status) == ("done", outcome)
    posted = [c for c in stack.slack.calls("chat.postMessage") if c.params.get("thread_ts")]
    assert len(posted) == 1


def test_failed_and_vanished_snapshots_are_also_told_to_the_incident_channel(stack):
    duties = stack.runtime.duties
    _, failed = create(stack, "will-fail", server=12346)
    _, vanished = create(stack, "will-vanish", server=12347)
    stack.sim.state.fail_snapshot(failed.snapshot_id)
    stack.sim.state.vanish_snapshot(vanished.snapshot_id)
    duties.cycle()
    duties.cycle()
    notices = incident_texts(stack)
    assert sum("will-fail" in t and "ended as failed" in t for t in notices) == 1
    assert sum("will-vanish" in t and "ended as gone" in t for t in notices) == 1


def test_watch_older_than_the_ceiling_is_reported_stuck_once(stack):
    duties = stack.runtime.duties
    parent, watch = create(stack, "slow-one", user="UREQ")
    backdate(stack, watch.id, STUCK_AFTER + timedelta(minutes=1))
    duties.cycle()
    duties.cycle()
    (reply,) = replies(stack, parent)
    assert "<@UREQ>" in reply.text and "still in progress after 2 h 1 min" in reply.text
    assert "taking far longer" in fresh(stack, parent).text
    (row,) = watches(stack)
    assert row.final_status == "stuck"


def test_create_resumed_after_its_watch_was_recorded_is_still_reported_once(stack):
    """The worker died after the watch was stored but before the job was marked done
    (kill -9 while posting the 'being created' edit): the lease holder resumes the job,
    finds the snapshot by name, and must not start a second watch of it."""
    parent, _ = create(stack, "resumed")
    engine = stack.deps.engine
    with session_scope(engine) as s:
        job = s.execute(select(Job)).scalar_one()
        assert json.loads(job.progress)["create_sent"]
        past = stack.deps.clock() - timedelta(minutes=10)
        s.execute(update(Job).where(Job.id == job.id).values(state="running", lease_until=past))
    stack.runtime.duties.cycle()  # the holder resumes orphaned jobs

    def job_state():
        with session_scope(engine, readonly=True) as s:
            return s.get(Job, job.id).state

    wait_until(lambda: job_state() == "done", what="the resumed job finishing")
    assert stack.sim.state.calls["POST snapshots/"] == 1  # never sent twice
    assert len(watches(stack)) == 1
    stack.sim.state.advance(NEVER)
    stack.runtime.duties.cycle()
    stack.runtime.duties.cycle()
    assert len(replies(stack, parent)) == 1


# --- one unfiltered list per cycle, none while idle -----------------------------------------


def test_no_list_calls_while_nothing_is_watched(stack):
    duties = stack.runtime.duties
    before = stack.sim.state.stats()["total"]
    for _ in range(5):
        assert duties.cycle()
    assert stack.sim.state.stats()["total"] == before == 0

    parent, _ = create(stack, "only-one")
    stack.sim.state.advance(NEVER)
    duties.cycle()
    assert len(replies(stack, parent)) == 1
    after_report = list_calls(stack)
    for _ in range(5):
        duties.cycle()
    assert list_calls(stack) == after_report, "a finished watch is no reason to poll"


def test_many_watches_cost_exactly_one_list_call_per_cycle(any_stack):
    """15 watches (5 on each server, the provider's limit), seeded straight into the
    simulator and the database with their channel messages."""
    stack = any_stack
    state, outbox = stack.sim.state, stack.deps.outbox
    for seeded in (801, 798):
        state.delete_snapshot(seeded)  # room for 5 on each of the 3 servers
    names, mids = [], []
    with session_scope(stack.deps.engine) as s:
        for server in (12345, 12346, 12347):
            for i in range(5):
                snap = state.create_snapshot({"server_id": server, "name": f"s{server}-{i}"})
                names.append(snap["name"])
                key = f"test:{snap['id']}:msg"
                mids.append(outbox.post(s, "C1", {"text": f"creating *{snap['name']}*"}, key=key))
                repo.add_watch(
                    s,
                    Watch(
                        snapshot_id=snap["id"],
                        snapshot_name=snap["name"],
                        server_id=server,
                        server_name=snap["server"]["name"],
                        channel="C1",
                        parent_ts=key,
                        requester="U1",
                        started_at=stack.deps.clock(),
                    ),
                )
    assert all(d.sent for d in outbox.flush(mids))
    duties = stack.runtime.duties
    assert list_calls(stack) == 0
    for cycle in range(1, 4):
        duties.cycle()
        assert list_calls(stack) == cycle
    state.advance(NEVER)
    duties.cycle()
    assert list_calls(stack) == 4
    assert all(w.state == "done" for w in watches(stack))
    parents = [m for m in stack.slack.messages("C1") if not m.is_reply]
    assert len(parents) == 15
    for parent in parents:
        (reply,) = replies(stack, parent)
        assert "completed" in reply.text
        assert "is ready" in fresh(stack, parent).text
    for _ in range(3):
        duties.cycle()
    assert list_calls(stack) == 4
    assert state.stats()["total"] == 4  # no filtered or per-snapshot reads either


# --- Slack refusing ----------------------------------------------------------------------------


def test_reply_answered_429_twice_still_arrives_exactly_once(stack):
    parent, _ = create(stack, "rate-limited")
    stack.slack.fail_next("chat.postMessage", 2, status=429, retry_after=0)
    stack.sim.state.advance(NEVER)
    stack.runtime.duties.cycle()  # slack_sdk's RateLimitErrorRetryHandler waits them out
    refused = [c for c in stack.slack.calls("chat.postMessage") if c.status == 429]
    assert len(refused) == 2
    assert all(c.params.get("thread_ts") == parent.ts for c in refused)
    (reply,) = replies(stack, parent)
    assert "completed" in reply.text
    stack.runtime.duties.cycle()
    assert stack.deps.outbox.pump() == 0
    assert len(replies(stack, parent)) == 1


def test_first_two_posts_answered_429_delay_the_parent_and_lose_nothing(stack):
    """The very first chat.postMessage calls, the create's channel message, are
    rate limited: it is posted once, and the threaded reply still arrives once."""
    stack.slack.fail_next("chat.postMessage", 2, status=429, retry_after=0)
    parent, _ = create(stack, "rate-limited-parent")
    posts = stack.slack.calls("chat.postMessage")
    assert [c.status for c in posts] == [429, 429, 200]
    assert len([m for m in stack.slack.messages("C1") if not m.is_reply]) == 1
    stack.sim.state.advance(NEVER)
    stack.runtime.duties.cycle()
    (reply,) = replies(stack, parent)
    assert reply.thread_ts == parent.ts and "completed" in reply.text


def test_reply_refused_with_500_is_sent_later_by_the_pump_exactly_once(stack):
    parent, _ = create(stack, "server-error")
    stack.slack.fail_next("chat.postMessage", 1, status=500)
    stack.sim.state.advance(NEVER)
    stack.runtime.duties.cycle()
    assert replies(stack, parent) == []
    with session_scope(stack.deps.engine, readonly=True) as s:
        row = s.execute(select(Outbox).where(Outbox.key.like("watch:%:reply"))).scalar_one()
    assert (row.state, row.attempts) == ("pending", 1) and row.error

    outbox = stack.deps.outbox
    wait_until(lambda: outbox.pump() or replies(stack, parent), what="the retried reply")
    (reply,) = replies(stack, parent)
    assert reply.thread_ts == parent.ts and "completed" in reply.text
    for _ in range(3):
        stack.runtime.duties.cycle()
        outbox.pump()
    assert len(replies(stack, parent)) == 1
    assert pending_messages(stack) == 0


def test_a_late_in_progress_update_never_overwrites_the_final_status(stack):
    """The parent's 'being created' edit is refused once and retried; by then the
    snapshot has finished. The final status must stay on the parent."""
    stack.slack.fail_next("chat.update", 1, status=500)
    assert stack.user("U1").command("create 12346 racing").status_code == 200
    wait_until(lambda: watches(stack), what="the watch")
    parent = wait_for_message(stack, "racing")
    stack.sim.state.advance(NEVER)
    stack.runtime.duties.cycle()
    assert len(replies(stack, parent)) == 1
    outbox = stack.deps.outbox
    wait_until(
        lambda: (outbox.pump() or True) and pending_messages(stack) == 0,
        what="every queued message handled",
    )
    assert "is ready" in fresh(stack, parent).text


# --- the provider failing ----------------------------------------------------------------------


def test_provider_down_backs_off_alerts_once_then_recovers(stack):
    duties = stack.runtime.duties
    parent, _ = create(stack, "during-outage")
    state = stack.sim.state
    state.fail_rate = 1.0
    cycles = 12
    for _ in range(cycles):
        duties.cycle()
    assert PROVIDER_ALERT_AFTER <= duties.polls < cycles / 2, "failed polls back off"
    outage = [t for t in incident_texts(stack) if "cannot reach the provider" in t]
    assert len(outage) == 1
    assert replies(stack, parent) == []

    state.fail_rate = 0.0
    state.advance(NEVER)
    polls = duties.polls
    for _ in range(MAX_SKIP + 1):
        duties.cycle()
        if duties.polls > polls:
            break
    (reply,) = replies(stack, parent)
    assert "completed" in reply.text
    texts = incident_texts(stack)
    assert sum("cannot reach the provider" in t for t in texts) == 1
    assert sum("The provider answers again" in t for t in texts) == 1
    assert duties.provider_failures == 0


# --- the lease -------------------------------------------------------------------------------


def test_only_the_lease_holder_polls_and_reports(sqlite_url):
    """Two runtimes on one database: the second never polls while the first holds."""
    with new_stack(sqlite_url) as first, new_stack(sqlite_url) as second:
        # The second runtime watches the same database but talks to its own simulator:
        # any call it made would show there.
        parent, _ = create(first, "leased")
        assert first.runtime.duties.cycle()
        first.sim.state.advance(NEVER)
        assert not second.runtime.duties.cycle()
        assert second.sim.state.stats()["total"] == 0
        assert first.runtime.duties.cycle()
        assert len(replies(first, parent)) == 1
        with session_scope(first.deps.engine, readonly=True) as s:
            holder = repo.lease_holder(s, name="duties", now=first.deps.clock())
            assert holder == first.deps.owner
            assert s.scalar(select(func.count()).select_from(Watch)) == 1
        first.runtime.duties.stop()  # SIGTERM hands the lease back at once
        assert second.runtime.duties.cycle()
        assert not first.runtime.duties.cycle()
    assert first.slack.invalid_payloads == [] and second.slack.invalid_payloads == []


def test_a_stale_holder_cannot_report_a_watch_already_reported(sqlite_url):
    """A holder that read the watch, then stalled past its lease while another process
    took over and reported, loses the conditional claim and posts nothing."""
    with new_stack(sqlite_url) as first, new_stack(sqlite_url) as second:
        parent, _ = create(first, "claimed-once")
        with session_scope(second.deps.engine, readonly=True) as s:
            (stale,) = repo.active_watches(s, kind="snapshot")
        first.sim.state.advance(NEVER)
        first.runtime.duties.cycle()
        assert len(replies(first, parent)) == 1
        # By the time the stale holder looks, the provider no longer lists it.
        watches_.report_snapshot(second.deps, stale, "gone", None, second.deps.clock())
        assert second.slack.calls() == []
        assert len(replies(first, parent)) == 1
        assert pending_messages(first) == 0
        (row,) = watches(first)
        assert row.final_status == "completed"


# --- the request message tells how its restore ended (SPEC 13.9) -------------------------------


def approved_restore(stack: LocalStack):
    """A restore of snapshot 801 requested by UALICE, approved by UBOB and started at
    the provider, every message delivered; (request message, restore watch)."""
    assert stack.user("UALICE").command("restore 801 bad deploy").status_code == 200
    request = wait_for_message(stack, "Restore request #")
    wait_until(lambda: pending_messages(stack) == 0, what="the request message posted")
    assert stack.user("UBOB").press(request, ids.APPROVE).status_code == 200
    watch = wait_until(
        lambda: next((w for w in watches(stack) if w.kind == "restore"), None),
        what="the restore followed",
    )
    return request, watch


def request_edits(stack: LocalStack, message) -> list[str]:
    """What each chat.update Slack accepted for ``message`` showed, in order."""
    return [
        json.dumps(c.params.get("blocks"))
        for c in stack.slack.calls("chat.update")
        if c.ok and c.params.get("ts") == message.ts
    ]


@pytest.fixture
def restoring_stack(sqlite_url):
    """A stack whose restores last until a test moves the simulator's clock."""
    s = LocalStack(
        database_url=sqlite_url,
        create_seconds=NEVER,
        restore_seconds=NEVER,
        poll_seconds=POLL,
        start_duties=False,
    ).start()
    yield s
    assert s.slack.invalid_payloads == []
    s.stop()


def test_the_request_message_itself_shows_the_restore_finished(restoring_stack):
    stack = restoring_stack
    request, _ = approved_restore(stack)
    wait_until(lambda: pending_messages(stack) == 0, what="the started restore shown")
    assert "the provider is restoring the server" in request_edits(stack, request)[-1]
    stack.runtime.duties.cycle()  # still restoring: nothing changes
    assert "the provider is restoring the server" in request_edits(stack, request)[-1]

    stack.sim.state.advance(NEVER)
    stack.runtime.duties.cycle()
    wait_until(lambda: pending_messages(stack) == 0, what="the end shown")
    last = request_edits(stack, request)[-1]
    assert "the restore is finished" in last and "now `running`" in last, last
    assert "<@UBOB>" in last and "provider is restoring" not in last
    shown = fresh(stack, request)
    assert "(finished)" in shown.text
    assert not any(b.get("type") == "actions" for b in shown.blocks)


def test_the_finished_edit_waits_for_a_delayed_earlier_edit_and_lands_last(restoring_stack):
    stack = restoring_stack
    # The "approved" edit is refused once (a Slack 500) and sent again later; the
    # "restoring" edit waits for it, and both are still unsent when the restore ends.
    stack.slack.fail_next("chat.update", 1, status=500)
    request, _ = approved_restore(stack)
    assert [c.status for c in stack.slack.calls("chat.update")] == [500]
    assert request_edits(stack, request) == []  # neither has reached Slack yet
    stack.sim.state.advance(NEVER)
    stack.runtime.duties.cycle()
    outbox = stack.deps.outbox
    wait_until(
        lambda: outbox.pump() is not None and pending_messages(stack) == 0,
        what="every edit sent",
    )
    edits = request_edits(stack, request)
    assert "the restore is finished" in edits[-1], edits
    assert any("the provider is restoring the server" in e for e in edits[:-1]), edits
    assert "the restore is finished" in json.dumps(fresh(stack, request).blocks)


def test_the_request_message_says_when_snapbot_gave_up_following_the_restore(restoring_stack):
    stack = restoring_stack
    request, watch = approved_restore(stack)
    wait_until(lambda: pending_messages(stack) == 0, what="the started restore shown")
    backdate(stack, watch.id, STUCK_AFTER + timedelta(minutes=1))
    stack.runtime.duties.cycle()
    wait_until(lambda: pending_messages(stack) == 0, what="the end shown")
    last = request_edits(stack, request)[-1]
    assert "still restoring after 2 h 1 min" in last and "stopped following" in last, last
    assert "(still restoring)" in fresh(stack, request).text
