"""The shared collaborators of every use case, built once per process
(bot/runtime.py ``make_deps``); no use case constructs its own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from slack_sdk import WebClient
from sqlalchemy import Engine

from bot.config import Settings
from bot.core import approval
from bot.jobs import JobRunner
from bot.outbox import Outbox
from bot.services.actors import GroupCache
from bot.vps.client import VpsClient


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Installed:
    """The workspace (and Enterprise Grid org) the bot is installed in, from auth.test
    at start-up; ``team`` None: not known yet (bot/services/door.py asks again)."""

    team: str | None = None
    enterprise: str | None = None
    next_try: float = 0.0  # time.monotonic() of the next auth.test, while unknown
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    engine: Engine
    vps: VpsClient
    slack: WebClient
    outbox: Outbox
    jobs: JobRunner
    groups: GroupCache
    policy: approval.Policy
    owner: str  # who holds a lease or claims a job (bot/runtime.py make_owner_id)
    audit_key: bytes | None  # the audit chain's HMAC key (SNAPBOT_AUDIT_KEY)
    metadata_key: bytes  # seals a modal's private_metadata (bot/core/view_metadata.py)
    installed: Installed
    clock: Callable[[], datetime] = utcnow
