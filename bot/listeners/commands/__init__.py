from __future__ import annotations

from slack_bolt import Ack, App, BoltContext

from bot.blocks.answers import WORKING, error_message
from bot.blocks.help import usage_message
from bot.core import commands as cmd
from bot.listeners import inbound
from bot.services import auditing, dispatch, door
from bot.services.actors import Actor
from bot.services.deps import Deps

COMMAND = "/snapshot"


def command_payload(body: dict) -> dict:
    return {
        "text": inbound.typed(str(body.get("text") or "")),
        "user": body.get("user_id", ""),
        "channel": body.get("channel_id", ""),
        # A DM is told by its name as much as its id (bot/core/conversations.py).
        "channel_name": body.get("channel_name", ""),
        "team": body.get("team_id", ""),
        # A command names only the user's own team (and Grid org): the door compares it
        # with the installing team from auth.test (SPEC 13.5).
        "user_team": body.get("team_id", ""),
        "enterprise": body.get("enterprise_id", ""),
        "home_team": body.get("team_id", ""),
        "response_url": body.get("response_url"),
        "trigger_id": body.get("trigger_id"),
    }


def register(app: App, deps: Deps) -> None:
    @app.command(COMMAND)
    def snapshot_command(ack: Ack, body: dict, context: BoltContext) -> None:
        payload = command_payload(body)
        if bad := inbound.controls_in(payload):
            auditing.record(
                deps,
                Actor.from_payload(inbound.without_controls(payload)),
                "command.refused",
                "denied",
                detail=inbound.refusal_detail(bad),
                delivery_key=context.get("delivery_key"),
            )
            ack(**error_message(inbound.REFUSED))
            return
        parsed = cmd.parse(payload["text"])
        # Someone the door turns away is not answered here: the job is, at the door.
        if (
            isinstance(parsed, cmd.Help | cmd.UsageError)
            and door.turned_away(deps, payload) is None
        ):
            # Pure and instant: answered in the ack itself.
            problem = parsed.message if isinstance(parsed, cmd.UsageError) else None
            auditing.record(
                deps,
                Actor.from_payload(payload),
                "command.invalid" if problem else "command.help",
                "denied" if problem else "ok",
                detail=problem or "",
                delivery_key=context.get("delivery_key"),
            )
            ack(**usage_message(cmd.USAGE, problem))
            return
        # Parsed once, here: the job carries the canonical command, not the text.
        kind, command = dispatch.command_job(parsed)
        door.accept(
            deps,
            kind,
            {**payload, "command": command},
            delivery_key=context.get("delivery_key"),
            urgent=isinstance(parsed, cmd.OpenCreateModal),
        )
        working = WORKING.get(type(parsed))
        if working:
            ack(text=f":hourglass_flowing_sand: {working}")
        else:
            ack()
