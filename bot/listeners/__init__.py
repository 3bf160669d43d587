"""Thin Bolt listeners, one folder per Slack surface. Each one stores the request
as a job of one kind (durable from then on, bot/services/dispatch.py) and
acknowledges it; the work runs after ack()."""

from __future__ import annotations

from slack_bolt import App

from bot.listeners import actions, commands, views
from bot.services.deps import Deps


def register_listeners(app: App, deps: Deps) -> None:
    commands.register(app, deps)
    actions.register(app, deps)
    views.register(app, deps)
