"""The durable work queue between ``ack()`` and the provider.

A listener turns each Slack request into a ``job`` row and acknowledges it; a worker
thread of this process then claims the row and runs its handler. The provider can
take as long as it likes: acks never wait for it, and the listener pool never fills
with provider calls. A job whose process died (queued or half-run) is claimed again
by the lease holder once its lease lapses; handlers see ``attempts`` and their saved
``progress`` and must not repeat a provider write they may already have made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine

from storage import repositories as repo
from storage.db import session_scope

log = logging.getLogger(__name__)

QUEUED_LEASE = timedelta(seconds=20)  # another process may take it after this
RUNNING_LEASE = timedelta(minutes=3)  # far above any provider call's time budget
DEFAULT_WORKERS = 16


@dataclass
class JobContext:
    id: int
    kind: str
    payload: dict
    attempts: int
    progress: dict = field(default_factory=dict)
    _save: Callable[[int, dict], None] | None = None

    def save(self, **changes) -> None:
        """Record how far the job got, before doing the next irreversible step."""
        self.progress.update(changes)
        if self._save:
            self._save(self.id, self.progress)


Handler = Callable[[JobContext], None]


class JobRunner:
    def __init__(
        self,
        engine: Engine,
        *,
        owner: str,
        clock: Callable[[], datetime],
        handlers: dict[str, Handler] | None = None,
        workers: int = DEFAULT_WORKERS,
        on_crash: Callable[[JobContext, BaseException], None] | None = None,
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.clock = clock
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.on_crash = on_crash
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapbot-job")
        self._closed = threading.Event()
        self._running = 0
        self._lock = threading.Lock()

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def submit(self, kind: str, payload: dict) -> int:
        """Store the job (durable from here on), then hand it to a worker."""
        if kind not in self.handlers:
            raise KeyError(f"no handler for job kind {kind!r}")
        with session_scope(self.engine) as s:
            job_id = repo.enqueue_job(
                s,
                kind=kind,
                payload=payload,
                owner=self.owner,
                now=self.clock(),
                lease=QUEUED_LEASE,
            )
        self._dispatch(job_id)
        return job_id

    def _dispatch(self, job_id: int) -> None:
        if self._closed.is_set():
            return  # left queued: another process (or this one, restarted) takes it
        with contextlib.suppress(RuntimeError):  # the pool shut down meanwhile
            self._pool.submit(self.run, job_id)

    def resume_orphans(self) -> int:
        with session_scope(self.engine, readonly=True) as s:
            ids = repo.orphaned_jobs(s, now=self.clock())
        for job_id in ids:
            self._dispatch(job_id)
        return len(ids)

    def run(self, job_id: int) -> None:
        with session_scope(self.engine) as s:
            job = repo.claim_job(
                s, job_id=job_id, owner=self.owner, now=self.clock(), lease=RUNNING_LEASE
            )
            if job is None:
                return
            ctx = JobContext(
                id=job.id,
                kind=job.kind,
                payload=json.loads(job.payload),
                attempts=job.attempts,
                progress=json.loads(job.progress or "{}"),
                _save=self._save_progress,
            )
        with self._lock:
            self._running += 1
        error = ""
        try:
            self.handlers[ctx.kind](ctx)
        except Exception as exc:
            log.exception("job %s (%s) failed", ctx.id, ctx.kind)
            error = f"{type(exc).__name__}: {exc}"
            if self.on_crash:
                try:
                    self.on_crash(ctx, exc)
                except Exception:
                    log.exception("could not report the failure of job %s", ctx.id)
        finally:
            with self._lock:
                self._running -= 1
            try:
                with session_scope(self.engine) as s:
                    repo.finish_job(s, job_id=ctx.id, now=self.clock(), error=error)
            except Exception:
                # The job stays 'running' and its lease lapses: it will be looked at again.
                log.exception("could not mark job %s finished", ctx.id)

    def _save_progress(self, job_id: int, progress: dict) -> None:
        with session_scope(self.engine) as s:
            repo.save_job_progress(s, job_id=job_id, progress=progress)

    @property
    def running(self) -> int:
        return self._running

    def shutdown(self, *, wait: bool = True) -> None:
        self._closed.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)
