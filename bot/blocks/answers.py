"""One-section answers: a sentence, or a refusal or failure (its wording is the
caller's, from bot/blocks/refusals.py or the provider's translation)."""

from __future__ import annotations

from bot.blocks.format import escape
from bot.blocks.kit import payload, section
from bot.core import commands as cmd


def text_message(mrkdwn: str) -> dict:
    """A sentence already in mrkdwn: any user or provider text in it is escaped."""
    return payload(mrkdwn, [section(mrkdwn)])


def error_message(text: str) -> dict:
    """A refusal or failure in plain text (it may quote the provider or the user)."""
    return payload(escape(text), [section(f":x: {escape(text)}")])


def error_mrkdwn(mrkdwn: str) -> dict:
    """A refusal or failure snapbot wrote in mrkdwn (a channel link, who may act), any
    user or provider text in it escaped already."""
    return payload(mrkdwn, [section(f":x: {mrkdwn}")])


# What the ack says while a command's work runs after it (the answer follows), by command.
WORKING = {
    cmd.ListSnapshots: "Listing snapshots…",
    cmd.CreateSnapshot: "Creating the snapshot…",
    cmd.RequestRestore: "Opening a restore request…",
    cmd.DeleteSnapshot: "Looking the snapshot up…",
}
