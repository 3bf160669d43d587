"""Shared fixtures: real databases (a SQLite file per test; a fresh PostgreSQL schema
per test where TEST_DATABASE_URL is set), polling helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapbot_local.harness import (
    fresh_schema,
    wait_until,  # noqa: F401 - the tests import it from here
)
from storage.db import make_engine, migrate

pytest_plugins = ["tests.secret_scan"]  # no stack secret in logs, database or Slack

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SNAPBOT_SHARED_DIR", ROOT.parent / "shared"))
PG_URL = os.environ.get("TEST_DATABASE_URL")

requires_pg = pytest.mark.skipif(
    not PG_URL,
    reason="TEST_DATABASE_URL is not set: PostgreSQL tests need a database (.ci/run sets it)",
)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'snapbot.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a schema of its own, dropped afterwards."""
    if not PG_URL:
        pytest.skip(
            "TEST_DATABASE_URL is not set: PostgreSQL tests need a database (.ci/run sets it)"
        )
    url, drop = fresh_schema(PG_URL)
    yield url
    drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """Both databases: the same test runs on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url):
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url):
    eng = make_engine(sqlite_url)
    migrate(eng)
    yield eng
    eng.dispose()
