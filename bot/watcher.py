"""Background duties (SPEC §3, §5, §6), done by one process at a time.

A ``Duties`` thread runs where jobs run: in the job worker (`snapbot worker`, the one
gunicorn's master starts beside each `web` process's HTTP workers, or one run by hand)
and in a one-process snapbot (`snapbot serve` in Socket Mode, the demo, the shell);
gunicorn's HTTP workers run none (bot/web.py builds their runtime with
``start_duties=False``). Each cycle it tries to take or renew the
``duties`` lease; only the holder polls the provider, sweeps expired requests,
reconciles interrupted restores, resumes orphaned jobs and posts checkpoints, all
from database state, so a new holder carries on where a dead one stopped. Every
``Duties`` thread, holder or not, pumps the outbox (each message is claimed, so none
is sent twice).

While any snapshot is watched the holder makes exactly one unfiltered
``GET snapshots/`` per cycle, whatever the number of watches; none when nothing is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

from bot.blocks.notices import provider_back_notice, provider_down_notice
from bot.core import approval
from bot.logs import Outage
from bot.services import checkpoints, watches
from bot.services.auditing import audit
from bot.services.deps import Deps
from bot.services.messaging import notify_incident
from bot.services.restores import decisions, execution, requests, restore_call, safety
from bot.user_messages import describe
from bot.vps.errors import VpsError
from storage import repositories as repo
from storage.db import session_scope

log = logging.getLogger(__name__)

LEASE_NAME = "duties"
STUCK_AFTER = timedelta(hours=2)
APPROVED_GRACE = timedelta(seconds=20)  # the approving worker normally executes at once
EXECUTING_GRACE = timedelta(minutes=2)  # far above the provider call's time budget
PROVIDER_ALERT_AFTER = 3  # consecutive failed polls before the incident channel hears of it
MAX_SKIP = 8
PUMP_EVERY_S = 1.0
# Slack messages of one cycle's reports in flight at once: a Slack round trip (~0.1-0.3 s)
# is far slower than a claim, and one at a time caps reporting at a few snapshots a second.
REPORT_SENDERS = 8


class Duties:
    def __init__(
        self,
        deps: Deps,
        *,
        interval: float | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.deps = deps
        self.interval = interval if interval is not None else deps.settings.poll_seconds
        self.lease = timedelta(seconds=max(3 * self.interval, 10.0))
        self.clock = clock or deps.clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_holder = False
        self.provider_failures = 0
        self._skip = 0
        self.cycles = 0
        self.polls = 0

    # --- lifecycle

    def start(self) -> Duties:
        self._thread = threading.Thread(target=self._loop, name="snapbot-duties", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: finish the current step, then hand the lease back at once."""
        self._stop.set()
        if self._thread is None and not self.is_holder:
            return  # never ran (an HTTP worker's): there is no lease of ours to hand back
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            with session_scope(self.deps.engine) as s:
                repo.release_lease(s, name=LEASE_NAME, owner=self.deps.owner, now=self.clock())
        except Exception:
            log.warning("could not release the duties lease (it lapses by itself)")
        self.is_holder = False

    def _loop(self) -> None:
        next_duties = time.monotonic()
        outage = Outage(log, "background duties")
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_duties:
                    # Fixed rate: a cycle is due one interval after the last one began,
                    # however long its reporting took (and never a burst of catch-ups).
                    next_duties = time.monotonic() + self.interval
                    self.cycle()
                self.deps.outbox.pump()
            except Exception as exc:
                # The database (or the provider) may be down: said once, then tried
                # again less and less often until it works.
                self._stop.wait(outage.failed(exc))
                continue
            outage.ok()
            due_in = next_duties - time.monotonic()
            self._stop.wait(min(PUMP_EVERY_S, max(0.01, due_in)))

    # --- one cycle

    def cycle(self) -> bool:
        with session_scope(self.deps.engine) as s:
            self.is_holder = repo.acquire_lease(
                s, name=LEASE_NAME, owner=self.deps.owner, now=self.clock(), ttl=self.lease
            )
        if not self.is_holder:
            return False
        self.cycles += 1
        self.expire_requests()
        self.cancel_unposted()
        self.resume_approved()
        safety.resume_stalled(self.deps, self.clock())
        self.reconcile_executing()
        self.poll_snapshots()
        self.follow_restores()
        self.deps.jobs.resume_orphans()
        self.daily_checkpoint()
        self.purge()
        return True

    # --- restore requests

    def expire_requests(self) -> None:
        now = self.clock()
        with session_scope(self.deps.engine, readonly=True) as s:
            due = repo.expired_requests(s, now=now)
        for req in due:
            decisions.expire_request(self.deps, req, now)

    def cancel_unposted(self) -> None:
        with session_scope(self.deps.engine, readonly=True) as s:
            unposted = repo.unposted_requests(s)
        for req, error in unposted:
            requests.cancel_unposted_request(self.deps, req, error)

    def resume_approved(self) -> None:
        """Approved but never started (the approving process died before executing):
        nothing reached the provider yet, so executing now is the first and only call."""
        with session_scope(self.deps.engine, readonly=True) as s:
            stalled = repo.requests_in_state(
                s,
                states=[approval.State.APPROVED],
                before=self.clock() - APPROVED_GRACE,
                column="decided_at",
            )
        for req in stalled:
            execution.execute_restore(self.deps, req.id)

    def reconcile_executing(self) -> None:
        with session_scope(self.deps.engine, readonly=True) as s:
            stalled = repo.requests_in_state(
                s,
                states=[approval.State.EXECUTING],
                before=self.clock() - EXECUTING_GRACE,
                column="executing_at",
            )
        for req in stalled:
            restore_call.reconcile_restore(
                self.deps, req.id, reason="snapbot stopped while calling the provider"
            )

    # --- watches

    def poll_snapshots(self) -> None:
        """One list call for every watched create and safety snapshot (SPEC 6, 9.4)."""
        with session_scope(self.deps.engine, readonly=True) as s:
            watched = repo.active_watches(s, kinds=("snapshot", "safety"))
        if not watched:
            return
        if self._skip:
            self._skip -= 1
            return
        try:
            snapshots = {snap.id: snap for snap in self.deps.vps.list_snapshots()}
        except VpsError as exc:
            self._provider_failed(exc)
            self._safety_timeouts(watched)
            return
        finally:
            self.polls += 1
        self._provider_recovered()
        now = self.clock()
        # Claims are made here, one by one; their messages go out concurrently, all
        # before the cycle ends (whatever fails stays queued for the pump).
        sending: list[Future] = []
        with ThreadPoolExecutor(REPORT_SENDERS, thread_name_prefix="snapbot-report") as pool:

            def send(ids: list[int | None]) -> None:
                sending.extend(
                    pool.submit(self.deps.outbox.deliver, i) for i in ids if i is not None
                )

            for w in watched:
                snap = snapshots.get(w.snapshot_id)
                if w.kind == "safety":
                    # Its end may call the provider (the restore): beside the reports,
                    # not in front of them.
                    sending.append(pool.submit(self._safety_seen, w, snap, now))
                elif snap is None:
                    watches.report_snapshot(self.deps, w, "gone", None, now, send=send)
                elif snap.is_terminal:
                    watches.report_snapshot(self.deps, w, snap.status, snap.size_mb, now, send=send)
                elif now - w.started_at > STUCK_AFTER:
                    watches.report_snapshot(self.deps, w, "stuck", None, now, send=send)
                elif snap.status != w.last_status:
                    with session_scope(self.deps.engine) as s:
                        repo.note_watch_status(s, watch_id=w.id, status=snap.status, now=now)
        for future in sending:
            if future.exception() is not None:
                # A report's message stays queued for the pump; a safety snapshot's end
                # stays watched, so the next cycle takes it again.
                log.warning("not done this cycle, retried: %s", future.exception())

    def _safety_seen(self, w, snap, now: datetime) -> None:
        """A restore's safety snapshot as listed: completed (restore now), ended
        otherwise or gone (fail), or past SAFETY_SNAPSHOT_TIMEOUT_MINUTES (fail)."""
        if snap is None:
            safety.safety_ended(self.deps, w, "gone", now)
        elif snap.is_terminal:
            safety.safety_ended(self.deps, w, snap.status, now)
        elif now - w.started_at > self.deps.settings.safety_snapshot_timeout:
            safety.safety_ended(self.deps, w, "timeout", now)
        elif snap.status != w.last_status:
            with session_scope(self.deps.engine) as s:
                repo.note_watch_status(s, watch_id=w.id, status=snap.status, now=now)

    def _safety_timeouts(self, watched) -> None:
        """The provider cannot be read: a safety snapshot past its time still fails its
        request (nothing is restored), rather than waiting for the provider to return."""
        now = self.clock()
        timeout = self.deps.settings.safety_snapshot_timeout
        for w in watched:
            if w.kind == "safety" and now - w.started_at > timeout:
                safety.safety_ended(self.deps, w, "timeout", now)

    def follow_restores(self) -> None:
        with session_scope(self.deps.engine, readonly=True) as s:
            followed = repo.active_watches(s, kind="restore")
        now = self.clock()
        for w in followed:
            try:
                state = self.deps.vps.get_server(w.server_id)
            except VpsError:
                continue
            status = state.status if state is not None else "unknown"
            if status == "restoring" and now - w.started_at <= STUCK_AFTER:
                continue
            watches.report_restore(self.deps, w, status, now)

    def _provider_failed(self, exc: VpsError) -> None:
        self.provider_failures += 1
        self._skip = min(MAX_SKIP, 2 ** (self.provider_failures - 1)) - 1
        log.warning("provider poll failed (%s in a row): %s", self.provider_failures, exc)
        if self.provider_failures == PROVIDER_ALERT_AFTER:
            with session_scope(self.deps.engine) as s:
                mid = notify_incident(self.deps, s, provider_down_notice(describe(exc)))
                audit(self.deps, s, None, "provider.list", "error", detail=describe(exc))
            self.deps.outbox.flush([mid])

    def _provider_recovered(self) -> None:
        if self.provider_failures >= PROVIDER_ALERT_AFTER:
            with session_scope(self.deps.engine) as s:
                mid = notify_incident(self.deps, s, provider_back_notice())
            self.deps.outbox.flush([mid])
        self.provider_failures = 0
        self._skip = 0

    # --- housekeeping

    def daily_checkpoint(self) -> None:
        checkpoints.daily_checkpoint(self.deps, self.clock().date().isoformat())

    def purge(self) -> None:
        now = self.clock()
        with session_scope(self.deps.engine) as s:
            repo.forget_deliveries(s, before=now - timedelta(days=1))
            repo.purge_finished_jobs(s, before=now - timedelta(days=7))


__all__ = ["Duties"]
