"""The safety snapshot before a restore (SPEC 9.4, 9.5): once approved, a request with
the plan ``on`` goes ``approved -> safeguarding`` and takes its steps, each stored
before the next begins, each done by one process (a conditional update of the step):

    evict   delete the snapshot the request named, only if the server is full
    create  create ``pre-restore-r<id>``, or find it by name after a restart
    watch   the watcher's single list call per cycle follows it (bot/watcher.py)
    ready   it completed: ``safeguarding -> executing``, and the one restore call

Any failure, refusal or timeout fails the request loudly and restore is never called.
A process that died mid-step leaves the step claimed; the lease holder claims it
again after ``STEP_GRACE`` and, since every step starts from the provider's list,
never deletes or creates twice. The rules are pure (bot/core/safety.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from bot.blocks.safety import (
    safety_completed_note,
    safety_evicted_note,
    safety_failure,
    safety_started_note,
)
from bot.core import approval
from bot.core.safety import (
    Eviction,
    Step,
    eviction_at_execution,
    find_safety_snapshot,
    safety_description,
    safety_name,
)
from bot.services.actors import Actor
from bot.services.auditing import audit
from bot.services.deps import Deps
from bot.services.messaging import request_key, thread_key
from bot.services.restores.message import request_view, request_watch, update_request_message
from bot.services.restores.restore_call import finish_restore, restore_after_safety
from bot.user_messages import describe
from bot.vps.errors import VpsError, VpsNotFound
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest, Watch

STEP_GRACE = timedelta(minutes=2)  # far above a provider call's time budget
SAFEGUARDING = approval.State.SAFEGUARDING


def safeguard(deps: Deps, req: RestoreRequest) -> None:
    """An approved request whose target was just re-read: win ``approved ->
    safeguarding`` (committed before the provider is called), then take the steps."""
    with session_scope(deps.engine) as s:
        won = repo.transition_request(
            s,
            request_id=req.id,
            from_states=[approval.State.APPROVED],
            to_state=SAFEGUARDING,
            safety_step=Step.EVICT,
            safety_step_at=deps.clock(),
            executor=deps.owner,
        )
        mid = None
        if won:
            fresh, approvals = request_view(s, req.id)
            mid = update_request_message(deps, s, fresh, approvals)
    deps.outbox.flush([mid])
    if won:
        take_steps(deps, req.id)


def take_steps(deps: Deps, request_id: int) -> None:
    """Do the request's steps from where it is, until the watcher's turn (or the end)."""
    for _ in range(len(Step)):
        with session_scope(deps.engine, readonly=True) as s:
            req = repo.get_restore_request(s, request_id=request_id)
        if req is None or req.state != SAFEGUARDING:
            return
        if req.safety_step == Step.EVICT:
            if not _evict(deps, req):
                return
        elif req.safety_step == Step.CREATE:
            if not _create(deps, req):
                return
        elif req.safety_step == Step.READY:
            restore_after_safety(deps, req.id)
            return
        else:  # watch: the watcher reports the end
            return


def resume_stalled(deps: Deps, now: datetime) -> None:
    """The lease holder's sweep: a step claimed longer ago than STEP_GRACE belongs to a
    process that died mid-step; claim it again and go on from the provider's list."""
    cutoff = now - STEP_GRACE
    with session_scope(deps.engine, readonly=True) as s:
        stalled = repo.requests_in_state(
            s, states=[SAFEGUARDING], before=cutoff, column="safety_step_at"
        )
    for req in stalled:
        if req.safety_step == Step.WATCH:
            continue  # its watch is polled; the timeout ends it otherwise
        with session_scope(deps.engine) as s:
            claimed = repo.move_safety_step(
                s,
                request_id=req.id,
                from_step=req.safety_step,
                to_step=req.safety_step,
                now=deps.clock(),
                claimed_before=cutoff,
            )
        if claimed:
            take_steps(deps, req.id)


