"""`snapbot audit verify` and `snapbot audit export` as an operator runs them: exit codes,
the first broken row named, checkpoints, exports that parse back to exactly the rows,
filters, and streaming (bounded pages, flat memory)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select, text

from bot.__main__ import main
from bot.core import audit_chain
from snapbot_local.harness import snapbot_env
from storage import repositories as repo
from storage.db import make_engine, migrate, session_scope
from storage.tables import AuditEvent

KEY = "cli-audit-key-7d3f9a1c"
T0 = datetime(2025, 1, 15, 18, 30, tzinfo=UTC)
DETAILS = [
    "plain",
    'comma, "quotes" and a\nnew line',
    "unicode — «ça marche» ✅ 日本",
    "",
    "back\\slash\ttab",
]


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """Run `snapbot …` in-process against ``DATABASE_URL``; (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)  # no stray .env

    def run(*argv: str, key: str | None = KEY) -> tuple[int, str, str]:
        if key is None:
            monkeypatch.delenv("AUDIT_KEY", raising=False)
        else:
            monkeypatch.setenv("AUDIT_KEY", key)
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def log(monkeypatch, engine, db_url):
    monkeypatch.setenv("DATABASE_URL", db_url)
    return engine


@pytest.fixture
def sqlite_log(monkeypatch, sqlite_engine, sqlite_url):
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    return sqlite_engine


def append(engine, n: int, *, start: int = 0) -> None:
    for i in range(start, start + n):
        with session_scope(engine) as s:
            repo.append_audit(
                s,
                now=T0 + timedelta(hours=i, microseconds=i),
                action=("snapshot.list", "restore.request", "restore.approve")[i % 3],
                outcome=("ok", "denied", "error")[i % 3],
                actor=("U1", "U2", "")[i % 3],
                team="T1",
                channel=f"C{i % 2}",
                target=f"request:{i} snapshot:801",
                detail=DETAILS[i % len(DETAILS)],
                key=KEY.encode(),
            )


def expected_records(engine, *, since=None, actor=None) -> list[dict]:
    """The rows, read through the ORM (not the export's path), as export should print them."""
    with session_scope(engine, readonly=True) as s:
        events = s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
    return [
        {
            "id": e.id,
            "at": e.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "team": e.team,
            "channel": e.channel,
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "outcome": e.outcome,
            "detail": e.detail,
            "prev_hash": e.prev_hash,
            "hash": e.hash,
        }
        for e in events
        if (since is None or e.at >= since) and (actor is None or e.actor == actor)
    ]


def sql(engine, statement: str, **params) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


# --- verify -----------------------------------------------------------------------------


def test_verify_exits_0_and_reports_rows_and_head_when_intact(cli, log):
    append(log, 7)
    code, out, err = cli("audit", "verify")
    assert code == 0, err
    with session_scope(log) as s:
        count, head = repo.audit_head(s)
    assert count == 7 and f"7 rows, head {head}" in out


@pytest.mark.parametrize(
    ("tamper", "row"),
    [
        ("UPDATE audit_event SET detail = 'edited' WHERE id = 3", 3),
        ("DELETE FROM audit_event WHERE id = 3", 4),
        ("DELETE FROM audit_event WHERE id > 5", 6),
        ("UPDATE audit_event SET prev_hash = hash WHERE id = 2", 2),
    ],
)
def test_verify_exits_non_zero_naming_the_first_broken_row(cli, log, tamper, row):
    append(log, 7)
    sql(log, tamper)
    code, out, err = cli("audit", "verify")
    assert code == 1 and out == ""
    assert f"BROKEN at row {row}:" in err
    assert "Traceback" not in err


def test_verify_with_the_wrong_key_or_none_fails_at_row_1(cli, sqlite_log):
    append(sqlite_log, 3)
    assert cli("audit", "verify")[0] == 0
    for key in ("cli-audit-key-7d3f9a1d", None):
        code, _, err = cli("audit", "verify", key=key)
        assert code == 1 and "BROKEN at row 1:" in err


def test_verify_accepts_its_checkpoint_then_rejects_the_log_once_its_tail_is_cut(cli, sqlite_log):
    append(sqlite_log, 6)
    with session_scope(sqlite_log) as s:
        count, head = repo.audit_head(s)
    checkpoint = f"{count}:{head}"
    append(sqlite_log, 2, start=6)
    assert cli("audit", "verify", "--checkpoint", checkpoint)[0] == 0
    # A careful attacker cuts rows 5.. and moves the head back: the chain alone passes.
    sql(sqlite_log, "DELETE FROM audit_event WHERE id >= 5")
    with session_scope(sqlite_log) as s:
        last = s.get(AuditEvent, 4).hash
    sql(sqlite_log, "UPDATE audit_head SET count = 4, hash = :h WHERE id = 1", h=last)
    assert cli("audit", "verify")[0] == 0
    code, _, err = cli("audit", "verify", "--checkpoint", checkpoint)
    assert code == 1 and "BROKEN at row 5:" in err and "checkpoint has 6" in err


