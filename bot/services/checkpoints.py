"""Audit checkpoints: the chain's length and head posted to the incident channel
(after each restore, and daily), so a rewritten trail shows against Slack's copy."""

from __future__ import annotations

from bot.blocks.notices import checkpoint_notice
from bot.services.deps import Deps
from bot.services.messaging import notify_incident
from storage import repositories as repo
from storage.db import session_scope


def post_checkpoint(deps: Deps, *, reason: str) -> None:
    if not deps.settings.incident_channel:
        return
    with session_scope(deps.engine) as s:
        count, head = repo.audit_head(s)
        mid = notify_incident(
            deps,
            s,
            checkpoint_notice(reason, count, head),
            key=f"checkpoint:{count}:{head[:16]}",
        )
    deps.outbox.flush([mid])


def daily_checkpoint(deps: Deps, today: str) -> None:
    """Once a day (``today``: its ISO date), whichever process holds the duties lease."""
    if not deps.settings.incident_channel:
        return
    with session_scope(deps.engine) as s:
        last = repo.get_setting(s, key="checkpoint_day")
        if last == today or not repo.claim_setting(
            s, key="checkpoint_day", expected=last, value=today
        ):
            return
    post_checkpoint(deps, reason=f"daily, {today}")
