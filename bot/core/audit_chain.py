"""The audit log's hash chain (SPEC §7), standard library only.

Each row's ``hash`` covers every other column of the row, ``prev_hash`` included, so
the rows form one line in ``id`` order: editing, deleting, inserting or reordering a
row breaks the line at that row. With ``AUDIT_KEY`` the hash is an HMAC-SHA256, so
write access to the database alone cannot recompute a consistent chain. A chain
cannot show that its newest rows were cut off: a checkpoint (row count and head hash,
posted to Slack) can.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

GENESIS_HASH = "0" * 64
OUTCOMES = ("ok", "denied", "error")


def format_time(at: datetime) -> str:
    if at.tzinfo is None:  # SQLite hands naive datetimes back; they were stored as UTC
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(
    id: int,
    at: datetime,
    team: str,
    channel: str,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    detail: str,
    prev_hash: str,
) -> bytes:
    fields = [id, format_time(at), team, channel, actor, action, target, outcome, detail, prev_hash]
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode()


def row_hash(payload: bytes, key: bytes | None) -> str:
    if key:
        return hmac.new(key, payload, hashlib.sha256).hexdigest()
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True, slots=True)
class Broken:
    row_id: int
    why: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    rows: int
    head_hash: str
    broken: Broken | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify_rows(
    rows: Iterable[tuple], key: bytes | None, *, checkpoint: tuple[int, str] | None = None
) -> VerifyResult:
    """Walk rows ``(id, at, team, channel, actor, action, target, outcome, detail,
    prev_hash, hash)`` in id order; stop at the first one that breaks the chain."""
    expected_id = 1
    prev = GENESIS_HASH
    count = 0
    cp_count, cp_hash = checkpoint if checkpoint else (0, "")
    for row in rows:
        rid, at, team, channel, actor, action, target, outcome, detail, prev_hash, h = row
        if rid != expected_id:
            why = "row(s) missing before it" if rid > expected_id else "out of order"
            return VerifyResult(count, prev, Broken(rid, why))
        if prev_hash != prev:
            return VerifyResult(count, prev, Broken(rid, "does not link to the row before"))
        computed = row_hash(
            canonical(rid, at, team, channel, actor, action, target, outcome, detail, prev_hash),
            key,
        )
        if not hmac.compare_digest(computed, h):
            return VerifyResult(count, prev, Broken(rid, "contents changed (hash mismatch)"))
        if rid == cp_count and h != cp_hash:
            return VerifyResult(count, prev, Broken(rid, "does not match the checkpoint"))
        prev = h
        count += 1
        expected_id += 1
    if checkpoint and count < cp_count:
        return VerifyResult(
            count, prev, Broken(count + 1, f"log ends at row {count}, checkpoint has {cp_count}")
        )
    return VerifyResult(count, prev, None)


def parse_checkpoint(text: str) -> tuple[int, str]:
    """``COUNT:HASH`` -> (count, hash); ValueError on anything else."""
    count_s, sep, h = text.strip().partition(":")
    if not sep or not count_s.isascii() or not count_s.isdigit():
        raise ValueError("checkpoint must be COUNT:HASH")
    h = h.lower()
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise ValueError("checkpoint hash must be 64 hex digits")
    return int(count_s), h
