"""The restore confirmation's submission (SPEC 9.3): the typed server's name, checked
in the ack (bot/services/restores/confirm.py), then queued as the Approve press that
opened the modal."""

from __future__ import annotations

from slack_bolt import Ack, App, BoltContext

from bot.blocks import ids
from bot.listeners import inbound
from bot.listeners.actions import actor_fields
from bot.services import auditing
from bot.services.actors import Actor
from bot.services.deps import Deps
from bot.services.restores import confirm


def register(app: App, deps: Deps) -> None:
    @app.view(ids.RESTORE_CONFIRM_MODAL)
    def confirmation_submitted(ack: Ack, body: dict, view: dict, context: BoltContext) -> None:
        who = actor_fields(body)
        state = (view.get("state") or {}).get("values") or {}
        field = (state.get(ids.RESTORE_CONFIRM_BLOCK) or {}).get(ids.RESTORE_CONFIRM_ACTION) or {}
        typed = inbound.typed(str(field.get("value") or ""))
        metadata = str(view.get("private_metadata") or "")
        if bad := inbound.controls_in({**who, "private_metadata": metadata, "typed": typed}):
            auditing.record(
                deps,
                Actor.from_payload(inbound.without_controls(who)),
                "restore.approve",
                "denied",
                detail=inbound.refusal_detail(bad),
                delivery_key=context.get("delivery_key"),
            )
            ack(response_action="errors", errors={ids.RESTORE_CONFIRM_BLOCK: inbound.REFUSED})
            return
        ack(
            **confirm.confirmation_submitted(
                deps, who, metadata, typed, delivery_key=context.get("delivery_key")
            )
        )
