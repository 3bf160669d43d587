"""The text of every refusal: why snapbot did nothing, and what to do instead.

Builders here return a sentence (``str``) when the caller decides how to send it
(an ephemeral answer, a modal error, a DM) and a payload when the refusal is always
sent the same way. The pure core refuses with data (bot/core/errors.py's exceptions,
bot/core/approval.py's ``Decision``); ``refusal_text`` and ``decision_answer`` are the
one place that data becomes words.
"""

from __future__ import annotations

from bot.blocks.answers import error_message, error_mrkdwn
from bot.blocks.format import escape, mention
from bot.core.approval import Decision, State, Verdict
from bot.core.authz import Allowed, describe_allowed
from bot.core.errors import LimitReached, NotAllowed, NotRestorable, SnapbotError

FORM_NOT_VERIFIED = (
    "snapbot could not verify this form, so it did nothing. Close it and run "
    "`/snapshot create` again."
)


# --- where snapbot cannot post ---------------------------------------------------------------


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


# --- who is asking ---------------------------------------------------------------------------


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


# --- somebody got there first ------------------------------------------------------------------


def delete_taken(snapshot_id: int, state: str, by: str) -> str:
    """The answer to a Delete pressed again (a double click, or a second person)."""
    if state == "deleted":
        return f"Snapshot {snapshot_id} was already deleted by {mention(by)}."
    return f"Snapshot {snapshot_id} is already being deleted by {mention(by)}."


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


# --- a refusal raised by the core (bot/core/errors.py) -----------------------------------------


def refusal_text(exc: SnapbotError) -> str:
    """What the user reads for a domain refusal (mrkdwn for NotAllowed: mentions)."""
    if isinstance(exc, NotAllowed):
        return f"You may not {exc.what}. Who may: {describe_allowed(exc.allowed)}."
    if isinstance(exc, LimitReached):
        return (
            f"Server {exc.server_name} already has {exc.limit} snapshots, the provider's limit. "
            f"Delete one first; the oldest is {exc.oldest_name} (id {exc.oldest_id})."
        )
    if isinstance(exc, NotRestorable):
        if exc.status is None:
            return f"Snapshot {exc.snapshot_id} does not exist."
        return f"Snapshot {exc.name} is {exc.status}; only a completed snapshot can be restored."
    return str(exc)


# --- an Approve or Reject click (bot/core/approval.py) -----------------------------------------

# "already succeeded by X" would name the approver as the one who restored.
_AFTER_APPROVAL = {
    State.APPROVED: "is starting",
    State.SAFEGUARDING: "is waiting for its safety snapshot",
    State.EXECUTING: "is starting",
    State.SUCCEEDED: "has started",
    State.FAILED: "failed",
    State.INTERRUPTED: "was interrupted",
}

_PLAIN_ANSWERS = {
    Verdict.EXPIRED: "This restore request has expired; open a new one.",
    Verdict.APPROVE: "Approved: the restore starts now.",
    Verdict.CANCEL: "Restore request cancelled.",
    Verdict.REJECT: "Restore request rejected.",
}


def decision_answer(decision: Decision) -> str:
    """The clicker's ephemeral answer to a decision (mrkdwn: it mentions people)."""
    verdict = decision.verdict
    if verdict in _PLAIN_ANSWERS:
        return _PLAIN_ANSWERS[verdict]
    if verdict == Verdict.CLOSED:
        return _already_decided(decision)
    if verdict == Verdict.SELF_APPROVAL:
        return "You cannot approve your own restore request: a second person must. " + (
            _who_may_approve(decision.approvers)
        )
    if verdict == Verdict.NOT_APPROVER and decision.rejecting:
        return "You may not reject this restore. The requester, or " + _who_may_approve(
            decision.approvers, lower=True
        )
    if verdict == Verdict.NOT_APPROVER:
        return "You may not approve restores. " + _who_may_approve(decision.approvers)
    if verdict == Verdict.REPEAT:
        return (
            f"You already approved this request; it still needs {decision.missing} more "
            "approval(s)."
        )
    return f"Approval recorded; {decision.missing} more approval(s) needed."  # RECORD


def _already_decided(decision: Decision) -> str:
    state = State(decision.closed_state)
    if decision.lost_race:
        # Another decision won the conditional update a moment ago.
        return f"This request was already {state.value} by {mention(decision.decided_by)}."
    who = f" by <@{decision.decided_by}>" if decision.decided_by else ""
    if state in _AFTER_APPROVAL:
        return f"This request was already approved{who}; the restore {_AFTER_APPROVAL[state]}."
    return f"This request was already {state.value}{who}."


def _who_may_approve(approvers: Allowed, *, lower: bool = False) -> str:
    text = (
        f"Approvers: {describe_allowed(approvers)}"
        if approvers is not None
        else "Anyone but the requester may approve"
    )
    if lower:
        text = text[0].lower() + text[1:]
    return text + "."


# --- what is in the way ------------------------------------------------------------------------


def request_not_found(request_id: int) -> dict:
    """A button naming a restore request that does not exist."""
    return error_message(f"Restore request #{request_id} does not exist.")


def name_taken(server_name: str, name: str) -> dict:
    return error_message(f"Server {server_name} already has a snapshot named {name}.")


def snapshot_in_restore(request_id: int, state: str) -> dict:
    """A delete refused: an active restore request uses the snapshot."""
    return error_message(
        f"Restore request #{request_id} uses this snapshot ({state}); it cannot be deleted now."
    )


def create_interrupted(name: str) -> dict:
    """A resumed create whose first run died before the provider answered, which has
    no such snapshot."""
    return error_message(
        f"snapbot restarted while creating {name}; the provider has no such "
        "snapshot, so nothing was created. Run the command again."
    )


def servers_unlisted(why: str) -> str:
    """The create modal's note when the server list could not be loaded."""
    return f"Could not load the server list ({why}); type an ID or name."


# --- when Slack cannot say who is in a user group ------------------------------------------

# What Slack answers usergroups.users.list for a group that cannot be read at all (the
# configuration is wrong, or the plan has no user groups, not the moment), and the words.
GROUP_GONE = {
    "no_such_subteam": "user group {group} does not exist",
    "plan_upgrade_required": "this workspace's plan has no user groups",
}


def groups_note(gone: dict[str, str], unread: list[str]) -> str:
    """What a refusal adds when it may be due to Slack, not to the person: the groups
    Slack answered a GROUP_GONE error for ({group: error}) and those it did not list
    just now; "" when there are none."""
    notes = sorted({GROUP_GONE[error].format(group=g) for g, error in gone.items()})
    if unread:
        names = ", ".join(f"<!subteam^{g}>" for g in unread)
        notes.append(f"Slack did not say who is in {names} just now; if you are, try again soon")
    return f" ({'; '.join(notes)}.)" if notes else ""
