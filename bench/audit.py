"""How fast is the audit log (SPEC §7, issue 6)?

Prints, for SQLite and (when a URL is given) PostgreSQL:

* append throughput through the one writer API (``repositories.append_audit``), one
  writer and 8 writer threads;
* ``snapbot audit verify`` speed (rows/s) over ``--rows`` rows (default 1,000,000),
  bulk-loaded with the chain computed here exactly as the bot computes it;
* the ``/snapshot audit`` query (``repositories.latest_audit``, last 20) p50/p95;
* ``snapbot audit export --actor`` latency and peak memory, next to the peak memory of an
  export that matches nothing and of an export of every row (flat = streaming).

Targets: verify >= 200,000 rows/s; last-20 p95 <= 20 ms; export memory flat.

    python bench/audit.py [--rows 1000000] [--appends 2000] [--db sqlite,postgres]
                          [--pg-url postgresql://...] [--no-full-export]

PostgreSQL comes from ``--pg-url`` or ``$TEST_DATABASE_URL`` (a fresh schema is created
and dropped); without one it is skipped with a message.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from bot import audit_tools
from bot.core import audit_chain
from snapbot_local.harness import fresh_schema, snapbot_env
from storage import repositories as repo
from storage.db import make_engine, migrate, session_scope

KEY = "bench-audit-key-0123456789"
ACTORS = [f"U{n:03d}" for n in range(50)]
ACTIONS = [
    ("snapshot.list", "ok", "", "3 snapshot(s)"),
    ("provider.create", "ok", "server:{s} snapshot:{i}", "nightly-{i}"),
    ("restore.request", "ok", "request:{i} snapshot:{s} server:1", "bad deploy — roll back"),
    ("restore.approve", "denied", "request:{i}", "self"),
    ("snapshot.list", "error", "", "The provider rejected snapbot's API token (401)."),
    ("audit.show", "ok", "", "last 20"),
]
EXPORT_ACTOR = ACTORS[7]
LOAD_BATCH = 50_000
EXPORT_WRAPPER = (
    "import resource, sys, time\n"
    "from bot.__main__ import main\n"
    "t = time.perf_counter()\n"
    "rc = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "print(f'rc={rc} seconds={time.perf_counter() - t:.3f} '\n"
    "      f'maxrss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
)


# --- databases --------------------------------------------------------------------------


class Database:
    def __init__(self, name: str, url: str, cleanup=None) -> None:
        self.name, self.url, self._cleanup = name, url, cleanup
        self.engine = make_engine(url)
        migrate(self.engine)

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_event"))
            conn.execute(
                text("UPDATE audit_head SET count = 0, hash = :h WHERE id = 1"),
                {"h": audit_chain.GENESIS_HASH},
            )

    def close(self) -> None:
        self.engine.dispose()
        if self._cleanup:
            self._cleanup()


def sqlite_database(tmp: Path) -> Database:
    return Database("SQLite", f"sqlite:///{tmp / 'bench-audit.db'}")


def postgres_database(base_url: str) -> Database:
    url, drop = fresh_schema(base_url, prefix="bench")
    return Database("PostgreSQL", url, drop)


# --- appends ----------------------------------------------------------------------------


def append_throughput(db: Database, *, writers: int, total: int) -> float:
    db.reset()
    key = KEY.encode()
    per_writer = total // writers
    barrier = threading.Barrier(writers + 1)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(per_writer):
            with session_scope(db.engine) as s:
                repo.append_audit(
                    s,
                    now=datetime.now(UTC),
                    action="bench.append",
                    outcome="ok",
                    actor=f"U{n}",
                    team="T1",
                    channel="C1",
                    target=f"request:{i}",
                    detail="appended by bench/audit.py",
                    key=key,
                )

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    result = audit_tools.verify(db.engine, key)
    if not result.ok or result.rows != per_writer * writers:
        raise SystemExit(f"{db.name}: chain broken after concurrent appends: {result}")
    return per_writer * writers / elapsed


# --- bulk load --------------------------------------------------------------------------


def chained_rows(n: int, key: bytes | None) -> Iterator[tuple]:
    """``n`` rows as the bot would have written them: (id, at, team, channel, actor,
    action, target, outcome, detail, prev_hash, hash), ``at`` an aware UTC datetime."""
    digest = audit_chain.hasher(key)
    prev = audit_chain.GENESIS_HASH
    base = datetime(2024, 1, 1, tzinfo=UTC)
    step = timedelta(milliseconds=50)
    for i in range(1, n + 1):
        action, outcome, target, detail = ACTIONS[i % len(ACTIONS)]
        actor = "" if i % 97 == 0 else ACTORS[i % len(ACTORS)]
        target = target.format(i=i, s=800 + i % 5)
        detail = detail.format(i=i)
        at = base + i * step
        fields = (i, at, "T1", f"C{i % 7}", actor, action, target, outcome, detail)
        h = digest(audit_chain.canonical(*fields, prev))
        yield (*fields, prev, h)
        prev = h


def bulk_load(db: Database, n: int, key: bytes | None) -> float:
    db.reset()
    began = time.perf_counter()
    rows = chained_rows(n, key)
    head = (0, audit_chain.GENESIS_HASH)
    if db.engine.dialect.name == "sqlite":
        conn = sqlite3.connect(db.engine.url.database)
        try:
            while batch := [_sqlite_row(r) for _, r in zip(range(LOAD_BATCH), rows, strict=False)]:
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO audit_event (id, at, team, channel, actor, action, target, "
                    "outcome, detail, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    batch,
                )
                conn.execute("COMMIT")
                head = (batch[-1][0], batch[-1][-1])
            conn.execute("UPDATE audit_head SET count = ?, hash = ? WHERE id = 1", head)
            conn.commit()
        finally:
            conn.close()
    else:
        import psycopg

        conninfo = db.engine.url.render_as_string(hide_password=False).replace(
            "postgresql+psycopg://", "postgresql://"
        )
        with psycopg.connect(conninfo) as conn:
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY audit_event (id, at, team, channel, actor, action, target, outcome, "
                    "detail, prev_hash, hash) FROM STDIN"
                ) as copy:
                    for row in rows:
                        copy.write_row(row)
                        head = (row[0], row[-1])
                cur.execute("UPDATE audit_head SET count = %s, hash = %s WHERE id = 1", head)
            conn.commit()
            conn.execute("ANALYZE audit_event")
    return time.perf_counter() - began


def _sqlite_row(row: tuple) -> tuple:
    # The text SQLAlchemy stores for a UTC datetime on SQLite (storage.tables.UTCDateTime).
    return (row[0], row[1].strftime("%Y-%m-%d %H:%M:%S.%f"), *row[2:])


# --- reads ------------------------------------------------------------------------------


def verify_speed(db: Database, rows: int, workers: int | None) -> tuple[float, float]:
    """(rows/s of wall time, rows/s of CPU time of this process and its workers)."""
    began = time.perf_counter()
    cpu = _cpu_seconds()
    result = audit_tools.verify(db.engine, KEY.encode(), workers=workers)
    wall, cpu = time.perf_counter() - began, _cpu_seconds() - cpu
    if not result.ok or result.rows != rows:
        raise SystemExit(f"{db.name}: verify failed on the loaded chain: {result}")
    return rows / wall, rows / cpu if cpu else float("inf")


def _cpu_seconds() -> float:
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def cli(db: Database, *args: str, stdout=subprocess.DEVNULL) -> tuple[int, float, int, str]:
    """Run ``snapbot <args>`` the way an operator would; (rc, seconds inside main, peak
    RSS in MB, stderr)."""
    env = snapbot_env({"DATABASE_URL": db.url, "AUDIT_KEY": KEY})
    with tempfile.TemporaryDirectory() as cwd:  # no stray .env
        proc = subprocess.run(
            [sys.executable, "-c", EXPORT_WRAPPER, *args],
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    fields = dict(part.split("=", 1) for part in last.split() if "=" in part)
    return (
        proc.returncode,
        float(fields.get("seconds", "nan")),
        int(fields.get("maxrss_kb", "0")) // 1024,
        proc.stderr,
    )


def latest_p95(db: Database, runs: int = 300) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        with session_scope(db.engine, readonly=True) as s:
            events = repo.latest_audit(s, limit=20)
        times.append((time.perf_counter() - began) * 1000)
        assert len(events) == 20
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def export_lines(db: Database, *args: str) -> tuple[int, float, int]:
    with tempfile.TemporaryFile("w+") as out:
        rc, seconds, rss, err = cli(db, "audit", "export", *args, stdout=out)
        if rc != 0:
            raise SystemExit(f"{db.name}: export {args} failed:\n{err[-2000:]}")
        out.seek(0)
        lines = sum(1 for _ in out)
    return lines, seconds, rss


def held_row_bytes(db: Database, sample: int = 20_000) -> float:
    """What holding one row in memory costs (bytes), measured on a sample."""
    tracemalloc.start()
    held = list(itertools.islice(repo.stream_audit_rows(db.engine, batch=sample), sample))
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del held
    return size / sample  # bytes per row


# --- report -----------------------------------------------------------------------------


SECTIONS = ("append", "verify", "latest", "export")


def run(db: Database, args) -> None:
    print(f"\n== {db.name} ==")
    key = KEY.encode()
    if "append" in args.only:
        for writers in (1, 8):
            rate = append_throughput(db, writers=writers, total=args.appends)
            print(
                f"append, {writers} writer(s):".ljust(32)
                + f"{rate:10,.0f} appends/s ({args.appends} appends){_load()}"
            )
    seconds = bulk_load(db, args.rows, key)
    print(f"bulk load {args.rows:,} rows:".ljust(32) + f"{seconds:10.1f} s (chain computed here)")
    if "verify" in args.only:
        default = min(os.cpu_count() or 1, audit_tools.MAX_WORKERS)
        for workers, label in ((1, "1 process"), (default, f"{default} worker processes")):
            for attempt in (1, 2):
                wall_rate, cpu_rate = verify_speed(db, args.rows, workers)
                print(
                    f"verify, {label} #{attempt}:".ljust(32)
                    + f"{wall_rate:10,.0f} rows/s ({cpu_rate:,.0f} rows per CPU-second)"
                    + f"   target >= 200,000{_load()}"
                )
        rc, seconds, rss, _err = cli(db, "audit", "verify")
        print(
            "`snapbot audit verify` (CLI):".ljust(32)
            + f"{args.rows / seconds:10,.0f} rows/s ({seconds:.2f} s in main, start-up and "
            f"migrate check included; exit {rc}, peak RSS {rss} MB){_load()}"
        )
    if "latest" in args.only:
        p50, p95 = latest_p95(db)
        print(
            "/snapshot audit (last 20):".ljust(32)
            + f"p50 {p50:6.2f} ms, p95 {p95:6.2f} ms   target p95 <= 20 ms{_load()}"
        )
    if "export" in args.only:
        lines, seconds, rss_none = export_lines(db, "--actor", "UNOBODY")
        print(
            "export --actor UNOBODY:".ljust(32)
            + f"{lines:>10,} rows in {seconds:6.2f} s, peak RSS {rss_none} MB"
        )
        lines, seconds, rss_actor = export_lines(db, "--actor", EXPORT_ACTOR)
        print(
            f"export --actor {EXPORT_ACTOR}:".ljust(32)
            + f"{lines:>10,} rows in {seconds:6.2f} s, peak RSS {rss_actor} MB{_load()}"
        )
        lines, seconds, rss_csv = export_lines(db, "--format", "csv", "--actor", EXPORT_ACTOR)
        print(
            "export --format csv --actor:".ljust(32)
            + f"{lines - 1:>10,} rows in {seconds:6.2f} s, peak RSS {rss_csv} MB"
        )
        if not args.no_full_export:
            lines, seconds, rss_all = export_lines(db)
            print(
                "export (every row):".ljust(32)
                + f"{lines:>10,} rows in {seconds:6.2f} s, peak RSS {rss_all} MB"
                f" ({lines / seconds:,.0f} rows/s)"
            )
            per_row = held_row_bytes(db)
            print(
                f"memory: full export peak RSS is {rss_all - rss_none:+d} MB over the empty "
                f"export; holding {args.rows:,} rows would need "
                f"~{per_row * args.rows / 2**20:,.0f} MB ({per_row:.0f} B/row)"
            )


def _load() -> str:
    return f"   [load {os.getloadavg()[0]:.1f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=2000, help="appends per throughput run")
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--pg-url", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--no-full-export", action="store_true")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    args = parser.parse_args()
    args.only = {part.strip() for part in args.only.split(",")}
    print(
        f"bench/audit.py: {args.rows:,} rows, {args.appends} appends per run, "
        f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}"
    )
    wanted = {d.strip() for d in args.db.split(",")}
    with tempfile.TemporaryDirectory(prefix="snapbot-bench-") as tmp:
        if "sqlite" in wanted:
            db = sqlite_database(Path(tmp))
            try:
                run(db, args)
            finally:
                db.close()
        if "postgres" in wanted:
            if not args.pg_url:
                print("\n== PostgreSQL == skipped: give --pg-url or set TEST_DATABASE_URL")
            else:
                db = postgres_database(args.pg_url)
                try:
                    run(db, args)
                finally:
                    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
