"""The create modal's submission: refused in the form, at the door, or
accepted as a create job."""

from __future__ import annotations

from slack_bolt import Ack, App, BoltContext

from bot.blocks import ids
from bot.blocks.refusals import FORM_NOT_VERIFIED
from bot.core import commands as cmd
from bot.core import view_metadata
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
        _create_submitted(deps, ack, body, view, context.get("delivery_key"))


def _create_submitted(deps: Deps, ack: Ack, body: dict, view: dict, key: str | None) -> None:
    """The create modal, submitted: refused in the form, at the door, or accepted."""
    who = actor_fields(body)
    submitted = _submission(who, view)
    # First of all: nothing with a control character is stored or acted on.
    if _refused_controls(deps, ack, submitted, key):
        return
    # A submission carries no response_url and nothing else of where the modal was
    # opened: that comes from the private_metadata snapbot sealed when it opened
    # the modal, and only if the seal holds for this user.
    opener = door.opener_of(deps, view.get("private_metadata", ""), who["user"])
    where = _opened_where(who, opener)
    if door.turned_away(deps, where) is not None:
        # Someone the door turns away is told nothing about the form: the job is
        # refused (and audited) at the door, like every other request.
        door.accept(deps, "create_view", where, delivery_key=key)
        ack()
        return
    if opener is None:
        auditing.record(
            deps,
            Actor.from_payload(who),
            "snapshot.create",
            "denied",
            detail="private_metadata not sealed by snapbot",
            delivery_key=key,
        )
        ack(response_action="errors", errors={ids.CREATE_SERVER_BLOCK: FORM_NOT_VERIFIED})
        return
    server, name = submitted["server"], submitted["name"]
    if _refused_invalid(deps, ack, where, server, name, key):
        return
    door.accept(
        deps,
        "create_view",
        {**where, "server": server, "name": name, "description": submitted["description"]},
        delivery_key=key,
    )
    ack()


def _submission(who: dict, view: dict) -> dict:
    """The submitter's fields and the form's, as typed."""
    state = (view.get("state") or {}).get("values") or {}
    return {
        **who,
        "private_metadata": str(view.get("private_metadata") or ""),
        "server": _value(state, ids.CREATE_SERVER_BLOCK, ids.CREATE_SERVER_ACTION),
        "name": _value(state, ids.CREATE_NAME_BLOCK, ids.CREATE_NAME_ACTION),
        "description": _value(state, ids.CREATE_DESCRIPTION_BLOCK, ids.CREATE_DESCRIPTION_ACTION),
    }


def _refused_controls(deps: Deps, ack: Ack, submitted: dict, key: str | None) -> bool:
    """A control character anywhere: audited as denied and shown on its field (True)."""
    if not (bad := inbound.controls_in(submitted)):
        return False
    clean = inbound.without_controls(submitted)
    auditing.record(
        deps,
        Actor.from_payload(clean),
        "snapshot.create",
        "denied",
        target=f"server:{clean['server']} name:{clean['name']}"[:300],
        detail=inbound.refusal_detail(bad),
        delivery_key=key,
    )
    blocks = {_FIELD_BLOCKS.get(f, ids.CREATE_NAME_BLOCK) for f in bad}
    ack(response_action="errors", errors={b: inbound.REFUSED for b in sorted(blocks)})
    return True


def _opened_where(who: dict, opener: view_metadata.Opener | None) -> dict:
    """The submitter, in the conversation the sealed opener says the modal was opened in."""
    if opener is None:
        return who
    return {
        **who,
        "channel": opener.channel,
        "channel_name": opener.channel_name,
        "response_url": opener.response_url,
    }


def _refused_invalid(
    deps: Deps, ack: Ack, where: dict, server: str, name: str, key: str | None
) -> bool:
    """A server or name the form cannot take: shown on its field, audited as denied."""
    errors = {}
    parsed = cmd.parse_server(server)
    if isinstance(parsed, cmd.UsageError):
        errors[ids.CREATE_SERVER_BLOCK] = parsed.message
    if (problem := cmd.snapshot_name_problem(name)) is not None:
        errors[ids.CREATE_NAME_BLOCK] = problem
    if not errors:
        return False
    # Refused in the form itself, yet still a user action: audited as denied.
    auditing.record(
        deps,
        Actor.from_payload(where),
        "snapshot.create",
        "denied",
        target=f"server:{server} name:{name}"[:300],
        detail="invalid form: " + "; ".join(errors.values()),
        delivery_key=key,
    )
    ack(response_action="errors", errors=errors)
    return True
