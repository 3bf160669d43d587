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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_str

GENESIS_HASH = "0" * 64
OUTCOMES = ("ok", "denied", "error")


def format_time(at: datetime | str) -> str:
    """``2025-01-15T18:30:00.000000Z``. ``at`` is a datetime, or the UTC text
    ``2025-01-15 18:30:00.000000`` that storage reads without parsing (verify's fast path)."""
    if isinstance(at, str):
        if len(at) == 26 and at[10] == " ":
            return f"{at[:10]}T{at[11:]}Z"
        at = datetime.fromisoformat(at)
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
    """``json.dumps([id, format_time(at), team, channel, actor, action, target, outcome,
    detail, prev_hash], ensure_ascii=True, separators=(",", ":")).encode()``, spelled out
    with the encoder's own string escaping because verify runs it a million times."""
    j = _json_str
    return (
        f"[{int(id)},{j(format_time(at))},{j(team)},{j(channel)},{j(actor)},{j(action)},"
        f"{j(target)},{j(outcome)},{j(detail)},{j(prev_hash)}]"
    ).encode()


_BLOCK = hashlib.sha256().block_size


def hasher(key: bytes | None) -> Callable[[bytes], str]:
    """SHA-256, or HMAC-SHA256 under ``key`` (RFC 2104 with the key pads computed once)."""
    sha256 = hashlib.sha256
    if not key:
        return lambda payload: sha256(payload).hexdigest()
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = sha256(key.translate(hmac.trans_36))
    outer = sha256(key.translate(hmac.trans_5C))

    def digest(payload: bytes) -> str:
        i = inner.copy()
        i.update(payload)
        o = outer.copy()
        o.update(i.digest())
        return o.hexdigest()

    return digest


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
    rows: Iterable[tuple],
    key: bytes | None,
    *,
    checkpoint: tuple[int, str] | None = None,
    start: tuple[int, str] = (1, GENESIS_HASH),
) -> VerifyResult:
    """Walk rows ``(id, at, team, channel, actor, action, target, outcome, detail,
    prev_hash, hash)`` in id order; stop at the first one that breaks the chain.
    ``start`` is (id, prev_hash) of the first row: a stretch of the chain can be walked
    on its own (``rows`` counts that stretch; ``head_hash`` is its last row's hash)."""
    expected_id, prev = start
    count = 0
    cp_count, cp_hash = checkpoint if checkpoint else (0, "")
    digest = hasher(key)
    j = _json_str
    # The hot loop of `snapbot audit verify`: canonical() inlined (same bytes).
    for row in rows:
        rid, at, team, channel, actor, action, target, outcome, detail, prev_hash, h = row
        if rid != expected_id:
            if type(rid) is not int:  # a table rebuilt by hand can hold anything
                return VerifyResult(count, prev, Broken(expected_id, "has no valid id"))
            why = "row(s) missing before it" if rid > expected_id else "out of order"
            return VerifyResult(count, prev, Broken(rid, why))
        if prev_hash != prev:
            return VerifyResult(count, prev, Broken(rid, "does not link to the row before"))
        try:
            if type(at) is str and len(at) == 26 and at[10] == " ":
                when = f"{at[:10]}T{at[11:]}Z"
            else:
                when = format_time(at)
            payload = (
                f"[{rid},{j(when)},{j(team)},{j(channel)},{j(actor)},{j(action)},"
                f'{j(target)},{j(outcome)},{j(detail)},"{prev_hash}"]'
            ).encode()
        except (TypeError, ValueError, AttributeError):  # a NULL, a mangled time: not the bot's
            return VerifyResult(count, prev, Broken(rid, "contents changed (unreadable column)"))
        if digest(payload) != h:
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
