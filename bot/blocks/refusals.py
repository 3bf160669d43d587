"""The text of every refusal: why snapbot did nothing, and what to do instead.

Builders here return a sentence (``str``) when the caller decides how to send it
(an ephemeral answer, a modal error, a DM) and a payload when the refusal is always
sent the same way.
"""

from __future__ import annotations

from bot.blocks.answers import error_message, error_mrkdwn
from bot.blocks.format import escape, mention

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
