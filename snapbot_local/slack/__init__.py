"""A loopback stand-in for the Slack Web API and `response_url`s (see `FakeSlack`).

signing      signed request bodies exactly as Slack sends them (SlackClientSim)
blockkit     the Block Kit limits Slack enforces (and slack_sdk partly skips)
socket_mode  the Socket Mode WebSocket endpoint (FakeSocketMode)
"""

from snapbot_local.slack.fake import (
    DEFAULT_BOT_USER_ID,
    METHOD_SCOPES,
    Call,
    Ephemeral,
    FakeSlack,
    InvalidPayload,
    Message,
    OpenedView,
    ResponsePost,
)

__all__ = [
    "DEFAULT_BOT_USER_ID",
    "METHOD_SCOPES",
    "Call",
    "Ephemeral",
    "FakeSlack",
    "InvalidPayload",
    "Message",
    "OpenedView",
    "ResponsePost",
]
