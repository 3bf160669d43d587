"""Safer restores (SPEC 9), as pure functions: the safety snapshot's name, which
snapshot makes room for it on a full server, what to do about that at execution, the
stale-snapshot warning, and the typed confirmation.

The shell (bot/services/restores/safety.py) calls the provider and stores the steps;
everything it decides about them is decided here, from the snapshots as listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

# vps-api.md: at most 5 snapshots per server.
SLOTS_PER_SERVER = 5
SAFETY_PREFIX = "pre-restore-r"
_SAFETY_NAME_RE = re.compile(r"pre-restore-r([0-9]{1,18})")
# The target is flagged as stale when the server has a completed snapshot at least
# this much newer: restoring an old snapshot when a recent one exists is the classic
# 3 a.m. slip (the wrong row of the list).
STALE_AFTER = timedelta(hours=1)


class Listed(Protocol):
    """A snapshot as the provider lists it (bot/vps/models.py ``Snapshot``)."""

    id: int
    name: str
    status: str
    created_at: datetime | None


class Plan(StrEnum):
    """A request's safety-snapshot plan, as announced on it (SPEC 9.1, 9.2)."""

    ON = "on"  # a safety snapshot first
    OFF = "off"  # RESTORE_SAFETY_SNAPSHOT=off (or a request from before SPEC 9)
    OPTED_OUT = "opted_out"  # --no-safety-snapshot


class Step(StrEnum):
    """Where a safeguarding request is (bot/services/restores/safety.py)."""

    EVICT = "evict"  # delete the snapshot the request named, to make room
    CREATE = "create"  # create pre-restore-r<id> (or find it, after a restart)
    WATCH = "watch"  # the watcher polls it until it completes
    READY = "ready"  # it completed: restore


def safety_name(request_id: int) -> str:
    return f"{SAFETY_PREFIX}{request_id}"


def safety_request_of(name: str) -> int | None:
    """The request a safety snapshot was taken for, from its name; None for any other."""
    match = _SAFETY_NAME_RE.fullmatch(name or "")
    return int(match.group(1)) if match else None


def safety_description(request_id: int, target_name: str, target_id: int) -> str:
    return (
        f"snapbot safety snapshot before restore request #{request_id} "
        f"(restoring {target_name}, ID {target_id})"
    )[:500]


class NoRoom(Exception):
    """The server is full and no snapshot may be deleted to make room (SPEC 9.1)."""


def eviction_candidate(
    server_snapshots: Iterable[Listed], target_id: int, pinned: Iterable[int] = ()
) -> Listed | None:
    """The snapshot to delete to make room for the safety snapshot: None when the
    server has a free slot; the oldest completed snapshot that is neither the target
    nor pinned when it is full. Raises NoRoom when it is full and there is none."""
    snapshots = list(server_snapshots)
    if len(snapshots) < SLOTS_PER_SERVER:
        return None
    kept = set(pinned) | {target_id}
    candidates = [s for s in snapshots if s.status == "completed" and s.id not in kept]
    if not candidates:
        raise NoRoom()
    return min(candidates, key=lambda s: (s.created_at is None, s.created_at or datetime.max, s.id))


class Eviction(StrEnum):
    """What the execution does about room for the safety snapshot (SPEC 9.4)."""

    NONE = "none"  # a slot is free: go on to the create
    DELETE = "delete"  # delete the named snapshot, then create
    CHANGED = "changed"  # full, and the named snapshot is not there to delete: fail


def eviction_at_execution(server_snapshots: Iterable[Listed], named_id: int | None) -> Eviction:
    """Only the snapshot the request named is ever deleted, and only when needed."""
    snapshots = list(server_snapshots)
    if len(snapshots) < SLOTS_PER_SERVER:
        return Eviction.NONE
    if named_id is not None and any(s.id == named_id for s in snapshots):
        return Eviction.DELETE
    return Eviction.CHANGED


def find_safety_snapshot(server_snapshots: Iterable[Listed], request_id: int) -> Listed | None:
    """The request's safety snapshot if the provider lists it (a create interrupted
    before its answer was stored is found here, never sent twice: SPEC 9.5)."""
    name = safety_name(request_id)
    found = [s for s in server_snapshots if s.name == name]
    return max(found, key=lambda s: s.id) if found else None


def newer_snapshot(
    server_snapshots: Sequence[Listed], target: Listed, *, stale_after: timedelta = STALE_AFTER
) -> Listed | None:
    """The server's newest completed snapshot when it is much newer than the target
    (the approver should see it named), else None."""
    if target.created_at is None:
        return None
    newer = [
        s
        for s in server_snapshots
        if s.id != target.id
        and s.status == "completed"
        and s.created_at is not None
        and s.created_at - target.created_at >= stale_after
    ]
    return max(newer, key=lambda s: s.created_at) if newer else None


def confirmation_matches(typed: str | None, server_name: str) -> bool:
    """The typed confirmation (SPEC 9.3): the server's name, surrounding spaces ignored."""
    return bool(server_name) and (typed or "").strip() == server_name
