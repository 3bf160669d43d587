"""stamina's test mode for the job queue's unit tests: every try the queue allows is
made (cap=True keeps its own count), without waiting between them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stamina


@pytest.fixture(autouse=True)
def no_waits_between_retries() -> Iterator[None]:
    with stamina.set_testing(True, attempts=1000, cap=True):
        yield