def _evict(deps: Deps, req: RestoreRequest) -> bool:
    """Make room: delete the snapshot the request named, only if the server is full."""
    try:
        listed = deps.vps.list_snapshots(req.server_id)
    except VpsError as exc:
        fail(deps, req, safety_failure("list", req, describe(exc)))
        return False
    action = eviction_at_execution(listed, req.evict_snapshot_id)
    # The named snapshot is not listed and a slot is free: a process that died
    # mid-step deleted it (or someone else did); audited and told all the same.
    gone = action == Eviction.NONE and req.evict_snapshot_id not in (None, *(s.id for s in listed))
    if action == Eviction.CHANGED:
        fail(deps, req, safety_failure("changed", req))
        return False
    if action == Eviction.DELETE:
        try:
            deps.vps.delete_snapshot(req.evict_snapshot_id)
        except VpsNotFound:
            pass  # gone meanwhile: that slot is free all the same
        except VpsError as exc:
            fail(deps, req, safety_failure("evict", req, describe(exc)))
            return False
    with session_scope(deps.engine) as s:
        moved = repo.move_safety_step(
            s, request_id=req.id, from_step=Step.EVICT, to_step=Step.CREATE, now=deps.clock()
        )
        mid = None
        if moved and (action == Eviction.DELETE or gone):
            audit(
                deps,
                s,
                _system(req),
                "safety.evict",
                "ok",
                target=f"request:{req.id} snapshot:{req.evict_snapshot_id} server:{req.server_id}",
                detail=req.evict_snapshot_name
                + (" (already gone: deleted before a restart, or by someone else)" if gone else ""),
            )
            mid = deps.outbox.post(
                s,
                req.channel,
                safety_evicted_note(req, already_gone=gone),
                thread_from=request_key(req.id),
                key=thread_key(req.id, "safety-evicted"),
            )
    deps.outbox.flush([mid])
    return moved


def _create(deps: Deps, req: RestoreRequest) -> bool:
    """Create ``pre-restore-r<id>``, unless the provider already lists it (a create
    whose answer a restart lost: found by name, never sent twice), and watch it."""
    name = safety_name(req.id)
    try:
        found = find_safety_snapshot(deps.vps.list_snapshots(req.server_id), req.id)
    except VpsError as exc:
        fail(deps, req, safety_failure("list", req, describe(exc)))
        return False
    adopted = found is not None
    if found is None:
        try:
            found = deps.vps.create_snapshot(
                req.server_id, name, safety_description(req.id, req.snapshot_name, req.snapshot_id)
            )
        except VpsError as exc:
            fail(deps, req, safety_failure("create", req, describe(exc)))
            return False
    now = deps.clock()
    with session_scope(deps.engine) as s:
        moved = repo.move_safety_step(
            s,
            request_id=req.id,
            from_step=Step.CREATE,
            to_step=Step.WATCH,
            now=now,
            safety_snapshot_id=found.id,
        )
        mid = None
        if moved:
            repo.add_watch(
                s,
                request_watch(
                    req,
                    kind="safety",
                    snapshot_id=found.id,
                    snapshot_name=name,
                    started_at=now,
                    status=found.status,
                ),
            )
            audit(
                deps,
                s,
                _system(req),
                "safety.create",
                "ok",
                target=f"request:{req.id} snapshot:{found.id} server:{req.server_id}",
                detail=name + (" (found by name after a restart)" if adopted else ""),
            )
            mid = deps.outbox.post(
                s,
                req.channel,
                safety_started_note(req, found.id, deps.settings.safety_snapshot_timeout),
                thread_from=request_key(req.id),
                key=thread_key(req.id, "safety-started"),
            )
    deps.outbox.flush([mid])
    return moved


def safety_ended(deps: Deps, w: Watch, status: str, now: datetime) -> None:
    """The watcher saw the safety snapshot end as ``status`` (``completed``, another
    terminal status, ``gone``, or ``timeout``): restore now, or fail loudly."""
    if status != "completed":
        # Failed before the watch ends: a process killed in between leaves the watch
        # on, and the next poll fails the request (else it stays safeguarding for ever).
        with session_scope(deps.engine, readonly=True) as s:
            req = repo.get_restore_request(s, request_id=w.request_id)
        if req is not None:
            timeout = deps.settings.safety_snapshot_timeout
            fail(deps, req, safety_failure(status, req, timeout=timeout))
        with session_scope(deps.engine) as s:
            repo.finish_watch(s, watch_id=w.id, final_status=status, now=now)
        return
    with session_scope(deps.engine) as s:
        if not repo.finish_watch(s, watch_id=w.id, final_status=status, now=now):
            return
        req = repo.get_restore_request(s, request_id=w.request_id)
        ready = repo.move_safety_step(
            s, request_id=w.request_id, from_step=Step.WATCH, to_step=Step.READY, now=now
        )
        mid = None
        if ready:
            mid = deps.outbox.post(
                s,
                req.channel,
                safety_completed_note(req, w.snapshot_id, now - w.started_at),
                thread_from=request_key(req.id),
                key=thread_key(req.id, "safety-completed"),
            )
    deps.outbox.flush([mid])
    if ready:
        take_steps(deps, req.id)


def fail(deps: Deps, req: RestoreRequest, why: str) -> None:
    """The safety snapshot could not be had: the request fails, nothing is restored."""
    finish_restore(deps, req, SAFEGUARDING, approval.State.FAILED, why)


def _system(req: RestoreRequest) -> Actor:
    return Actor(user="", channel=req.channel, team=req.team)
