"""Opening a restore request (SPEC §5): an operator asks; the request is posted in
the channel for approvers, and a request nobody can see is cancelled."""

from __future__ import annotations

from dataclasses import dataclass

from bot.blocks.answers import error_message, error_mrkdwn
from bot.blocks.notices import request_opened_notice, request_unposted_notice
from bot.blocks.refusals import cannot_post, refusal_text, request_already_open
from bot.blocks.restore import request_unposted, restore_request
from bot.blocks.safety import no_room_refusal, undo_reason
from bot.core import approval
from bot.core.errors import NotRestorable
from bot.core.safety import NoRoom, Plan, eviction_candidate, newer_snapshot
from bot.outbox import Delivery
from bot.services.actors import Actor
from bot.services.auditing import audit, provider_failed, record
from bot.services.deps import Deps
from bot.services.door import refused_operator
from bot.services.messaging import (
    await_delivery,
    incident_key,
    notify_incident,
    permalink,
    request_key,
)
from bot.vps.errors import VpsError
from bot.vps.models import Snapshot
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest


def request_restore(
    deps: Deps, actor: Actor, snapshot_id: int, reason: str, *, no_safety_snapshot: bool = False
) -> None:
    target = f"snapshot:{snapshot_id}"
    if refused_operator(deps, actor, "restore.request", "request restores", target=target):
        return
    try:
        listed = deps.vps.list_snapshots()
    except VpsError as exc:
        provider_failed(deps, actor, "restore.request", exc, target=target)
        return
    snap = next((s for s in listed if s.id == snapshot_id), None)
    try:
        snap = restorable(snap, snapshot_id)
        plan = safety_plan(deps, snap, listed, no_safety_snapshot)
    except NotRestorable as exc:
        record(
            deps,
            actor,
            "restore.request",
            "denied",
            target=target,
            detail=refusal_text(exc),
            answer=error_message(refusal_text(exc)),
        )
        return
    except NoRoom:
        record(
            deps,
            actor,
            "restore.request",
            "denied",
            target=f"{target} server:{snap.server.id}",
            detail="no room for the safety snapshot: 5 snapshots, none may be deleted",
            answer=no_room_refusal(snap.server.name or str(snap.server.id)),
        )
        return
    req, mid = _open(deps, actor, snap, reason, plan)
    if req is None:
        deps.outbox.flush([mid])
        return
    key = request_key(req.id)
    (delivery,) = deps.outbox.flush([mid])
    if not delivery.sent and not delivery.permanent:
        delivery = await_delivery(deps, key, delivery)
    if not delivery.sent and delivery.permanent:
        _cancel_refused(deps, actor, req, delivery)
        return
    _announce(deps, actor, req, reason)


def restorable(snap: Snapshot | None, snapshot_id: int) -> Snapshot:
    """The snapshot, if a restore may be asked of it; NotRestorable otherwise."""
    if snap is None:
        raise NotRestorable(snapshot_id)
    if not snap.is_completed:
        raise NotRestorable(snapshot_id, snap.name, snap.status)
    return snap


@dataclass(frozen=True, slots=True)
class SafetyPlan:
    """What the request announces about its safety snapshot (SPEC 9.1, 9.2)."""

    plan: Plan
    evict: Snapshot | None = None  # deleted to make room at execution, at 5/5
    newer: Snapshot | None = None  # a much newer completed snapshot of the server


def safety_plan(
    deps: Deps, snap: Snapshot, listed: list[Snapshot], no_safety_snapshot: bool
) -> SafetyPlan:
    """The plan for a restore of ``snap``; NoRoom when the server is full and no
    snapshot may make room for the safety snapshot."""
    on_server = [s for s in listed if s.server.id == snap.server.id]
    newer = newer_snapshot(on_server, snap)
    if no_safety_snapshot:
        return SafetyPlan(Plan.OPTED_OUT, newer=newer)
    if not deps.settings.restore_safety_snapshot:
        return SafetyPlan(Plan.OFF, newer=newer)
    # Never make room by deleting what another open request is about to restore.
    with session_scope(deps.engine, readonly=True) as s:
        held = {r.snapshot_id for r in repo.active_requests_for_server(s, server_id=snap.server.id)}
    return SafetyPlan(Plan.ON, evict=eviction_candidate(on_server, snap.id, held), newer=newer)


