from __future__ import annotations

from slack_bolt import Ack, App, BoltContext

from bot.blocks import ids
from bot.blocks.refusals import FORM_NOT_VERIFIED
from bot.core import commands as cmd
from bot.listeners import inbound
from bot.listeners.actions import actor_fields
from bot.listeners.views import restore_confirm
from bot.services import auditing, door
from bot.services.actors import Actor
from bot.services.deps import Deps

# Which form field shows a refusal of control characters in each part of the payload.
_FIELD_BLOCKS = {
    "server": ids.CREATE_SERVER_BLOCK,
    "description": ids.CREATE_DESCRIPTION_BLOCK,
}


def _value(state: dict, block: str, action: str) -> str:
    field = (state.get(block) or {}).get(action) or {}
    selected = field.get("selected_option") or {}
    return str(selected.get("value") or field.get("value") or "").strip()


def register(app: App, deps: Deps) -> None:
    restore_confirm.register(app, deps)

    @app.view(ids.CREATE_MODAL)
    def create_submitted(ack: Ack, body: dict, view: dict, context: BoltContext) -> None:
        who = actor_fields(body)
        state = (view.get("state") or {}).get("values") or {}
        server = _value(state, ids.CREATE_SERVER_BLOCK, ids.CREATE_SERVER_ACTION)
        name = _value(state, ids.CREATE_NAME_BLOCK, ids.CREATE_NAME_ACTION)
        description = _value(state, ids.CREATE_DESCRIPTION_BLOCK, ids.CREATE_DESCRIPTION_ACTION)
        submitted = {
            **who,
            "private_metadata": str(view.get("private_metadata") or ""),
            "server": server,
            "name": name,
            "description": description,
        }
        # First of all: nothing with a control character is stored or acted on.
        if bad := inbound.controls_in(submitted):
            clean = inbound.without_controls(submitted)
            auditing.record(
                deps,
                Actor.from_payload(clean),
                "snapshot.create",
                "denied",
                target=f"server:{clean['server']} name:{clean['name']}"[:300],
                detail=inbound.refusal_detail(bad),
                delivery_key=context.get("delivery_key"),
            )
            blocks = {_FIELD_BLOCKS.get(f, ids.CREATE_NAME_BLOCK) for f in bad}
            ack(response_action="errors", errors={b: inbound.REFUSED for b in sorted(blocks)})
            return
        # A submission carries no response_url and nothing else of where the modal was
        # opened: that comes from the private_metadata snapbot sealed when it opened
        # the modal, and only if the seal holds for this user.
        opener = door.opener_of(deps, view.get("private_metadata", ""), who["user"])
        where = who
        if opener is not None:
            where = {
                **who,
                "channel": opener.channel,
                "channel_name": opener.channel_name,
                "response_url": opener.response_url,
            }
        if door.turned_away(deps, where) is not None:
            # Someone the door turns away is told nothing about the form: the job is
            # refused (and audited) at the door, like every other request.
            door.accept(deps, "create_view", where, delivery_key=context.get("delivery_key"))
            ack()
            return
        if opener is None:
            auditing.record(
                deps,
                Actor.from_payload(who),
                "snapshot.create",
                "denied",
                detail="private_metadata not sealed by snapbot",
                delivery_key=context.get("delivery_key"),
            )
            ack(response_action="errors", errors={ids.CREATE_SERVER_BLOCK: FORM_NOT_VERIFIED})
            return
        errors = {}
        parsed = cmd.parse_server(server)
        if isinstance(parsed, cmd.UsageError):
            errors[ids.CREATE_SERVER_BLOCK] = parsed.message
        if (problem := cmd.snapshot_name_problem(name)) is not None:
            errors[ids.CREATE_NAME_BLOCK] = problem
        if errors:
            # Refused in the form itself, yet still a user action: audited as denied.
            auditing.record(
                deps,
                Actor.from_payload(where),
                "snapshot.create",
                "denied",
                target=f"server:{server} name:{name}"[:300],
                detail="invalid form: " + "; ".join(errors.values()),
                delivery_key=context.get("delivery_key"),
            )
            ack(response_action="errors", errors=errors)
            return
        door.accept(
            deps,
            "create_view",
            {**where, "server": server, "name": name, "description": description},
            delivery_key=context.get("delivery_key"),
        )
        ack()
