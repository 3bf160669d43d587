"""Who may do anything at all, and who may operate (SPEC 13.5, 14.3).

The door comes first for every job (bot/services/dispatch.py): a user of another
organisation, or an id that is no Slack user's, is refused and audited before any use
case sees them. Listeners ask ``turned_away`` too, before answering in the ack, and
store every request they accept as a job (``accept``) before ack()."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from slack_sdk.errors import SlackApiError, SlackClientError

from bot.blocks import refusals
from bot.blocks.answers import error_message, error_mrkdwn
from bot.blocks.refusals import not_in_a_dm, refusal_text
from bot.core import authz, conversations, view_metadata
from bot.core.errors import NotAllowed
from bot.services.actors import Actor
from bot.services.auditing import record
from bot.services.deps import Deps

log = logging.getLogger(__name__)

# The door refuses everyone while the installing team is unknown (Slack did not
# answer auth.test): the reason, and how often auth.test is tried again.
UNKNOWN_INSTALL = (
    "Slack has not yet told snapbot which workspace it is installed in; try again in a minute"
)
INSTALL_RETRY_S = 30.0


def accept(
    deps: Deps,
    kind: str,
    payload: dict,
    *,
    delivery_key: str | None = None,
    urgent: bool = False,
) -> int | None:
    """Called by a listener before ack(): the request is durable from here on.
    Listeners pass the request's ``delivery_key`` (bot/app.py): a redelivery or
    replay is then stored and done only once (None the other times). ``urgent``:
    the job must reach Slack within the trigger_id's 3 s (it opens a modal), so
    the process that acknowledged it runs it at once."""
    return deps.jobs.submit(kind, payload, delivery_key=delivery_key, urgent=urgent)


def turned_away(deps: Deps, payload: dict) -> str | None:
    """Why the actor of a request may do nothing at all, or None: not a Slack user
    ID, or a user of another organisation not in SLACK_ALLOWED_TEAMS. Pure: the
    listeners also ask it before answering in the ack."""
    actor = Actor.from_payload(payload)
    if not authz.is_user_id(actor.user):
        return "not a Slack user ID"
    return authz.outsider(
        user_team=actor.user_team,
        user_enterprise=actor.enterprise,
        home_team=deps.installed.team or actor.home_team,
        home_enterprise=deps.installed.enterprise or "",
        allowed_teams=deps.settings.slack_allowed_teams,
    )


def knows_its_install(deps: Deps) -> bool:
    """Whether the installing team is known. Start-up asks auth.test once and goes
    on without an answer when Slack is down; until one comes, the door cannot tell
    our users from another organisation's (a slash command names only one team),
    so it asks again here, at most every INSTALL_RETRY_S, and refuses meanwhile."""
    installed = deps.installed
    if installed.team is not None:
        return True
    with installed.lock:
        if installed.team is not None or time.monotonic() < installed.next_try:
            return installed.team is not None
        installed.next_try = time.monotonic() + INSTALL_RETRY_S
        try:
            answer = deps.slack.auth_test()
        except (SlackApiError, SlackClientError, OSError) as exc:
            log.warning("auth.test still unanswered (%s): requests are refused", exc)
            return False
        if not answer.get("team_id"):
            return False
        installed.enterprise = answer.get("enterprise_id") or None
        installed.team = answer["team_id"]
        log.info("snapbot is installed in team %s", installed.team)
        return True


def at_the_door(deps: Deps, payload: dict, action: str, target: str) -> bool:
    """Whether the request may go on; if not, it is refused (audited as ``action`` on
    ``target``, what it would have done, and answered where that is possible)."""
    why = turned_away(deps, payload) if knows_its_install(deps) else UNKNOWN_INSTALL
    if why is None:
        return True
    actor = Actor.from_payload(payload)
    record(
        deps,
        # Whatever was typed as the id is kept for the auditor, but never raw
        # control characters (PostgreSQL refuses NUL in text).
        replace(actor, user=printable(actor.user), team=printable(actor.team)),
        action,
        "denied",
        target=target,
        detail=f"turned away at the door: {printable(why, 200)}",
        # Without a response_url the answer is an ephemeral: only to a real
        # user in a known channel.
        answer=refusals.turned_away(
            why,
            another_org=authz.is_user_id(actor.user),
            install_unknown=why == UNKNOWN_INSTALL,
        )
        if actor.response_url or (authz.is_user_id(actor.user) and actor.channel)
        else None,
    )
    return False


# ------------------------------------------------------------------ who may operate


def may_operate(deps: Deps, actor: Actor) -> bool:
    allowed = deps.settings.snapshot_operators
    return authz.is_allowed(actor.user, deps.groups.groups_of(actor.user, allowed), allowed)


def refused_operator(deps: Deps, actor: Actor, action: str, what: str, *, target: str = "") -> bool:
    """Refuse (audit and answer) an actor who may not operate; True if refused. A DM
    or group DM between people is refused first: snapbot cannot post its channel
    message there (Slack says `channel_not_found`) nor be invited."""
    if refused_in_dm(deps, actor, action, what, target=target):
        return True
    if may_operate(deps, actor):
        return False
    refuse(deps, actor, action, what, deps.settings.snapshot_operators, target=target)
    return True


def refuse(
    deps: Deps, actor: Actor, action: str, what: str, allowed: authz.Allowed, *, target: str = ""
) -> None:
    err = NotAllowed(what, allowed)
    record(
        deps,
        actor,
        action,
        "denied",
        target=target,
        detail="not an operator",
        answer=error_mrkdwn(refusal_text(err) + deps.groups.unread_note(allowed)),
    )


def refused_in_dm(deps: Deps, actor: Actor, action: str, what: str, *, target: str = "") -> bool:
    """A DM or group DM between people: refused at once (True)."""
    if not conversations.is_direct_message(actor.channel, actor.channel_name):
        return False
    record(
        deps,
        actor,
        action,
        "denied",
        target=target,
        detail="direct message",
        answer=error_message(not_in_a_dm(what)),
    )
    return True


# ------------------------------------------------------------------ the create modal's seal


def seal_opener(deps: Deps, actor: Actor) -> str:
    """The create modal's private_metadata: where and how to answer its opener."""
    opener = view_metadata.Opener(actor.user, actor.channel, actor.channel_name, actor.response_url)
    return view_metadata.seal(opener, deps.metadata_key)


def opener_of(deps: Deps, private_metadata: str, user: str) -> view_metadata.Opener | None:
    """The opener sealed in a submitted view's private_metadata, if snapbot sealed
    it for ``user``; None for anything else (typed, edited, another user's)."""
    return view_metadata.unseal(private_metadata, deps.metadata_key, user=user)


def printable(value: str, limit: int = 64) -> str:
    return (value if value.isprintable() else repr(value)[1:-1])[:limit]


def is_id(value: str) -> bool:
    return isinstance(value, str) and value.isascii() and value.isdigit() and 0 < len(value) <= 16
