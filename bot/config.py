"""Settings: the only reader of the environment and of `.env` (SPEC section 2).

`load_settings()` reads the variables, `Settings` holds them typed and checked. A bad
configuration is reported all at once, as one line naming every offending variable,
and never echoes a secret:

    configuration error: SLACK_BOT_TOKEN is required; RESTORE_APPROVALS must be ...

`load_or_exit()` (or the `exit_on_config_error` decorator) turns that into a message on
stderr and exit status 2, without a traceback, for the CLI.

Tests build `Settings(slack_bot_token="xoxb-test", vps_api_token="t")` directly and
derive variants with `settings.replace(...)`; the same checks run either way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_SLACK_API_URL",
    "DEFAULT_VPS_API_URL",
    "ENV_VARS",
    "LOG_LEVELS",
    "ConfigError",
    "Settings",
    "exit_on_config_error",
    "load_or_exit",
    "load_settings",
]

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
DEFAULT_VPS_API_URL = "https://admin.vps.org/api/v1/"
DEFAULT_DATABASE_URL = "sqlite:///snapbot.db"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

MAX_RESTORE_APPROVALS = 10
# A restore request is judged against the data on the server when it was opened; one
# that waited longer than a week should be asked again. Also keeps timedelta finite.
MAX_APPROVAL_TTL_MINUTES = 7 * 24 * 60
# Polling less often than hourly would leave threaded updates hours late; also bounds the lease.
MAX_POLL_SECONDS = 3600.0
# The lease lapses after max(3 polls, this) so that a slow cycle never loses it.
MIN_LEASE_SECONDS = 10.0

# Field name -> environment variable, in SPEC order (problems are reported in this order).
ENV_VARS: Mapping[str, str] = {
    "slack_bot_token": "SLACK_BOT_TOKEN",
    "slack_signing_secret": "SLACK_SIGNING_SECRET",
    "slack_app_token": "SLACK_APP_TOKEN",
    "slack_api_url": "SLACK_API_URL",
    "vps_api_url": "VPS_API_URL",
    "vps_api_token": "VPS_API_TOKEN",
    "database_url": "DATABASE_URL",
    "incident_channel": "INCIDENT_CHANNEL",
    "snapshot_operators": "SNAPSHOT_OPERATORS",
    "snapshot_approvers": "SNAPSHOT_APPROVERS",
    "slack_allowed_teams": "SLACK_ALLOWED_TEAMS",
    "restore_approvals": "RESTORE_APPROVALS",
    "approval_ttl_minutes": "APPROVAL_TTL_MINUTES",
    "audit_key": "AUDIT_KEY",
    "poll_seconds": "SNAPSHOT_POLL_SECONDS",
    "restore_safety_snapshot": "RESTORE_SAFETY_SNAPSHOT",
    "safety_snapshot_timeout_minutes": "SAFETY_SNAPSHOT_TIMEOUT_MINUTES",
    "restore_confirm": "RESTORE_CONFIRM",
    "port": "PORT",
    "host": "HOST",
    "log_level": "LOG_LEVEL",
}
_ORDER = {var: i for i, var in enumerate(ENV_VARS.values())}

# Slack's ID shapes (SPEC 14.3): a kind letter, then one or more upper-case letters or digits.
_SUBJECT_ID_RE = re.compile(r"[UWS][A-Z0-9]+")  # users (U, W) and user groups (S)
_TEAM_ID_RE = re.compile(r"T[A-Z0-9]+")
_CHANNEL_ID_RE = re.compile(r"[CGD][A-Z0-9]{2,}")
# What .env.example ships with: copied unchanged, these would start a bot that cannot
# work (or lets the example's people in), so they count as missing (SPEC 13.7).
_PLACEHOLDER_RE = re.compile(r"replace-with", re.IGNORECASE)
_EXAMPLE_IDS = frozenset(
    {"C0123ABCD", "U0123ABCD", "S0456EFGH", "U0789IJKL", "T0123ABCD", "T0456EFGH"}
)
_INT_RE = re.compile(r"[0-9]{1,9}")  # anything longer is out of every range we accept
_FLOAT_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")  # no sign, exponent, nan, inf
_SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+pysqlite"})
_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "postgresql+psycopg"})
_POSTGRES_SCHEME = "postgresql+psycopg"

_APPROVALS_RULE = f"must be a whole number from 1 to {MAX_RESTORE_APPROVALS}"
_TTL_RULE = (
    f"must be a number of minutes above 0 and at most {MAX_APPROVAL_TTL_MINUTES}, like 60 or 0.5"
)
_POLL_RULE = f"must be a number of seconds above 0 and at most {MAX_POLL_SECONDS:g}, like 15 or 0.5"
_PORT_RULE = "must be a whole number from 1 to 65535"
# A safety snapshot takes the provider 3-10 minutes; a day is far beyond any real one.
MAX_SAFETY_TIMEOUT_MINUTES = 24 * 60
_SAFETY_TIMEOUT_RULE = (
    f"must be a number of minutes above 0 and at most {MAX_SAFETY_TIMEOUT_MINUTES}, like 20"
)
_ON_OFF = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
CONFIRM_MODES = ("typed", "button")


@dataclass(frozen=True, slots=True)
class _Number:
    whole: bool
    low: float  # inclusive for whole numbers, exclusive for fractional ones
    high: float
    rule: str

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.whole else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        above = self.low <= value if self.whole else self.low < value
        return above and value <= self.high

    def parse(self, text: str) -> int | float | None:
        if self.whole:
            return int(text) if _INT_RE.fullmatch(text) else None
        return float(text) if len(text) <= 32 and _FLOAT_RE.fullmatch(text) else None


_NUMBERS: Mapping[str, _Number] = {
    "restore_approvals": _Number(True, 1, MAX_RESTORE_APPROVALS, _APPROVALS_RULE),
    "approval_ttl_minutes": _Number(False, 0, MAX_APPROVAL_TTL_MINUTES, _TTL_RULE),
    "poll_seconds": _Number(False, 0, MAX_POLL_SECONDS, _POLL_RULE),
    "safety_snapshot_timeout_minutes": _Number(
        False, 0, MAX_SAFETY_TIMEOUT_MINUTES, _SAFETY_TIMEOUT_RULE
    ),
    "port": _Number(True, 1, 65535, _PORT_RULE),
}


class ConfigError(Exception):
    """The configuration is unusable; `problems` names each variable and what is wrong.

    `str()` is one line listing every problem. No problem contains a secret's value.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("configuration error: " + "; ".join(self.problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[str]]]:
        return (type(self), (self.problems,))


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Typed, validated configuration. Secrets are left out of repr()."""

    slack_bot_token: str = field(repr=False)
    vps_api_token: str = field(repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    audit_key: str | None = field(default=None, repr=False)
    slack_api_url: str = DEFAULT_SLACK_API_URL
    vps_api_url: str = DEFAULT_VPS_API_URL
    database_url: str = DEFAULT_DATABASE_URL
    incident_channel: str | None = None
    snapshot_operators: frozenset[str] | None = None
    snapshot_approvers: frozenset[str] | None = None
    # Teams besides the installing workspace whose users may act (SPEC 13.5).
    slack_allowed_teams: frozenset[str] = frozenset()
    restore_approvals: int = 1
    approval_ttl_minutes: float = 60.0
    poll_seconds: float = 15.0
    # SPEC section 9: a safety snapshot before every restore, confirmed by typing.
    restore_safety_snapshot: bool = True
    safety_snapshot_timeout_minutes: float = 20.0
    restore_confirm: str = "typed"
    port: int = 3000
    host: str = "0.0.0.0"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = _check_and_normalise(self)
        if problems:
            raise ConfigError(_in_spec_order(problems))

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (and checked again)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        # Hand-written so that a password inside DATABASE_URL is masked as well.
        parts = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name == "database_url":
                value = self.redacted_database_url
            elif isinstance(value, frozenset):
                value = sorted(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    @property
    def socket_mode(self) -> bool:
        """Connect to Slack over Socket Mode (an app-level token is set) instead of HTTP."""
        return bool(self.slack_app_token)

    @property
    def approval_ttl(self) -> timedelta:
        return timedelta(minutes=self.approval_ttl_minutes)

    @property
    def safety_snapshot_timeout(self) -> timedelta:
        return timedelta(minutes=self.safety_snapshot_timeout_minutes)

    @property
    def lease_seconds(self) -> float:
        """How long the background-duties lease lasts without renewal (SPEC section 3)."""
        return max(3 * self.poll_seconds, MIN_LEASE_SECONDS)

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(_POSTGRES_SCHEME + ":")

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for the log scrubber (never for printing)."""
        values = (
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            self.vps_api_token,
            self.audit_key,
            _url_password(self.database_url),
        )
        return tuple(v for v in values if v)

    def http_problems(self) -> list[str]:
        """What stops this configuration from serving Slack over HTTP (the `web`
        process): every request there is verified, Socket Mode or not, so the signing
        secret is required even when SLACK_APP_TOKEN is set."""
        if not self.slack_signing_secret:
            return [
                "SLACK_SIGNING_SECRET is required to serve Slack over HTTP (the web "
                "process), even with SLACK_APP_TOKEN set"
            ]
        return []

    @property
    def redacted_database_url(self) -> str:
        """DATABASE_URL with any password replaced by ***, fit for logs."""
        return _redact_url(self.database_url)


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | os.PathLike[str] | None = ".env",
    require_slack: bool = True,
) -> Settings:
    """Read the configuration from `environ` (default os.environ) over `env_file`.

    Values from the environment win over the `.env` file; a missing file is fine.
    An empty value counts as unset. With `require_slack=False` (commands that do not
    talk to Slack or the provider: audit verify/export, vps-sim) the Slack variables and
    VPS_API_TOKEN are optional, but still checked when given; missing ones become "".
    Raises ConfigError naming every problem at once.
    """
    problems: list[str] = []
    raw: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        try:
            file_values = dotenv_values(env_file, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8"
            problems.append(f"{_printable(os.fspath(env_file))[:80]} cannot be read: {reason}")
        else:
            raw.update({k: v for k, v in file_values.items() if v is not None})
    raw.update(os.environ if environ is None else environ)

    placeholders: set[str] = set()

    def get(var: str) -> str | None:
        value = raw.get(var)
        if value is None:
            return None
        value = value.strip()
        if _is_placeholder(value):
            if var not in placeholders:
                placeholders.add(var)
                problems.append(f"{var} is still the example value from .env.example")
            return None
        return value or None

    kwargs: dict[str, Any] = {}
    for name in ("slack_bot_token", "vps_api_token"):
        kwargs[name] = get(ENV_VARS[name]) or ""
    for name in (
        "slack_signing_secret",
        "slack_app_token",
        "audit_key",
        "slack_api_url",
        "vps_api_url",
        "database_url",
        "incident_channel",
        "snapshot_operators",
        "snapshot_approvers",
        "slack_allowed_teams",
        "host",
        "log_level",
        "restore_safety_snapshot",
        "restore_confirm",
    ):
        value = get(ENV_VARS[name])
        if value is not None:
            kwargs[name] = value
    for name, kind in _NUMBERS.items():
        var = ENV_VARS[name]
        value = get(var)
        if value is None:
            continue
        number = kind.parse(value)
        if number is None or not kind.accepts(number):
            problems.append(f"{var} {kind.rule} (got {_quote(value)})")
        else:
            kwargs[name] = number

    if require_slack:
        if not kwargs["slack_bot_token"] and "SLACK_BOT_TOKEN" not in placeholders:
            problems.append("SLACK_BOT_TOKEN is required (the bot token, xoxb-...)")
        if (
            "slack_signing_secret" not in kwargs
            and "slack_app_token" not in kwargs
            and not placeholders.intersection({"SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"})
        ):
            problems.append(
                "SLACK_SIGNING_SECRET is required (or set SLACK_APP_TOKEN for Socket Mode)"
            )
        if not kwargs["vps_api_token"] and "VPS_API_TOKEN" not in placeholders:
            problems.append("VPS_API_TOKEN is required")

    try:
        settings = Settings(**kwargs)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(_in_spec_order(problems))
    return settings


P = ParamSpec("P")
R = TypeVar("R")


def exit_on_config_error(func: Callable[P, R]) -> Callable[P, R]:
    """Decorator for CLI entry points: a ConfigError becomes one stderr line and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


@exit_on_config_error
def load_or_exit(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | os.PathLike[str] | None = ".env",
    require_slack: bool = True,
) -> Settings:
    """`load_settings()`, but a bad configuration prints one line and exits with status 2."""
    return load_settings(environ, env_file=env_file, require_slack=require_slack)


# --- checks -------------------------------------------------------------------------


def _check_and_normalise(s: Settings) -> list[str]:
    """Problems with `s`; fixes up equivalent spellings in place (frozen, hence setattr)."""
    problems: list[str] = []

    def put(name: str, value: object) -> None:
        object.__setattr__(s, name, value)

    # Secrets: checked by shape only, and never quoted.
    if not isinstance(s.slack_bot_token, str) or not isinstance(s.vps_api_token, str):
        problems.append("SLACK_BOT_TOKEN and VPS_API_TOKEN must be strings")
    else:
        if s.slack_bot_token and not s.slack_bot_token.startswith("xoxb-"):
            problems.append(
                f"SLACK_BOT_TOKEN must be a bot token starting with xoxb-{_kind(s.slack_bot_token)}"
            )
        elif not _is_token(s.slack_bot_token):
            problems.append("SLACK_BOT_TOKEN must not contain spaces or control characters")
        if not _is_token(s.vps_api_token):
            problems.append("VPS_API_TOKEN must not contain spaces or control characters")
    for name in ("slack_signing_secret", "slack_app_token", "audit_key"):
        value = getattr(s, name)
        if value == "":
            put(name, None)
        elif value is not None and not isinstance(value, str):
            problems.append(f"{ENV_VARS[name]} must be a string")
    if s.slack_signing_secret and not _is_token(s.slack_signing_secret):
        problems.append("SLACK_SIGNING_SECRET must not contain spaces or control characters")
    if s.slack_app_token:
        if not s.slack_app_token.startswith("xapp-"):
            problems.append(
                "SLACK_APP_TOKEN must be an app-level token starting with xapp-"
                + _kind(s.slack_app_token)
            )
        elif not _is_token(s.slack_app_token):
            problems.append("SLACK_APP_TOKEN must not contain spaces or control characters")

    for name in ("slack_api_url", "vps_api_url"):
        url, problem = _check_base_url(getattr(s, name))
        if problem:
            problems.append(f"{ENV_VARS[name]} {problem}")
        else:
            put(name, url)

    url, problem = _check_database_url(s.database_url)
    if problem:
        problems.append(f"DATABASE_URL {problem}")
    else:
        put("database_url", url)

    if s.incident_channel == "":
        put("incident_channel", None)
    elif s.incident_channel is not None and not (
        isinstance(s.incident_channel, str) and _CHANNEL_ID_RE.fullmatch(s.incident_channel)
    ):
        problems.append(
            "INCIDENT_CHANNEL must be a channel ID like C0123ABCD, not a name "
            f"(got {_quote(s.incident_channel)})"
        )

    for name in ("snapshot_operators", "snapshot_approvers"):
        ids, problem = _check_ids(getattr(s, name), _SUBJECT_ID_RE, _SUBJECTS)
        if problem:
            problems.append(f"{ENV_VARS[name]} {problem}")
        else:
            put(name, ids)
    teams, problem = _check_ids(s.slack_allowed_teams, _TEAM_ID_RE, _TEAMS)
    if problem:
        problems.append(f"SLACK_ALLOWED_TEAMS {problem}")
    else:
        put("slack_allowed_teams", teams or frozenset())

    for name, kind in _NUMBERS.items():
        value = getattr(s, name)
        if not kind.accepts(value):
            problems.append(f"{ENV_VARS[name]} {kind.rule} (got {_quote(value)})")
        elif not kind.whole:
            put(name, float(value))

    problems.extend(_check_safety(s, put))
    if not isinstance(s.host, str) or not s.host or not _is_token(s.host):
        problems.append(f"HOST must be a host name or address (got {_quote(s.host)})")
    level = s.log_level.upper() if isinstance(s.log_level, str) else None
    if level in LOG_LEVELS:
        put("log_level", level)
    else:
        problems.append(
            f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (got {_quote(s.log_level)})"
        )
    return problems


def _check_safety(s: Settings, put: Callable[[str, object], None]) -> list[str]:
    """RESTORE_SAFETY_SNAPSHOT (on/off) and RESTORE_CONFIRM (typed/button), SPEC 2 and 9."""
    problems = []
    safety = s.restore_safety_snapshot
    if isinstance(safety, str):
        safety = _ON_OFF.get(safety.strip().lower())
    if isinstance(safety, bool):
        put("restore_safety_snapshot", safety)
    else:
        problems.append(
            f"RESTORE_SAFETY_SNAPSHOT must be on or off (got {_quote(s.restore_safety_snapshot)})"
        )
    mode = s.restore_confirm.strip().lower() if isinstance(s.restore_confirm, str) else None
    if mode in CONFIRM_MODES:
        put("restore_confirm", mode)
    else:
        problems.append(
            f"RESTORE_CONFIRM must be typed or button (got {_quote(s.restore_confirm)})"
        )
    return problems


def _check_base_url(url: object) -> tuple[str, str | None]:
    if not isinstance(url, str) or not url:
        return "", "must be an http(s) URL"
    shown = _quote(_redact_url(url))
    if not _is_token(url):
        return "", f"must be an http(s) URL without spaces (got {shown})"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "", f"must be an http(s) URL (got {shown})"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "", f"must be an http(s) URL with a host (got {shown})"
    if parts.query or parts.fragment:
        return "", f"must be a base URL without ?query or #fragment (got {shown})"
    if not url.endswith("/"):
        url += "/"
    return url, None


def _check_database_url(url: object) -> tuple[str, str | None]:
    rule = "must be sqlite:///path or postgresql://user:password@host/db"
    if not isinstance(url, str) or not url or not url.isprintable():
        return "", rule
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", rule
    scheme = scheme.lower()
    if scheme in _SQLITE_SCHEMES:
        return url, None
    if scheme in _POSTGRES_SCHEMES:
        return f"{_POSTGRES_SCHEME}://{rest}", None
    # The URL may carry a password: name only its scheme.
    return "", f"{rule} (got scheme {_quote(scheme)})"


_SUBJECTS = "Slack user (U..., W...) or user-group (S...) IDs"
_TEAMS = "Slack team IDs (T...)"


def _check_ids(
    value: object, shape: re.Pattern[str], what: str
) -> tuple[frozenset[str] | None, str | None]:
    """A comma-separated list (or an iterable) of IDs of ``shape``; None when unset.
    Every malformed item is named, so one run shows all that needs fixing."""
    if value is None:
        return None, None
    if isinstance(value, str):
        if not value.strip():
            return None, None  # empty means unset
        items: list[object] = [item.strip() for item in value.split(",")]
    elif isinstance(value, Iterable):
        items = [item.strip() if isinstance(item, str) else item for item in value]
        if not items:
            return None, None
    else:
        return None, f"must be comma-separated {what}"
    ids = [item for item in items if item != ""]
    if not ids:
        return None, "lists no IDs (leave it empty for the default)"
    bad = [item for item in ids if not isinstance(item, str) or not shape.fullmatch(item)]
    if bad:
        shown = ", ".join(_quote(item) for item in bad[:5]) + (", ..." if len(bad) > 5 else "")
        return None, f"must list {what}, comma-separated (got {shown})"
    return frozenset(ids), None


# --- small helpers ------------------------------------------------------------------


def _is_placeholder(value: str) -> bool:
    if _PLACEHOLDER_RE.search(value):
        return True
    return any(item.strip() in _EXAMPLE_IDS for item in value.split(","))


def _is_token(value: str) -> bool:
    """No whitespace and nothing unprintable: a value pasted with a stray newline fails."""
    return all(ch.isprintable() and not ch.isspace() for ch in value)


def _kind(token: str) -> str:
    """A hint when a known token of the wrong kind was pasted. Prefixes are not secret."""
    for prefix, what in (
        ("xoxb-", "bot token"),
        ("xapp-", "Socket Mode app token"),
        ("xoxp-", "user token"),
    ):
        if token.startswith(prefix):
            return f" (that is a {what}, {prefix}...)"
    return ""


def _printable(text: str) -> str:
    return "".join(
        ch if unicodedata.category(ch)[0] not in "CZ" or ch == " " else "?" for ch in text
    )


def _quote(value: object, limit: int = 40) -> str:
    """A non-secret value for an error message: one line, at most `limit` characters."""
    text = _printable(str(value))
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'"


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparseable URL>"


def _in_spec_order(problems: list[str]) -> list[str]:
    def key(problem: str) -> int:
        return _ORDER.get(problem.split(" ", 1)[0], len(_ORDER))

    return sorted(problems, key=key)


def _url_password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:  # an unparsable URL is reported elsewhere; it has no password here
        return None


def web_setting(name: str, default: int, *, low: int = 1, high: int = 64) -> int:
    """A whole-number setting of the web server (WEB_CONCURRENCY, WEB_THREADS), read
    from the environment as gunicorn's config reads it; ConfigError when malformed."""
    raw = os.environ.get(name, "").strip() or str(default)
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ConfigError([f"{name} must be a whole number from {low} to {high}"])
    return int(raw)
