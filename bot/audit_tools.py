"""`snapbot audit verify` and `snapbot audit export`: read the chain, streaming."""

from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from bot.config import ConfigError, Settings
from bot.core import audit_chain
from storage import repositories as repo
from storage.db import (
    DatabaseUnusable,
    describe_failure,
    has_table,
    make_engine,
    open_database,
    session_scope,
)

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


# Broken.row_id naming the chain head (the audit_head row), not an audit row: those
# are numbered from 1.
HEAD_ROW = 0


def open_audit_log(settings: Settings) -> Engine:
    """The database holding snapbot's audit log, opened without creating anything: a
    database that is not there, or holds no snapbot tables, is a ConfigError naming
    DATABASE_URL (SPEC 13.8), never an empty log reported intact."""
    try:
        engine = open_database(settings.database_url, must_exist=True)
        known = has_table(engine, "audit_event") or has_table(engine, "alembic_version")
    except DatabaseUnusable as exc:
        raise ConfigError([f"DATABASE_URL {exc}"]) from None
    except SQLAlchemyError as exc:
        raise ConfigError([f"DATABASE_URL {describe_failure(exc)}"]) from None
    if not known:
        engine.dispose()
        raise ConfigError(
            [
                f"DATABASE_URL holds no audit log ({settings.redacted_database_url} has no "
                "snapbot tables): run this where snapbot's database is, or set DATABASE_URL to it"
            ]
        )
    return engine


VERIFY_PAGE = 20_000
PARALLEL_FROM = 200_000  # rows; a smaller log is verified before workers would have started
MAX_WORKERS = 4


def verify(
    engine: Engine,
    key: bytes | None,
    *,
    checkpoint: tuple[int, str] | None = None,
    workers: int | None = None,
) -> audit_chain.VerifyResult:
    """Walk the whole chain and name the first row that breaks it; then hold the chain
    against the head row (count and hash, updated by every append in the same
    transaction as its row) and against ``checkpoint`` (COUNT, HASH) when given.

    A long log is cut into id ranges walked by ``workers`` processes at once (default:
    one per CPU, up to MAX_WORKERS, from PARALLEL_FROM rows); each range is verified on
    its own and this process checks that each range starts where the one before ended.

    The head is read before the walk and again after it. Rows are immutable, so a bot
    appending meanwhile cannot disturb the check: the rows must reach the first head
    (else rows were cut from the end) and carry its hash at that id, and no row may lie
    beyond the second head (snapbot's append never writes one).

    Whatever was done to the tables (SPEC 14.9), the answer is a result naming the
    first bad row: a dropped table, a missing or mangled head row, or a read that fails
    on what was written there is a break, not an exception."""
    try:
        return _verify(engine, key, checkpoint=checkpoint, workers=workers)
    except _HeadUnreadable as exc:
        return _broken(audit_chain.VerifyResult(exc.rows, "", None), HEAD_ROW, str(exc))
    except _read_errors(engine) as exc:
        try:
            return _after_failed_read(engine, key, exc)
        except _read_errors(engine) as again:  # the database itself went away meanwhile
            raise ConfigError([f"DATABASE_URL {describe_failure(again)}"]) from None


def _after_failed_read(engine: Engine, key: bytes | None, exc: Exception):
    empty = audit_chain.VerifyResult(0, "", None)
    if not has_table(engine, "audit_event"):
        return _broken(empty, 1, "the audit_event table is gone")
    if not has_table(engine, "audit_head"):
        return _broken(empty, HEAD_ROW, "the table is gone")
    # The tables are there but a row could not be read as stored: the walk (in this
    # process, so the failing row is known) names it.
    return _walk_row_by_row(engine, key, exc)


def _read_errors(engine: Engine) -> tuple[type[Exception], ...]:
    # The fast path reads the driver's own cursor, whose errors SQLAlchemy does not wrap.
    return (SQLAlchemyError, engine.dialect.loaded_dbapi.Error)


class _HeadUnreadable(Exception):
    def __init__(self, why: str, rows: int = 0) -> None:
        super().__init__(why)
        self.rows = rows


