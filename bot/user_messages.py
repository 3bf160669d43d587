"""The one translation from errors to what the user reads (SPEC §8)."""

from __future__ import annotations

from bot.blocks.refusals import refusal_text
from bot.core.errors import SnapbotError
from bot.vps.errors import (
    VpsAuthError,
    VpsBadRequest,
    VpsInconsistent,
    VpsNotFound,
    VpsUnavailable,
)

INTERNAL = "Something went wrong inside snapbot; the error was logged and nothing more was done."


def describe(exc: BaseException) -> str:
    if isinstance(exc, VpsAuthError):
        return "The provider rejected the bot's API token; an admin must fix `VPS_API_TOKEN`."
    if isinstance(exc, VpsNotFound):
        kind = getattr(exc, "kind", "snapshot") or "snapshot"
        return f"{kind.capitalize()} {getattr(exc, 'ident', '')} does not exist."
    if isinstance(exc, VpsBadRequest):
        return f"The provider refused: {exc.reason}"
    if isinstance(exc, VpsInconsistent):
        return str(exc)
    if isinstance(exc, VpsUnavailable):
        if getattr(exc, "nothing_changed", True):
            return "The provider is unreachable or failing right now; nothing was changed. Try again shortly."
        # A write was sent and not confirmed (5xx, timeout, dropped connection): it
        # is never re-sent, and the user must look before trying again.
        detail = f" ({exc.detail})" if getattr(exc, "detail", "") else ""
        return (
            f"The provider is unreachable or failing{detail} and did not confirm the "
            "request, so its outcome is unknown. Check `/snapshot list` before trying again."
        )
    if isinstance(exc, SnapbotError):
        return refusal_text(exc)
    return INTERNAL
