"""Typed confirmation of an approval (SPEC 9.3, ``RESTORE_CONFIRM=typed``).

An allowed approver's Approve opens the impact preview (bot/blocks/restore_confirm.py)
at once, in the process that received the click: the click's ``trigger_id`` is good
for 3 s, and the job queue may be busy (``open_confirmation``, called by the
listener before its ack). Everyone else's press is queued as today, and refused as
today. The modal's submission (``confirmation_submitted``) is checked as fast as the
ack needs (one database read, no provider call) and then queued as the very press
that opened it, so ``decisions.approve`` records and decides it exactly as it would
a press: exactly once, under the request's lock.

A press that reaches the job queue must not approve without the typed name either
(``approve_pressed``): where the listener could not tell that the presser may approve
(the request message's ts not stored yet, a user group not readable in that instant),
the job refuses, asking for another press, rather than skip the confirmation.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler

from bot.blocks import ids
from bot.blocks.answers import error_message
from bot.blocks.refusals import decision_answer
from bot.blocks.restore_confirm import (
    CONFIRM_NEEDED,
    CONFIRM_NOT_OPENED,
    CONFIRM_NOT_VERIFIED,
    confirm_closed,
    confirm_modal,
    name_mismatch,
)
from bot.core import approval, view_metadata
from bot.core.safety import confirmation_matches
from bot.services import door
from bot.services.actors import Actor
from bot.services.auditing import audit, record
from bot.services.deps import Deps
from bot.services.messaging import answer, await_settled, incident_key, request_key
from bot.services.restores import decisions
from bot.services.restores.message import request_view, rules_view, typed_confirm
from storage import repositories as repo
from storage.db import session_scope

log = logging.getLogger(__name__)

TYPED = "typed"
# views.open answers within the ack's 3 s or not at all: the trigger is spent by then.
VIEWS_OPEN_TIMEOUT_S = 2.0
POSTED_WAIT_S = 0.5  # at most, for the request message's ts (at once when it is known)
_MAY_APPROVE = (approval.Verdict.RECORD, approval.Verdict.APPROVE)


# ------------------------------------------------------------------ the press (listener)


def open_confirmation(deps: Deps, payload: dict, *, delivery_key: str | None = None) -> bool:
    """Open the confirmation for an Approve press, if its presser may approve; True
    when it did (or the press was a redelivery of one that did). False: queue the
    press as a job, which answers and audits it as without typed confirmation."""
    if not typed_confirm(deps) or not door.is_id(payload.get("value", "")):
        return False
    if deps.installed.team is None or door.turned_away(deps, payload) is not None:
        return False  # the door refuses it, in the job
    actor = Actor.from_payload(payload)
    request_id = int(payload["value"])
    # Slack shows the request message a moment before snapbot has its ts, and a press
    # may come in that moment: wait a little (not the job's while: the trigger ticks).
    await_settled(deps, posted_keys(deps, actor, request_id), timeout=POSTED_WAIT_S)
    now = deps.clock()
    # Before the ack no Slack call but views.open: user groups not cached send the press
    # to the job, which looks them up and asks for another press (approve_pressed).
    groups = deps.groups.cached_groups_of(actor.user, deps.policy.approvers)
    if groups is None:
        return False
    with session_scope(deps.engine, readonly=True) as s:
        req, approvals = request_view(s, request_id)
        if req is None or not _may_approve(deps, s, actor, req, approvals, groups):
            return False
        others = repo.active_requests_for_server(s, server_id=req.server_id, besides=req.id)
    binding = view_metadata.Binding(
        user=actor.user,
        request_id=request_id,
        channel=actor.channel,
        message_ts=actor.message_ts or "",
        thread_ts=actor.thread_ts,
        channel_name=actor.channel_name,
        response_url=actor.response_url,
    )
    view = confirm_modal(
        req,
        approvals,
        others,
        now,
        metadata=view_metadata.seal_binding(binding, deps.metadata_key),
    )
    target = f"request:{request_id}"
    with session_scope(deps.engine) as s:
        # The press is durable (and a redelivery of it known) before Slack is asked.
        if delivery_key and not repo.record_delivery(s, key=delivery_key, now=now):
            return True
        audit(deps, s, actor, "restore.confirm", "ok", target=target, detail="opened")
    try:
        _views_client(deps).views_open(trigger_id=actor.trigger_id, view=view)
    except (SlackApiError, SlackClientError, OSError) as exc:
        log.info("could not open the confirmation of request %s: %s", request_id, exc)
        record(
            deps,
            actor,
            "restore.confirm",
            "error",
            target=target,
            detail=str(exc)[:200],
            answer=error_message(CONFIRM_NOT_OPENED),
        )
    return True


def posted_keys(deps: Deps, actor: Actor, request_id: int) -> list[str]:
    """The request's messages the press could be on (as ``decisions.await_posted``)."""
    keys = [request_key(request_id)]
    if actor.channel and actor.channel == deps.settings.incident_channel:
        keys.append(incident_key(request_id, "opened"))
    return keys


