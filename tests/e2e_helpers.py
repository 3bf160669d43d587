"""Helpers for end-to-end tests over the loopback stack."""

from __future__ import annotations

from bot.blocks import ids
from snapbot_local.stack import INCIDENT_CHANNEL, LocalStack
from tests.conftest import wait_until


def texts(stack: LocalStack, user: str | None = None) -> list[str]:
    """Everything a user was told ephemerally (response_url posts and postEphemeral)."""
    return [e.text or "" for e in stack.slack.ephemerals(user=user)]


def wait_for_ephemeral(stack: LocalStack, user: str, needle: str, timeout: float = 10.0) -> str:
    def find():
        return next((t for t in texts(stack, user) if needle in t), None)

    return wait_until(
        find, timeout, what=f"an ephemeral to {user} containing {needle!r}: {texts(stack, user)}"
    )


def channel_messages(stack: LocalStack, channel: str = "C1"):
    return [m for m in stack.slack.messages(channel) if not m.is_reply]


def wait_for_message(stack: LocalStack, needle: str, channel: str = "C1", timeout: float = 10.0):
    def find():
        return next((m for m in channel_messages(stack, channel) if needle in (m.text or "")), None)

    return wait_until(find, timeout, what=f"a message in {channel} containing {needle!r}")


def wait_for_reply(stack: LocalStack, parent, needle: str, timeout: float = 10.0):
    def find():
        return next(
            (m for m in stack.slack.thread(parent.channel, parent.ts) if needle in (m.text or "")),
            None,
        )

    return wait_until(find, timeout, what=f"a reply under {parent.ts} containing {needle!r}")


def incident_texts(stack: LocalStack) -> list[str]:
    return [m.text or "" for m in stack.slack.messages(INCIDENT_CHANNEL)]


def restore_calls(stack: LocalStack) -> int:
    return stack.sim.state.calls["POST snapshots/{id}/restore/"]


def provider_writes(stack: LocalStack) -> int:
    calls = stack.sim.state.calls
    return sum(n for k, n in calls.items() if k.startswith(("POST", "DELETE")))


def request_message(stack: LocalStack, channel: str = "C1"):
    return wait_for_message(stack, "Restore request #", channel)


def fresh(stack: LocalStack, message):
    return stack.slack.message(message.channel, message.ts)


__all__ = ["ids"]
