"""The provider's snapshot API: client, models, errors (the simulator is imported apart)."""

from bot.vps.client import DEFAULT_DEADLINE, DEFAULT_RETRIES, DEFAULT_TIMEOUT, VpsClient
from bot.vps.errors import (
    VpsAuthError,
    VpsBadRequest,
    VpsError,
    VpsNotFound,
    VpsUnavailable,
)
from bot.vps.models import RestoreResult, Server, ServerState, Snapshot

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "RestoreResult",
    "Server",
    "ServerState",
    "Snapshot",
    "VpsAuthError",
    "VpsBadRequest",
    "VpsClient",
    "VpsError",
    "VpsNotFound",
    "VpsUnavailable",
]