def _open(
    deps: Deps, actor: Actor, snap: Snapshot, reason: str, plan: SafetyPlan
) -> tuple[RestoreRequest | None, int | None]:
    """Store the request and queue its channel message, or (None, the answer's id)
    when another request holds the snapshot."""
    now = deps.clock()
    with session_scope(deps.engine) as s:
        req = repo.open_restore_request(
            s,
            RestoreRequest(
                snapshot_id=snap.id,
                snapshot_name=snap.name,
                snapshot_created_at=snap.created_at,
                server_id=snap.server.id,
                server_name=snap.server.name or str(snap.server.id),
                requester=actor.user,
                team=actor.team,
                channel=actor.channel,
                reason=reason,
                state=approval.State.PENDING,
                required_approvals=deps.policy.required_approvals,
                created_at=now,
                expires_at=now + deps.policy.ttl,
                safety_plan=plan.plan,
                evict_snapshot_id=plan.evict.id if plan.evict else None,
                evict_snapshot_name=plan.evict.name if plan.evict else "",
                newer_snapshot_name=plan.newer.name if plan.newer else "",
                newer_snapshot_created_at=plan.newer.created_at if plan.newer else None,
            ),
        )
        if req is None:
            # The unique index refused it: another request holds this snapshot
            # (SPEC 14.2). Its row is committed by now, so this read finds it.
            held = repo.open_request_for_snapshot(s, snapshot_id=snap.id)
            audit(
                deps,
                s,
                actor,
                "restore.request",
                "denied",
                target=f"snapshot:{snap.id}",
                detail=f"request #{held.id} already {held.state}" if held else "already open",
            )
            mid = deps.outbox.respond(
                s,
                response_url=actor.response_url,
                channel=actor.channel,
                user=actor.user,
                message=request_already_open(held),
            )
            return None, mid
        mid = deps.outbox.post(
            s, actor.channel, restore_request(req, (), now), key=request_key(req.id)
        )
        audit(
            deps,
            s,
            actor,
            "restore.request",
            "ok",
            target=f"request:{req.id} snapshot:{snap.id} server:{snap.server.id}",
            detail=_audit_detail(reason, plan),
        )
    return req, mid


def _audit_detail(reason: str, plan: SafetyPlan) -> str:
    """The reason, and what the safety plan is where it is not the default (SPEC 9.2)."""
    if plan.plan == Plan.OPTED_OUT:
        return f"NO SAFETY SNAPSHOT (--no-safety-snapshot); {reason}".rstrip("; ")
    if plan.evict is not None:
        return f"{reason} [safety snapshot; evicts {plan.evict.name} ({plan.evict.id})]".strip()
    return reason


def _cancel_refused(deps: Deps, actor: Actor, req: RestoreRequest, delivery: Delivery) -> None:
    """Slack refused the request message for good before the requester was answered."""
    with session_scope(deps.engine) as s:
        repo.transition_request(
            s,
            request_id=req.id,
            from_states=["pending"],
            to_state="cancelled",
            decided_at=deps.clock(),
            outcome_detail="could not post the request",
        )
        audit(
            deps,
            s,
            actor,
            "restore.request",
            "error",
            target=f"request:{req.id}",
            detail=delivery.error,
        )
        mid = deps.outbox.respond(
            s,
            response_url=actor.response_url,
            channel=actor.channel,
            user=actor.user,
            message=error_mrkdwn(cannot_post(delivery.error, actor.channel)),
        )
    deps.outbox.flush([mid])


def _announce(deps: Deps, actor: Actor, req: RestoreRequest, reason: str) -> None:
    """The request message is posted: note its ts and tell the incident channel."""
    ts = deps.outbox.ts_of(request_key(req.id))
    link = permalink(deps, actor.channel, ts)  # a Slack call: never inside a transaction
    with session_scope(deps.engine) as s:
        if ts:
            repo.set_request_message(s, request_id=req.id, channel=actor.channel, ts=ts)
        mid = notify_incident(
            deps,
            s,
            request_opened_notice(req, reason, link),
            key=incident_key(req.id, "opened"),
        )
    deps.outbox.flush([mid])


def cancel_unposted_request(deps: Deps, req: RestoreRequest, error: str) -> None:
    """A request whose channel message Slack refused for good after its requester
    was answered (it was being retried then): nobody can see it, so it is cancelled,
    which frees its snapshot, and the requester and the incident channel are told."""
    with session_scope(deps.engine) as s:
        if not repo.transition_request(
            s,
            request_id=req.id,
            from_states=[approval.State.PENDING],
            to_state=approval.State.CANCELLED,
            decided_at=deps.clock(),
            outcome_detail=f"could not post the request: {error}"[:500],
        ):
            return
        mids = [
            # A direct message: the channel is where Slack refused to post.
            deps.outbox.post(
                s,
                req.requester,
                request_unposted(req, error),
                key=f"req:{req.id}:unposted:dm",
            ),
            notify_incident(
                deps,
                s,
                request_unposted_notice(req, error),
                key=incident_key(req.id, "unposted"),
            ),
        ]
        system = Actor(user="", channel=req.channel, team=req.team)
        audit(deps, s, system, "restore.request", "error", target=f"request:{req.id}", detail=error)
    deps.outbox.flush(mids)


def undo_restore(deps: Deps, actor: Actor, request_id: int) -> None:
    """Undo… on a finished restore (SPEC 9.6): a new request, under the full two-person
    rule, for the safety snapshot that restore took. The snapshot comes from the stored
    request, never from the button."""
    with session_scope(deps.engine, readonly=True) as s:
        req = repo.get_restore_request(s, request_id=request_id)
    if req is None or req.safety_snapshot_id is None:
        record(
            deps,
            actor,
            "restore.request",
            "denied",
            target=f"request:{request_id}",
            detail="undo: no safety snapshot",
            answer=error_message(
                f"Restore request #{request_id} has no safety snapshot to restore."
            ),
        )
        return
    request_restore(deps, actor, req.safety_snapshot_id, undo_reason(request_id))
