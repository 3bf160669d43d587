"""The three statement helpers every query module shares (dialect-aware inserts,
"inserted?" by RETURNING, prepared hot-path statements)."""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session


def _insert(session: Session, table):
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _inserted(session: Session, stmt) -> bool:
    # INSERT … ON CONFLICT DO NOTHING RETURNING: a row back means this call inserted.
    # (rowcount is not reliable for it across drivers.)
    return session.execute(stmt).first() is not None


def _prepared(build):
    """A statement for the hot path (every command's job, message and audit row):
    built once per dialect from ``bindparam``s, then run with fresh parameters on the
    session's connection. Building, cache-keying and ORM-executing a new statement
    each time was most of a `/snapshot list` job's CPU (bench/ack_latency.py)."""
    built: dict[str, object] = {}

    def run(session: Session | Connection, params: dict):
        conn = session if isinstance(session, Connection) else session.connection()
        name = conn.dialect.name
        stmt = built.get(name)
        if stmt is None:
            stmt = built[name] = build(postgresql if name == "postgresql" else sqlite)
        return conn.execute(stmt, params)

    return run
