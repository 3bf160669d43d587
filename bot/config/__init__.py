"""Settings: the only reader of the environment and of `.env` (SPEC section 2).

`load_settings()` reads the variables (with pydantic-settings), `Settings` holds them
typed and checked (a pydantic-settings model; secrets are `SecretStr`). A bad
configuration is reported all at once, as one line naming every offending variable,
and never echoes a secret:

    configuration error: SLACK_BOT_TOKEN is required; RESTORE_APPROVALS must be ...

`load_or_exit()` (or the `exit_on_config_error` decorator) turns that into a message on
stderr and exit status 2, without a traceback, for the CLI.

Tests build `Settings(slack_bot_token="xoxb-test", vps_api_token="t")` directly and
derive variants with `settings.replace(...)`; the same checks run either way.

rules.py says what each variable accepts, settings.py holds `Settings` and
`ConfigError`, loading.py reads the environment.
"""

from bot.config.loading import exit_on_config_error, load_or_exit, load_settings, web_setting
from bot.config.rules import (
    CONFIRM_MODES,
    DEFAULT_DATABASE_URL,
    DEFAULT_SLACK_API_URL,
    DEFAULT_VPS_API_URL,
    ENV_VARS,
    LOG_LEVELS,
)
from bot.config.settings import ConfigError, Settings, secret_value

__all__ = [
    "CONFIRM_MODES",
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
    "secret_value",
    "web_setting",
]