@pytest.mark.parametrize("bad", ["6", "6:xyz", "six:" + "a" * 64])
def test_a_malformed_checkpoint_exits_2_with_one_line(cli, sqlite_log, bad):
    code, out, err = cli("audit", "verify", "--checkpoint", bad)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "COUNT:HASH" in err or "64 hex digits" in err


def run_snapbot(url: str, *argv: str, cwd, key: str = KEY, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bot", *argv],
        cwd=cwd,
        env=snapbot_env({"DATABASE_URL": url, "AUDIT_KEY": key}),
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def test_verify_as_a_real_process_exits_0_then_1_naming_the_row(sqlite_log, sqlite_url, tmp_path):
    append(sqlite_log, 5)
    ok = run_snapbot(sqlite_url, "audit", "verify", cwd=tmp_path)
    assert ok.returncode == 0 and "intact: 5 rows" in ok.stdout, ok.stderr
    sql(sqlite_log, "UPDATE audit_event SET actor = 'U9' WHERE id = 2")
    bad = run_snapbot(sqlite_url, "audit", "verify", cwd=tmp_path)
    assert bad.returncode == 1 and "BROKEN at row 2:" in bad.stderr
    assert "Traceback" not in bad.stderr


# --- verify never passes on nothing, never crashes (SPEC 13.8, 14.9) -----------------------


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_verify_in_a_directory_without_a_database_is_an_error_and_creates_nothing(tmp_path):
    # No DATABASE_URL: the default sqlite:///snapbot.db, relative to where it runs.
    run = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "verify"],
        cwd=tmp_path,
        env=snapbot_env({}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and run.stdout == ""
    line = one_line(run.stderr)
    assert "DATABASE_URL" in line and "snapbot.db" in line
    assert list(tmp_path.iterdir()) == []


def test_verify_of_a_sqlite_file_that_is_not_snapbots_is_an_error(cli, tmp_path, monkeypatch):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE notes (x)").connection.close()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{other}")
    code, out, err = cli("audit", "verify")
    assert code != 0 and out == ""
    assert "DATABASE_URL" in one_line(err) and "no audit log" in err
    tables = sqlite3.connect(other).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("notes",)]  # nothing was created


