"""The one restore call and how it ended (SPEC 5.4, 5.7, 13.9): ``-> executing`` is
committed before the provider is called, the outcome is stored and told (the request
message, its thread, the incident channel), a started restore is followed, and an
execution whose outcome is unknown is reconciled from the server's state, never
called again."""

from __future__ import annotations

from bot.blocks.notices import restore_outcome_notice
from bot.blocks.restore import (
    RESTORE_STARTED,
    RESTORE_USUALLY,
    reconciled_restoring,
    reconciled_unknown,
    restore_outcome_note,
    restore_unfollowed_note,
    target_unreadable,
    target_unusable,
)
from bot.core import approval
from bot.services.actors import Actor
from bot.services.auditing import audit
from bot.services.checkpoints import post_checkpoint
from bot.services.deps import Deps
from bot.services.messaging import (
    incident_key,
    notify_incident,
    permalink,
    request_key,
    thread_key,
)
from bot.services.restores.message import request_view, request_watch, update_request_message
from bot.user_messages import describe
from bot.vps.errors import VpsError, VpsUnavailable
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest


def target_problem(deps: Deps, req: RestoreRequest) -> str | None:
    """Why the request's snapshot cannot be restored now (re-read from the provider),
    or None when it can."""
    try:
        snap = deps.vps.find_snapshot(req.snapshot_id, server_id=req.server_id)
    except VpsError as exc:
        return target_unreadable(describe(exc))
    if snap is None or not snap.is_completed:
        return target_unusable(snap.status if snap is not None else None)
    return None


def restorable_request(deps: Deps, request_id: int, state: str) -> RestoreRequest | None:
    """The request, if it is still ``state`` and its target re-reads as restorable;
    a target gone or not completed fails it (nothing changed) and gives None."""
    with session_scope(deps.engine, readonly=True) as s:
        req = repo.get_restore_request(s, request_id=request_id)
    if req is None or req.state != state:
        return None
    why = target_problem(deps, req)
    if why is not None:
        finish_restore(deps, req, state, approval.State.FAILED, why)
        return None
    return req


def restore_after_safety(deps: Deps, request_id: int) -> None:
    """The safety snapshot completed: re-read the target once more, then the one
    restore call (``safeguarding -> executing`` picks the single caller)."""
    req = restorable_request(deps, request_id, approval.State.SAFEGUARDING)
    if req is not None:
        call_restore(deps, req, approval.State.SAFEGUARDING)


def call_restore(deps: Deps, req: RestoreRequest, from_state: str) -> None:
    """Win ``from_state -> executing`` (committed before the provider is called), then
    call restore once; an unknown outcome is reconciled, never called again."""
    with session_scope(deps.engine) as s:
        won = repo.transition_request(
            s,
            request_id=req.id,
            from_states=[from_state],
            to_state=approval.State.EXECUTING,
            executing_at=deps.clock(),
            executor=deps.owner,
        )
    if not won:
        return
    executing, failed = approval.State.EXECUTING, approval.State.FAILED
    try:
        result = deps.vps.restore_snapshot(req.snapshot_id)
    except VpsUnavailable as exc:
        if not exc.nothing_changed:
            reconcile_restore(deps, req.id, reason=describe(exc))
            return
        finish_restore(deps, req, executing, failed, describe(exc), provider_call=True)
        return
    except VpsError as exc:
        finish_restore(deps, req, executing, failed, describe(exc), provider_call=True)
        return
    detail = result.message or RESTORE_STARTED
    finish_restore(deps, req, executing, approval.State.SUCCEEDED, detail, provider_call=True)


def finish_restore(
    deps: Deps,
    req: RestoreRequest,
    from_state: str,
    to_state: str,
    detail: str,
    *,
    provider_call: bool = False,
) -> None:
    """Store how the execution ended (if still ``from_state``), tell the channel, its
    thread and the incident channel, then follow a started restore."""
    system = Actor(user="", channel=req.channel, team=req.team)
    target = f"request:{req.id} snapshot:{req.snapshot_id} server:{req.server_id}"
    now = deps.clock()
    link = permalink(deps, req.channel, req.message_ts)
    with session_scope(deps.engine) as s:
        if not repo.transition_request(
            s,
            request_id=req.id,
            from_states=[from_state],
            to_state=to_state,
            finished_at=now,
            outcome_detail=detail[:500],
        ):
            return
        req, approvals = request_view(s, req.id)
        ok = to_state == approval.State.SUCCEEDED
        mids = [
            update_request_message(deps, s, req, approvals),
            deps.outbox.post(
                s,
                req.channel,
                restore_outcome_note(to_state, detail),
                thread_from=request_key(req.id),
                key=thread_key(req.id, to_state),
            ),
            notify_incident(
                deps,
                s,
                restore_outcome_notice(req, to_state, detail, link),
                key=incident_key(req.id, to_state),
            ),
        ]
        action = "provider.restore" if provider_call else "restore.execute"
        audit(deps, s, system, action, "ok" if ok else "error", target=target, detail=detail)
    deps.outbox.flush(mids)
    if ok:
        follow_restore(deps, req, now)
    post_checkpoint(deps, reason=f"after restore #{req.id}")


def follow_restore(deps: Deps, req: RestoreRequest, started_at) -> None:
    """Watch the server until it leaves ``restoring`` (bot/watcher.py), or say in the
    thread that the provider does not report server status."""
    server_state = server_state_of(deps, req.server_id)
    with session_scope(deps.engine) as s:
        if server_state is None:
            mid = deps.outbox.post(
                s,
                req.channel,
                restore_unfollowed_note(RESTORE_USUALLY),
                thread_from=request_key(req.id),
                key=thread_key(req.id, "no-follow"),
            )
        else:
            repo.add_watch(
                s,
                request_watch(
                    req,
                    kind="restore",
                    snapshot_id=req.snapshot_id,
                    snapshot_name=req.snapshot_name,
                    started_at=started_at,
                    status=server_state,
                ),
            )
            mid = None
    deps.outbox.flush([mid])


def server_state_of(deps: Deps, server_id: int) -> str | None:
    """The server's status; "unknown" if the provider could not be asked, None if it
    does not report one."""
    try:
        state = deps.vps.get_server(server_id)
    except VpsError:
        return "unknown"
    return state.status if state is not None else None


def reconcile_restore(deps: Deps, request_id: int, *, reason: str) -> None:
    """An execution whose outcome is unknown: ask the provider, never call again."""
    with session_scope(deps.engine, readonly=True) as s:
        req = repo.get_restore_request(s, request_id=request_id)
    if req is None or req.state != approval.State.EXECUTING:
        return
    state = server_state_of(deps, req.server_id)
    if state == "restoring":
        finish_restore(
            deps,
            req,
            approval.State.EXECUTING,
            approval.State.SUCCEEDED,
            reconciled_restoring(reason),
        )
        return
    finish_restore(
        deps,
        req,
        approval.State.EXECUTING,
        approval.State.INTERRUPTED,
        reconciled_unknown(reason, state),
    )
