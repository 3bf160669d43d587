"""The audit chain (SPEC §7) on real databases: every kind of tampering is found and the
first broken row is named; the key matters; appends from many threads and from several
processes keep the chain one line.

Tampering is done the way an attacker with write access to the database would do it:
plain SQL against the tables, bypassing snapbot."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, text

from bot import audit_tools
from bot.core import audit_chain
from snapbot_local.harness import ROOT, snapbot_env
from storage import repositories as repo
from storage.db import make_engine, migrate, session_scope
from storage.tables import AuditEvent

KEY = b"test-audit-key-5e1d0c2b"
T0 = datetime(2025, 1, 15, 18, 30, tzinfo=UTC)
DATA_COLUMNS = ("at", "team", "channel", "actor", "action", "target", "outcome", "detail")


def append(engine, n: int, *, key: bytes | None = None, actor: str = "U1", start: int = 0):
    for i in range(start, start + n):
        with session_scope(engine) as s:
            repo.append_audit(
                s,
                now=T0 + timedelta(minutes=i),
                action="snapshot.list" if i % 2 else "restore.request",
                outcome=("ok", "denied", "error")[i % 3],
                actor=actor,
                team="T1",
                channel="C1",
                target=f"request:{i} snapshot:801",
                detail=f'row {i} — «détail» "quoted"',
                key=key,
            )


def sql(engine, statement: str, **params) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def rows(engine) -> list[AuditEvent]:
    with session_scope(engine, readonly=True) as s:
        return list(s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())


def head(engine) -> tuple[int, str]:
    with session_scope(engine, readonly=True) as s:
        return repo.audit_head(s)


def set_head(engine, count: int, digest: str) -> None:
    sql(engine, "UPDATE audit_head SET count = :c, hash = :h WHERE id = 1", c=count, h=digest)


def rehash_from(engine, first: int, key: bytes | None) -> None:
    """The attacker's repair: recompute prev_hash/hash from row ``first`` on (with
    ``key``, or plain SHA-256 when they do not have it) and move the head along."""
    all_rows = rows(engine)
    prev = all_rows[first - 2].hash if first > 1 else audit_chain.GENESIS_HASH
    for r in all_rows[first - 1 :]:
        digest = audit_chain.row_hash(
            audit_chain.canonical(
                r.id,
                r.at,
                r.team,
                r.channel,
                r.actor,
                r.action,
                r.target,
                r.outcome,
                r.detail,
                prev,
            ),
            key,
        )
        sql(
            engine,
            "UPDATE audit_event SET prev_hash = :p, hash = :h WHERE id = :i",
            p=prev,
            h=digest,
            i=r.id,
        )
        prev = digest
    set_head(engine, all_rows[-1].id, prev)


def broken(engine, key: bytes | None = None, checkpoint=None) -> audit_chain.Broken | None:
    """The first break, as one process finds it; three worker processes (each walking a
    third of the ids) must name the same row."""
    alone = audit_tools.verify(engine, key, checkpoint=checkpoint, workers=1)
    shared = audit_tools.verify(engine, key, checkpoint=checkpoint, workers=3)
    assert (shared.ok, shared.broken and shared.broken.row_id) == (
        alone.ok,
        alone.broken and alone.broken.row_id,
    ), (alone, shared)
    return alone.broken


# --- intact ---------------------------------------------------------------------------


def test_an_untouched_chain_verifies_and_ends_at_the_head(engine):
    append(engine, 6, key=KEY)
    result = audit_tools.verify(engine, KEY)
    assert result.ok, result.broken
    assert (result.rows, result.head_hash) == head(engine) == (6, rows(engine)[-1].hash)


def test_an_empty_log_verifies(sqlite_engine):
    result = audit_tools.verify(sqlite_engine, KEY)
    assert result.ok and result.rows == 0 and result.head_hash == audit_chain.GENESIS_HASH


def test_each_row_links_to_the_one_before(sqlite_engine):
    append(sqlite_engine, 4)
    chain = rows(sqlite_engine)
    assert [r.id for r in chain] == [1, 2, 3, 4]
    assert chain[0].prev_hash == audit_chain.GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(chain))
    assert len({r.hash for r in chain}) == 4


# --- tampering ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("detail", "nothing to see here"),
        ("actor", "U2"),
        ("outcome", "error"),  # row 4 was "ok"
        ("target", "request:99"),
        ("hash", "f" * 64),
    ],
)
def test_an_edited_row_is_named(sqlite_engine, column, value):
    append(sqlite_engine, 6, key=KEY)
    sql(sqlite_engine, f"UPDATE audit_event SET {column} = :v WHERE id = 4", v=value)
    found = broken(sqlite_engine, KEY)
    assert found is not None and found.row_id == 4, found


def test_a_row_whose_time_moved_by_a_microsecond_is_named(engine):
    append(engine, 5, key=KEY)
    with session_scope(engine) as s:
        row = s.get(AuditEvent, 3)
        row.at = row.at + timedelta(microseconds=1)
    found = broken(engine, KEY)
    assert found is not None and found.row_id == 3 and "contents changed" in found.why


def test_a_deleted_row_is_named_by_the_row_after_it(engine):
    append(engine, 6, key=KEY)
    sql(engine, "DELETE FROM audit_event WHERE id = 4")
    found = broken(engine, KEY)
    assert found is not None and found.row_id == 5 and "missing" in found.why


def test_rows_whose_contents_were_exchanged_are_named(sqlite_engine):
    append(sqlite_engine, 6, key=KEY)
    a, b = rows(sqlite_engine)[2:4]
    for row, other in ((a, b), (b, a)):
        sql(
            sqlite_engine,
            "UPDATE audit_event SET team = :team, channel = :channel, actor = :actor, "
            "action = :action, target = :target, outcome = :outcome, detail = :detail WHERE id = :id",
            id=row.id,
            **{c: getattr(other, c) for c in DATA_COLUMNS if c != "at"},
        )
    found = broken(sqlite_engine, KEY)
    assert found is not None and found.row_id == 3 and "contents changed" in found.why


def test_rows_whose_ids_were_swapped_are_named(engine):
    append(engine, 6, key=KEY)
    sql(engine, "UPDATE audit_event SET id = -3 WHERE id = 3")
    sql(engine, "UPDATE audit_event SET id = 3 WHERE id = 4")
    sql(engine, "UPDATE audit_event SET id = 4 WHERE id = -3")
    found = broken(engine, KEY)
    assert found is not None and found.row_id == 3, found


def test_a_row_inserted_in_the_middle_is_named(engine):
    # Without a key the attacker can even hash the new row correctly and fix the head:
    # the row after it no longer links.
    append(engine, 6)
    sql(engine, "UPDATE audit_event SET id = -id WHERE id >= 4")
    sql(engine, "UPDATE audit_event SET id = 1 - id WHERE id < 0")
    prev = rows(engine)[2].hash
    forged = (
        4,
        T0 + timedelta(minutes=3, seconds=30),
        "T1",
        "C1",
        "U9",
        "snapshot.delete",
        "snapshot:801",
        "ok",
        "",
    )
    with session_scope(engine) as s:
        s.add(
            AuditEvent(
                **dict(zip(("id", *DATA_COLUMNS), forged, strict=True)),
                prev_hash=prev,
                hash=audit_chain.row_hash(audit_chain.canonical(*forged, prev), None),
            )
        )
    set_head(engine, 7, rows(engine)[-1].hash)
    found = broken(engine)
    assert found is not None and found.row_id == 5, found


def test_a_row_slipped_in_before_the_first_is_named(sqlite_engine):
    append(sqlite_engine, 3)
    first = rows(sqlite_engine)[0]
    with session_scope(sqlite_engine) as s:
        s.add(
            AuditEvent(
                id=0,
                **{c: getattr(first, c) for c in DATA_COLUMNS},
                prev_hash=audit_chain.GENESIS_HASH,
                hash=first.hash,
            )
        )
    found = broken(sqlite_engine)
    assert found is not None and found.row_id == 0, found


def test_a_row_added_behind_the_bots_back_is_named_by_the_head(sqlite_engine):
    append(sqlite_engine, 4)
    last = rows(sqlite_engine)[-1]
    forged = (
        5,
        T0 + timedelta(hours=1),
        "T1",
        "C1",
        "U9",
        "restore.approve",
        "request:1",
        "ok",
        "",
    )
    with session_scope(sqlite_engine) as s:
        s.add(
            AuditEvent(
                **dict(zip(("id", *DATA_COLUMNS), forged, strict=True)),
                prev_hash=last.hash,
                hash=audit_chain.row_hash(audit_chain.canonical(*forged, last.hash), None),
            )
        )
    found = broken(sqlite_engine)
    assert found is not None and found.row_id == 5 and "head" in found.why


def test_a_tail_cut_with_the_head_left_alone_is_named(sqlite_engine):
    append(sqlite_engine, 6, key=KEY)
    sql(sqlite_engine, "DELETE FROM audit_event WHERE id > 4")
    found = broken(sqlite_engine, KEY)
    assert found is not None and found.row_id == 5 and "6 rows" in found.why


def test_a_tail_cut_cleanly_is_caught_only_by_a_checkpoint(engine):
    append(engine, 6, key=KEY)
    checkpoint = head(engine)
    sql(engine, "DELETE FROM audit_event WHERE id > 4")
    set_head(engine, 4, rows(engine)[-1].hash)
    # What a hash chain alone cannot show ...
    assert broken(engine, KEY) is None
    # ... the checkpoint posted to Slack can.
    found = broken(engine, KEY, checkpoint=checkpoint)
    assert found is not None and found.row_id == 5 and "checkpoint has 6" in found.why


def test_a_log_that_grew_past_its_checkpoint_still_extends_it(sqlite_engine):
    append(sqlite_engine, 3, key=KEY)
    checkpoint = head(sqlite_engine)
    append(sqlite_engine, 3, key=KEY, start=3)
    result = audit_tools.verify(sqlite_engine, KEY, checkpoint=checkpoint)
    assert result.ok and result.rows == 6


def test_a_checkpoint_the_chain_does_not_pass_through_is_refused(sqlite_engine):
    append(sqlite_engine, 5, key=KEY)
    found = broken(sqlite_engine, KEY, checkpoint=(3, "a" * 64))
    assert found is not None and found.row_id == 3 and "checkpoint" in found.why


# --- several processes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tamper", "row"),
    [
        ("UPDATE audit_event SET detail = 'x' WHERE id = 10", 10),  # last of the first range
        ("UPDATE audit_event SET detail = 'x' WHERE id = 11", 11),  # first of the second
        ("DELETE FROM audit_event WHERE id = 10", 11),
        ("DELETE FROM audit_event WHERE id = 11", 12),
        ("DELETE FROM audit_event WHERE id BETWEEN 11 AND 20", 21),  # a whole range gone
        ("UPDATE audit_event SET prev_hash = hash WHERE id = 21", 21),
        ("UPDATE audit_event SET id = 40 WHERE id = 30", 40),
    ],
)
def test_ranges_walked_by_worker_processes_name_the_same_first_broken_row(
    sqlite_engine, tamper, row
):
    append(sqlite_engine, 30, key=KEY)
    assert audit_tools.verify(sqlite_engine, KEY, workers=3).ok
    sql(sqlite_engine, tamper)
    found = audit_tools.verify(sqlite_engine, KEY, workers=3).broken
    assert found is not None and found.row_id == row, found
    assert audit_tools.verify(sqlite_engine, KEY, workers=1).broken.row_id == row


def test_worker_processes_report_the_same_chain_as_one_process(engine):
    append(engine, 31, key=KEY)
    alone = audit_tools.verify(engine, KEY, workers=1)
    shared = audit_tools.verify(engine, KEY, workers=4, checkpoint=(17, rows(engine)[16].hash))
    assert (
        alone.ok and shared.ok and (shared.rows, shared.head_hash) == (alone.rows, alone.head_hash)
    )
    assert not audit_tools.verify(engine, KEY, workers=4, checkpoint=(17, "b" * 64)).ok


# --- the key --------------------------------------------------------------------------


def test_a_chain_recomputed_without_the_key_fails_verification_with_it(engine):
    append(engine, 6, key=KEY)
    sql(engine, "UPDATE audit_event SET detail = 'approved by the CTO' WHERE id = 4")
    rehash_from(engine, 1, None)
    # Without the key the forgery would pass; with it, it fails at once.
    assert broken(engine, None) is None
    found = broken(engine, KEY)
    assert found is not None and found.row_id == 1 and "contents changed" in found.why


def test_a_partial_rewrite_without_the_key_is_named_where_it_starts(sqlite_engine):
    append(sqlite_engine, 6, key=KEY)
    sql(sqlite_engine, "UPDATE audit_event SET actor = 'U2' WHERE id = 4")
    rehash_from(sqlite_engine, 4, None)
    found = broken(sqlite_engine, KEY)
    assert found is not None and found.row_id == 4


def test_the_wrong_key_fails_verification(sqlite_engine):
    append(sqlite_engine, 3, key=KEY)
    assert broken(sqlite_engine, KEY) is None
    for wrong in (b"test-audit-key-5e1d0c2c", None):
        found = broken(sqlite_engine, wrong)
        assert found is not None and found.row_id == 1, wrong


# --- concurrency ----------------------------------------------------------------------


def assert_one_chain(engine, expected: int, key: bytes | None = KEY) -> list[AuditEvent]:
    result = audit_tools.verify(engine, key)
    assert result.ok, result.broken
    assert result.rows == expected and head(engine) == (expected, result.head_hash)
    chain = rows(engine)
    assert [r.id for r in chain] == list(range(1, expected + 1))
    return chain


def test_eight_threads_appending_500_each_on_sqlite_leave_one_chain(sqlite_engine):
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(500):
                with session_scope(sqlite_engine) as s:
                    repo.append_audit(
                        s,
                        now=datetime.now(UTC),
                        action="t",
                        outcome="ok",
                        actor=f"U{n}",
                        detail=str(i),
                        key=KEY,
                    )
        except BaseException as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    chain = assert_one_chain(sqlite_engine, 4000)
    for n in range(8):  # each writer's rows are all there, in its own order
        assert [int(r.detail) for r in chain if r.actor == f"U{n}"] == list(range(500))


APPENDER = """
import sys, threading
from datetime import UTC, datetime
from storage import repositories as repo
from storage.db import make_engine, session_scope

