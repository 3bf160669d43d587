"""What a user sees of snapshots: the list, a create's channel message, its thread
replies and modal, and the delete prompt."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    HeaderBlock,
    InputBlock,
    Option,
    PlainTextInputElement,
    PlainTextObject,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.blocks import ids
from bot.blocks.answers import text_message
from bot.blocks.format import age, clip, escape, mention, size, span, when
from bot.blocks.kit import context, payload, section
from bot.blocks.safety import safety_marker

MAX_LISTED = 20  # 2 blocks per snapshot + header/context: well under the cap
CREATE_ESTIMATE = "Snapshot is being created. This may take 3-10 minutes depending on server size."
RUNNING_SERVER_ADVICE = (
    "Snapshotting a running server may give an inconsistent filesystem; "
    "for critical snapshots, stop the server first."
)
STATUS_ICON = {"completed": ":white_check_mark:", "in_progress": ":hourglass_flowing_sand:"}


def _status(status: str) -> str:
    return f"{STATUS_ICON.get(status, ':x:')} {escape(status)}"


# --- list --------------------------------------------------------------------------------


def snapshot_list(snapshots: Sequence, now: datetime, *, scope: str) -> dict:
    """Newest first; at most MAX_LISTED shown, with a count of the rest."""
    ordered = sorted(snapshots, key=lambda s: (s.created_at or now, s.id), reverse=True)
    shown = ordered[:MAX_LISTED]
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=clip(f"Snapshots — {scope}", 150)))
    ]
    if not ordered:
        blocks.append(section(f"No snapshots for {escape(scope)}."))
    for snap in shown:
        server = snap.server
        marker = safety_marker(snap.name)
        lines = [
            f"*{escape(snap.name)}*  (id `{snap.id}`)"
            + (f" · :shield: {marker}" if marker else ""),
            f"{escape(server.name) or 'server'} (`{server.id}`) · {_status(snap.status)} · "
            f"{size(snap.size_mb)} · {age(snap.created_at, now)} old ({when(snap.created_at)})",
        ]
        if snap.description:
            lines.append(f"_{escape(clip(snap.description, 500))}_")
        blocks.append(section("\n".join(lines)))
        blocks.append(
            ActionsBlock(
                block_id=f"snap_{snap.id}",
                elements=[
                    ButtonElement(
                        text="Restore…",
                        action_id=ids.RESTORE_OPEN,
                        value=str(snap.id),
                        style="danger",
                    ),
                    ButtonElement(text="Delete…", action_id=ids.DELETE_OPEN, value=str(snap.id)),
                ],
            )
        )
    rest = len(ordered) - len(shown)
    footer = f"{len(ordered)} snapshot(s)"
    if rest:
        footer += (
            f"; the {rest} oldest are not shown — narrow it with `/snapshot list &lt;server&gt;`"
        )
    blocks.append(context(footer))
    text = f"{len(ordered)} snapshot(s) for {escape(scope)}"
    return payload(text, blocks)


# --- create --------------------------------------------------------------------------------


def create_message(
    *,
    server_name: str,
    server_id: int,
    name: str,
    requester: str,
    state: str,
    detail: str = "",
    snapshot_id: int | None = None,
) -> dict:
    """The channel message a create lives in; its ts anchors the threaded updates."""
    ident = f" (id `{snapshot_id}`)" if snapshot_id else ""
    head = {
        "starting": f":hourglass: {mention(requester)} is creating snapshot *{escape(name)}* of "
        f"*{escape(server_name)}* (`{server_id}`)…",
        "in_progress": f":hourglass_flowing_sand: Snapshot *{escape(name)}*{ident} of *{escape(server_name)}* "
        f"(`{server_id}`) is being created, requested by {mention(requester)}.",
        "completed": f":white_check_mark: Snapshot *{escape(name)}*{ident} of *{escape(server_name)}* is ready.",
        "failed": f":x: Snapshot *{escape(name)}*{ident} of *{escape(server_name)}* failed.",
        "gone": f":grey_question: Snapshot *{escape(name)}*{ident} of *{escape(server_name)}* disappeared "
        "from the provider's list.",
        "stuck": f":warning: Snapshot *{escape(name)}*{ident} of *{escape(server_name)}* is taking far longer than usual.",
        "error": f":x: Snapshot *{escape(name)}* of *{escape(server_name)}* was not created.",
    }.get(state, f"Snapshot *{escape(name)}*: {escape(state)}")
    blocks: list[Block] = [section(head)]
    if detail:
        blocks.append(context(escape(detail)))
    return payload(head, blocks)


def create_thread_reply(
    *, status: str, name: str, requester: str, size_mb: int | None, duration, snapshot_id: int
) -> dict:
    if status == "completed":
        text = (
            f":white_check_mark: {mention(requester)} snapshot *{escape(name)}* (id `{snapshot_id}`) "
            f"completed: {size(size_mb)} in {span(duration)}."
        )
    elif status == "gone":
        text = (
            f":grey_question: {mention(requester)} snapshot *{escape(name)}* (id `{snapshot_id}`) is gone: "
            f"it disappeared from the provider's list after {span(duration)}."
        )
    elif status == "stuck":
        text = (
            f":warning: {mention(requester)} snapshot *{escape(name)}* (id `{snapshot_id}`) is still "
            f"in progress after {span(duration)}; snapbot stops watching it. Check the provider."
        )
    else:
        text = (
            f":x: {mention(requester)} snapshot *{escape(name)}* (id `{snapshot_id}`) ended with status "
            f"*{escape(status)}* after {span(duration)}."
        )
    return payload(text, [section(text)])


def create_started_detail(provider_message: str | None) -> str:
    """What a create's channel message says while the provider works on it."""
    return f"{provider_message or CREATE_ESTIMATE} {RUNNING_SERVER_ADVICE}"


