"""The durable work queue between ``ack()`` and the provider.

A listener turns each Slack request into a ``job`` row and acknowledges it; a worker
thread then claims the row and runs its handler. The provider can take as long as it
likes: acks never wait for it, and the listener pool never fills with provider calls.
A job whose process died (queued or half-run) is claimed again by the lease holder
once its lease lapses; handlers see ``attempts`` and their saved ``progress`` and
must not repeat a provider write they may already have made.

Where the worker threads are: in a single process (Socket Mode, the demo, the shell,
the tests) the runner that accepts a job runs it. Under gunicorn the HTTP workers
only accept (``runs_jobs=False``): they queue jobs unowned and a separate job worker
process (bot/worker.py, started beside them) feeds on them, so a burst of work never
competes with the acks for a worker's GIL. The one exception is a job that must reach
Slack within the trigger_id's 3 s (``urgent``: opening a modal); the HTTP worker runs
it at once on a small pool of its own.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import stamina
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from bot.logs import Outage
from storage import repositories as repo
from storage.db import session_scope

log = logging.getLogger(__name__)

QUEUED_LEASE = timedelta(seconds=20)  # another process may take it after this
RUNNING_LEASE = timedelta(minutes=3)  # far above any provider call's time budget
DEFAULT_WORKERS = 16
URGENT_WORKERS = 4  # an HTTP worker's own pool, for the jobs that open modals
FEED_IDLE_S = 0.1  # how often a job worker looks for new jobs when it found none
# A connection can die under a statement (a database restart): claiming and finishing
# a job are single conditional updates, tried again on a fresh connection.
DB_TRIES = 3
DB_RETRY_S = 0.2


@dataclass
class JobContext:
    id: int
    kind: str
    payload: dict
    attempts: int
    progress: dict = field(default_factory=dict)
    accepted_at: datetime | None = None  # when the request was acknowledged
    _save: Callable[[int, dict], None] | None = None

    def save(self, **changes) -> None:
        """Record how far the job got, before doing the next irreversible step."""
        self.progress.update(changes)
        if self._save:
            self._save(self.id, self.progress)


Handler = Callable[[JobContext], None]


class _Group:
    """Requests stored in one transaction (JobRunner._store)."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []
        self.ids: list[int | None] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def outcome(self, index: int) -> int | None:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.ids[index]


