"""Background duties (SPEC §3, §5, §6), done by one process at a time.

Every process runs a ``Duties`` thread. Each cycle it tries to take or renew the
``duties`` lease; only the holder polls the provider, sweeps expired requests,
reconciles interrupted restores, resumes orphaned jobs and posts checkpoints, all
from database state, so a new holder carries on where a dead one stopped. Every
process pumps the outbox (each message is claimed, so none is sent twice).

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

from bot.blocks.format import span
from bot.blocks.notices import (
    provider_back_notice,
    provider_down_notice,
    request_expired_notice,
    restore_finished_notice,
    snapshot_ended_notice,
)
from bot.blocks.restore import request_expired_note, restore_finished_note
from bot.blocks.snapshots import create_message, create_thread_reply
from bot.core import approval
from bot.logs import Outage
from bot.services import Actor, Services, progress_key, request_key
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
        services: Services,
        *,
        interval: float | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.s = services
        self.interval = interval if interval is not None else services.settings.poll_seconds
        self.lease = timedelta(seconds=max(3 * self.interval, 10.0))
        self.clock = clock or services.clock
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
            with session_scope(self.s.engine) as s:
                repo.release_lease(s, name=LEASE_NAME, owner=self.s.owner, now=self.clock())
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
                self.s.outbox.pump()
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
        with session_scope(self.s.engine) as s:
            self.is_holder = repo.acquire_lease(
                s, name=LEASE_NAME, owner=self.s.owner, now=self.clock(), ttl=self.lease
            )
        if not self.is_holder:
            return False
        self.cycles += 1
        self.expire_requests()
        self.cancel_unposted()
        self.resume_approved()
        self.reconcile_executing()
        self.poll_snapshots()
        self.follow_restores()
        self.s.jobs.resume_orphans()
        self.daily_checkpoint()
        self.purge()
        return True

    # --- restore requests

    def expire_requests(self) -> None:
        now = self.clock()
        with session_scope(self.s.engine, readonly=True) as s:
            due = repo.expired_requests(s, now=now)
        for req in due:
            link = self.s.permalink(req.channel, req.message_ts)  # Slack: outside the transaction
            with session_scope(self.s.engine) as s:
                if not repo.transition_request(
                    s,
                    request_id=req.id,
                    from_states=[approval.State.PENDING],
                    to_state=approval.State.EXPIRED,
                    decided_at=now,
                ):
                    continue
                req, approvals = self.s._request_view(s, req.id)
                mids = [
                    self.s._update_request_message(s, req, approvals),
                    self.s.outbox.post(
                        s,
                        req.channel,
                        request_expired_note(req),
                        thread_from=request_key(req.id),
                        key=f"req:{req.id}:thread:expired",
                    ),
                    self.s.notify_incident(
                        s,
                        request_expired_notice(req, link),
                        key=f"incident:req:{req.id}:expired",
                    ),
                ]
                self.s.audit(s, None, "restore.expire", "ok", target=f"request:{req.id}")
            self.s.outbox.flush(mids)

    def cancel_unposted(self) -> None:
        with session_scope(self.s.engine, readonly=True) as s:
            unposted = repo.unposted_requests(s)
        for req, error in unposted:
            self.s.cancel_unposted_request(req, error)

    def resume_approved(self) -> None:
        """Approved but never started (the approving process died before executing):
        nothing reached the provider yet, so executing now is the first and only call."""
        with session_scope(self.s.engine, readonly=True) as s:
            stalled = repo.requests_in_state(
                s,
                states=[approval.State.APPROVED],
                before=self.clock() - APPROVED_GRACE,
                column="decided_at",
            )
        for req in stalled:
            self.s.execute_restore(req.id)

    def reconcile_executing(self) -> None:
        with session_scope(self.s.engine, readonly=True) as s:
            stalled = repo.requests_in_state(
                s,
                states=[approval.State.EXECUTING],
                before=self.clock() - EXECUTING_GRACE,
                column="executing_at",
            )
        for req in stalled:
            self.s.reconcile_restore(req.id, reason="snapbot stopped while calling the provider")

    # --- watches

    def poll_snapshots(self) -> None:
        with session_scope(self.s.engine, readonly=True) as s:
            watches = repo.active_watches(s, kind="snapshot")
        if not watches:
            return
        if self._skip:
            self._skip -= 1
            return
        try:
            snapshots = {snap.id: snap for snap in self.s.vps.list_snapshots()}
        except VpsError as exc:
            self._provider_failed(exc)
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
                sending.extend(pool.submit(self.s.outbox.deliver, i) for i in ids if i is not None)

            for w in watches:
                snap = snapshots.get(w.snapshot_id)
                if snap is None:
                    self._report(w, "gone", None, now, send=send)
                elif snap.is_terminal:
                    self._report(w, snap.status, snap.size_mb, now, send=send)
                elif now - w.started_at > STUCK_AFTER:
                    self._report(w, "stuck", None, now, send=send)
                elif snap.status != w.last_status:
                    with session_scope(self.s.engine) as s:
                        repo.note_watch_status(s, watch_id=w.id, status=snap.status, now=now)
        for future in sending:
            if future.exception() is not None:
                log.warning("a report was not sent yet, the pump retries: %s", future.exception())

    def _report(
        self,
        w,
        status: str,
        size_mb: int | None,
        now: datetime,
        *,
        send: Callable[[list[int | None]], object] | None = None,
    ) -> None:
        # Claim the report and queue the messages in one transaction: exactly one
        # process ever reports a watch, and the messages then cannot be lost.
        with session_scope(self.s.engine) as s:
            if not repo.finish_watch(
                s, watch_id=w.id, final_status=status, now=now, size_mb=size_mb
            ):
                return
            duration = now - w.started_at
            reply = create_thread_reply(
                status=status,
                name=w.snapshot_name,
                requester=w.requester,
                size_mb=size_mb,
                duration=duration,
                snapshot_id=w.snapshot_id,
            )
            parent_state = status if status in ("completed", "gone", "stuck") else "failed"
            detail = {"completed": f"Completed in {span(duration)}; see the thread."}.get(
                parent_state, f"Ended as {status} after {span(duration)}; see the thread."
            )
            mids = [
                self.s.outbox.post(
                    s, w.channel, reply, thread_from=w.parent_ts, key=f"watch:{w.id}:reply"
                ),
                self.s.outbox.update(
                    s,
                    w.channel,
                    create_message(
                        server_name=w.server_name,
                        server_id=w.server_id,
                        name=w.snapshot_name,
                        requester=w.requester,
                        state=parent_state,
                        detail=detail,
                        snapshot_id=w.snapshot_id,
                    ),
                    ts_from=w.parent_ts,
                    key=f"watch:{w.id}:parent",
                    after=progress_key(w.parent_ts) if w.parent_ts else None,
                ),
            ]
            if status != "completed":
                mids.append(
                    self.s.notify_incident(
                        s, snapshot_ended_notice(w, status), key=f"incident:watch:{w.id}"
                    )
                )
        (send or self.s.outbox.flush)(mids)

    def follow_restores(self) -> None:
        with session_scope(self.s.engine, readonly=True) as s:
            watches = repo.active_watches(s, kind="restore")
        now = self.clock()
        for w in watches:
            try:
                state = self.s.vps.get_server(w.server_id)
            except VpsError:
                continue
            status = state.status if state is not None else "unknown"
            if status == "restoring" and now - w.started_at <= STUCK_AFTER:
                continue
            with session_scope(self.s.engine, readonly=True) as s:
                req = repo.get_restore_request(s, request_id=w.request_id) if w.request_id else None
            link = self.s.permalink(req.channel, req.message_ts) if req else None
            with session_scope(self.s.engine) as s:
                if not repo.finish_watch(s, watch_id=w.id, final_status=status, now=now):
                    continue
                took = span(now - w.started_at)
                mids = [
                    # The request message itself shows the end, not only its thread.
                    self.s.show_restore_end(s, w.request_id, status=status, took=took)
                    if w.request_id
                    else None,
                    self.s.outbox.post(
                        s,
                        w.channel,
                        restore_finished_note(w, status, took),
                        thread_from=w.parent_ts,
                        key=f"watch:{w.id}:reply",
                    ),
                    self.s.notify_incident(
                        s,
                        restore_finished_notice(w, status, took, link),
                        key=f"incident:watch:{w.id}",
                    ),
                ]
                self.s.audit(
                    s,
                    None,
                    "restore.finished" if status != "restoring" else "restore.stuck",
                    "ok" if status != "restoring" else "error",
                    target=f"request:{w.request_id} server:{w.server_id}",
                    detail=f"server {status} after {took}",
                )
            self.s.outbox.flush(mids)

    def _provider_failed(self, exc: VpsError) -> None:
        self.provider_failures += 1
        self._skip = min(MAX_SKIP, 2 ** (self.provider_failures - 1)) - 1
        log.warning("provider poll failed (%s in a row): %s", self.provider_failures, exc)
        if self.provider_failures == PROVIDER_ALERT_AFTER:
            with session_scope(self.s.engine) as s:
                mid = self.s.notify_incident(s, provider_down_notice(describe(exc)))
                self.s.audit(s, None, "provider.list", "error", detail=describe(exc))
            self.s.outbox.flush([mid])

    def _provider_recovered(self) -> None:
        if self.provider_failures >= PROVIDER_ALERT_AFTER:
            with session_scope(self.s.engine) as s:
                mid = self.s.notify_incident(s, provider_back_notice())
            self.s.outbox.flush([mid])
        self.provider_failures = 0
        self._skip = 0

    # --- housekeeping

    def daily_checkpoint(self) -> None:
        if not self.s.settings.incident_channel:
            return
        today = self.clock().date().isoformat()
        with session_scope(self.s.engine) as s:
            last = repo.get_setting(s, key="checkpoint_day")
            if last == today or not repo.claim_setting(
                s, key="checkpoint_day", expected=last, value=today
            ):
                return
        self.s.post_checkpoint(reason=f"daily, {today}")

    def purge(self) -> None:
        now = self.clock()
        with session_scope(self.s.engine) as s:
            repo.forget_deliveries(s, before=now - timedelta(days=1))
            repo.purge_finished_jobs(s, before=now - timedelta(days=7))


__all__ = ["Actor", "Duties"]