def create_ended_detail(parent_state: str, status: str, duration: timedelta) -> str:
    """What a create's channel message says once it ended (the thread says more)."""
    if parent_state == "completed":
        return f"Completed in {span(duration)}; see the thread."
    return f"Ended as {status} after {span(duration)}; see the thread."


def limit_reached(text: str, oldest_id: int, oldest_name: str) -> dict:
    return payload(
        escape(text),
        [
            section(f":no_entry: {escape(text)}"),
            ActionsBlock(
                block_id="limit",
                elements=[
                    ButtonElement(
                        text=clip(f"Delete {oldest_name}…", 75),
                        action_id=ids.DELETE_OPEN,
                        value=str(oldest_id),
                    )
                ],
            ),
        ],
    )


def create_modal(
    *, metadata: str, servers: Iterable[tuple[int, str]] | None, note: str = ""
) -> dict:
    """The create modal. With ``servers`` a picker; without (still loading, or the
    provider failed) a text field that takes an ID or a name. ``metadata``: the
    opener, sealed by the bot (bot/core/view_metadata.py), for answering afterwards."""
    servers = list(servers or [])
    if servers:
        server_input = StaticSelectElement(
            action_id=ids.CREATE_SERVER_ACTION,
            placeholder="Choose a server",
            options=[
                Option(text=clip(f"{name} ({sid})", 75), value=str(sid))
                for sid, name in servers[:100]
            ],
        )
    else:
        server_input = PlainTextInputElement(
            action_id=ids.CREATE_SERVER_ACTION, placeholder="Server ID or name, e.g. web-server-01"
        )
    blocks: list[Block] = []
    if note:
        blocks.append(context(escape(note)))
    blocks += [
        InputBlock(block_id=ids.CREATE_SERVER_BLOCK, label="Server", element=server_input),
        InputBlock(
            block_id=ids.CREATE_NAME_BLOCK,
            label="Snapshot name",
            hint="Letters, digits, hyphens and underscores.",
            element=PlainTextInputElement(action_id=ids.CREATE_NAME_ACTION, max_length=100),
        ),
        InputBlock(
            block_id=ids.CREATE_DESCRIPTION_BLOCK,
            label="Description",
            optional=True,
            element=PlainTextInputElement(action_id=ids.CREATE_DESCRIPTION_ACTION, max_length=500),
        ),
        context(RUNNING_SERVER_ADVICE),
    ]
    view = View(
        type="modal",
        callback_id=ids.CREATE_MODAL,
        title="Create a snapshot",
        submit="Create",
        close="Cancel",
        private_metadata=metadata,
        blocks=blocks,
    )
    return view.to_dict()


# --- delete --------------------------------------------------------------------------------


def delete_prompt(snapshot, user: str, now: datetime) -> dict:
    text = (
        f"Delete snapshot *{escape(snapshot.name)}* (id `{snapshot.id}`) of "
        f"*{escape(snapshot.server.name)}*, taken {when(snapshot.created_at)} "
        f"({age(snapshot.created_at, now)} ago)? This is permanent."
    )
    value = f"{snapshot.id}:{user}"
    return payload(
        f"Delete snapshot {escape(snapshot.name)}?",
        [
            section(":wastebasket: " + text),
            ActionsBlock(
                block_id=f"delete_{snapshot.id}",
                elements=[
                    ButtonElement(
                        text="Delete",
                        action_id=ids.DELETE_CONFIRM,
                        value=value,
                        style="danger",
                        confirm=ConfirmObject(
                            title="Delete this snapshot?",
                            text=clip(f"{escape(snapshot.name)} will be deleted for good.", 300),
                            confirm="Delete",
                            deny="Keep it",
                        ),
                    ),
                    ButtonElement(text="Cancel", action_id=ids.DELETE_CANCEL, value=value),
                ],
            ),
        ],
    )


def snapshot_deleted(snapshot_id: int, by: str) -> dict:
    return text_message(f":wastebasket: Snapshot {snapshot_id} deleted by {mention(by)}.")