def _read_head(engine: Engine) -> tuple[int, str]:
    try:
        with session_scope(engine, readonly=True) as s:
            count, digest = repo.audit_head(s)
    except SQLAlchemyError as exc:
        if not has_table(engine, "audit_head"):
            raise _HeadUnreadable("the table is gone") from None
        if "No row was found" in str(exc) or type(exc).__name__ == "NoResultFound":
            raise _HeadUnreadable("its row is missing") from None
        raise
    except (TypeError, ValueError):
        raise _HeadUnreadable("its row is unreadable (count)") from None
    if not isinstance(digest, str):
        raise _HeadUnreadable("its row is unreadable (hash)")
    return count, digest


def _walk_row_by_row(engine: Engine, key: bytes | None, exc: Exception):
    """A row the driver cannot read (e.g. text that is not UTF-8): find it, page by page
    and then row by row, and verify the chain up to it."""
    last = None
    for batch in (VERIFY_PAGE, 1):
        try:
            for row in repo.stream_audit_rows(engine, after=last, batch=batch, time_as_text=True):
                last = row[0]
        except _read_errors(engine):
            pass
    bad = (last or 0) + 1
    rows = repo.stream_audit_rows(engine, upto=bad - 1, batch=VERIFY_PAGE, time_as_text=True)
    result = audit_chain.verify_rows(rows, key)
    if not result.ok:
        return result
    return _broken(
        result,
        bad,
        f"unreadable ({' '.join(str(getattr(exc, 'orig', None) or exc).split())[:120]})",
    )


def _verify(
    engine: Engine,
    key: bytes | None,
    *,
    checkpoint: tuple[int, str] | None,
    workers: int | None,
) -> audit_chain.VerifyResult:
    walk = _Walk()
    try:
        before: tuple[int, str] | None = _read_head(engine)
        head_problem = None
    except _HeadUnreadable as exc:
        # Walk the rows anyway: a broken row before the head is the first bad one.
        before, head_problem = None, exc
    count = before[0] if before else 0
    if workers is None:
        workers = min(os.cpu_count() or 1, MAX_WORKERS) if count >= PARALLEL_FROM else 1
    if engine.url.database in (None, "", ":memory:") and engine.dialect.name == "sqlite":
        workers = 1  # another process cannot open this database
    result = None
    if 1 < workers <= count:
        result = _walk_in_parallel(engine, key, count, workers, walk)
    if result is None:  # the rest of the chain (all of it, without workers) in this process
        rows = repo.stream_audit_rows(
            engine, after=walk.after, batch=VERIFY_PAGE, time_as_text=True
        )
        tail = audit_chain.verify_rows(rows, key, start=(walk.next_id, walk.prev))
        result = audit_chain.VerifyResult(walk.rows + tail.rows, tail.head_hash, tail.broken)
        if result.ok and head_problem is not None:
            raise _HeadUnreadable(str(head_problem), result.rows)
        if result.ok:
            after = _read_head(engine)
            with session_scope(engine, readonly=True) as s:
                at_before = (
                    result.head_hash
                    if before[0] in (0, result.rows)
                    else repo.audit_hash_at(s, row_id=before[0])
                )
            result = _against_head(result, before, after, at_before)
    return _against_checkpoint(engine, result, checkpoint)


@dataclass
class _Walk:
    """How far the chain has been walked: the id and prev_hash the next row must have."""

    next_id: int = 1
    prev: str = audit_chain.GENESIS_HASH
    rows: int = 0
    after: int | None = None  # the id the walk in this process resumes after


def _against_head(
    result: audit_chain.VerifyResult,
    before: tuple[int, str],
    after: tuple[int, str],
    hash_at_before: str | None,
) -> audit_chain.VerifyResult:
    if result.rows > after[0]:
        return _broken(
            result, after[0] + 1, f"not recorded in the chain head (it says {after[0]} rows)"
        )
    if result.rows < before[0]:
        return _broken(
            result,
            result.rows + 1,
            f"missing: the chain head says {before[0]} rows, the log ends at row {result.rows}",
        )
    if before[0] and hash_at_before != before[1]:
        return _broken(result, before[0], "does not match the chain head's hash")
    return result


def _against_checkpoint(
    engine: Engine, result: audit_chain.VerifyResult, checkpoint: tuple[int, str] | None
) -> audit_chain.VerifyResult:
    """Rows 1..result.rows are a sound chain; the checkpoint must be one of its links
    (reported before any later break), or lie beyond an intact log that was cut."""
    if checkpoint is None:
        return result
    count, digest = checkpoint
    if count <= result.rows:
        if count == 0:
            found = audit_chain.GENESIS_HASH
        else:
            with session_scope(engine, readonly=True) as s:
                found = repo.audit_hash_at(s, row_id=count)
        if found != digest:
            return audit_chain.VerifyResult(
                max(count - 1, 0),
                result.head_hash,
                audit_chain.Broken(max(count, 1), "does not match the checkpoint"),
            )
        return result
    if result.ok:
        return _broken(
            result, result.rows + 1, f"log ends at row {result.rows}, checkpoint has {count}"
        )
    return result


