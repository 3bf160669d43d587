"""The provider client's retry policy, run by stamina.

`CallPolicy.run` makes at most `attempts` attempts of one call, all within `deadline`
seconds. Only a `Failure` (5xx, 429, timeout, connection failure, unreadable answer)
is worth another attempt, and for a write only one that was never sent (a failed
connect, a 429): a write whose request may have been applied is never sent again.
The wait before each retry is capped exponential backoff with full jitter, uniform in
[0, min(cap, base * 2**(n-1))]; stamina waits it (none in stamina's test mode,
`stamina.set_testing`). A retry whose wait would end past the deadline is not made.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import stamina

from bot.vps.errors import VpsUnavailable
from bot.vps.transport import Failure

logger = logging.getLogger("bot.vps.client")  # the client's log, as it was before the split

T = TypeVar("T")


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """The wait after failed attempt number `attempt` (1-based)."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(0, ceiling) if ceiling > 0 else 0.0


class CallPolicy:
    """One call's retries: which failure is retried, how long to wait, when to stop."""

    def __init__(
        self,
        method: str,
        path: str,
        *,
        retries: int,
        deadline: float,
        retry_after_send: bool,
        backoff: tuple[float, float],
    ) -> None:
        self.method = method
        self.path = path
        self.retries = retries
        self.deadline = deadline
        self.retry_after_send = retry_after_send
        self.backoff = backoff
        self.started = time.monotonic()
        self.failures = 0
        #: A write was sent at least once without an answer: it may have been applied.
        self.maybe_applied = False

    def remaining(self) -> float:
        return self.deadline - (time.monotonic() - self.started)

    def run(self, attempt: Callable[[], T]) -> T:
        """`attempt()` until it returns, as the policy allows; VpsUnavailable at the end."""
        try:
            for trial in stamina.retry_context(
                on=self._retry_after,
                attempts=self.retries + 1,
                timeout=None,  # the deadline is kept by _retry_after, wait included
            ):
                with trial:
                    return attempt()
        except Failure as failure:
            raise VpsUnavailable(
                f"The provider API is unreachable or failing ({failure.detail})"
                + ("; nothing was changed." if not self.maybe_applied else "."),
                status=failure.status,
                nothing_changed=not self.maybe_applied,
                detail=failure.detail,
            ) from failure
        raise AssertionError("stamina ended without an attempt")  # pragma: no cover

    def _retry_after(self, exc: Exception) -> bool | float:
        """stamina's backoff hook: False to stop, else the seconds to wait first."""
        if not isinstance(exc, Failure):
            return False  # an answer (a refusal, not found, ...): never retried
        self.failures += 1
        self.maybe_applied = self.maybe_applied or (exc.sent and self.method != "GET")
        if exc.sent and not self.retry_after_send:
            return False
        if self.failures > self.retries:
            return False
        delay = full_jitter(self.failures, *self.backoff)
        if time.monotonic() - self.started + delay >= self.deadline:
            return False
        logger.warning(
            "%s %s failed (%s); retry %d of %d in %.2f s",
            self.method,
            self.path,
            exc.detail,
            self.failures,
            self.retries,
            delay,
            extra={"retry_delay": delay},
        )
        return delay
