"""The split between acknowledging and working (bot/jobs.py): an HTTP worker's runner
(``runs_jobs=False``) stores jobs unowned and runs none of them but the urgent ones; a
job worker's runner feeds on the unowned ones, no more at a time than it has threads."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import event, text

from bot.jobs import JobRunner
from snapbot_local.harness import HANG_GUARD_S
from tests.conftest import wait_until


def clock() -> datetime:
    return datetime.now(UTC)


class Handler:
    def __init__(self, block: bool = False) -> None:
        self.ran: list[int] = []
        self.gate = threading.Event()
        if not block:
            self.gate.set()

    def __call__(self, ctx) -> None:
        assert self.gate.wait(HANG_GUARD_S)
        self.ran.append(ctx.payload["n"])


def owners(engine) -> dict[int, tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, owner, state FROM job")).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_http_runner_queues_unowned_and_the_job_worker_runs_it(engine):
    on_web, on_worker = Handler(), Handler()
    web = JobRunner(engine, owner="web", clock=clock, runs_jobs=False, handlers={"k": on_web})
    worker = JobRunner(engine, owner="w/web-1", clock=clock, handlers={"k": on_worker})
    try:
        job = web.submit("k", {"n": 1}, delivery_key="d1")
        assert owners(engine)[job] == ("", "queued")
        assert web.submit("k", {"n": 1}, delivery_key="d1") is None  # a redelivery
        assert worker.feed() == 1
        wait_until(lambda: owners(engine)[job] == ("w/web-1", "done"), what="the job to run")
        assert on_worker.ran == [1] and on_web.ran == []
        assert worker.feed() == 0  # nothing left
    finally:
        web.shutdown()
        worker.shutdown()


def test_an_urgent_job_runs_in_the_process_that_acknowledged_it(engine):
    on_web, on_worker = Handler(), Handler()
    web = JobRunner(engine, owner="web", clock=clock, runs_jobs=False, handlers={"k": on_web})
    worker = JobRunner(engine, owner="w/web-1", clock=clock, handlers={"k": on_worker})
    try:
        job = web.submit("k", {"n": 2}, urgent=True)
        wait_until(lambda: owners(engine)[job] == ("web", "done"), what="the urgent job")
        assert on_web.ran == [2]
        assert worker.feed() == 0 and on_worker.ran == []
    finally:
        web.shutdown()
        worker.shutdown()


def test_a_job_worker_takes_no_more_than_its_threads_and_no_job_twice(engine):
    slow = Handler(block=True)
    web = JobRunner(engine, owner="web", clock=clock, runs_jobs=False, handlers={"k": slow})
    worker = JobRunner(engine, owner="w/web-1", clock=clock, workers=2, handlers={"k": slow})
    try:
        jobs = [web.submit("k", {"n": n}) for n in range(5)]
        assert worker.feed() == 2
        assert worker.feed() == 0  # both threads busy: the rest stay queued for others
        wait_until(
            lambda: [owners(engine)[j][1] for j in jobs[:2]] == ["running", "running"],
            what="two jobs running",
        )
        slow.gate.set()
        worker.start_feeding(idle=0.01)
        wait_until(lambda: sorted(slow.ran) == [0, 1, 2, 3, 4], what="every job, once")
        assert all(owners(engine)[j] == ("w/web-1", "done") for j in jobs)
    finally:
        web.shutdown()
        worker.shutdown()


def test_requests_arriving_while_one_waits_to_write_are_committed_together(sqlite_engine):
    """Group commit (JobRunner._store): while the write turn is taken, twenty
    requests gather behind the first; they are stored in one transaction, each gets
    its own job, and a body seen twice in the group is stored once."""
    engine = sqlite_engine
    web = JobRunner(engine, owner="web", clock=clock, runs_jobs=False, handlers={"k": Handler()})
    commits = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    results: dict[int, int | None] = {}
    keys = [f"d{n}" for n in range(19)] + ["d0"]  # the last is a redelivery of the first

    def submit(n: int) -> None:
        results[n] = web.submit("k", {"n": n}, delivery_key=keys[n])

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(20)]
    try:
        with engine.begin():  # someone else holds the write turn
            for t in threads:
                t.start()
            wait_until(
                lambda: web._group is not None and len(web._group.jobs) == 20,
                what="twenty requests to gather",
            )
        for t in threads:
            t.join(HANG_GUARD_S)
        assert len(commits) == 2  # the turn's holder's, then one for the twenty
        stored = [results[n] for n in range(20)]
        assert (stored[0] is None) != (stored[19] is None)  # d0 stored once
        ids = [i for i in stored if i is not None]
        assert len(ids) == len(set(ids)) == 19
        assert sorted(owners(engine)) == sorted(ids)
    finally:
        web.shutdown()


def test_when_a_group_cannot_be_stored_every_request_in_it_fails(engine):
    """Nobody is acknowledged for a row that was not committed, and nobody hangs."""
    web = JobRunner(engine, owner="web", clock=clock, runs_jobs=False, handlers={"k": Handler()})
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE job"))
    errors: list[BaseException] = []

    def submit(n: int) -> None:
        try:
            web.submit("k", {"n": n}, delivery_key=f"x{n}")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG_GUARD_S)
        assert not any(t.is_alive() for t in threads)
        assert len(errors) == 8
        assert web._group is None  # the next request starts afresh
    finally:
        web.shutdown()
