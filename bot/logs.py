"""Logging: one line per event, key=value, and never a secret.

Every line reads ``ts=… level=INFO logger=bot.services thread=… event=restore.approve
request=12 actor=U2 outcome=ok``: audited events log themselves in that form
(``event_line``, called by ``bot.services.auditing.audit``); any other message becomes
``msg="…"``, and a traceback is folded into ``exc="…"`` on the same line, so one
event is one line whatever it carries (newlines are escaped).

A filter on the handler masks anything that looks like a Slack token, a bearer header
or a registered secret value (the settings' tokens, signing secret and audit key), as a
last line of defence: code never logs those in the first place."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from datetime import UTC, datetime
from urllib.parse import quote as quote_url

_SECRET_PATTERNS = [
    re.compile(r"xox[abposr]-[A-Za-z0-9-]+"),
    re.compile(r"xapp-[A-Za-z0-9-]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
    # A request body (Bolt logs one whose signature fails): the legacy verification
    # token, and the response_url, which lets anyone answer the user for 30 minutes.
    re.compile(r"((?<![\w.-])(?:token|response_url)=)[^&\s'\",]+"),
    re.compile(r"(['\"](?:token|response_url)['\"]\s*:\s*['\"])[^'\"]+"),
    # A response_url itself, wherever it appears: Slack's hooks hosts, and the URL that
    # slack_sdk's WebhookClient logs at DEBUG ("Sending a request - url: ...") whatever
    # its host (local stand-ins included). Web API URLs (…/api/method) are not secret.
    re.compile(r"(https://hooks\.slack(?:-gov)?\.com/)[^\s'\",]+"),
    # The same inside a form-encoded body (Bolt logs `payload=%7B%22token%22%3A…`).
    re.compile(r"(?i)(%22(?:token|response_url)%22%3A(?:%20|\+)*%22).+?(?=%22)"),
    re.compile(r"(?i)(https%3A%2F%2Fhooks\.slack(?:-gov)?\.com%2F)[^\s'\",&]+"),
    re.compile(r"(\burl: )(?![^\s,]*/api/)[^\s,]+"),
]
_extra_secrets: list[str] = []
_BARE = re.compile(r"[A-Za-z0-9_.:/@+#,-]+")
_STRUCTURED = re.compile(r"event=\S")
TARGET_PART = re.compile(r"([a-z_]+):(\S+)")


def register_secret(value: str | None) -> None:
    if value and len(value) >= 6 and value not in _extra_secrets:
        _extra_secrets.append(value)


def scrub(text: str) -> str:
    for value in _extra_secrets:
        # As given, and as a form or URL would carry it.
        for form in {value, quote_url(value, safe=""), quote_url(value)}:
            text = text.replace(form, "[secret]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[secret]", text)
    return text


def quote(value: object) -> str:
    """A logfmt value: bare when it is a plain word, else double-quoted with \\" \\\\ \\n
    \\r \\t (and other control characters) escaped, so it never breaks the line."""
    text = "" if value is None else str(value)
    if _BARE.fullmatch(text):
        return text
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


def event_line(event: str, *, target: str = "", **fields: object) -> str:
    """``event=<event> k=v …``. A target ``request:12 snapshot:801`` becomes
    ``request=12 snapshot=801``; empty fields are left out."""
    parts = [f"event={quote(event)}"]
    if target:
        pairs = TARGET_PART.findall(target)
        if pairs and " ".join(f"{k}:{v}" for k, v in pairs) == target:
            parts.extend(f"{k}={quote(v)}" for k, v in pairs)
        else:
            parts.append(f"target={quote(target)}")
    parts.extend(f"{k}={quote(v)}" for k, v in fields.items() if v not in (None, ""))
    return " ".join(parts)


class ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if record.exc_info:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = scrub(formatted)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class LineFormatter(logging.Formatter):
    """One record, one line of key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        head = (
            f"ts={ts}Z level={record.levelname} logger={quote(record.name)} "
            f"thread={quote(record.threadName)}"
        )
        body = (
            message
            if _STRUCTURED.match(message) and "\n" not in message
            else f"msg={quote(message)}"
        )
        line = f"{head} {body}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += f" exc={quote(record.exc_text)}"
        if record.stack_info:
            line += f" stack={quote(record.stack_info)}"
        return line


class Outage:
    """How a loop that keeps failing logs (SPEC 13.10): the first failure once, one line
    (a database error without its traceback, since the driver's message says it all),
    then nothing while it lasts, and the recovery once. ``failed()`` says how long to
    wait before the next try: the wait doubles up to ``cap``, so a dead database is not
    asked ten times a second either."""

    def __init__(
        self, logger: logging.Logger, what: str, *, first: float = 0.5, cap: float = 30.0
    ) -> None:
        self.log = logger
        self.what = what
        self.first = first
        self.cap = cap
        self.failures = 0
        self._since = 0.0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> float:
        with self._lock:
            self.failures += 1
            failures = self.failures
            if failures == 1:
                self._since = time.monotonic()
        if failures == 1:
            from sqlalchemy.exc import SQLAlchemyError

            if isinstance(exc, SQLAlchemyError):
                reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
                self.log.warning(
                    "%s failed (%s: %s); retrying quietly until it works",
                    self.what,
                    type(exc).__name__,
                    reason,
                )
            else:
                self.log.warning(
                    "%s failed; retrying quietly until it works", self.what, exc_info=exc
                )
        return min(self.cap, self.first * 2 ** min(failures - 1, 16))

    def ok(self) -> None:
        if not self.failures:
            return
        with self._lock:
            failures, self.failures = self.failures, 0
        self.log.warning(
            "%s works again after %d failed tries (%.0f s)",
            self.what,
            failures,
            time.monotonic() - self._since,
        )


class _Chatter(logging.Filter):
    """Library lines that say nothing an operator needs, every start of every process
    (SPEC 13.10): shown at DEBUG only."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.starts):
            return True
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_CHATTER = {
    # Alembic: one "setup plugin ..." line per plugin, and its dialect notes.
    "alembic.runtime.plugins": _Chatter("setup plugin"),
    "alembic.runtime.migration": _Chatter("Context impl", "Will assume"),
    # Bolt reads SLACK_BOT_TOKEN from the environment by itself, then warns that the
    # client we hand it (built from the same token) wins, or that our authorize does.
    "slack_bolt.App": _Chatter(
        "As you gave `client` as well, `token` will be unused",
        "As `installation_store` or `authorize` has been used",
    ),
}


def configure_logging(level: str = "INFO", *, secrets: tuple[str | None, ...] = ()) -> None:
    for value in secrets:
        register_secret(value)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("slack_bolt").setLevel(max(logging.INFO, root.level))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # bot/vps/retries.py and bot/jobs.py log each retry, saying what failed; stamina's
    # own line for it would only say "stamina.retry_scheduled".
    logging.getLogger("stamina").setLevel(logging.ERROR)
    for name, chatter in _CHATTER.items():
        logger = logging.getLogger(name)
        if chatter not in logger.filters:
            logger.addFilter(chatter)
