"""`Settings`: the configuration, typed and checked (SPEC section 2), and `ConfigError`.

A pydantic-settings model whose only source is its arguments: `load_settings()` (in
bot/config/loading.py) is what reads the environment and `.env`, so a test's
`Settings(slack_bot_token="xoxb-test", vps_api_token="t")` never picks up the
machine's variables. Secrets are `SecretStr`: read them with `.get_secret_value()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from pydantic import SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.config.rules import (
    CHECKS,
    DEFAULT_DATABASE_URL,
    DEFAULT_SLACK_API_URL,
    DEFAULT_VPS_API_URL,
    ENV_VARS,
    MIN_LEASE_SECONDS,
    POSTGRES_SCHEME,
    SECRET_FIELDS,
    in_spec_order,
    redact_url,
)


class ConfigError(Exception):
    """The configuration is unusable; `problems` names each variable and what is wrong.

    `str()` is one line listing every problem. No problem contains a secret's value.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("configuration error: " + "; ".join(self.problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[str]]]:
        return (type(self), (self.problems,))


def _problems(error: ValidationError) -> list[str]:
    """Our checks' wording for each failed field (pydantic's own, named, otherwise)."""
    problems = []
    for item in error.errors(include_input=False):
        name = str(item["loc"][0]) if item["loc"] else ""
        cause = item.get("ctx", {}).get("error")
        if item["type"] == "value_error" and isinstance(cause, ValueError):
            problems.append(str(cause))
        else:
            problems.append(f"{ENV_VARS.get(name, name)} {item['msg'].lower()}")
    return problems


class Settings(BaseSettings):
    """Typed, validated configuration. Secrets are left out of repr()."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", hide_input_in_errors=True, validate_default=True
    )

    slack_bot_token: SecretStr
    vps_api_token: SecretStr
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    audit_key: SecretStr | None = None
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

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(type(self).model_fields))
        missing = sorted({"slack_bot_token", "vps_api_token"} - set(values))
        if unknown or missing:
            raise TypeError(f"Settings() got unknown {unknown} or lacks {missing}")
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(in_spec_order(_problems(exc))) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        **_others: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the arguments only; load_settings() reads the environment

    @field_validator("*", mode="before")
    @classmethod
    def _check(cls, value: object, info: ValidationInfo) -> object:
        return CHECKS[info.field_name](value)

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (and checked again)."""
        return type(self)(**{**{name: getattr(self, name) for name in ENV_VARS}, **changes})

    def __repr__(self) -> str:
        # Hand-written so that a password inside DATABASE_URL is masked as well.
        parts = []
        for name in type(self).model_fields:
            if name in SECRET_FIELDS:
                continue
            value = getattr(self, name)
            if name == "database_url":
                value = self.redacted_database_url
            elif isinstance(value, frozenset):
                value = sorted(value)
            parts.append(f"{name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

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
        return self.database_url.startswith(POSTGRES_SCHEME + ":")

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for the log scrubber (never for printing)."""
        values = [getattr(self, name) for name in ENV_VARS if name in SECRET_FIELDS]
        plain = [v.get_secret_value() for v in values if v is not None]
        return tuple(v for v in (*plain, _url_password(self.database_url)) if v)

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
        return redact_url(self.database_url)


def _url_password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:  # an unparsable URL is reported elsewhere; it has no password here
        return None


def secret_value(secret: SecretStr | None) -> str:
    """The text of a secret setting ("" when unset), for the few places that send it."""
    return secret.get_secret_value() if secret is not None else ""
