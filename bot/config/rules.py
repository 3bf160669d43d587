"""What each setting accepts (SPEC section 2): one check per field, each returning the
normalised value or raising ValueError with the problem, worded for the one-line error.

A check never quotes a secret; the others quote at most 40 printable characters.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

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
# A safety snapshot takes the provider 3-10 minutes; a day is far beyond any real one.
MAX_SAFETY_TIMEOUT_MINUTES = 24 * 60
CONFIRM_MODES = ("typed", "button")

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
SECRET_FIELDS = frozenset(
    {"slack_bot_token", "slack_signing_secret", "slack_app_token", "vps_api_token", "audit_key"}
)

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
POSTGRES_SCHEME = "postgresql+psycopg"
_ON_OFF = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
_SUBJECTS = "Slack user (U..., W...) or user-group (S...) IDs"
_TEAMS = "Slack team IDs (T...)"


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

    def check(self, var: str, value: object) -> int | float:
        number = self.parse(value) if isinstance(value, str) else value
        if number is None or not self.accepts(number):
            raise ValueError(f"{var} {self.rule} (got {quote(value)})")
        return number if self.whole else float(number)


def _minutes_rule(high: int, example: str) -> str:
    return f"must be a number of minutes above 0 and at most {high}, like {example}"


NUMBERS: Mapping[str, _Number] = {
    "restore_approvals": _Number(
        True, 1, MAX_RESTORE_APPROVALS, f"must be a whole number from 1 to {MAX_RESTORE_APPROVALS}"
    ),
    "approval_ttl_minutes": _Number(
        False, 0, MAX_APPROVAL_TTL_MINUTES, _minutes_rule(MAX_APPROVAL_TTL_MINUTES, "60 or 0.5")
    ),
    "poll_seconds": _Number(
        False,
        0,
        MAX_POLL_SECONDS,
        f"must be a number of seconds above 0 and at most {MAX_POLL_SECONDS:g}, like 15 or 0.5",
    ),
    "safety_snapshot_timeout_minutes": _Number(
        False, 0, MAX_SAFETY_TIMEOUT_MINUTES, _minutes_rule(MAX_SAFETY_TIMEOUT_MINUTES, "20")
    ),
    "port": _Number(True, 1, 65535, "must be a whole number from 1 to 65535"),
}


# --- secrets: checked by shape only, and never quoted ----------------------------------


def _secret(value: object, var: str, *, optional: bool) -> str | None:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if optional and value in ("", None):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{var} must be a string")
    if not is_token(value):
        raise ValueError(f"{var} must not contain spaces or control characters")
    return value


def _audit_key(value: object) -> str | None:
    """Any string: the key is hashed, so spaces do no harm."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value in ("", None):
        return None
    if not isinstance(value, str):
        raise ValueError("AUDIT_KEY must be a string")
    return value


def _slack_token(value: object, var: str, prefix: str, what: str, *, optional: bool) -> str | None:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str) and value and not value.startswith(prefix):
        raise ValueError(f"{var} must be {what} starting with {prefix}{_kind(value)}")
    return _secret(value, var, optional=optional)


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


# --- the other values -------------------------------------------------------------------


def _base_url(var: str) -> Callable[[object], str]:
    def check(url: object) -> str:
        if not isinstance(url, str) or not url:
            raise ValueError(f"{var} must be an http(s) URL")
        shown = quote(redact_url(url))
        if not is_token(url):
            raise ValueError(f"{var} must be an http(s) URL without spaces (got {shown})")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise ValueError(f"{var} must be an http(s) URL (got {shown})") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{var} must be an http(s) URL with a host (got {shown})")
        if parts.query or parts.fragment:
            raise ValueError(f"{var} must be a base URL without ?query or #fragment (got {shown})")
        return url if url.endswith("/") else url + "/"

    return check


def _database_url(url: object) -> str:
    rule = "DATABASE_URL must be sqlite:///path or postgresql://user:password@host/db"
    if not isinstance(url, str) or not url or not url.isprintable():
        raise ValueError(rule)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(rule)
    scheme = scheme.lower()
    if scheme in _SQLITE_SCHEMES:
        return url
    if scheme in _POSTGRES_SCHEMES:
        return f"{POSTGRES_SCHEME}://{rest}"
    # The URL may carry a password: name only its scheme.
    raise ValueError(f"{rule} (got scheme {quote(scheme)})")


def _incident_channel(value: object) -> str | None:
    if value in ("", None):
        return None
    if isinstance(value, str) and _CHANNEL_ID_RE.fullmatch(value):
        return value
    raise ValueError(
        f"INCIDENT_CHANNEL must be a channel ID like C0123ABCD, not a name (got {quote(value)})"
    )