def _may_approve(deps: Deps, s, actor: Actor, req, approvals, groups: frozenset[str]) -> bool:
    """Whether this press, on this request's message, would count as an approval."""
    if not decisions.pressed_on_request(deps, s, actor, req):
        return False
    policy = replace(deps.policy, required_approvals=req.required_approvals)
    view = rules_view(req, approvals)
    return approval.decide_approval(view, actor.user, policy, deps.clock(), groups).verdict in (
        _MAY_APPROVE
    )


def _views_client(deps: Deps) -> WebClient:
    """The bot's Web API client with a deadline inside the ack's 3 s, and without the
    rate-limit waits of the shared one (a trigger would not outlive them)."""
    return WebClient(
        token=deps.slack.token,
        base_url=deps.slack.base_url,
        timeout=VIEWS_OPEN_TIMEOUT_S,
        retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=1)],
    )


# ------------------------------------------------------------------ the submission (listener)


def confirmation_submitted(
    deps: Deps, who: dict, private_metadata: str, typed: str, *, delivery_key: str | None = None
) -> dict:
    """Check a submitted confirmation and queue it as the press that opened it; the
    answer is what the listener acks with: {} closes the modal, else
    ``response_action`` errors (nothing recorded) or update (the request closed)."""
    binding = view_metadata.unseal_binding(private_metadata, deps.metadata_key, user=who["user"])
    if deps.installed.team is None or door.turned_away(deps, who) is not None:
        # Refused (and audited) at the door, like every other request; told nothing
        # about the form.
        value = str(binding.request_id) if binding else ""
        door.accept(
            deps,
            "restore.approve",
            {**who, "action_id": ids.APPROVE, "value": value},
            delivery_key=delivery_key,
        )
        return {}
    if binding is None:
        record(
            deps,
            Actor.from_payload(who),
            "restore.approve",
            "denied",
            detail="private_metadata not sealed by snapbot",
            delivery_key=delivery_key,
        )
        return _error(CONFIRM_NOT_VERIFIED)
    with session_scope(deps.engine, readonly=True) as s:
        req, approvals = request_view(s, binding.request_id)
    if req is None:
        return _error(CONFIRM_NOT_VERIFIED)
    closed = _closed_why(deps, req, approvals, who["user"])
    if closed is not None:
        return {"response_action": "update", "view": confirm_closed(req.id, closed)}
    if not confirmation_matches(typed, req.server_name):
        return _error(name_mismatch(req.server_name))
    # The press that opened the modal, as it was: decisions.approve checks it again
    # (who may approve, on which message, the quorum) under the request's lock.
    press = {
        **who,
        "action_id": ids.APPROVE,
        "value": str(binding.request_id),
        "channel": binding.channel,
        "channel_name": binding.channel_name,
        "response_url": binding.response_url,
        "message_ts": binding.message_ts,
        "thread_ts": binding.thread_ts,
        "confirmed": TYPED,
    }
    door.accept(deps, "restore.approve", press, delivery_key=delivery_key)
    return {}


def _closed_why(deps: Deps, req, approvals, user: str) -> str | None:
    """Why the request can no longer be approved (decided, cancelled, expired), or None."""
    decision = approval.decide_approval(rules_view(req, approvals), user, deps.policy, deps.clock())
    if decision.verdict in (approval.Verdict.CLOSED, approval.Verdict.EXPIRED):
        return decision_answer(decision)
    return None


def _error(message: str) -> dict:
    return {"response_action": "errors", "errors": {ids.RESTORE_CONFIRM_BLOCK: message}}


# ------------------------------------------------------------------ the job


def approve_pressed(deps: Deps, actor: Actor, request_id: int, payload: dict) -> None:
    """The ``restore.approve`` job: a confirmed submission (or any press without
    typed confirmation) goes to ``decisions.approve``. An unconfirmed press that would
    count is refused and audited, asking for another press; any other is refused by
    ``decisions.approve`` exactly as without typed confirmation."""
    if not typed_confirm(deps) or payload.get("confirmed") == TYPED:
        decisions.approve(deps, actor, request_id)
        return
    decisions.await_posted(deps, actor, request_id)
    groups = deps.groups.groups_of(actor.user, deps.policy.approvers)
    with session_scope(deps.engine) as s:
        req, approvals = request_view(s, request_id)
        counts = req is not None and _may_approve(deps, s, actor, req, approvals, groups)
        if counts:
            audit(
                deps,
                s,
                actor,
                "restore.approve",
                "denied",
                target=f"request:{request_id}",
                detail="typed confirmation needed",
            )
    if counts:
        answer(deps, actor, error_message(CONFIRM_NEEDED))
        return
    # The groups just read decide here too: one that became readable in between
    # must not turn a refusal into an approval without the typed name.
    decisions.approve(replace(deps, groups=_Pinned(deps.groups, groups)), actor, request_id)


class _Pinned:
    """A GroupCache whose answer for this one actor is already known."""

    def __init__(self, cache, groups: frozenset[str]) -> None:
        self._cache, self._groups = cache, groups

    def groups_of(self, user: str, allowed) -> frozenset[str]:
        return self._groups

    def unread_note(self, allowed) -> str:
        return self._cache.unread_note(allowed)