KEY = b"test-audit-key-5e1d0c2b"
url, tag, threads, each = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
engine = make_engine(url)
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()  # the test starts every process at once

def work(n):
    for i in range(each):
        with session_scope(engine) as s:
            repo.append_audit(s, now=datetime.now(UTC), action="t", outcome="ok",
                              actor=f"{tag}-{n}", detail=str(i), key=KEY)

ts = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print("done")
"""


def test_two_processes_of_eight_threads_on_postgres_leave_one_chain(pg_url):
    engine = make_engine(pg_url)
    migrate(engine)
    each = 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, pg_url, tag, "8", str(each)],
            cwd=ROOT,
            env=snapbot_env({}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("A", "B")
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0 and "done" in out, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    chain = assert_one_chain(engine, 2 * 8 * each)
    tags = [r.actor[0] for r in chain]
    assert tags.count("A") == tags.count("B") == 8 * each
    # The two processes really wrote at the same time: their rows interleave.
    assert sum(1 for a, b in itertools.pairwise(tags) if a != b) > 2
    engine.dispose()


def test_verify_of_a_live_log_passes_while_the_bot_keeps_appending(engine):
    append(engine, 20, key=KEY)
    stop = threading.Event()
    appended = []

    def writer() -> None:
        while not stop.is_set():
            append(engine, 1, key=KEY, start=100 + len(appended))
            appended.append(1)

    t = threading.Thread(target=writer)
    t.start()
    try:
        results = [audit_tools.verify(engine, KEY) for _ in range(15)]
    finally:
        stop.set()
        t.join()
    assert all(r.ok for r in results), [r.broken for r in results if not r.ok]
    assert results[-1].rows >= 20 and len(appended) > 0


# --- canonical serialisation ------------------------------------------------------------


def reference_canonical(id, at, team, channel, actor, action, target, outcome, detail, prev):
    """SPEC §7's definition, spelled the slow way."""
    fields = [
        id,
        audit_chain.format_time(at),
        team,
        channel,
        actor,
        action,
        target,
        outcome,
        detail,
        prev,
    ]
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode()


