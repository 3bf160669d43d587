import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, inspect, select

from bot.core import audit_chain
from bot.core.approval import TRANSITIONS, IllegalTransition, State
from storage import repositories as repo
from storage.db import make_engine, migrate, session_scope
from storage.tables import AuditEvent, RestoreRequest


def now():
    return datetime.now(UTC)


def test_migrations_run_from_empty_twice_in_a_row(db_url):
    eng = make_engine(db_url)
    migrate(eng)
    migrate(eng)
    tables = set(inspect(eng).get_table_names())
    assert {
        "audit_event",
        "audit_head",
        "restore_request",
        "approval",
        "watch",
        "lease",
        "job",
        "outbox",
        "slack_delivery",
        "alembic_version",
    } <= tables
    with session_scope(eng) as s:
        assert repo.audit_head(s) == (0, audit_chain.GENESIS_HASH)
    eng.dispose()


def test_processes_starting_together_all_migrate(db_url):
    # Several replicas on an empty database: the lock serialises them, all succeed.
    errors = []

    def start():
        try:
            eng = make_engine(db_url)
            migrate(eng)
            eng.dispose()
        except Exception as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_times_come_back_utc_aware(engine):
    t = datetime(2025, 1, 15, 18, 30, 0, 123456, tzinfo=UTC)
    with session_scope(engine) as s:
        repo.append_audit(s, now=t, action="x", outcome="ok")
    with session_scope(engine) as s:
        row = s.execute(select(AuditEvent)).scalar_one()
    assert row.at == t and row.at.tzinfo is not None


def test_lease_is_held_by_one_owner_until_it_lapses_or_is_released(engine):
    t0 = now()
    ttl = timedelta(seconds=10)
    with session_scope(engine) as s:
        assert repo.acquire_lease(s, name="duties", owner="a", now=t0, ttl=ttl)
    with session_scope(engine) as s:
        assert not repo.acquire_lease(
            s, name="duties", owner="b", now=t0 + timedelta(seconds=5), ttl=ttl
        )
        assert repo.acquire_lease(
            s, name="duties", owner="a", now=t0 + timedelta(seconds=5), ttl=ttl
        )
    with session_scope(engine) as s:
        assert repo.acquire_lease(
            s, name="duties", owner="b", now=t0 + timedelta(seconds=16), ttl=ttl
        )
        assert repo.lease_holder(s, name="duties", now=t0 + timedelta(seconds=16)) == "b"
    with session_scope(engine) as s:
        assert repo.release_lease(s, name="duties", owner="b", now=t0 + timedelta(seconds=17))
        assert repo.acquire_lease(
            s, name="duties", owner="a", now=t0 + timedelta(seconds=17), ttl=ttl
        )


def test_a_delivery_is_recorded_once(engine):
    with session_scope(engine) as s:
        assert repo.record_delivery(s, key="k1", now=now())
    with session_scope(engine) as s:
        assert not repo.record_delivery(s, key="k1", now=now())


def test_job_is_claimed_by_one_worker_and_orphans_are_reclaimed(engine):
    t0 = now()
    lease = timedelta(seconds=30)
    with engine.begin() as conn:
        jid = repo.accept_job(
            conn,
            delivery_key=None,
            kind="command",
            payload={"a": 1},
            owner="p1",
            now=t0,
            lease=lease,
        )
    with session_scope(engine) as s:
        assert repo.claim_job(s, job_id=jid, owner="p2", now=t0, lease=lease) is None
        job = repo.claim_job(s, job_id=jid, owner="p1", now=t0, lease=lease)
        assert job is not None and job.attempts == 1
    with session_scope(engine) as s:
        # A running job is not another live process's to take; its owner may claim it
        # again (a retry after the first claim's commit was lost with its connection).
        assert repo.claim_job(s, job_id=jid, owner="p2", now=t0, lease=lease) is None
        assert repo.claim_job(s, job_id=jid, owner="p1", now=t0, lease=lease).attempts == 2
    later = t0 + timedelta(seconds=31)
    with session_scope(engine) as s:
        assert repo.orphaned_jobs(s, now=later) == [jid]
        job = repo.claim_job(s, job_id=jid, owner="p2", now=later, lease=lease)
        assert job.attempts == 3 and job.owner == "p2"


def test_outbox_key_queues_once_and_claim_is_exclusive(engine):
    t0 = now()
    with session_scope(engine) as s:
        mid = repo.enqueue_message(
            s, method="chat.postMessage", payload={"text": "x"}, now=t0, key="w1"
        )
        assert (
            repo.enqueue_message(
                s, method="chat.postMessage", payload={"text": "x"}, now=t0, key="w1"
            )
            is None
        )
    with session_scope(engine) as s:
        assert repo.claim_message(s, message_id=mid, owner="a", now=t0, lease=timedelta(seconds=30))
    with session_scope(engine) as s:
        assert (
            repo.claim_message(s, message_id=mid, owner="b", now=t0, lease=timedelta(seconds=30))
            is None
        )