@pytest.mark.postgres
def test_verify_of_an_empty_postgresql_schema_is_an_error_and_creates_no_table(
    cli, pg_url, monkeypatch
):
    monkeypatch.setenv("DATABASE_URL", pg_url)
    code, _, err = cli("audit", "export")
    assert code != 0 and "DATABASE_URL" in one_line(err)
    code, _, err = cli("audit", "verify")
    assert code != 0 and "DATABASE_URL" in one_line(err)
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        tables = conn.execute(
            text("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
        ).scalar_one()
    engine.dispose()
    assert tables == 0


@pytest.mark.postgres
def test_verify_of_a_postgresql_database_that_does_not_exist_names_database_url(cli, monkeypatch):
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        pytest.skip(
            "TEST_DATABASE_URL is not set: PostgreSQL tests need a database (.ci/run sets it)"
        )
    url = base.rsplit("/", 1)[0] + "/snapbot_no_such_database"
    monkeypatch.setenv("DATABASE_URL", url)
    code, out, err = cli("audit", "verify")
    assert code != 0 and out == ""
    line = one_line(err)
    assert "DATABASE_URL" in line and "snapbot_no_such_database" in line


TAMPERINGS = [
    # (statements, the row named: an id, or "head" for the audit_head row)
    (["DELETE FROM audit_head"], "head"),
    (["UPDATE audit_head SET hash = 'garbage'"], "7"),
    (["UPDATE audit_event SET hash = 'garbage' WHERE id = 3"], "3"),
    (["UPDATE audit_event SET hash = '' WHERE id = 1"], "1"),
    (
        [
            "UPDATE audit_event SET id = 100 WHERE id = 2",
            "UPDATE audit_event SET id = 2 WHERE id = 3",
            "UPDATE audit_event SET id = 3 WHERE id = 100",
        ],
        "2",
    ),
    (["DROP TABLE audit_event"], "1"),
    (["DROP TABLE audit_head"], "head"),
    (["DELETE FROM audit_event", "DELETE FROM audit_head"], "head"),
]


@pytest.mark.parametrize(("statements", "row"), TAMPERINGS)
def test_verify_names_the_first_bad_row_whatever_was_done_to_the_tables(cli, log, statements, row):
    append(log, 7)
    for statement in statements:
        sql(log, statement)
    code, out, err = cli("audit", "verify")
    assert code == 1 and out == ""
    line = one_line(err)
    where = "the chain head" if row == "head" else f"row {row}:"
    assert line.startswith("audit log BROKEN at ") and where in line, line


@pytest.mark.parametrize(
    ("statement", "row"),
    [
        ("UPDATE audit_event SET at = 'garbage' WHERE id = 3", 3),
        ("UPDATE audit_event SET at = 12 WHERE id = 2", 2),
        ("UPDATE audit_event SET team = 5 WHERE id = 4", 4),
        ("UPDATE audit_event SET detail = CAST(X'FFFE' AS TEXT) WHERE id = 5", 5),
        ("UPDATE audit_head SET count = 'many'", "head"),
    ],
)
def test_verify_names_a_row_sqlite_stores_garbage_in(cli, sqlite_log, statement, row):
    append(sqlite_log, 7)
    sql(sqlite_log, statement)
    code, _out, err = cli("audit", "verify")
    assert code == 1
    line = one_line(err)
    assert ("the chain head" if row == "head" else f"BROKEN at row {row}:") in line, line


def test_verify_names_the_row_of_a_table_rebuilt_without_its_constraints(cli, sqlite_log):
    append(sqlite_log, 7)
    for statement in (
        "CREATE TABLE loose AS SELECT * FROM audit_event",
        "DROP TABLE audit_event",
        "ALTER TABLE loose RENAME TO audit_event",
        "UPDATE audit_event SET detail = NULL WHERE id = 4",
    ):
        sql(sqlite_log, statement)
    code, _, err = cli("audit", "verify")
    assert code == 1 and "BROKEN at row 4:" in one_line(err)
    sql(sqlite_log, "UPDATE audit_event SET id = NULL WHERE id = 2")
    code, _, err = cli("audit", "verify")
    assert code == 1 and "BROKEN at row 1:" in one_line(err)  # a NULL id sorts first


@pytest.mark.postgres
@pytest.mark.parametrize("column", ["at", "team", "detail", "prev_hash", "hash"])
def test_verify_names_the_row_whose_column_was_nulled_on_postgresql(
    cli, pg_url, monkeypatch, column
):
    monkeypatch.setenv("DATABASE_URL", pg_url)
    engine = make_engine(pg_url)
    migrate(engine)
    append(engine, 7)
    sql(engine, f"ALTER TABLE audit_event ALTER COLUMN {column} DROP NOT NULL")
    sql(engine, f"UPDATE audit_event SET {column} = NULL WHERE id = 4")
    engine.dispose()
    code, _, err = cli("audit", "verify")
    assert code == 1 and "BROKEN at row 4:" in one_line(err)


# --- export -----------------------------------------------------------------------------


def test_jsonl_export_parses_back_to_exactly_the_rows(cli, log):
    append(log, 11)
    code, out, err = cli("audit", "export", "--format", "jsonl")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert records == expected_records(log)
    assert len(records) == 11 and {r["detail"] for r in records} == set(DETAILS)
    # ... and the exported chain is the chain: it verifies on its own.
    rows = [tuple(r.values()) for r in records]
    assert audit_chain.verify_rows(rows, KEY.encode()).ok


def test_csv_export_parses_back_to_exactly_the_rows(cli, log):
    append(log, 11)
    code, out, err = cli("audit", "export", "--format", "csv")
    assert code == 0, err
    records = list(csv.DictReader(io.StringIO(out, newline="")))
    for r in records:
        r["id"] = int(r["id"])
    assert records == expected_records(log)


def test_export_since_keeps_rows_at_or_after_that_time(cli, sqlite_log):
    append(sqlite_log, 10)
    for since_text, since in [
        ("2025-01-16T00:30:00.000004Z", T0 + timedelta(hours=6, microseconds=4)),
        ("2025-01-16T02:30:00+02:00", T0 + timedelta(hours=6)),
        ("2025-01-16T00:30:00", T0 + timedelta(hours=6)),
    ]:
        code, out, err = cli("audit", "export", "--since", since_text)
        assert code == 0, err
        records = [json.loads(line) for line in out.splitlines()]
        assert records == expected_records(sqlite_log, since=since)
        assert (
            [r["id"] for r in records] == [7, 8, 9, 10] if since.microsecond else list(range(7, 11))
        )


def test_export_actor_keeps_only_that_users_rows_and_combines_with_since(cli, sqlite_log):
    append(sqlite_log, 12)
    code, out, _ = cli("audit", "export", "--actor", "U2")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and records == expected_records(sqlite_log, actor="U2")
    assert [r["id"] for r in records] == [2, 5, 8, 11]
    code, out, _ = cli(
        "audit", "export", "--format", "csv", "--actor", "U2", "--since", "2025-01-16T00:00:00Z"
    )
    records = list(csv.DictReader(io.StringIO(out, newline="")))
    assert code == 0 and [r["id"] for r in records] == ["8", "11"]
    code, out, _ = cli("audit", "export", "--actor", "UNOBODY")
    assert code == 0 and out == ""


def test_a_bad_since_exits_2_with_one_line(cli, sqlite_log):
    code, out, err = cli("audit", "export", "--since", "yesterday")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_an_export_whose_reader_stops_early_ends_without_a_traceback(
    sqlite_log, sqlite_url, tmp_path
):
    append(sqlite_log, 3)
    bulk = [(i, f"{i:064x}") for i in range(4, 20_004)]
    with sqlite_log.begin() as conn:  # enough rows to overflow the pipe's buffer
        conn.execute(
            text(
                "INSERT INTO audit_event VALUES (:i, '2025-01-16 00:00:00.000000', 'T1', 'C1', "
                "'U1', 'x', '', 'ok', 'padding padding padding padding', :h, :h)"
            ),
            [{"i": i, "h": h} for i, h in bulk],
        )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "audit", "export"],
        cwd=tmp_path,
        env=snapbot_env({"DATABASE_URL": sqlite_url}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert first["id"] == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 1


def test_export_reads_the_table_in_bounded_pages(sqlite_log):
    append(sqlite_log, 23)
    pages = []

    @event.listens_for(sqlite_log, "after_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        if "FROM audit_event" in statement:
            pages.append(tuple(parameters))

    try:
        rows = list(repo.stream_audit_rows(sqlite_log, batch=5))
        exported = list(
            itertools.islice(repo.stream_audit_rows(sqlite_log, batch=5, actor="U1"), 100)
        )
    finally:
        event.remove(sqlite_log, "after_cursor_execute", count)
    assert [r[0] for r in rows] == list(range(1, 24))
    assert len(exported) == 8
    # 23 rows in pages of 5: 5 full pages and an empty one; 8 of U1's: 2 pages and an empty one.
    assert len(pages) == 6 + 3
    assert all(5 in p for p in pages)  # every query carries LIMIT 5


EXPORT_WITH_PEAK = (
    "import resource, sys\n"
    "from bot.__main__ import main\n"
    "code = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "print(f'maxrss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)
MANY = 200_000


def bulk_insert(path: str, n: int) -> None:
    """``n`` rows straight into the file (export does not check hashes)."""
    conn = sqlite3.connect(path)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO audit_event VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            (
                i,
                (T0 + timedelta(seconds=i)).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f"),
                "T1",
                "C1",
                f"U{i % 50}",
                "snapshot.list",
                f"request:{i} snapshot:801",
                "ok",
                f"detail of row {i} — with some text to weigh it",
                f"{i - 1:064x}",
                f"{i:064x}",
            )
            for i in range(1, n + 1)
        ),
    )
    conn.execute("UPDATE audit_head SET count = ?, hash = ? WHERE id = 1", (n, f"{n:064x}"))
    conn.execute("COMMIT")
    conn.close()


def export_peak(url: str, tmp_path, *args: str) -> tuple[int, int]:
    """(lines written, peak RSS in KiB) of `snapbot audit export …` as its own process."""
    with open(tmp_path / "export.out", "w+") as out:
        proc = subprocess.run(
            [sys.executable, "-c", EXPORT_WITH_PEAK, "audit", "export", *args],
            cwd=tmp_path,
            env=snapbot_env({"DATABASE_URL": url}),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        out.seek(0)
        lines = sum(1 for _ in out)
    return lines, int(proc.stderr.strip().splitlines()[-1].removeprefix("maxrss_kb="))


def test_exporting_200k_rows_streams_in_flat_memory(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    migrate(engine)
    bulk_insert(engine.url.database, MANY)
    # What holding the rows would cost, measured on a sample of them.
    tracemalloc.start()
    sample = list(itertools.islice(repo.stream_audit_rows(engine, batch=5000), 5000))
    per_row = tracemalloc.get_traced_memory()[0] / len(sample)
    tracemalloc.stop()
    del sample
    engine.dispose()
    holding_kib = per_row * MANY / 1024
    _, idle_kib = export_peak(sqlite_url, tmp_path, "--actor", "UNOBODY")
    lines, full_kib = export_peak(sqlite_url, tmp_path)
    assert lines == MANY
    grew_kib = full_kib - idle_kib
    assert holding_kib > 100 * 1024, holding_kib  # the rows weigh far more than ...
    assert grew_kib < 25 * 1024, (grew_kib, holding_kib)  # ... the export ever grows
    print(f"export of {MANY} rows grew {grew_kib} KiB; holding them: {holding_kib:.0f} KiB")
