from __future__ import annotations

import re

from slack_bolt import Ack, App, BoltContext

from bot.blocks import ids
from bot.blocks.answers import error_message
from bot.listeners import inbound
from bot.services import auditing, dispatch, door
from bot.services.actors import Actor
from bot.services.deps import Deps
from bot.services.restores import confirm


def action_payload(body: dict, action: dict) -> dict:
    # Where the button was pressed: the container names the message (and its thread)
    # even when it is ephemeral and Slack sends no `message` (SPEC 14.7 binds on it).
    container = body.get("container") or {}
    channel_info = body.get("channel") or {}
    channel = channel_info.get("id") or container.get("channel_id", "")
    message = body.get("message") or {}
    return {
        "action_id": str(action.get("action_id", ""))[:255],
        "value": str(action.get("value", ""))[:2000],
        **actor_fields(body),
        "channel": channel,
        "channel_name": name if isinstance(name := channel_info.get("name"), str) else "",
        "response_url": body.get("response_url"),
        "trigger_id": body.get("trigger_id"),
        "message_ts": container.get("message_ts") or message.get("ts"),
        "thread_ts": container.get("thread_ts") or message.get("thread_ts"),
    }


def actor_fields(body: dict) -> dict:
    """Who acted, from an interactive payload (a button press or a modal submission),
    with what the door needs to tell another organisation's user (SPEC 13.5): their own
    ``user.team_id`` and the installing team the request came through (a modal opened
    from a Slack Connect channel names the other side in ``team``; Slack then gives
    ours as ``view.app_installed_team_id``)."""
    user = body.get("user") or {}
    team = body.get("team") or {}  # null for org-wide installs
    view = body.get("view") or {}
    home = view.get("app_installed_team_id") or team.get("id") or user.get("team_id") or ""
    return {
        "user": user.get("id", ""),
        "team": team.get("id", "") or user.get("team_id", ""),
        "user_team": user.get("team_id", ""),
        "enterprise": (body.get("enterprise") or {}).get("id") or team.get("enterprise_id") or "",
        "home_team": home,
    }


def register(app: App, deps: Deps) -> None:
    def on_button(ack: Ack, body: dict, action: dict, context: BoltContext) -> None:
        payload = action_payload(body, action)
        if bad := inbound.controls_in(payload):
            # A button's answer goes through response_url: sent before the ack, since
            # Bolt answers Slack only when this function returns.
            auditing.record(
                deps,
                Actor.from_payload(inbound.without_controls(payload)),
                "button.refused",
                "denied",
                detail=inbound.refusal_detail(bad),
                answer=error_message(inbound.REFUSED),
                delivery_key=context.get("delivery_key"),
            )
        else:
            kind = dispatch.button_job(payload["action_id"], payload["value"])
            # An allowed approver's Approve opens the typed confirmation here, inside
            # the trigger_id's 3 s (SPEC 9.3); every other press is queued as it is.
            if kind != "restore.approve" or not confirm.open_confirmation(
                deps, payload, delivery_key=context.get("delivery_key")
            ):
                door.accept(deps, kind, payload, delivery_key=context.get("delivery_key"))
        ack()

    for action_id in ids.ACTION_IDS:
        app.action(action_id)(on_button)
    # Anything else (a stale message, a forged payload) is still answered and audited.
    app.action(re.compile(r".*"))(on_button)
