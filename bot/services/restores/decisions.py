"""Deciding a restore request: an approver's click, a rejection (or the requester's
cancel), and expiry. The rule is pure (bot/core/approval.py); here it is loaded,
applied under the request's row lock, stored with a conditional update whose row
count picks the single winner, and told."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from bot.blocks.answers import text_message
from bot.blocks.notices import (
    request_approved_notice,
    request_decided_notice,
    request_expired_notice,
)
from bot.blocks.refusals import click_not_on_request, decision_answer, request_not_found
from bot.blocks.restore import request_decided_note, request_expired_note
from bot.core import approval
from bot.services.actors import Actor
from bot.services.auditing import audit
from bot.services.deps import Deps
from bot.services.messaging import (
    answer,
    await_settled,
    incident_key,
    notify_incident,
    permalink,
    request_key,
    thread_key,
)
from bot.services.restores.execution import execute_restore
from bot.services.restores.message import (
    refresh_request,
    request_view,
    rules_view,
    update_request_message,
)
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest


def approve(deps: Deps, actor: Actor, request_id: int) -> None:
    await_posted(deps, actor, request_id)
    groups = deps.groups.groups_of(actor.user, deps.policy.approvers)
    with session_scope(deps.engine) as s:
        req, decision, won = _decide_approval(deps, s, actor, request_id, groups)
    if decision is None:
        _not_decided(deps, actor, request_id, req)
        return
    if (
        decision.verdict == approval.Verdict.RECORD
        or decision.outcome == "denied"
        or decision.verdict == approval.Verdict.REPEAT
    ):
        answer_decision(deps, actor, req, decision)
        if decision.verdict == approval.Verdict.RECORD:
            refresh_request(deps, request_id)
        return
    if decision.verdict == approval.Verdict.APPROVE and won:
        link = permalink(deps, req.channel, req.message_ts)
        with session_scope(deps.engine) as s:
            req, approvals = request_view(s, request_id)
            mids = [
                update_request_message(deps, s, req, approvals),
                notify_incident(
                    deps,
                    s,
                    request_approved_notice(req, approvals, link),
                    key=incident_key(req.id, "approved"),
                ),
            ]
        deps.outbox.flush(mids)
        execute_restore(deps, request_id)


def _decide_approval(
    deps: Deps, s, actor: Actor, request_id: int, groups: frozenset[str]
) -> tuple[RestoreRequest | None, approval.Decision | None, bool]:
    """(request, decision, whether this click approved it); decision None: the click
    decides nothing (no such request, or not pressed on its message)."""
    target = f"request:{request_id}"
    now = deps.clock()
    req, approvals = _locked_request(deps, s, actor, request_id, "restore.approve")
    if req is None:
        return None, None, False
    if not pressed_on_request(deps, s, actor, req):
        audit(deps, s, actor, "restore.approve", "denied", target=target, detail="not its message")
        return req, None, False
    # The quorum is the one the request was opened with (and shows), even if
    # RESTORE_APPROVALS changed since.
    policy = replace(deps.policy, required_approvals=req.required_approvals)
    decision = approval.decide_approval(rules_view(req, approvals), actor.user, policy, now, groups)
    won = False
    if decision.verdict in (approval.Verdict.RECORD, approval.Verdict.APPROVE):
        # The unique key makes a repeated click count once, even when two
        # of them race; the conditional update picks the single winner.
        repo.add_approval(s, request_id=request_id, approver=actor.user, now=now)
        approvals = repo.approvers_of(s, request_id=request_id)
        if len(approvals) >= policy.required_approvals:
            # The row lock means the decision above saw the request as it
            # is; the conditional update still guarantees a single winner.
            won = repo.transition_request(
                s,
                request_id=request_id,
                from_states=[approval.State.PENDING],
                to_state=approval.State.APPROVED,
                decided_by=actor.user,
                decided_at=now,
            )
            if not won:
                fresh, approvals = request_view(s, request_id)
                decision = approval.decide_approval(
                    rules_view(fresh, approvals), actor.user, policy, now, groups
                )
    audit(
        deps,
        s,
        actor,
        "restore.approve",
        decision.outcome,
        target=target,
        detail=decision.verdict.value,
    )
    return req, decision, won


def reject(deps: Deps, actor: Actor, request_id: int) -> None:
    await_posted(deps, actor, request_id)
    groups = deps.groups.groups_of(actor.user, deps.policy.approvers)
    with session_scope(deps.engine) as s:
        req, decision = _decide_rejection(deps, s, actor, request_id, groups)
    if decision is None:
        _not_decided(deps, actor, request_id, req)
        return
    if decision.new_state is None or decision.outcome == "denied":
        answer_decision(deps, actor, req, decision)
        return
    link = permalink(deps, req.channel, req.message_ts)
    with session_scope(deps.engine) as s:
        req, approvals = request_view(s, request_id)
        word = "cancelled by the requester" if req.state == "cancelled" else "rejected"
        mids = [
            update_request_message(deps, s, req, approvals),
            deps.outbox.post(
                s,
                req.channel,
                request_decided_note(word, actor.user),
                thread_from=request_key(req.id),
                key=thread_key(req.id, req.state),
            ),
            notify_incident(
                deps,
                s,
                request_decided_notice(req, word, actor.user, link),
                key=incident_key(req.id, req.state),
            ),
        ]
    deps.outbox.flush(mids)


def _decide_rejection(
    deps: Deps, s, actor: Actor, request_id: int, groups: frozenset[str]
) -> tuple[RestoreRequest | None, approval.Decision | None]:
    target = f"request:{request_id}"
    now = deps.clock()
    req, approvals = _locked_request(deps, s, actor, request_id, "restore.reject")
    if req is None:
        return None, None
    if not pressed_on_request(deps, s, actor, req):
        audit(deps, s, actor, "restore.reject", "denied", target=target, detail="not its message")
        return req, None
    view = rules_view(req, approvals)
    decision = approval.decide_rejection(view, actor.user, deps.policy, now, groups)
    if decision.new_state is not None and not repo.transition_request(
        s,
        request_id=request_id,
        from_states=[approval.State.PENDING],
        to_state=decision.new_state,
        decided_by=actor.user,
        decided_at=now,
    ):
        fresh = repo.get_restore_request(s, request_id=request_id)
        decision = approval.Decision(
            approval.Verdict.CLOSED,
            closed_state=approval.State(fresh.state),
            decided_by=fresh.decided_by,
            lost_race=True,
        )
    action = "restore.cancel" if decision.verdict == approval.Verdict.CANCEL else "restore.reject"
    audit(deps, s, actor, action, decision.outcome, target=target, detail=decision.verdict.value)
    return req, decision


def expire_request(deps: Deps, req: RestoreRequest, now: datetime) -> None:
    """A pending request past its time (the lease holder's sweep, bot/watcher.py)."""
    link = permalink(deps, req.channel, req.message_ts)  # Slack: outside the transaction
    with session_scope(deps.engine) as s:
        if not repo.transition_request(
            s,
            request_id=req.id,
            from_states=[approval.State.PENDING],
            to_state=approval.State.EXPIRED,
            decided_at=now,
        ):
            return
        req, approvals = request_view(s, req.id)
        mids = [
            update_request_message(deps, s, req, approvals),
            deps.outbox.post(
                s,
                req.channel,
                request_expired_note(req),
                thread_from=request_key(req.id),
                key=thread_key(req.id, "expired"),
            ),
            notify_incident(
                deps,
                s,
                request_expired_notice(req, link),
                key=incident_key(req.id, "expired"),
            ),
        ]
        audit(deps, s, None, "restore.expire", "ok", target=f"request:{req.id}")
    deps.outbox.flush(mids)


def _not_decided(deps: Deps, actor: Actor, request_id: int, req: RestoreRequest | None) -> None:
    answer(
        deps,
        actor,
        click_not_on_request(request_id) if req is not None else request_not_found(request_id),
    )


def answer_decision(deps: Deps, actor: Actor, req, decision: approval.Decision) -> None:
    # Ephemeral: the actor alone is told, and the request message stays as it is.
    note = (
        deps.groups.unread_note(deps.policy.approvers)
        if decision.verdict == approval.Verdict.NOT_APPROVER
        else ""
    )
    with session_scope(deps.engine) as s:
        mid = deps.outbox.queue(
            s,
            "chat.postEphemeral",
            {
                "channel": req.channel or actor.channel,
                "user": actor.user,
                **text_message(decision_answer(decision) + note),
            },
        )
    deps.outbox.flush([mid])


def await_posted(deps: Deps, actor: Actor, request_id: int) -> None:
    """Slack shows a message a moment before its answer (with the ts) reaches the
    bot, and a press may come in that moment: wait until the request's messages
    that the press could be on are sent (or failed), so the binding check
    sees their ts. Returns at once once they are (the usual case)."""
    keys = [request_key(request_id)]
    if actor.channel and actor.channel == deps.settings.incident_channel:
        keys.append(incident_key(request_id, "opened"))
    await_settled(deps, keys)


def pressed_on_request(deps: Deps, s, actor: Actor, req: RestoreRequest) -> bool:
    """SPEC 14.7: a request's buttons count only on a message snapbot posted for it:
    the request message (its ts is also in the outbox before the request row has
    it), a message in its thread, or its incident notice. A button value naming
    another request, on any other message, decides nothing."""
    if not actor.message_ts or not actor.channel:
        return False
    posted = req.message_ts or repo.message_by_key(s, key=request_key(req.id))[1]
    if posted and actor.channel == req.channel and posted in (actor.message_ts, actor.thread_ts):
        return True
    notice = repo.message_by_key(s, key=incident_key(req.id, "opened"))[1]
    return (
        notice is not None
        and actor.channel == deps.settings.incident_channel
        and notice in (actor.message_ts, actor.thread_ts)
    )


def _locked_request(
    deps: Deps, s, actor: Actor, request_id: int, action: str
) -> tuple[RestoreRequest | None, frozenset[str]]:
    """The request, locked for this decider's turn; a click on a request that does
    not exist is audited as denied."""
    req, approvals = request_view(s, request_id, lock=True)
    if req is None:
        audit(
            deps,
            s,
            actor,
            action,
            "denied",
            target=f"request:{request_id}",
            detail="no such request",
        )
    return req, approvals
