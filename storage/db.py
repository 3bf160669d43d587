"""Engine, sessions and migrations.

SQLite (one process or a few gunicorn workers on one file) gets WAL, a busy timeout
and foreign keys, and every write transaction starts with ``BEGIN IMMEDIATE``: the
driver does not begin a transaction on SELECT, so a read-then-write would otherwise
race. Write transactions take turns (``_WriterQueue``): waiters are woken rather than
left polling in SQLite's busy handler, and the web process's acks (``urgent_writes``)
go first. PostgreSQL (several replicas) goes through psycopg 3 with pre-ping, so a
restarted database costs one failed interaction, not a restart of the bot.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30
_MIGRATION_LOCK_KEY = zlib.crc32(b"snapbot-migrations")


def normalise_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


PG_CONNECT_TIMEOUT_S = 5


def make_engine(url: str, *, echo: bool = False) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            pool_size=20,
            max_overflow=20,
        )
        _configure_sqlite(engine)
        return engine
    # psycopg's own connect timeout is over two minutes: a database host that drops
    # packets would hold a health probe, an ack or the start-up check that long.
    connect_args = {} if "connect_timeout" in url else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    return create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=30,
        pool_timeout=10,
        connect_args=connect_args,
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        # Take transaction control away from pysqlite; _on_begin emits our own BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    writers = _WriterQueue(engine)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        if conn.get_execution_options().get("readonly", False):
            conn.exec_driver_sql("BEGIN")
            return
        conn.info[_WRITE_TURN] = writers.acquire()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writers.release(conn.info.pop(_WRITE_TURN))
            raise

    def _release(info) -> None:
        turn = info.pop(_WRITE_TURN, None) if info is not None else None
        if turn is not None:
            writers.release(turn)

    def _finish(end: str):
        def finish(conn):
            try:
                info, dbapi = conn.info, conn.connection.dbapi_connection
            except Exception:
                return  # invalidated: the pool's invalidate event gave the turn back
            if _WRITE_TURN not in info:
                return
            try:
                # These events fire before SQLAlchemy ends the transaction: end it here,
                # so the next writer finds the database free (SQLAlchemy's own commit or
                # rollback then finds no transaction and does nothing, or, should this
                # one have failed, tries again and reports the error as usual).
                if dbapi is not None:
                    getattr(dbapi, end)()
            except Exception as exc:
                log.debug("SQLite %s in the event failed (SQLAlchemy retries it): %s", end, exc)
            finally:
                _release(info)

        return finish

    event.listen(engine, "commit", _finish("commit"))
    event.listen(engine, "rollback", _finish("rollback"))
    # Never keep a turn in the pool: a connection dropped, invalidated or closed without
    # commit or rollback gives it back too.
    for pool_event in ("checkin", "invalidate", "close"):
        event.listen(
            engine, pool_event, lambda _dbapi, record, *_: _release(getattr(record, "info", None))
        )


_WRITE_TURN = "snapbot_write_turn"
_urgent: contextvars.ContextVar[bool] = contextvars.ContextVar("snapbot_urgent", default=False)


@contextlib.contextmanager
def urgent_writes() -> Iterator[None]:
    """Write transactions begun in this block go before waiting background ones
    (SQLite): the web process wraps request handling in it, so an ack never queues
    behind the job workers' writes."""
    token = _urgent.set(True)
    try:
        yield
    finally:
        _urgent.reset(token)