@given(
    rid=st.integers(min_value=1, max_value=2**53),
    at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    texts=st.lists(st.text(), min_size=7, max_size=7),
)
def test_canonical_bytes_match_the_json_definition(rid, at, texts):
    prev = hashlib.sha256(str(rid).encode()).hexdigest()
    expected = reference_canonical(rid, at, *texts, prev)
    assert audit_chain.canonical(rid, at, *texts, prev) == expected
    # The storage text that verify reads instead of a datetime gives the same bytes.
    stored = at.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    assert audit_chain.canonical(rid, stored, *texts, prev) == expected


@pytest.mark.parametrize("key", [b"k", b"x" * 64, b"y" * 65, b"z" * 300, KEY])
def test_the_fast_hmac_is_hmac_sha256(key):
    for payload in (b"", b"abc", b"\xff" * 1000):
        assert (
            audit_chain.hasher(key)(payload) == hmac.new(key, payload, hashlib.sha256).hexdigest()
        )
    assert audit_chain.hasher(None)(b"abc") == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize(
    ("text_", "expected"),
    [
        ("12:" + "A" * 64, (12, "a" * 64)),
        (" 0:" + "0" * 64 + " ", (0, "0" * 64)),
    ],
)
def test_checkpoints_parse(text_, expected):
    assert audit_chain.parse_checkpoint(text_) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "12", "12:abc", "x:" + "a" * 64, "-1:" + "a" * 64, "\u0661:" + "a" * 64, "3:" + "g" * 64],
)
def test_malformed_checkpoints_are_refused(bad):
    with pytest.raises(ValueError):
        audit_chain.parse_checkpoint(bad)
