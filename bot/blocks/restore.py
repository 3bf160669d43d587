"""What a user sees of a restore request: the request message in its channel
(rebuilt from the stored request each time it changes), the replies in its thread,
and the requester's word when the message never reached the channel. The incident
channel's side of the same story is in bot/blocks/notices.py."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, ConfirmObject

from bot.blocks import ids
from bot.blocks.answers import error_mrkdwn
from bot.blocks.format import age, clip, escape, from_now, local_time, mention, span, when
from bot.blocks.kit import context, payload, section, thread_note
from bot.blocks.refusals import cannot_post
from bot.blocks.safety import plan_lines, undo_blocks

OUTCOME_LINES = {
    "approved": ":arrow_forward: Approved by {who}; restoring.",
    "safeguarding": ":shield: Approved by {who}; taking the safety snapshot first (see the "
    "thread), then restoring.",
    "executing": ":arrow_forward: Approved by {who}; restoring.",
    "succeeded": ":arrows_counterclockwise: Approved by {who}; the provider is restoring the server.",
    "failed": ":x: Approved by {who}; the restore failed: {detail}",
    "interrupted": ":warning: Approved by {who}; the restore call was interrupted: {detail}",
    "rejected": ":no_entry_sign: Rejected by {who}.",
    "cancelled": ":no_entry_sign: Cancelled by the requester {who}.",
    "expired": ":hourglass: Expired: nobody decided before {expiry}.",
}


# How a started restore ended, once the follow-up knows (SPEC 13.9): the server left
# `restoring`, or snapbot gave up following it.
END_LINES = {
    "finished": ":white_check_mark: Approved by {who}; the restore is finished: the server "
    "left `restoring` after {took} and is now `{status}`.",
    "gave_up": ":warning: Approved by {who}; the server was still restoring after {took}, "
    "so snapbot stopped following it: check the server at the provider.",
}

# The states in which the approvers, not the one who closed it, are who decided.
_APPROVED_STATES = frozenset(
    {"approved", "safeguarding", "executing", "succeeded", "failed", "interrupted"}
)


# --- the request message -----------------------------------------------------------------------


def restore_request(
    req,
    approvals: Iterable[str],
    now: datetime,
    *,
    ended: tuple[str, str] | None = None,
    typed: bool = False,
) -> dict:
    """The request message in the channel; rebuilt from the stored request each time
    it changes (chat.update), so it always shows the outcome and who decided.
    ``ended``: (the server's status, how long it took) once a started restore's
    follow-up has ended; a status still `restoring` means snapbot gave up on it.
    ``typed``: Approve opens the typed confirmation (SPEC 9.3), so it carries no
    confirm dialog of its own (one question, not two)."""
    approvals = sorted(approvals)
    plan = plan_lines(req)
    blocks: list[Block] = [section(plan[0])] if plan and plan[0] else []
    blocks += [section(_request_head(req, now)), section(_request_body(req, now, plan[1:]))]
    state = req.state
    if req.state == "pending":
        blocks += _pending_blocks(req, approvals, now, typed=typed)
    else:
        state, line = _outcome_line(req, approvals, ended)
        blocks.append(section(line))
        if req.state == "succeeded":
            blocks += undo_blocks(req)
    return payload(
        f"Restore request #{req.id} ({'still restoring' if state == 'gave_up' else state}): "
        f"{escape(req.server_name)} from {escape(req.snapshot_name)}",
        blocks,
    )


def _request_head(req, now: datetime) -> str:
    return (
        f":rotating_light: *Restore request #{req.id}*: {mention(req.requester)} wants to restore "
        f"*{escape(req.server_name)}* (`{req.server_id}`) from snapshot *{escape(req.snapshot_name)}* "
        f"(id `{req.snapshot_id}`, taken {when(req.snapshot_created_at)}, "
        f"{age(req.snapshot_created_at, now)} ago)."
    )


def _request_body(req, now: datetime, plan: list[str]) -> str:
    loss_since = req.snapshot_created_at
    lost = (
        f"everything written to *{escape(req.server_name)}* since {when(loss_since)}, "
        f"{age(loss_since, now)}"
        if loss_since
        else f"everything written to *{escape(req.server_name)}* since the snapshot was taken"
    )
    undone = (
        "the safety snapshot below keeps a copy"
        if req.safety_plan == "on"
        else "this cannot be undone"
    )
    lines = [
        f"*Reason:* {escape(req.reason) or '_none given_'}",
        f":warning: All current data on the server will be overwritten; {undone}. Lost: {lost}.",
    ]
    if req.newer_snapshot_name:
        lines.append(
            f":eyes: This snapshot is {age(req.snapshot_created_at, now)} old, but a newer "
            f"snapshot, *{escape(req.newer_snapshot_name)}*, is "
            f"{age(req.newer_snapshot_created_at, now)} old: is this the one you mean?"
        )
    return "\n".join(lines + [line for line in plan if line])


def _pending_blocks(req, approvals: list[str], now: datetime, *, typed: bool) -> list[Block]:
    """Who has approved so far, and the two buttons."""
    got = ", ".join(mention(a) for a in approvals) or "none yet"
    approve = ButtonElement(
        text="Approve",
        action_id=ids.APPROVE,
        value=str(req.id),
        style="danger",
        confirm=None
        if typed
        else ConfirmObject(
            title="Approve this restore?",
            text=clip(
                f"{escape(req.server_name)} will be overwritten with snapshot "
                f"{escape(req.snapshot_name)}: everything written to it since "
                f"{when(req.snapshot_created_at)} is lost"
                + (", but a safety snapshot is taken first." if req.safety_plan == "on" else "."),
                300,
            ),
            confirm="Approve",
            deny="Not yet",
        ),
    )
    reject = ButtonElement(text="Reject", action_id=ids.REJECT, value=str(req.id))
    return [
        context(
            f"Needs {req.required_approvals} approval(s) from someone other than the requester "
            f"· approvals: {got} · expires {local_time(req.expires_at)} "
            f"({from_now(req.expires_at, now)})"
        ),
        ActionsBlock(block_id=f"request_{req.id}", elements=[approve, reject]),
    ]


def _outcome_line(req, approvals: list[str], ended: tuple[str, str] | None) -> tuple[str, str]:
    """(the state the message shows, the line saying how the request ended)."""
    who = (
        ", ".join(mention(a) for a in approvals)
        if req.state in _APPROVED_STATES and approvals
        else mention(req.decided_by)
    )
    if ended is not None:
        status, took = ended
        state = "gave_up" if status == "restoring" else "finished"
        return state, END_LINES[state].format(who=who, took=took, status=escape(status))
    line = OUTCOME_LINES.get(req.state, "{detail}").format(
        who=who, detail=escape(req.outcome_detail) or req.state, expiry=when(req.expires_at)
    )
    return req.state, line


# --- its thread ----------------------------------------------------------------------------------


def request_decided_note(word: str, decider: str) -> dict:
    return thread_note(f"Restore request {escape(word)}: {mention(decider)}.")


def restore_outcome_note(state: str, detail: str) -> dict:
    if state == "succeeded":
        return thread_note(f":arrows_counterclockwise: Restore started: {escape(detail)}")
    return thread_note(f":x: Restore {escape(state)}: {escape(detail)}")


def restore_unfollowed_note(usually: str) -> dict:
    return thread_note(
        f"{escape(usually)} The provider does not report server status, so snapbot cannot say "
        "when it is done; check the server."
    )


def request_expired_note(req) -> dict:
    return thread_note(
        f":hourglass: Request expired: nobody approved it within "
        f"{span(req.expires_at - req.created_at)}. {mention(req.requester)}, open a new one if "
        "the restore is still needed."
    )


def restore_finished_note(watch, status: str, took: str) -> dict:
    if status != "restoring":
        return thread_note(
            f":white_check_mark: {mention(watch.requester)} *{escape(watch.server_name)}* has "
            f"left `restoring` (now `{escape(status)}`) after {escape(took)}: the restore from "
            f"*{escape(watch.snapshot_name)}* is finished."
        )
    return thread_note(
        f":warning: *{escape(watch.server_name)}* is still restoring after {escape(took)}; "
        "check the provider."
    )


# --- the requester, directly ---------------------------------------------------------------------


def request_unposted(req, error: str) -> dict:
    """To the requester, directly: their request never reached its channel."""
    return error_mrkdwn(
        f"Your restore request #{req.id} ({escape(req.server_name)} from "
        f"{escape(req.snapshot_name)}) was cancelled: " + cannot_post(error, req.channel)
    )


# --- why an execution ended as it did (stored as the request's outcome, then shown) -------------

RESTORE_USUALLY = "A restore usually takes 5-15 minutes."
RESTORE_STARTED = "The provider is restoring the server."


def target_unreadable(why: str) -> str:
    return f"could not re-read the snapshot: {why}"


def target_unusable(status: str | None) -> str:
    """The re-read target is gone (``None``) or not completed: nothing was restored."""
    if status is None:
        return "the snapshot is gone; nothing was restored"
    return f"the snapshot is {status}, not completed; nothing was restored"


def reconciled_restoring(reason: str) -> str:
    return f"the server is restoring ({reason}; confirmed from the provider)"


def reconciled_unknown(reason: str, server_state: str | None) -> str:
    """An execution whose outcome the provider cannot confirm: never retried."""
    seen = {
        None: "the provider does not report server status",
        "unknown": "the provider could not be asked",
    }.get(server_state, f"the server is {server_state}")
    return (
        f"{reason}; {seen}, so snapbot cannot tell whether the restore started. It will not "
        "retry: check the server, and open a new request if needed"
    )
