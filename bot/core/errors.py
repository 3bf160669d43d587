"""Domain errors: refusals a user can act on, as data. The provider's own errors live
in bot/vps/errors.py; bot/user_messages.py turns both into what the user reads (the
wording of these is bot/blocks/refusals.py ``refusal_text``).

    SnapbotError
     ├── NotAllowed          the actor is not on the list; says who may instead
     ├── LimitReached        5 snapshots on the server already; names the oldest
     └── NotRestorable       the snapshot is not completed (or is gone)
"""

from __future__ import annotations

from bot.core.authz import Allowed


class SnapbotError(Exception):
    """A refusal a user can act on; its fields are what the user is told."""


class NotAllowed(SnapbotError):
    def __init__(self, what: str, allowed: Allowed) -> None:
        super().__init__(what, allowed)
        self.what = what  # what the actor may not do, e.g. "request restores"
        self.allowed = allowed  # who may instead


class LimitReached(SnapbotError):
    def __init__(self, server_name: str, oldest_id: int, oldest_name: str, limit: int = 5) -> None:
        super().__init__(server_name, oldest_id, oldest_name, limit)
        self.server_name = server_name
        self.oldest_id = oldest_id
        self.oldest_name = oldest_name
        self.limit = limit


class NotRestorable(SnapbotError):
    """The snapshot is ``status`` (not completed), or gone when ``status`` is None."""

    def __init__(self, snapshot_id: int, name: str | None = None, status: str | None = None):
        super().__init__(snapshot_id, name, status)
        self.snapshot_id = snapshot_id
        self.name = name
        self.status = status
