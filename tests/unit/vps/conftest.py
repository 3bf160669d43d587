"""stamina's test mode for the provider client's unit tests: every attempt the policy
allows is made (cap=True keeps each call's own count), without waiting between them.
The waits the policy chose are still seen: `sleeps` collects them from the log."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import stamina


@pytest.fixture(autouse=True)
def no_waits_between_retries() -> Iterator[None]:
    with stamina.set_testing(True, attempts=1000, cap=True):
        yield


class _Delays(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.delays: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "retry_delay"):
            self.delays.append(record.retry_delay)


@pytest.fixture
def sleeps() -> Iterator[list[float]]:
    """The wait the client chose before each retry, in order."""
    handler = _Delays()
    log = logging.getLogger("bot.vps.client")
    log.addHandler(handler)
    try:
        yield handler.delays
    finally:
        log.removeHandler(handler)