def test_concurrent_audit_appends_keep_one_chain(engine):
    def work(n):
        for i in range(40):
            with session_scope(engine) as s:
                repo.append_audit(
                    s, now=now(), action="t", outcome="ok", actor=f"U{n}", detail=str(i)
                )

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = audit_chain.verify_rows(repo.stream_audit_rows(engine, batch=50), None)
    assert result.ok, result.broken
    assert result.rows == 320
    with session_scope(engine) as s:
        assert repo.audit_head(s) == (320, result.head_hash)


# --- a restore request moves only along bot.core.approval.TRANSITIONS ----------------------

LEGAL = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}

# Every from -> to pair production asks transition_request for (bot/services.py,
# bot/watcher.py): posting failed for good, approve, reject/cancel, expire, start the
# provider call, the snapshot gone before it, and the call's three endings.
PRODUCTION_PAIRS = {
    (State.PENDING, State.CANCELLED),
    (State.PENDING, State.APPROVED),
    (State.PENDING, State.REJECTED),
    (State.PENDING, State.EXPIRED),
    (State.APPROVED, State.EXECUTING),
    (State.APPROVED, State.FAILED),
    (State.EXECUTING, State.FAILED),
    (State.EXECUTING, State.SUCCEEDED),
    (State.EXECUTING, State.INTERRUPTED),
}
_snapshot_ids = itertools.count(5000)


def _request_in(engine, state: str) -> int:
    """A stored request already in ``state`` (its own snapshot, so active ones never collide)."""
    t = now()
    with session_scope(engine) as s:
        row = repo.open_restore_request(
            s,
            RestoreRequest(
                snapshot_id=next(_snapshot_ids),
                server_id=12345,
                requester="UALICE",
                channel="C1",
                state=state,
                created_at=t,
                expires_at=t + timedelta(hours=1),
            ),
        )
        return row.id


def _stored(engine, request_id: int) -> tuple[str, str | None, str]:
    with session_scope(engine, readonly=True) as s:
        row = repo.get_restore_request(s, request_id=request_id)
        return row.state, row.decided_by, row.outcome_detail


def test_an_illegal_transition_raises_before_any_sql_and_leaves_the_row_unchanged(engine):
    request_id = _request_in(engine, "pending")
    statements = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    with session_scope(engine) as s:
        s.connection()  # the unit of work's own BEGIN is not the transition's SQL
        event.listen(engine, "before_cursor_execute", seen)
        try:
            with pytest.raises(IllegalTransition, match="from pending to executing"):
                repo.transition_request(
                    s,
                    request_id=request_id,
                    from_states=["pending"],
                    to_state="executing",
                    decided_by="UMALLORY",
                    outcome_detail="restored without approval",
                )
        finally:
            event.remove(engine, "before_cursor_execute", seen)
    assert statements == []
    assert _stored(engine, request_id) == ("pending", None, "")


def test_one_illegal_pair_among_the_from_states_refuses_the_whole_transition(engine):
    request_id = _request_in(engine, "pending")
    with session_scope(engine) as s:
        with pytest.raises(IllegalTransition):
            repo.transition_request(
                s, request_id=request_id, from_states=["succeeded", "pending"], to_state="pending"
            )
        with pytest.raises(IllegalTransition):
            repo.transition_request(
                s, request_id=request_id, from_states=["pending", "approved"], to_state="approved"
            )
    assert _stored(engine, request_id)[0] == "pending"


@pytest.mark.parametrize(
    ("from_states", "to_state"), [(["pending"], "done"), (["bogus"], "approved"), ([], "approved")]
)
def test_unknown_or_missing_states_are_an_illegal_transition(engine, from_states, to_state):
    request_id = _request_in(engine, "pending")
    with session_scope(engine) as s, pytest.raises(IllegalTransition):
        repo.transition_request(
            s, request_id=request_id, from_states=from_states, to_state=to_state
        )
    assert _stored(engine, request_id)[0] == "pending"


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one fresh row per example
)
@given(current=st.sampled_from(list(State)), target=st.sampled_from(list(State)))
def test_the_repository_allows_a_pair_exactly_when_transitions_has_it(engine, current, target):
    request_id = _request_in(engine, current.value)
    with session_scope(engine) as s:
        if (current, target) in LEGAL:
            assert repo.transition_request(
                s, request_id=request_id, from_states=[current.value], to_state=target.value
            )
        else:
            with pytest.raises(IllegalTransition):
                repo.transition_request(
                    s, request_id=request_id, from_states=[current.value], to_state=target.value
                )
    expected = target if (current, target) in LEGAL else current
    assert _stored(engine, request_id)[0] == expected


@pytest.mark.parametrize(("current", "target"), sorted(PRODUCTION_PAIRS))
def test_every_pair_production_uses_is_legal_and_still_conditional(engine, current, target):
    assert (current, target) in LEGAL
    request_id = _request_in(engine, current)
    with session_scope(engine) as s:
        assert repo.transition_request(
            s, request_id=request_id, from_states=[current], to_state=target
        )
    with session_scope(engine) as s:
        # The from-state is still in the WHERE: the second of two racing callers loses.
        assert not repo.transition_request(
            s, request_id=request_id, from_states=[current], to_state=target
        )
    assert _stored(engine, request_id)[0] == target
