"""Where a request came from, as Slack describes the conversation.

A DM or group DM between people is a place the bot cannot post in (Slack answers
`channel_not_found`), and inviting it there is not possible: anything that needs a
channel message is refused there at once (SPEC 13.4).
"""

from __future__ import annotations


def is_direct_message(channel_id: str, channel_name: str = "") -> bool:
    """A DM (`D…`, named `directmessage`) or group DM (named `mpdm-…`; old group DMs
    have `G…` ids, like old private channels, so only the name tells them apart)."""
    name = (channel_name or "").lower()
    return (channel_id or "").startswith("D") or name == "directmessage" or name.startswith("mpdm-")
