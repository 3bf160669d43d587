"""Block Kit builders: pure functions from domain values to message payloads.

Each returns ``{"text": fallback, "blocks": [...]}`` built with ``slack_sdk.models``
(whose ``to_dict()`` checks Slack's per-element limits); the 50-blocks cap, which
slack_sdk does not check, is kept here by construction.

Every text a user typed or the provider wrote (names, reasons, statuses, the
provider's messages, error sentences) goes through ``format.escape`` here, once,
wherever it is shown: mrkdwn sections, contexts and the fallback ``text`` (which
notifications render). Arguments are plain text unless named ``mrkdwn``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.blocks import ids
from bot.blocks.format import age, clip, escape, mention, size, span, when

MAX_BLOCKS = 50
MAX_LISTED = 20  # 2 blocks per snapshot + header/context: well under the cap
SECTION_LIMIT = 3000
CREATE_ESTIMATE = "Snapshot is being created. This may take 3-10 minutes depending on server size."
RUNNING_SERVER_ADVICE = (
    "Snapshotting a running server may give an inconsistent filesystem; "
    "for critical snapshots, stop the server first."
)
STATUS_ICON = {"completed": ":white_check_mark:", "in_progress": ":hourglass_flowing_sand:"}


def _payload(text: str, blocks: Sequence[Block]) -> dict:
    assert len(blocks) <= MAX_BLOCKS, "a message may carry at most 50 blocks"
    return {"text": clip(text, 3000), "blocks": [b.to_dict() for b in blocks]}


def _md(text: str) -> MarkdownTextObject:
    return MarkdownTextObject(text=clip(text, SECTION_LIMIT))


def _section(text: str) -> SectionBlock:
    return SectionBlock(text=_md(text))


def _context(text: str) -> ContextBlock:
    return ContextBlock(elements=[_md(clip(text, 2000))])


def _status(status: str) -> str:
    return f"{STATUS_ICON.get(status, ':x:')} {escape(status)}"


# --- plain answers -------------------------------------------------------------------


def text_message(mrkdwn: str) -> dict:
    """A sentence already in mrkdwn: any user or provider text in it is escaped."""
    return _payload(mrkdwn, [_section(mrkdwn)])


def usage_message(usage: str, problem: str | None = None) -> dict:
    blocks: list[Block] = []
    if problem:
        blocks.append(_section(f":warning: {escape(problem)}"))
    # Slack reads <...> as a link even inside a code block: `<server>` must be escaped.
    blocks.append(_section("```" + escape(usage) + "```"))
    return _payload((escape(problem) + "\n" if problem else "") + escape(usage), blocks)


def error_message(text: str) -> dict:
    """A refusal or failure in plain text (it may quote the provider or the user)."""
    return _payload(escape(text), [_section(f":x: {escape(text)}")])


def error_mrkdwn(mrkdwn: str) -> dict:
    """A refusal or failure snapbot wrote in mrkdwn (a channel link, who may act), any
    user or provider text in it escaped already."""
    return _payload(mrkdwn, [_section(f":x: {mrkdwn}")])


# --- where snapbot cannot post ---------------------------------------------------------------

FORM_NOT_VERIFIED = (
    "snapbot could not verify this form, so it did nothing. Close it and run "
    "`/snapshot create` again."
)


def not_in_a_dm(what: str) -> str:
    """The refusal of a command that needs a channel message, given in a DM."""
    return (
        f"snapbot cannot post in a direct message, so it cannot {what} here: run it in a "
        "channel where snapbot is a member (invite it with `/invite @snapbot`). Nothing was "
        "changed."
    )


def cannot_post(error: str, channel: str) -> str:
    """Why Slack refused the channel message a create or restore needs, and the fix
    (mrkdwn: a channel link; for ``error_mrkdwn``)."""
    where = f"<#{escape(channel)}>"
    fix = {
        "not_in_channel": f"snapbot is not a member of {where}: invite it first with "
        "`/invite @snapbot`, then run the command again.",
        "channel_not_found": f"snapbot cannot see {where}: invite it first with "
        "`/invite @snapbot` (in a direct message, run the command in a channel instead).",
        "is_archived": f"{where} is archived, so snapbot cannot post there: run the command "
        "in a channel that is not archived.",
        "restricted_action_read_only_channel": f"Only some members may post in {where}, and "
        "snapbot is not one of them: let it post there (channel settings, posting "
        "permissions) or run the command in another channel.",
        "restricted_action_thread_only_channel": f"{where} takes replies in threads only, so "
        "snapbot cannot post its message there: run the command in another channel.",
    }.get(error, f"Slack refused the message snapbot needs to post (`{escape(error)}`).")
    return f"{fix} Nothing was changed."


def turned_away(why: str, *, another_org: bool, install_unknown: bool = False) -> dict:
    """The answer to a request refused at the door (SPEC 13.5, 14.3): from a user of
    another organisation, or with no valid Slack user ID at all, or while snapbot does
    not know its own workspace yet (then nobody can be told apart)."""
    if install_unknown:
        return error_message(f"snapbot did nothing: {why}.")
    if another_org:
        return error_message(
            f"snapbot did nothing ({why}): it acts only for people of the workspace "
            "it is installed in. An admin can let another workspace in with "
            "`SLACK_ALLOWED_TEAMS`."
        )
    return error_message(f"snapbot did nothing: the request did not say who you are ({why}).")


# --- list --------------------------------------------------------------------------------


def snapshot_list(snapshots: Sequence, now: datetime, *, scope: str) -> dict:
    """Newest first; at most MAX_LISTED shown, with a count of the rest."""
    ordered = sorted(snapshots, key=lambda s: (s.created_at or now, s.id), reverse=True)
    shown = ordered[:MAX_LISTED]
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=clip(f"Snapshots — {scope}", 150)))
    ]
    if not ordered:
        blocks.append(_section(f"No snapshots for {escape(scope)}."))
    for snap in shown:
        server = snap.server
        lines = [
            f"*{escape(snap.name)}*  (id `{snap.id}`)",
            f"{escape(server.name) or 'server'} (`{server.id}`) · {_status(snap.status)} · "
            f"{size(snap.size_mb)} · {age(snap.created_at, now)} old ({when(snap.created_at)})",
        ]
        if snap.description:
            lines.append(f"_{escape(clip(snap.description, 500))}_")
        blocks.append(_section("\n".join(lines)))
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
    blocks.append(_context(footer))
    text = f"{len(ordered)} snapshot(s) for {escape(scope)}"
    return _payload(text, blocks)


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
    blocks: list[Block] = [_section(head)]
    if detail:
        blocks.append(_context(escape(detail)))
    return _payload(head, blocks)


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
    return _payload(text, [_section(text)])


def limit_reached(text: str, oldest_id: int, oldest_name: str) -> dict:
    return _payload(
        escape(text),
        [
            _section(f":no_entry: {escape(text)}"),
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
        blocks.append(_context(escape(note)))
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
        _context(RUNNING_SERVER_ADVICE),
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


def delete_taken(snapshot_id: int, state: str, by: str) -> str:
    """The answer to a Delete pressed again (a double click, or a second person)."""
    if state == "deleted":
        return f"Snapshot {snapshot_id} was already deleted by {mention(by)}."
    return f"Snapshot {snapshot_id} is already being deleted by {mention(by)}."


def delete_prompt(snapshot, user: str, now: datetime) -> dict:
    text = (
        f"Delete snapshot *{escape(snapshot.name)}* (id `{snapshot.id}`) of "
        f"*{escape(snapshot.server.name)}*, taken {when(snapshot.created_at)} "
        f"({age(snapshot.created_at, now)} ago)? This is permanent."
    )
    value = f"{snapshot.id}:{user}"
    return _payload(
        f"Delete snapshot {escape(snapshot.name)}?",
        [
            _section(":wastebasket: " + text),
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


# --- restore requests --------------------------------------------------------------------------


OUTCOME_LINES = {
    "approved": ":arrow_forward: Approved by {who}; restoring.",
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


def restore_request(
    req, approvals: Iterable[str], now: datetime, *, ended: tuple[str, str] | None = None
) -> dict:
    """The request message in the channel; rebuilt from the stored request each time
    it changes (chat.update), so it always shows the outcome and who decided.
    ``ended``: (the server's status, how long it took) once a started restore's
    follow-up has ended; a status still `restoring` means snapbot gave up on it."""
    loss_since = req.snapshot_created_at
    lost = (
        f"everything written to *{escape(req.server_name)}* since {when(loss_since)}, "
        f"{age(loss_since, now)}"
        if loss_since
        else f"everything written to *{escape(req.server_name)}* since the snapshot was taken"
    )
    approvals = sorted(approvals)
    head = (
        f":rotating_light: *Restore request #{req.id}*: {mention(req.requester)} wants to restore "
        f"*{escape(req.server_name)}* (`{req.server_id}`) from snapshot *{escape(req.snapshot_name)}* "
        f"(id `{req.snapshot_id}`, taken {when(req.snapshot_created_at)}, "
        f"{age(req.snapshot_created_at, now)} ago)."
    )
    body = (
        f"*Reason:* {escape(req.reason) or '_none given_'}\n"
        f":warning: All current data on the server is overwritten; this cannot be undone. "
        f"Lost: {lost}."
    )
    blocks: list[Block] = [_section(head), _section(body)]
    needed = req.required_approvals
    state = req.state
    if req.state == "pending":
        got = ", ".join(mention(a) for a in approvals) or "none yet"
        blocks.append(
            _context(
                f"Needs {needed} approval(s) from someone other than the requester · approvals: {got} · "
                f"expires {when(req.expires_at)}"
            )
        )
        blocks.append(
            ActionsBlock(
                block_id=f"request_{req.id}",
                elements=[
                    ButtonElement(
                        text="Approve",
                        action_id=ids.APPROVE,
                        value=str(req.id),
                        style="danger",
                        confirm=ConfirmObject(
                            title="Approve this restore?",
                            text=clip(
                                f"{escape(req.server_name)} will be overwritten with snapshot "
                                f"{escape(req.snapshot_name)}.",
                                300,
                            ),
                            confirm="Approve",
                            deny="Not yet",
                        ),
                    ),
                    ButtonElement(text="Reject", action_id=ids.REJECT, value=str(req.id)),
                ],
            )
        )
    else:
        who = (
            ", ".join(mention(a) for a in approvals)
            if req.state in {"approved", "executing", "succeeded", "failed", "interrupted"}
            and approvals
            else mention(req.decided_by)
        )
        if ended is not None:
            status, took = ended
            state = "gave_up" if status == "restoring" else "finished"
            line = END_LINES[state].format(who=who, took=took, status=escape(status))
        else:
            line = OUTCOME_LINES.get(req.state, "{detail}").format(
                who=who, detail=escape(req.outcome_detail) or req.state, expiry=when(req.expires_at)
            )
        blocks.append(_section(line))
    return _payload(
        f"Restore request #{req.id} ({'still restoring' if state == 'gave_up' else state}): "
        f"{escape(req.server_name)} from {escape(req.snapshot_name)}",
        blocks,
    )


def request_already_open(held) -> dict:
    """To the second of two requesters: the snapshot's active request, and whose it is.
    ``held`` is None when that request closed again before it could be read."""
    if held is None:
        return error_message(
            "Another restore request for this snapshot was open a moment ago; "
            "run the command again."
        )
    return error_mrkdwn(
        f"Restore request #{held.id} for this snapshot is already {held.state}, "
        f"opened by {mention(held.requester)}."
    )


def click_not_on_request(request_id: int) -> dict:
    """SPEC 14.7: Approve and Reject count only on a message snapbot posted for that request."""
    return error_message(
        f"That button is not on a message snapbot posted for restore request #{request_id}, "
        "so it did nothing. Use the buttons on the request message itself."
    )


def thread_note(mrkdwn: str) -> dict:
    return _payload(mrkdwn, [_section(mrkdwn)])


def incident_notice(mrkdwn: str, link: str | None) -> dict:
    full = mrkdwn + (f" <{link}|View the request>" if link else "")
    return _payload(mrkdwn, [_section(full)])


# --- what a restore request's thread and the incident channel are told -----------------------


def request_opened_notice(req, reason: str, link: str | None) -> dict:
    return incident_notice(
        f":rotating_light: Restore requested: {mention(req.requester)} wants to restore "
        f"*{escape(req.server_name)}* from *{escape(req.snapshot_name)}* (request #{req.id}, "
        f"taken {when(req.snapshot_created_at)}). Reason: {escape(reason) or 'none given'}.",
        link,
    )


def request_approved_notice(req, approvals: Iterable[str], link: str | None) -> dict:
    who = ", ".join(mention(a) for a in sorted(approvals))
    return incident_notice(
        f":white_check_mark: Restore #{req.id} of *{escape(req.server_name)}* approved by {who}.",
        link,
    )


def request_decided_note(word: str, decider: str) -> dict:
    return thread_note(f"Restore request {escape(word)}: {mention(decider)}.")


def request_decided_notice(req, word: str, decider: str, link: str | None) -> dict:
    return incident_notice(
        f":no_entry_sign: Restore #{req.id} of *{escape(req.server_name)}* {escape(word)} by "
        f"{mention(decider)}.",
        link,
    )


def restore_outcome_note(state: str, detail: str) -> dict:
    if state == "succeeded":
        return thread_note(f":arrows_counterclockwise: Restore started: {escape(detail)}")
    return thread_note(f":x: Restore {escape(state)}: {escape(detail)}")


def restore_outcome_notice(req, state: str, detail: str, link: str | None) -> dict:
    if state == "succeeded":
        text = (
            f":arrows_counterclockwise: Restore #{req.id} started: *{escape(req.server_name)}* "
            f"is being restored from *{escape(req.snapshot_name)}*."
        )
    else:
        text = (
            f":x: Restore #{req.id} of *{escape(req.server_name)}* {escape(state)}: "
            f"{escape(detail)}"
        )
    return incident_notice(text, link)


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


def request_expired_notice(req, link: str | None) -> dict:
    return incident_notice(
        f":hourglass: Restore request #{req.id} of *{escape(req.server_name)}* expired undecided.",
        link,
    )


def request_unposted(req, error: str) -> dict:
    """To the requester, directly: their request never reached its channel."""
    return error_mrkdwn(
        f"Your restore request #{req.id} ({escape(req.server_name)} from "
        f"{escape(req.snapshot_name)}) was cancelled: " + cannot_post(error, req.channel)
    )


def request_unposted_notice(req, error: str) -> dict:
    return incident_notice(
        f":x: Restore request #{req.id} of *{escape(req.server_name)}* was cancelled: Slack "
        f"refused its message in <#{escape(req.channel)}> ({escape(error)}). Nothing was changed.",
        None,
    )


def snapshot_ended_notice(watch, status: str) -> dict:
    return incident_notice(
        f":x: Snapshot *{escape(watch.snapshot_name)}* of *{escape(watch.server_name)}* ended "
        f"as {escape(status)}.",
        None,
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


def restore_finished_notice(watch, status: str, took: str, link: str | None) -> dict:
    if status != "restoring":
        text = (
            f":white_check_mark: Restore #{watch.request_id} of *{escape(watch.server_name)}* "
            f"finished: the server is `{escape(status)}`."
        )
    else:
        text = (
            f":warning: Restore #{watch.request_id} of *{escape(watch.server_name)}* is still "
            f"restoring after {escape(took)}; snapbot stops following it."
        )
    return incident_notice(text, link)


def provider_down_notice(problem: str) -> dict:
    return incident_notice(
        f":warning: snapbot cannot reach the provider ({escape(problem)}); snapshot updates "
        "are delayed until it answers again.",
        None,
    )


def provider_back_notice() -> dict:
    return incident_notice(":white_check_mark: The provider answers again; updates resume.", None)


def checkpoint_notice(reason: str, count: int, head: str) -> dict:
    return incident_notice(
        f":lock: Audit checkpoint ({escape(reason)}): `{count}:{escape(head)}` — verify with "
        f"`snapbot audit verify --checkpoint {count}:{escape(head)}`",
        None,
    )


# --- audit and pending -------------------------------------------------------------------------


# The whole list's text: well inside what Slack accepts in one message's blocks.
AUDIT_TEXT_BUDGET = 11_000


def audit_list(events: Sequence) -> dict:
    if not events:
        return text_message("The audit log is empty.")
    icon = {"ok": ":white_check_mark:", "denied": ":no_entry:", "error": ":x:"}
    lines = []
    for e in events:
        actor = mention(e.actor) if e.actor else "snapbot"
        target = f" `{escape(e.target)}`" if e.target else ""
        detail = f" — {escape(clip(e.detail, 120))}" if e.detail else ""
        lines.append(
            f"{icon.get(e.outcome, '')} #{e.id} {when(e.at)} {actor} *{escape(e.action)}*{target}{detail}"
        )
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"Audit log — last {len(events)} event(s)"))
    ]
    chunk: list[str] = []
    total = 0
    for line in lines:  # pack lines into sections of at most 3000 characters
        line = clip(line, SECTION_LIMIT - 10)  # one huge line still fits a section alone
        total += len(line) + 1
        if total > AUDIT_TEXT_BUDGET:  # Slack refuses a message whose blocks are too long
            break
        if chunk and (
            sum(len(x) + 1 for x in chunk) + len(line) > SECTION_LIMIT - 10 or len(chunk) >= 40
        ):
            blocks.append(_section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
        if len(blocks) >= MAX_BLOCKS - 2:
            break
    if chunk and len(blocks) < MAX_BLOCKS - 1:
        blocks.append(_section("\n".join(chunk)))
    shown = sum(b.text.text.count("\n") + 1 for b in blocks if isinstance(b, SectionBlock))
    if shown < len(lines):
        blocks.append(
            _context(f"{len(lines) - shown} older event(s) not shown; use `snapbot audit export`.")
        )
    return _payload(f"Audit log: last {len(events)} event(s)", blocks)


def pending_list(requests: Sequence, watches: Sequence, now: datetime) -> dict:
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text="Pending work"))]
    if not requests and not watches:
        blocks.append(
            _section("Nothing is pending: no open restore requests, no snapshots being watched.")
        )
    req_lines = [
        f"#{r.id} {r.state}: restore *{escape(r.server_name)}* from *{escape(r.snapshot_name)}* "
        f"(id `{r.snapshot_id}`), asked by {mention(r.requester)}"
        + (f", expires {when(r.expires_at)}" if r.state == "pending" else "")
        for r in requests
    ]
    watch_lines = [
        f"{'snapshot' if w.kind == 'snapshot' else 'restore of'} *{escape(w.snapshot_name)}* on "
        f"*{escape(w.server_name)}*: {escape(w.last_status)} for {span(now - w.started_at)}"
        for w in watches
    ]
    if req_lines:
        blocks.append(_section(clip("*Restore requests*\n" + "\n".join(req_lines), SECTION_LIMIT)))
    if watch_lines:
        blocks.append(_section(clip("*Watched*\n" + "\n".join(watch_lines), SECTION_LIMIT)))
    return _payload(f"{len(requests)} open request(s), {len(watches)} watched", blocks)