def _broken(result: audit_chain.VerifyResult, row_id: int, why: str) -> audit_chain.VerifyResult:
    return audit_chain.VerifyResult(result.rows, result.head_hash, audit_chain.Broken(row_id, why))


# --- several processes ---------------------------------------------------------------------


def _walk_in_parallel(
    engine: Engine, key: bytes | None, count: int, workers: int, walk: _Walk
) -> audit_chain.VerifyResult | None:
    """Verify ids up to ``count`` in ``workers`` ranges at once. A break is returned;
    None means every range held and linked on, and ``walk`` is at their end."""
    size = -(-count // workers)
    ranges = [(None if i == 0 else i * size, min((i + 1) * size, count)) for i in range(workers)]
    url = engine.url.render_as_string(hide_password=False)
    with ProcessPoolExecutor(len(ranges), mp_context=_process_context()) as pool:
        stretches = [pool.submit(_verify_range, url, key, a, b) for a, b in ranges]
        for stretch in stretches:
            first_id, first_prev, part = stretch.result()
            if first_id is None:  # nothing in the range: the next one must still link
                continue
            broken = None
            if first_id != walk.next_id:
                why = "row(s) missing before it" if first_id > walk.next_id else "out of order"
                broken = audit_chain.Broken(first_id, why)
            elif first_prev != walk.prev:
                broken = audit_chain.Broken(first_id, "does not link to the row before")
            elif not part.ok:
                walk.rows, walk.prev, broken = walk.rows + part.rows, part.head_hash, part.broken
            if broken is not None:
                for later in stretches:
                    later.cancel()
                return audit_chain.VerifyResult(walk.rows, walk.prev, broken)
            walk.rows += part.rows
            walk.next_id = first_id + part.rows
            walk.prev = part.head_hash
    walk.after = count
    return None


def _verify_range(
    url: str, key: bytes | None, after: int | None, upto: int
) -> tuple[int | None, str | None, audit_chain.VerifyResult | None]:
    """In a worker process: (first id, its prev_hash, the range verified from it)."""
    engine = make_engine(url)
    try:
        rows = repo.stream_audit_rows(
            engine, after=after, upto=upto, batch=VERIFY_PAGE, time_as_text=True
        )
        first = next(rows, None)
        if first is None:
            return None, None, None
        part = audit_chain.verify_rows(
            itertools.chain([first], rows), key, start=(first[0], first[9])
        )
        return first[0], first[9], part
    finally:
        engine.dispose()


def _process_context():
    # fork is quick and safe from the CLI's single thread; with other threads about
    # (a test, a shell), spawn: a forked child could inherit a lock held by one of them.
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


EXPORT_PAGE = 5000
_JSON = json.JSONEncoder(ensure_ascii=False)


def _export_tuples(engine: Engine, *, since: datetime | None, actor: str | None) -> Iterator[tuple]:
    """Rows in id order, ``at`` as in the chain (``2025-01-15T18:30:00.000000Z``), page by
    page: memory stays flat however long the log."""
    fmt_time = audit_chain.format_time
    for row in repo.stream_audit_rows(
        engine, since=since, actor=actor, batch=EXPORT_PAGE, time_as_text=True
    ):
        yield (row[0], fmt_time(row[1]), *row[2:])


def export(
    engine: Engine,
    out: TextIO,
    *,
    fmt: str = "jsonl",
    since: datetime | None = None,
    actor: str | None = None,
) -> int:
    """Write the (filtered) log to ``out`` as JSON lines (one object per row, keys in
    EXPORT_FIELDS order) or CSV (a header, then one record per row); the row count."""
    count = 0
    rows = _export_tuples(engine, since=since, actor=actor)
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(EXPORT_FIELDS)
        for row in rows:
            writer.writerow(row)
            count += 1
    else:
        encode, write = _JSON.encode, out.write
        for row in rows:
            write(encode(dict(zip(EXPORT_FIELDS, row, strict=True))) + "\n")
            count += 1
    return count
