"""bot/jobs.py tries a database step again after a database error: DB_TRIES tries in
all, then gives up (the job's lease lapses and it is looked at again)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy.exc import OperationalError

from bot import jobs
from bot.jobs import JobRunner
from storage import repositories as repo
from tests.conftest import wait_until


def clock() -> datetime:
    return datetime.now(UTC)


def flaky_claims(monkeypatch, failures: int) -> list[int]:
    """repo.claim_job fails `failures` times, as a dropped connection would; the calls."""
    real = repo.claim_job
    calls: list[int] = []

    def claim(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise OperationalError("UPDATE job", {}, ConnectionError("server closed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(repo, "claim_job", claim)
    return calls


def test_a_claim_that_hits_a_database_error_is_tried_again(engine, monkeypatch, caplog):
    calls = flaky_claims(monkeypatch, failures=jobs.DB_TRIES - 1)
    ran: list[int] = []
    runner = JobRunner(
        engine, owner="w", clock=clock, handlers={"k": lambda ctx: ran.append(ctx.payload["n"])}
    )
    try:
        with caplog.at_level(logging.WARNING, logger="bot.jobs"):
            runner.submit("k", {"n": 7}, delivery_key="d-retry")
            wait_until(lambda: ran == [7], what="the job to run after two failed claims")
    finally:
        runner.shutdown()
    assert len(calls) == jobs.DB_TRIES
    tried_again = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert len(tried_again) == jobs.DB_TRIES - 1


def test_a_claim_is_given_up_after_db_tries(engine, monkeypatch):
    calls = flaky_claims(monkeypatch, failures=jobs.DB_TRIES + 5)
    ran: list[int] = []
    runner = JobRunner(
        engine, owner="w", clock=clock, handlers={"k": lambda ctx: ran.append(ctx.payload["n"])}
    )
    try:
        runner.submit("k", {"n": 8}, delivery_key="d-give-up")
        wait_until(lambda: len(calls) >= jobs.DB_TRIES, what="the claims to be tried")
    finally:
        runner.shutdown(wait=True)
    assert len(calls) == jobs.DB_TRIES
    assert ran == []
