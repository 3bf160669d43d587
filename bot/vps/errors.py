"""Errors raised by the provider client.

One tree, so callers can catch as broadly or as narrowly as they need:

    VpsError                 anything the provider API did wrong or refused (.status)
    ├── VpsAuthError         401/403: the provider rejected the bot's API token
    ├── VpsNotFound          404: the snapshot or server does not exist (.kind, .ident)
    ├── VpsBadRequest        400 and other refusals: the provider's own reason (.reason)
    └── VpsUnavailable       5xx, timeout, connection refused, unreadable answer
        │                    (.nothing_changed: False when a write may have been applied)
        └── VpsInconsistent  an answer that contradicts itself (one snapshot id listed
                             on two servers): nothing can be acted on safely

`str()` of every error is a short English sentence meant for logs; what the user
reads comes from `bot.user_messages.describe()`, the one translation of errors.
None of them ever carries the API token or the Authorization header: the client
builds them from the method, the path and the provider's reason only (and redacts
the token should the provider echo it).
"""

from __future__ import annotations

from typing import Literal

NotFoundKind = Literal["snapshot", "server"]


class VpsError(Exception):
    """Base class: the provider API refused, failed or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"


class VpsAuthError(VpsError):
    """The provider rejected the bot's API token (401, or 403 for a token without rights)."""

    def __init__(self, message: str | None = None, *, status: int | None = 401) -> None:
        super().__init__(
            message
            or f"The provider rejected the bot's API token (HTTP {status}); "
            "an admin must fix VPS_API_TOKEN.",
            status=status,
        )


class VpsNotFound(VpsError):
    """The snapshot or server named in the request does not exist."""

    def __init__(
        self,
        kind: NotFoundKind,
        ident: int | str,
        message: str | None = None,
        *,
        status: int | None = 404,
    ) -> None:
        super().__init__(message or f"{kind.capitalize()} {ident} does not exist.", status=status)
        self.kind = kind
        self.ident = ident


class VpsBadRequest(VpsError):
    """The provider refused the request; `reason` is its own message, verbatim."""

    def __init__(self, reason: str, *, status: int | None = 400) -> None:
        super().__init__(f"The provider refused the request: {reason}", status=status)
        self.reason = reason


class VpsUnavailable(VpsError):
    """The provider is unreachable, failing, too slow, or answered something unreadable.

    `nothing_changed` is True when the provider certainly did not apply anything
    (every read, and a write that was never sent). It is False when a write was sent
    and its outcome is unknown: the caller must look before trying again.
    `detail` says what went wrong in a few words ("HTTP 503", "timed out").
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        nothing_changed: bool = True,
        detail: str = "",
    ) -> None:
        super().__init__(
            message or "The provider API is unreachable or failing; nothing was changed.",
            status=status,
        )
        self.nothing_changed = nothing_changed
        self.detail = detail


class VpsInconsistent(VpsUnavailable):
    """The provider's answer contradicts itself; `str()` says how. Nothing was changed."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, status=status, detail="inconsistent answer")
