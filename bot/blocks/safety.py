"""What a user reads of a restore's safety snapshot (SPEC 9): the plan on the request
message, the notes in its thread as the steps are taken, why it failed, the refusal
of a request with no room for it, and the Undo that restores it."""

from __future__ import annotations

from datetime import timedelta

from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, ConfirmObject

from bot.blocks import ids
from bot.blocks.answers import error_mrkdwn
from bot.blocks.format import clip, escape, span
from bot.blocks.kit import section, thread_note
from bot.core.safety import Plan, safety_name, safety_request_of


def plan_lines(req) -> list[str]:
    """The safety-snapshot plan as the request message states it (SPEC 9.1, 9.2):
    the first line goes at the top of the message, the rest under the reason."""
    server = escape(req.server_name)
    if req.safety_plan == Plan.OPTED_OUT:
        return [
            f":bangbang: *No safety snapshot* (`--no-safety-snapshot`): the current state of "
            f"*{server}* will be lost for good."
        ]
    if req.safety_plan != Plan.ON:
        return []
    line = (
        f":shield: Before restoring, snapbot takes a safety snapshot `{safety_name(req.id)}` "
        f"of *{server}* as it is now, so this restore can be undone."
    )
    if req.evict_snapshot_id is not None:
        line += (
            f" The server has 5 of 5 snapshots: *{escape(req.evict_snapshot_name)}* "
            f"(ID `{req.evict_snapshot_id}`, its oldest) will be deleted to make room."
        )
    return ["", line]


def no_room_refusal(server_name: str) -> dict:
    """A restore refused at once: the server is full and nothing may make room."""
    return error_mrkdwn(
        f"*{escape(server_name)}* already has 5 snapshots and none of them can be deleted "
        "to make room for the safety snapshot (only a completed snapshot that is not the "
        "one being restored, nor pinned, can be). Delete one (`/snapshot delete <id>`), "
        "or restore without a safety snapshot: `/snapshot restore <id> --no-safety-snapshot "
        "[reason]`."
    )


# --- the thread, as the steps are taken ---------------------------------------------------------


def safety_evicted_note(req, *, already_gone: bool = False) -> dict:
    if already_gone:  # a restart, or someone else: the list no longer has it
        return thread_note(
            f":wastebasket: *{escape(req.evict_snapshot_name)}* (ID `{req.evict_snapshot_id}`), "
            "named to make room for the safety snapshot, is already gone (deleted before "
            "snapbot restarted, or by someone else)."
        )
    return thread_note(
        f":wastebasket: Deleted *{escape(req.evict_snapshot_name)}* (ID "
        f"`{req.evict_snapshot_id}`) to make room for the safety snapshot."
    )


def safety_started_note(req, snapshot_id: int, timeout: timedelta) -> dict:
    return thread_note(
        f":camera_with_flash: Taking the safety snapshot `{safety_name(req.id)}` (ID "
        f"`{snapshot_id}`) of *{escape(req.server_name)}*; the restore starts once it is "
        f"completed (it fails, restoring nothing, if that takes over {span(timeout)})."
    )


def safety_completed_note(req, snapshot_id: int, took: timedelta) -> dict:
    return thread_note(
        f":white_check_mark: Safety snapshot `{safety_name(req.id)}` (ID `{snapshot_id}`) "
        f"completed in {span(took)}; restoring *{escape(req.server_name)}* now."
    )


_FAILURES = {
    "list": "could not read the server's snapshots before the safety snapshot: {detail}",
    "changed": (
        "the server's snapshots changed since the request (it has 5 and the one named "
        "for deletion is not among them); open a new request"
    ),
    "evict": "could not delete {victim} to make room for the safety snapshot: {detail}",
    "create": "the safety snapshot {name} was not taken: {detail}",
    "gone": "the safety snapshot {name} disappeared before it completed",
    "timeout": "the safety snapshot {name} was not completed within {timeout}",
}


def safety_failure(kind: str, req, detail: str = "", *, timeout: timedelta | None = None) -> str:
    """Why a request failed for want of its safety snapshot (stored, then escaped
    wherever it is shown); ``kind`` a step's failure, or the snapshot's end status."""
    template = _FAILURES.get(kind, "the safety snapshot {name} ended as {status}")
    text = template.format(
        detail=detail,
        victim=req.evict_snapshot_name or f"snapshot {req.evict_snapshot_id}",
        name=safety_name(req.id),
        timeout=span(timeout) if timeout is not None else "the time allowed",
        status=kind,
    )
    return f"{text}; nothing was restored"


# --- Undo (SPEC 9.6) ---------------------------------------------------------------------------


def undo_line(req) -> str:
    return (
        f":leftwards_arrow_with_hook: `{safety_name(req.id)}` (ID `{req.safety_snapshot_id}`) "
        f"holds *{escape(req.server_name)}* as it was before this restore."
    )


def undo_blocks(req) -> list[Block]:
    """The safety snapshot named, and the Undo… button that opens a new request for it."""
    if req.safety_plan != Plan.ON or req.safety_snapshot_id is None:
        return []
    undo = ButtonElement(
        text="Undo…",
        action_id=ids.UNDO,
        value=str(req.id),
        confirm=ConfirmObject(
            title="Undo this restore?",
            text=clip(
                f"This opens a new restore request for {safety_name(req.id)}: "
                f"{escape(req.server_name)} would go back to how it was before restore "
                f"request #{req.id}, once approved.",
                300,
            ),
            confirm="Open request",
            deny="Cancel",
        ),
    )
    return [section(undo_line(req)), ActionsBlock(block_id=f"undo_{req.id}", elements=[undo])]


def undo_reason(request_id: int) -> str:
    return f"undo restore request #{request_id}"


def safety_marker(snapshot_name: str) -> str:
    """How /snapshot list marks a safety snapshot (SPEC 9.7); "" for any other."""
    request_id = safety_request_of(snapshot_name)
    return f"safety snapshot before request #{request_id}" if request_id is not None else ""
