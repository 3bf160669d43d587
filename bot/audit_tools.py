"""`snapbot audit verify` and `snapbot audit export`: read the chain, streaming."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime
from typing import TextIO

from sqlalchemy import Engine

from bot.core import audit_chain
from storage import repositories as repo
from storage.db import session_scope

EXPORT_FIELDS = (
    "id",
    "at",
    "team",
    "channel",
    "actor",
    "action",
    "target",
    "outcome",
    "detail",
    "prev_hash",
    "hash",
)


def verify(
    engine: Engine, key: bytes | None, *, checkpoint: tuple[int, str] | None = None
) -> audit_chain.VerifyResult:
    result = audit_chain.verify_rows(repo.stream_audit_rows(engine), key, checkpoint=checkpoint)
    if result.ok:
        # The head row must agree with the last row: rows cut from the end while the
        # head was left alone show up here even without a checkpoint.
        with session_scope(engine, readonly=True) as s:
            count, head = repo.audit_head(s)
        if (count, head) != (result.rows, result.head_hash):
            return audit_chain.VerifyResult(
                result.rows,
                result.head_hash,
                audit_chain.Broken(
                    result.rows + 1, f"the chain head says {count} rows, the log has {result.rows}"
                ),
            )
    return result


def export_rows(
    engine: Engine, *, since: datetime | None = None, actor: str | None = None
) -> Iterator[dict]:
    for row in repo.stream_audit_rows(engine, since=since, actor=actor):
        record = dict(zip(EXPORT_FIELDS, row, strict=True))
        record["at"] = audit_chain.format_time(record["at"])
        yield record


def export(
    engine: Engine,
    out: TextIO,
    *,
    fmt: str = "jsonl",
    since: datetime | None = None,
    actor: str | None = None,
) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for record in export_rows(engine, since=since, actor=actor):
            writer.writerow(record)
            count += 1
    else:
        for record in export_rows(engine, since=since, actor=actor):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