class _WriterQueue:
    """SQLite allows one writer at a time. Left to SQLite, waiting writers poll in its
    busy handler with sleeps of up to 100 ms, and a steady stream of writers can starve
    one for seconds: under a burst of 1,000 slash commands an ack waited 13 s for its
    first insert. Here write transactions take turns instead, each waiter woken when
    the turn is free: first among this process's threads (urgent ones first), then
    among processes, with flock on two files beside the database: `.write.lock` is the
    turn, `.write.queue` a turnstile in front of it, so that a process waiting for the
    turn gets it before the holder's process takes it again (flock alone is not fair).
    A thread waits for its process's turn at most the busy timeout; past it, it goes
    ahead and SQLite decides, as before."""

    def __init__(self, engine: Engine) -> None:
        database = make_url(str(engine.url)).database
        self._base = database if database and database != ":memory:" else None
        self._files: tuple[int, int] | None = None
        self._pid = os.getpid()
        lock = threading.Lock()
        # One waiter is woken per turn (urgent ones first), not all of them: with dozens
        # of job threads waiting, waking every one on every commit cost more CPU than
        # the writes themselves.
        self._urgent = threading.Condition(lock)
        self._normal = threading.Condition(lock)
        self._held = False
        self._urgent_waiting = 0

    def acquire(self) -> tuple[bool, bool]:
        """(holds this process's turn, holds the file lock)."""
        if not self._take(_urgent.get()):
            return (False, False)
        try:
            files = self._open()
            if files is None:
                return (True, False)
            turn, turnstile = files
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            try:
                fcntl.flock(turn, fcntl.LOCK_EX)
            finally:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
            return (True, True)
        except BaseException:
            self._give()
            raise

    def release(self, held: tuple[bool, bool]) -> None:
        holds_turn, holds_file = held
        try:
            if holds_file and self._files is not None:
                fcntl.flock(self._files[0], fcntl.LOCK_UN)
        finally:
            if holds_turn:
                self._give()

    def _take(self, urgent: bool) -> bool:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        cond = self._urgent if urgent else self._normal
        with cond:
            if urgent:
                self._urgent_waiting += 1
            try:
                while self._held or (not urgent and self._urgent_waiting):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        log.warning(
                            "no SQLite write turn after %s s; going ahead", SQLITE_BUSY_TIMEOUT_S
                        )
                        return False
                    cond.wait(remaining)
                self._held = True
                return True
            finally:
                if urgent:
                    self._urgent_waiting -= 1

    def _give(self) -> None:
        with self._normal:
            self._held = False
            if self._urgent_waiting:
                self._urgent.notify()
            else:
                self._normal.notify()

    def _open(self) -> tuple[int, int] | None:
        if self._base is None:
            return None
        if self._files is None or self._pid != os.getpid():  # a forked child opens its own
            self._files = tuple(
                os.open(f"{self._base}.write.{name}", os.O_CREAT | os.O_RDWR, 0o600)
                for name in ("lock", "queue")
            )
            self._pid = os.getpid()
        return self._files


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextlib.contextmanager
def session_scope(engine: Engine, *, readonly: bool = False) -> Iterator[Session]:
    """One unit of work: committed when the block ends normally, rolled back otherwise."""
    bind = engine.execution_options(readonly=True) if readonly else engine
    session = Session(bind=bind, expire_on_commit=False)
    try:
        yield session
        if not readonly:  # a read-only scope just closes: its rows stay loaded, not expired
            session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.set_main_option(
            "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to head. Safe to call from several processes starting together:
    PostgreSQL serialises through an advisory lock, SQLite through a lock file."""
    with _migration_lock(engine) as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()


@contextlib.contextmanager
def _migration_lock(engine: Engine):
    if is_sqlite(engine):
        database = make_url(str(engine.url)).database
        lock_path = f"{database}.migrate.lock" if database and database != ":memory:" else None
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600) if lock_path else None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            with engine.connect() as conn:
                yield conn
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        conn.commit()
        try:
            yield conn
        finally:
            conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            conn.commit()


class DatabaseUnusable(Exception):
    """DATABASE_URL names a database snapbot cannot use; ``str()`` is one line saying
    why, fit for an operator (no password, no traceback)."""


POSTGRES_DRIVER_HINT = "pip install 'snapbot[postgres]'"


def open_database(url: str, *, must_exist: bool = False) -> Engine:
    """An engine on ``url`` that has answered once, or DatabaseUnusable saying why:
    no driver, a SQLite folder or (with ``must_exist``) file that is not there, a server
    that does not answer or refuses, a database that does not exist. With
    ``must_exist`` nothing is created (`audit verify` must not make an empty log)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
            if not path.parent.is_dir():
                raise DatabaseUnusable(f"names a folder that does not exist ({path.parent})")
            if must_exist and not path.is_file():
                raise DatabaseUnusable(
                    f"names no database: {path} does not exist (run this where snapbot's "
                    "database is, or set DATABASE_URL to it)"
                )
    try:
        engine = make_engine(url)
    except ModuleNotFoundError as exc:
        raise DatabaseUnusable(
            f"needs the PostgreSQL driver ({exc.name} is not installed): {POSTGRES_DRIVER_HINT}"
        ) from None
    try:
        check_database(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseUnusable(describe_failure(exc, engine)) from None
    return engine


def describe_failure(exc: BaseException, engine: Engine | None = None) -> str:
    """One line for a database error: the driver's own first words (psycopg's name the
    host, port and database, never the password), without SQLAlchemy's advice links."""
    orig = getattr(exc, "orig", None) or exc
    text_ = " ".join(str(orig).split())
    if engine is not None:
        password = engine.url.password
        if password:
            text_ = text_.replace(str(password), "***")
    where = f" ({engine.url.render_as_string(hide_password=True)})" if engine is not None else ""
    return f"cannot be used{where}: {text_[:300] or type(orig).__name__}"


def has_table(engine: Engine, name: str) -> bool:
    return inspect(engine).has_table(name)


def check_database(engine: Engine) -> None:
    """Raise if the database cannot answer (used by /healthz). A read: it takes no
    write turn (see _WriterQueue) and never waits behind writers."""
    with engine.execution_options(readonly=True).connect() as conn:
        conn.execute(text("SELECT 1"))
