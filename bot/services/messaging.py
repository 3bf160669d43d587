"""Telling people: the actor (through the outbox, bot/outbox.py), the incident
channel, permalinks, and the outbox keys that tie a restore request's messages
together (each message that must arrive has one)."""

from __future__ import annotations

import time

from slack_sdk.errors import SlackApiError, SlackClientError

from bot.core import approval
from bot.outbox import Delivery
from bot.services.actors import Actor
from bot.services.deps import Deps
from storage import repositories as repo
from storage.db import session_scope

# Outbox states after which a message's ts is known (sent) or never will be; None: no
# such message was ever queued.
SETTLED_STATES = frozenset({"sent", "failed", None})
MESSAGE_WAIT_S = 15.0  # above one Slack call's budget (10 s timeout) and a first retry
# The last edit of a request message, after ``succeeded``: how the restore ended.
RESTORE_ENDED = "ended"


def answer(deps: Deps, actor: Actor, message: dict, *, replace_original: bool = False) -> None:
    with session_scope(deps.engine) as s:
        mid = deps.outbox.respond(
            s,
            response_url=actor.response_url,
            channel=actor.channel,
            user=actor.user,
            message=message,
            replace_original=replace_original,
        )
    deps.outbox.flush([mid])


def notify_incident(deps: Deps, session, notice: dict, *, key: str | None = None) -> int | None:
    """Post a notice built in bot/blocks/ to the incident channel, if any."""
    if not deps.settings.incident_channel:
        return None
    return deps.outbox.post(session, deps.settings.incident_channel, notice, key=key)


def permalink(deps: Deps, channel: str, ts: str | None) -> str | None:
    """A Slack call: never inside a transaction."""
    if not ts:
        return None
    try:
        return deps.slack.chat_getPermalink(channel=channel, message_ts=ts).get("permalink")
    except (SlackApiError, SlackClientError, OSError):
        return None


def await_delivery(
    deps: Deps, key: str, first: Delivery, timeout: float = MESSAGE_WAIT_S
) -> Delivery:
    """Our own flush may find the message claimed by another thread or process (any
    outbox pump takes due rows) or refused for now. The caller needs the outcome: the
    message's ts, or a refusal for good. Wait for that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(deps.engine, readonly=True) as s:
            state, ts, error = repo.message_outcome(s, key=key)
        if state == "sent":
            return Delivery(True, ts=ts)
        if state == "failed":
            return Delivery(False, error=error, permanent=True)
        time.sleep(0.05)
    return first


def await_settled(deps: Deps, keys: list[str], timeout: float = MESSAGE_WAIT_S) -> None:
    """Wait until the messages of ``keys`` are sent (or failed): at once when they are."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(deps.engine, readonly=True) as s:
            waiting = [k for k in keys if repo.message_outcome(s, key=k)[0] not in SETTLED_STATES]
        if not waiting or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def request_key(request_id: int) -> str:
    """Outbox key of a restore request's channel message (threads hang from it)."""
    return f"req:{request_id}:msg"


def thread_key(request_id: int, event: str) -> str:
    """Outbox key of a note in a restore request's thread."""
    return f"req:{request_id}:thread:{event}"


def request_edit_keys(
    request_id: int, state: str, approvals: int, *, safeguarded: bool = False
) -> tuple[str, str | None]:
    """(key, key of the edit before it) for an edit of the request message showing
    ``state`` with ``approvals`` approvals. States only move forward (core/approval.py),
    so the edit before is known: the last pending one, the approved one, or (for a
    request that went through ``safeguarding``) the safeguarding one."""

    def key(s: str, n: int) -> str:
        return f"{request_key(request_id)}:edit:{s}:{n}"

    if state == approval.State.PENDING:
        before = key(state, approvals - 1) if approvals > 1 else None
    elif state == approval.State.APPROVED:
        before = key(approval.State.PENDING, approvals - 1)
    elif state in (approval.State.REJECTED, approval.State.CANCELLED, approval.State.EXPIRED):
        before = key(approval.State.PENDING, approvals)
    elif state == RESTORE_ENDED:  # how the started restore ended: after "restoring"
        before = key(approval.State.SUCCEEDED, approvals)
    elif state == approval.State.SAFEGUARDING or not safeguarded:
        before = key(approval.State.APPROVED, approvals)
    else:  # executing, succeeded, failed, interrupted: after the safety snapshot's edit
        before = key(approval.State.SAFEGUARDING, approvals)
    return key(state, approvals), before


def incident_key(request_id: int, event: str) -> str:
    """The outbox key of a request's incident notice; the sent row keeps the notice's ts."""
    return f"incident:req:{request_id}:{event}"


def progress_key(parent_key: str) -> str:
    """Outbox key of the 'being created' edit of a create's channel message; the final
    edit waits for it (bot/outbox.py, ``after``)."""
    return f"{parent_key}:progress"