def _ids(var: str, shape: re.Pattern[str], what: str) -> Callable[[object], frozenset[str] | None]:
    """A comma-separated list (or an iterable) of IDs of ``shape``; None when unset.
    Every malformed item is named, so one run shows all that needs fixing."""

    def check(value: object) -> frozenset[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            if not value.strip():
                return None  # empty means unset
            items: list[object] = [item.strip() for item in value.split(",")]
        elif isinstance(value, Iterable):
            items = [item.strip() if isinstance(item, str) else item for item in value]
            if not items:
                return None
        else:
            raise ValueError(f"{var} must be comma-separated {what}")
        ids = [item for item in items if item != ""]
        if not ids:
            raise ValueError(f"{var} lists no IDs (leave it empty for the default)")
        bad = [item for item in ids if not isinstance(item, str) or not shape.fullmatch(item)]
        if bad:
            shown = ", ".join(quote(item) for item in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise ValueError(f"{var} must list {what}, comma-separated (got {shown})")
        return frozenset(ids)  # type: ignore[arg-type]  # every item is a str by now

    return check


def _safety_snapshot(value: object) -> bool:
    safety = _ON_OFF.get(value.strip().lower()) if isinstance(value, str) else value
    if isinstance(safety, bool):
        return safety
    raise ValueError(f"RESTORE_SAFETY_SNAPSHOT must be on or off (got {quote(value)})")


def _confirm(value: object) -> str:
    mode = value.strip().lower() if isinstance(value, str) else None
    if mode in CONFIRM_MODES:
        return mode
    raise ValueError(f"RESTORE_CONFIRM must be typed or button (got {quote(value)})")


def _host(value: object) -> str:
    if isinstance(value, str) and value and is_token(value):
        return value
    raise ValueError(f"HOST must be a host name or address (got {quote(value)})")


def _log_level(value: object) -> str:
    level = value.upper() if isinstance(value, str) else None
    if level in LOG_LEVELS:
        return level
    raise ValueError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (got {quote(value)})")


def _teams(value: object) -> frozenset[str]:
    return _ids("SLACK_ALLOWED_TEAMS", _TEAM_ID_RE, _TEAMS)(value) or frozenset()


#: Field name -> its check. Settings runs each on the value given (before pydantic's
#: own type check), so that every problem is worded as SPEC section 2 has it.
CHECKS: Mapping[str, Callable[[object], object]] = {
    "slack_bot_token": lambda v: _slack_token(
        v, "SLACK_BOT_TOKEN", "xoxb-", "a bot token", optional=False
    ),
    "slack_signing_secret": lambda v: _secret(v, "SLACK_SIGNING_SECRET", optional=True),
    "slack_app_token": lambda v: _slack_token(
        v, "SLACK_APP_TOKEN", "xapp-", "an app-level token", optional=True
    ),
    "vps_api_token": lambda v: _secret(v, "VPS_API_TOKEN", optional=False),
    "audit_key": _audit_key,
    "slack_api_url": _base_url("SLACK_API_URL"),
    "vps_api_url": _base_url("VPS_API_URL"),
    "database_url": _database_url,
    "incident_channel": _incident_channel,
    "snapshot_operators": _ids("SNAPSHOT_OPERATORS", _SUBJECT_ID_RE, _SUBJECTS),
    "snapshot_approvers": _ids("SNAPSHOT_APPROVERS", _SUBJECT_ID_RE, _SUBJECTS),
    "slack_allowed_teams": _teams,
    **{name: (lambda v, n=name: NUMBERS[n].check(ENV_VARS[n], v)) for name in NUMBERS},
    "restore_safety_snapshot": _safety_snapshot,
    "restore_confirm": _confirm,
    "host": _host,
    "log_level": _log_level,
}


# --- small helpers ------------------------------------------------------------------


def is_placeholder(value: str) -> bool:
    if _PLACEHOLDER_RE.search(value):
        return True
    return any(item.strip() in _EXAMPLE_IDS for item in value.split(","))


def is_token(value: str) -> bool:
    """No whitespace and nothing unprintable: a value pasted with a stray newline fails."""
    return all(ch.isprintable() and not ch.isspace() for ch in value)


def printable(text: str) -> str:
    return "".join(
        ch if unicodedata.category(ch)[0] not in "CZ" or ch == " " else "?" for ch in text
    )


def quote(value: object, limit: int = 40) -> str:
    """A non-secret value for an error message: one line, at most `limit` characters."""
    text = printable(str(value))
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'"


def redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparseable URL>"


def in_spec_order(problems: Iterable[str]) -> list[str]:
    def key(problem: str) -> int:
        return _ORDER.get(problem.split(" ", 1)[0], len(_ORDER))

    return sorted(problems, key=key)
