"""Suite-wide secret scan (SPEC §2, §7: tokens and secrets never appear in the audit
log, the logs, Slack messages or exception texts).

After every test that ran a LocalStack (snapbot_local/stack.py), none of that stack's
secret values (bot token, signing secret, VPS token, audit key) may appear in

* the log records pytest captured (setup, call and teardown; with tracebacks),
* the database: audit rows, outbox payloads and errors, job payloads, progress and
  errors (exception texts end up there),
* what the fake Slack recorded (every Web API call and response_url post),
* the log files of real processes the test started under its ``tmp_path``
  (snapbot_local/harness.py writes ``*.log`` there).

Cheap by construction: each stack is scanned incrementally (rows and calls already
seen are not read again), once at each test's end and once when it stops, so a
module-scoped stack serving many tests is not re-read from the start every time.

Wired in by one line in tests/conftest.py: ``pytest_plugins = ["tests.secret_scan"]``.
A test that plants a secret on purpose opts out with ``@pytest.mark.secrets_planted``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.config import secret_value
from snapbot_local import stack as stack_module
from snapbot_local.stack import LocalStack

MARKER = "secrets_planted"
MAX_LOG_FILE_BYTES = 20 << 20
# The tables and columns that hold what the bot wrote; (table, columns, append-only).
# Append-only columns are read once per row; the others (set when a row finishes)
# are read whenever they are non-empty.
DB_COLUMNS = (
    ("audit_event", ("team", "channel", "actor", "action", "target", "detail"), True),
    ("outbox", ("payload",), True),
    ("outbox", ("error",), False),
    ("job", ("payload",), True),
    ("job", ("progress", "error"), False),
)


@dataclass
class _Watched:
    """A running stack and how far it has been scanned."""

    stack: LocalStack
    secrets: dict[str, str]
    last_id: dict[str, int] = field(default_factory=dict)
    calls_seen: int = 0


_live: dict[int, _Watched] = {}
_pending: list[str] = []  # findings of stacks scanned at stop(), not yet reported
_known: dict[str, str] = {}  # every stack secret seen this session: value -> name
_installed = False  # LocalStack.start/stop wrapped (once per session)


def secrets_of(stack: LocalStack) -> dict[str, str]:
    """{secret value: its setting's name} of a started stack."""
    s = stack.runtime.settings
    found = {
        secret_value(s.slack_bot_token): "SLACK_BOT_TOKEN",
        secret_value(s.slack_signing_secret): "SLACK_SIGNING_SECRET",
        secret_value(s.vps_api_token): "VPS_API_TOKEN",
        secret_value(s.audit_key): "AUDIT_KEY",
    }
    # Short values would match by chance; LocalStack's are long and distinctive.
    return {value: name for value, name in found.items() if value and len(value) >= 8}


def _hits(where: str, haystack: str, secrets: dict[str, str]) -> list[str]:
    return [f"{name} found in {where}" for value, name in secrets.items() if value in haystack]


def scan_stack(w: _Watched) -> list[str]:
    """New rows and calls of one stack since its last scan."""
    findings: list[str] = []
    runtime = w.stack.runtime
    if runtime is not None:
        try:
            with runtime.engine.connect() as conn:
                for table, columns, append_only in DB_COLUMNS:
                    cols = ", ".join(columns)
                    if append_only:
                        key = f"{table}:{cols}"
                        rows = conn.execute(
                            text(f"SELECT id, {cols} FROM {table} WHERE id > :after ORDER BY id"),
                            {"after": w.last_id.get(key, 0)},
                        ).all()
                        if rows:
                            w.last_id[key] = rows[-1][0]
                    else:
                        where = " OR ".join(f"{c} NOT IN ('', '{{}}')" for c in columns)
                        rows = conn.execute(
                            text(f"SELECT id, {cols} FROM {table} WHERE {where}")
                        ).all()
                    for row in rows:
                        findings += _hits(
                            f"{table} row {row[0]} ({cols})",
                            "\x00".join(str(v) for v in row[1:]),
                            w.secrets,
                        )
        except Exception as exc:  # the database may be gone (a drill); say so, do not fail
            logging.getLogger(__name__).info("secret scan skipped the database: %s", exc)
    fake = w.stack.slack
    if fake is not None:
        new = fake.calls_since(w.calls_seen)  # the recorded calls, without deep copies
        w.calls_seen += len(new)
        dumped = [(c.method, json.dumps(c.params, default=str)) for c in new]
        for method, params in dumped:
            findings += _hits(f"a fake Slack {method} call", params, w.secrets)
    return findings


def _scan_logs(records, secrets: dict[str, str]) -> list[str]:
    findings = []
    formatter = logging.Formatter()
    for record in records:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info:
            message += formatter.formatException(record.exc_info)
        elif record.exc_text:
            message += record.exc_text
        findings += _hits(f"a log record of {record.name}", message, secrets)
    return findings


def _scan_files(root: Path, secrets: dict[str, str]) -> list[str]:
    findings = []
    for path in root.rglob("*.log"):
        try:
            if path.stat().st_size > MAX_LOG_FILE_BYTES:
                continue
            content = path.read_text(errors="replace")
        except OSError:
            continue
        findings += _hits(f"the log file {path.name}", content, secrets)
    return findings


def _install() -> None:
    global _installed
    if _installed:
        return
    original_start, original_stop = LocalStack.start, LocalStack.stop

    def start(self):
        result = original_start(self)
        watched = _Watched(self, secrets_of(self))
        _live[id(self)] = watched
        _known.update(watched.secrets)
        return result

    def stop(self):
        watched = _live.pop(id(self), None)
        if watched is not None:
            _pending.extend(scan_stack(watched))
        return original_stop(self)

    LocalStack.start, LocalStack.stop = start, stop
    _installed = True


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: the test plants a secret on purpose; skip the secret scan"
    )
    _install()
    for name in ("BOT_TOKEN", "SIGNING_SECRET", "VPS_TOKEN"):  # processes started with them
        _known.setdefault(getattr(stack_module, name), f"LocalStack {name}")


@pytest.fixture(autouse=True)
def secret_scan(request, caplog):
    """Fail the test if a secret of a stack turns up anywhere it should not."""
    # Taken now: this fixture is set up first, so it is torn down after tmp_path.
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    findings = list(_pending)
    _pending.clear()
    for watched in list(_live.values()):  # incremental: also moves the marks on
        findings += scan_stack(watched)
    if request.node.get_closest_marker(MARKER):
        return
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    findings += _scan_logs(records, _known)
    if tmp is not None:
        findings += _scan_files(tmp, _known)
    if findings:
        unique = sorted(set(findings))
        pytest.fail(
            "secrets leaked (tests/secret_scan.py):\n  " + "\n  ".join(unique), pytrace=False
        )
