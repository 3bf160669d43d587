"""The audit trail: every user action and every system event is one row of the
hash chain (storage, bot/core/audit_chain.py) and one structured log line."""

from __future__ import annotations

import logging

from bot.blocks.answers import error_message
from bot.logs import event_line
from bot.services.actors import Actor
from bot.services.deps import Deps
from bot.user_messages import describe
from storage import repositories as repo
from storage.db import session_scope

# The name operators' log queries know the audit lines by (bot/logs.py).
log = logging.getLogger("bot.services")


def audit(
    deps: Deps,
    session,
    actor: Actor | None,
    action: str,
    outcome: str,
    *,
    target: str = "",
    detail: str = "",
) -> None:
    """One audit row, in the caller's transaction, and its log line."""
    row = repo.append_audit(
        session,
        now=deps.clock(),
        action=action,
        outcome=outcome,
        actor=actor.user if actor else "",
        team=actor.team if actor else "",
        channel=actor.channel if actor else "",
        target=target,
        detail=detail[:1000],
        key=deps.audit_key,
    )
    # The same event as one structured log line (bot/logs.py).
    log.info(
        "%s",
        event_line(
            action,
            target=target,
            actor=row.actor or "snapbot",
            channel=row.channel,
            team=row.team,
            outcome=outcome,
            audit=row.id,
            detail=row.detail[:200],
        ),
    )


def record(
    deps: Deps,
    actor: Actor | None,
    action: str,
    outcome: str,
    *,
    target: str = "",
    detail: str = "",
    answer: dict | None = None,
    delivery_key: str | None = None,
) -> None:
    """Audit one event and, where given, answer the actor: one unit of work.
    With a Slack request's ``delivery_key``, a request seen before does neither."""
    with session_scope(deps.engine) as s:
        if delivery_key and not repo.record_delivery(s, key=delivery_key, now=deps.clock()):
            return
        mid = None
        if answer is not None and actor is not None:
            mid = deps.outbox.respond(
                s,
                response_url=actor.response_url,
                channel=actor.channel,
                user=actor.user,
                message=answer,
            )
        audit(deps, s, actor, action, outcome, target=target, detail=detail)
    deps.outbox.flush([mid])


def provider_failed(
    deps: Deps,
    actor: Actor,
    action: str,
    exc: Exception,
    *,
    target: str = "",
    answer: bool = True,
) -> None:
    """A provider call failed: audited as an error and, with ``answer``, explained."""
    log.warning("provider call for %s failed: %s", action, exc)
    record(
        deps,
        actor,
        action,
        "error",
        target=target,
        detail=describe(exc),
        answer=error_message(describe(exc)) if answer else None,
    )
