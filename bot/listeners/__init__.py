"""Thin Bolt listeners, one folder per Slack surface. Each one stores the request
as a job (durable from then on) and acknowledges it; the work runs after ack()."""

from __future__ import annotations

from slack_bolt import App

from bot.listeners import actions, commands, views


def register_listeners(app: App, services) -> None:
    commands.register(app, services)
    actions.register(app, services)
    views.register(app, services)
