"""`load_settings()`: the only reader of the environment and of `.env` (SPEC section 2).

pydantic-settings reads the variables (python-dotenv under it reads `.env`; the
environment wins), `Settings` checks them, and every problem is reported at once.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pydantic import create_model
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.config.rules import ENV_VARS, in_spec_order, is_placeholder, printable
from bot.config.settings import ConfigError, Settings


class _TextBase(BaseSettings):
    """Every variable of ENV_VARS as the text it was given: the arguments (the
    environment) over the `.env` file, matched case-sensitively, other names ignored."""

    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", env_file_encoding="utf-8", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        **_others: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, dotenv_settings)


_Text = create_model(
    "_Text",
    __base__=_TextBase,
    **{var: (str | None, None) for var in ENV_VARS.values()},  # type: ignore[call-overload]
)


def _read(
    environ: Mapping[str, str], env_file: str | os.PathLike[str] | None, problems: list[str]
) -> dict[str, str]:
    """Each variable given, stripped, by its name; an unreadable `.env` is a problem."""
    given = {var: environ[var] for var in ENV_VARS.values() if var in environ}
    if env_file is not None and not Path(env_file).is_file():
        env_file = None
    try:
        text = _Text(_env_file=env_file, **given)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8"
        problems.append(f"{printable(os.fspath(env_file or ''))[:80]} cannot be read: {reason}")
        text = _Text(_env_file=None, **given)
    values = {var: getattr(text, var) for var in ENV_VARS.values()}
    return {var: value.strip() for var, value in values.items() if value is not None}


def _missing(given: Mapping[str, str], placeholders: set[str]) -> list[str]:
    """The Slack and provider variables every command that talks to them needs.
    One still holding its example value is already named as that."""
    problems = []
    if "SLACK_BOT_TOKEN" not in given and "SLACK_BOT_TOKEN" not in placeholders:
        problems.append("SLACK_BOT_TOKEN is required (the bot token, xoxb-...)")
    either = {"SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"}
    if not either.intersection(given) and not either.intersection(placeholders):
        problems.append("SLACK_SIGNING_SECRET is required (or set SLACK_APP_TOKEN for Socket Mode)")
    if "VPS_API_TOKEN" not in given and "VPS_API_TOKEN" not in placeholders:
        problems.append("VPS_API_TOKEN is required")
    return problems


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
    text = _read(os.environ if environ is None else environ, env_file, problems)
    placeholders = {var for var, value in text.items() if is_placeholder(value)}
    problems += [f"{var} is still the example value from .env.example" for var in placeholders]
    given = {var: v for var, v in text.items() if v and var not in placeholders}
    if require_slack:
        problems += _missing(given, placeholders)
    kwargs: dict[str, Any] = {"slack_bot_token": "", "vps_api_token": ""}
    kwargs.update({name: given[var] for name, var in ENV_VARS.items() if var in given})
    try:
        settings = Settings(**kwargs)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(in_spec_order(problems))
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


def web_setting(name: str, default: int, *, low: int = 1, high: int = 64) -> int:
    """A whole-number setting of the web server (WEB_CONCURRENCY, WEB_THREADS), read
    from the environment as gunicorn's config reads it; ConfigError when malformed."""
    raw = os.environ.get(name, "").strip() or str(default)
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ConfigError([f"{name} must be a whole number from {low} to {high}"])
    return int(raw)