class JobRunner:
    def __init__(
        self,
        engine: Engine,
        *,
        owner: str,
        clock: Callable[[], datetime],
        handlers: dict[str, Handler] | None = None,
        workers: int = DEFAULT_WORKERS,
        runs_jobs: bool = True,
        on_crash: Callable[[JobContext, BaseException], None] | None = None,
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.clock = clock
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.on_crash = on_crash
        self.runs_jobs = runs_jobs
        self.workers = workers if runs_jobs else URGENT_WORKERS
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="snapbot-job")
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._dispatched: set[int] = set()  # handed to the pool, not finished yet
        self._group: _Group | None = None  # requests gathering for one commit
        self._feeder: threading.Thread | None = None

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def submit(
        self,
        kind: str,
        payload: dict,
        *,
        delivery_key: str | None = None,
        urgent: bool = False,
    ) -> int | None:
        """Store the job (durable from here on), then hand it to a worker: one of
        ours, or (``runs_jobs=False``, not ``urgent``) whichever job worker claims it
        first. With the Slack request's ``delivery_key``, a request seen before
        stores nothing (None)."""
        if kind not in self.handlers:
            raise KeyError(f"no handler for job kind {kind!r}")
        local = self.runs_jobs or urgent
        job_id = self._store(
            {
                "delivery_key": delivery_key or None,
                "kind": kind,
                "payload": payload,
                "owner": self.owner if local else "",
                "now": self.clock(),
                "lease": QUEUED_LEASE,
            }
        )
        if job_id is None:
            log.info("redelivery of a %s ignored", kind)
            return None
        if local:
            self._dispatch(job_id)
        return job_id

    def _store(self, job: dict) -> int | None:
        """Group commit: the requests that arrive while one is waiting for the write
        turn (or writing) are stored in its transaction, one commit for all. Under a
        burst that is one write lock and one commit per group instead of per request;
        alone, a request is a group of one. Each returns only once its row is committed."""
        with self._lock:
            group = self._group
            leads = group is None
            if leads:
                group = self._group = _Group()
            index = len(group.jobs)
            group.jobs.append(job)
        if not leads:
            return group.outcome(index)
        try:
            with self.engine.begin() as conn:  # holds the write turn from here (SQLite)
                with self._lock:
                    self._group = None  # later arrivals form the next group
                group.ids = [repo.accept_job(conn, **j) for j in group.jobs]
        except BaseException as exc:
            group.error = exc
            raise
        finally:
            with self._lock:
                if self._group is group:  # failed before it closed
                    self._group = None
            group.done.set()
        return group.ids[index]

    def _dispatch(self, job_id: int) -> bool:
        if self._closed.is_set():
            return False  # left queued: another process (or this one, restarted) takes it
        with self._lock:
            if job_id in self._dispatched:
                return False
            self._dispatched.add(job_id)
        try:
            self._pool.submit(self.run, job_id)
        except RuntimeError:  # the pool shut down meanwhile
            with self._lock:
                self._dispatched.discard(job_id)
            return False
        return True

    # --- a job worker process: feeding on the jobs the HTTP workers queued

    def start_feeding(self, idle: float = FEED_IDLE_S) -> None:
        self._feeder = threading.Thread(
            target=self._feed_loop, args=(idle,), name="snapbot-job-feeder", daemon=True
        )
        self._feeder.start()

    def feed(self) -> int:
        """Hand unowned queued jobs to this runner's free threads; how many it took."""
        with self._lock:
            free = self.workers - len(self._dispatched)
        if free <= 0:
            return 0
        with session_scope(self.engine, readonly=True) as s:
            ids = repo.unowned_jobs(s, limit=free)
        return sum(self._dispatch(job_id) for job_id in ids)

    def _feed_loop(self, idle: float) -> None:
        outage = Outage(log, "looking for queued jobs")
        while not self._closed.is_set():
            try:
                taken = self.feed()
            except Exception as exc:
                self._closed.wait(outage.failed(exc))
                continue
            outage.ok()
            self._closed.wait(0.01 if taken else idle)

    def resume_orphans(self) -> int:
        with session_scope(self.engine, readonly=True) as s:
            ids = repo.orphaned_jobs(s, now=self.clock())
        for job_id in ids:
            self._dispatch(job_id)
        return len(ids)

    def run(self, job_id: int) -> None:
        try:
            self._run(job_id)
        finally:
            with self._lock:
                self._dispatched.discard(job_id)

    def _run(self, job_id: int) -> None:
        try:
            ctx = self._retrying(lambda: self._claim(job_id))
        except DBAPIError:
            log.exception("could not claim job %s; it runs when its lease lapses", job_id)
            return
        if ctx is None:
            return
        error = ""
        try:
            self.handlers[ctx.kind](ctx)
        except Exception as exc:
            log.exception("job %s (%s) failed", ctx.id, ctx.kind)
            error = f"{type(exc).__name__}: {exc}"
            if self.on_crash:
                try:  # the user must hear of it, even if the crash was the database's
                    self._retrying(functools.partial(self.on_crash, ctx, exc))
                except Exception:
                    log.exception("could not report the failure of job %s", ctx.id)
        finally:
            try:
                self._retrying(lambda: self._finish(ctx.id, error))
            except Exception:
                # The job stays 'running' and its lease lapses: it will be looked at again.
                log.exception("could not mark job %s finished", ctx.id)

    def _claim(self, job_id: int) -> JobContext | None:
        with session_scope(self.engine) as s:
            job = repo.claim_job(
                s, job_id=job_id, owner=self.owner, now=self.clock(), lease=RUNNING_LEASE
            )
            if job is None:
                return None
            return JobContext(
                id=job.id,
                kind=job.kind,
                payload=json.loads(job.payload),
                attempts=job.attempts,
                progress=json.loads(job.progress or "{}"),
                accepted_at=job.created_at,
                _save=self._save_progress,
            )

    def _finish(self, job_id: int, error: str) -> None:
        with session_scope(self.engine) as s:
            repo.finish_job(s, job_id=job_id, now=self.clock(), error=error)

    def _retrying(self, step: Callable):
        """`step()`, tried DB_TRIES times in all on a database error, waiting
        DB_RETRY_S times the tries so far between them, and not at all once the runner
        is shutting down (stamina waits; not in its test mode)."""
        tries = 0

        def again(exc: Exception) -> bool | float:
            nonlocal tries
            tries += 1
            if not isinstance(exc, DBAPIError) or tries >= DB_TRIES:
                return False
            log.warning("database error, trying again: %s", type(exc).__name__)
            return 0.0 if self._closed.is_set() else DB_RETRY_S * tries

        for attempt in stamina.retry_context(on=again, attempts=DB_TRIES, timeout=None):
            with attempt:
                return step()
        return None  # not reached: the last try returns or raises

    def _save_progress(self, job_id: int, progress: dict) -> None:
        def save() -> None:
            with session_scope(self.engine) as s:
                repo.save_job_progress(s, job_id=job_id, progress=progress)

        self._retrying(save)

    def shutdown(self, *, wait: bool = True) -> None:
        self._closed.set()
        if self._feeder is not None:
            self._feeder.join(5)
        with self._lock:
            in_hand = len(self._dispatched)
        # From here on no job is taken, which tells an operator (and the SIGTERM drill)
        # a stop that drains its running jobs from one that hangs.
        log.info("job runner %s takes no more jobs; %d in hand finish first", self.owner, in_hand)
        self._pool.shutdown(wait=wait, cancel_futures=True)
        # SIGTERM: what was accepted but never started stays queued in the database;
        # hand it back so the next process runs it at once.
        try:
            with session_scope(self.engine) as s:
                released = repo.release_queued_jobs(s, owner=self.owner, now=self.clock())
            if released:
                log.info("handed back %d queued job(s) for the next process", released)
        except Exception:
            log.warning("could not hand back the queued jobs (their leases lapse by themselves)")
