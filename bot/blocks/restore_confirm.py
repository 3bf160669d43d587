"""The restore confirmation (SPEC 9.3): the impact preview an allowed approver reads
before typing the server's name, the sentences its submission may be answered with,
and the view that replaces it when the request closed while it was open.

No Block Kit ``confirm`` object anywhere in here: inside a modal, Slack closes the
whole modal when one is answered. The typed name is the confirmation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from slack_sdk.models.blocks import Block, InputBlock, PlainTextInputElement
from slack_sdk.models.views import View

from bot.blocks import ids
from bot.blocks.format import age, clip, escape, from_now, local_time, mention
from bot.blocks.kit import context, section
from bot.blocks.safety import plan_lines

TITLE_LIMIT = 24  # Slack's limit for a modal's title
OTHERS_SHOWN = 5  # other open requests on the server, named one by one

NAME_MISMATCH = "That is not the server's name: type {name} exactly to approve."
CONFIRM_NOT_VERIFIED = (
    "snapbot could not verify this form, so it did nothing. Close it and press Approve "
    "on the request again."
)
CONFIRM_NOT_OPENED = (
    "Slack did not open the confirmation in time, so nothing was approved. Press Approve again."
)
CONFIRM_NEEDED = (
    "Approving this restore needs the server's name typed in the confirmation, which "
    "snapbot could not open for this press; nothing was approved. Press Approve again."
)


def confirm_modal(
    req, approvals: Iterable[str], others: Sequence, now: datetime, *, metadata: str
) -> dict:
    """The modal an allowed approver's Approve opens: what will be overwritten and
    lost, the safety-snapshot plan, who asked and why, the approvals so far, other
    requests on the same server, and the one input: the server's name. ``metadata``:
    the request and the press, sealed (bot/core/view_metadata.py ``seal_binding``)."""
    plan = plan_lines(req)
    blocks: list[Block] = [section(plan[0])] if plan and plan[0] else []
    blocks += [section(_overwritten(req, now)), section(_lost(req, now))]
    if req.newer_snapshot_name:
        blocks.append(section(_stale(req, now)))
    blocks += [
        section(_plan(req, plan[1:])),
        section(_asked(req)),
        section(_approvals(req, sorted(approvals))),
    ]
    if others:
        blocks.append(section(_others(req, others)))
    blocks += [
        context(
            f"Request #{req.id} expires {local_time(req.expires_at)} "
            f"({from_now(req.expires_at, now)}). Times are in your time zone."
        ),
        InputBlock(
            block_id=ids.RESTORE_CONFIRM_BLOCK,
            label="Type the server's name to approve",
            hint=clip(f"Type {req.server_name} exactly, then press Approve.", 2000),
            element=PlainTextInputElement(action_id=ids.RESTORE_CONFIRM_ACTION, max_length=255),
        ),
    ]
    return View(
        type="modal",
        callback_id=ids.RESTORE_CONFIRM_MODAL,
        title=clip(f"Approve restore #{req.id}", TITLE_LIMIT),
        submit="Approve",
        close="Cancel",
        private_metadata=metadata,
        blocks=blocks,
    ).to_dict()


def _overwritten(req, now: datetime) -> str:
    return (
        f":rotating_light: *{escape(req.server_name)}* (`{req.server_id}`) will be overwritten "
        f"with snapshot *{escape(req.snapshot_name)}* (ID `{req.snapshot_id}`, taken "
        f"{local_time(req.snapshot_created_at)}, {age(req.snapshot_created_at, now)} ago)."
    )


def _lost(req, now: datetime) -> str:
    server = escape(req.server_name)
    since = req.snapshot_created_at
    window = (
        f"since {local_time(since)} ({age(since, now)})"
        if since is not None
        else "since the snapshot was taken"
    )
    kept = (
        "unless it is restored from the safety snapshot" if req.safety_plan == "on" else "for good"
    )
    return (
        f":warning: *What is lost:* everything written to *{server}* {window}: files, "
        f"database changes, uploads and logs made since the snapshot, {kept}."
    )


def _stale(req, now: datetime) -> str:
    return (
        f":eyes: *Is this the snapshot you mean?* It is {age(req.snapshot_created_at, now)} "
        f"old, and a newer snapshot, *{escape(req.newer_snapshot_name)}*, is "
        f"{age(req.newer_snapshot_created_at, now)} old."
    )


def _plan(req, lines: list[str]) -> str:
    shown = [line for line in lines if line]
    if shown:
        return "\n".join(shown)
    if req.safety_plan == "opted_out":
        return ":bangbang: The requester chose `--no-safety-snapshot`: this cannot be undone."
    return (
        ":bangbang: No safety snapshot is taken first (RESTORE_SAFETY_SNAPSHOT is off): "
        "this restore cannot be undone."
    )


def _asked(req) -> str:
    return (
        f"*Requested by* {mention(req.requester)}\n*Reason:* {escape(req.reason) or '_none given_'}"
    )


def _approvals(req, approvals: list[str]) -> str:
    needed = req.required_approvals
    got = ", ".join(mention(a) for a in approvals) or "none yet"
    left = max(0, needed - len(approvals))
    then = (
        "yours completes them, and the restore starts"
        if left <= 1
        else f"{left - 1} more after yours"
    )
    return (
        f"*Approvals so far:* {got} ({len(approvals)} of {needed}). *Still needed:* {left}: {then}."
    )


def _others(req, others: Sequence) -> str:
    named = [
        f"• #{o.id} ({escape(o.state)}): *{escape(o.snapshot_name)}*, asked by {mention(o.requester)}"
        for o in others[:OTHERS_SHOWN]
    ]
    if len(others) > OTHERS_SHOWN:
        named.append(f"• and {len(others) - OTHERS_SHOWN} more")
    return (
        f":warning: *Other restore requests on {escape(req.server_name)}*, open or running:\n"
        + "\n".join(named)
    )


def confirm_closed(request_id: int, why: str) -> dict:
    """What the modal shows instead when the request was decided, cancelled or expired
    while it was open (``why``: snapbot's own sentence, mentions and all)."""
    return View(
        type="modal",
        title=clip(f"Restore #{request_id}", TITLE_LIMIT),
        close="Close",
        blocks=[
            section(f":no_entry_sign: *Not approved.* {why}"),
            context("Nothing was recorded for this confirmation."),
        ],
    ).to_dict()


def name_mismatch(server_name: str) -> str:
    """The error under the input (plain text: Slack shows it as typed)."""
    return clip(NAME_MISMATCH.format(name=server_name), 2000)
