"""Domain errors: refusals a user can act on. The provider's own errors live in
bot/vps/errors.py; bot/user_messages.py turns both into what the user reads.

    SnapbotError
     ├── NotAllowed          the actor is not on the list; says who may instead
     ├── LimitReached        5 snapshots on the server already; names the oldest
     └── NotRestorable       the snapshot is not completed (or is gone)
"""

from __future__ import annotations


class SnapbotError(Exception):
    """A refusal with a message meant for the user."""


class NotAllowed(SnapbotError):
    def __init__(self, what: str, who_may: str) -> None:
        super().__init__(f"You may not {what}. Who may: {who_may}.")
        self.what = what
        self.who_may = who_may


class LimitReached(SnapbotError):
    def __init__(self, server_name: str, oldest_id: int, oldest_name: str, limit: int = 5) -> None:
        super().__init__(
            f"Server {server_name} already has {limit} snapshots, the provider's limit. "
            f"Delete one first; the oldest is {oldest_name} (id {oldest_id})."
        )
        self.server_name = server_name
        self.oldest_id = oldest_id
        self.oldest_name = oldest_name


class NotRestorable(SnapbotError):
    pass
