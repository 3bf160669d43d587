from __future__ import annotations

import re

from slack_bolt import Ack, App, BoltContext

from bot.blocks import ids


def action_payload(body: dict, action: dict) -> dict:
    container = body.get("container") or {}
    channel_info = body.get("channel") or {}
    channel = channel_info.get("id") or container.get("channel_id", "")
    return {
        "action_id": str(action.get("action_id", ""))[:255],
        "value": str(action.get("value", ""))[:2000],
        "user": (body.get("user") or {}).get("id", ""),
        "channel": channel,
        "channel_name": name if isinstance(name := channel_info.get("name"), str) else "",
        "team": (body.get("team") or {}).get("id", "")
        or (body.get("user") or {}).get("team_id", ""),
        "response_url": body.get("response_url"),
        "trigger_id": body.get("trigger_id"),
        "message_ts": container.get("message_ts") or (body.get("message") or {}).get("ts"),
    }


def register(app: App, services) -> None:
    def on_button(ack: Ack, body: dict, action: dict, context: BoltContext) -> None:
        services.accept(
            "action", action_payload(body, action), delivery_key=context.get("delivery_key")
        )
        ack()

    for action_id in ids.ACTION_IDS:
        app.action(action_id)(on_button)
    # Anything else (a stale message, a forged payload) is still answered and audited.
    app.action(re.compile(r".*"))(on_button)
