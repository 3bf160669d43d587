"""bot/config: defaults, .env handling, validation, and secrets kept out of errors."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.config import ConfigError, Settings, load_or_exit, load_settings

BOT_TOKEN = "xoxb-BOTSECRET-4242"
SIGNING_SECRET = "SIGNINGSECRET-4242"
APP_TOKEN = "xapp-APPSECRET-4242"
VPS_TOKEN = "VPSSECRET-4242"
AUDIT_KEY = "AUDITKEYSECRET-4242"
SECRETS = (BOT_TOKEN, SIGNING_SECRET, APP_TOKEN, VPS_TOKEN, AUDIT_KEY, "BOTSECRET", "APPSECRET")

MINIMAL = {
    "SLACK_BOT_TOKEN": BOT_TOKEN,
    "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    "VPS_API_TOKEN": VPS_TOKEN,
}


def load(env: dict[str, str], **kw) -> Settings:
    kw.setdefault("env_file", None)
    return load_settings(env, **kw)


def problems_of(env: dict[str, str], **kw) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(env, **kw)
    return caught.value


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --- defaults -------------------------------------------------------------------------


def test_minimal_environment_gets_every_default() -> None:
    s = load(MINIMAL)
    assert s.slack_bot_token.get_secret_value() == BOT_TOKEN
    assert s.slack_signing_secret.get_secret_value() == SIGNING_SECRET
    assert s.vps_api_token.get_secret_value() == VPS_TOKEN
    assert s.slack_app_token is None
    assert s.audit_key is None
    assert s.slack_api_url == "https://slack.com/api/"
    assert s.vps_api_url == "https://admin.vps.org/api/v1/"
    assert s.database_url == "sqlite:///snapbot.db"
    assert s.incident_channel is None
    assert s.snapshot_operators is None
    assert s.snapshot_approvers is None
    assert s.restore_approvals == 1
    assert s.approval_ttl_minutes == 60
    assert s.approval_ttl == timedelta(minutes=60)
    assert s.poll_seconds == 15
    assert s.lease_seconds == 45
    assert s.port == 3000
    assert s.host == "0.0.0.0"
    assert s.log_level == "INFO"
    assert not s.socket_mode
    assert not s.is_postgres


def test_settings_can_be_built_directly_and_replaced() -> None:
    s = Settings(slack_bot_token="xoxb-test", vps_api_token="t")
    assert s.port == 3000 and s.slack_signing_secret is None
    changed = s.replace(port=8080, poll_seconds=0.5, vps_api_url="http://127.0.0.1:9/api/v1")
    assert changed.port == 8080
    assert changed.lease_seconds == 10.0  # the floor of the lease
    assert changed.vps_api_url == "http://127.0.0.1:9/api/v1/"
    assert s.port == 3000
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_replace_checks_again() -> None:
    s = Settings(slack_bot_token="xoxb-test", vps_api_token="t")
    with pytest.raises(ConfigError, match="PORT"):
        s.replace(port=0)
    with pytest.raises(ConfigError, match="RESTORE_APPROVALS"):
        s.replace(restore_approvals=True)


def test_every_variable_is_read() -> None:
    s = load(
        {
            **MINIMAL,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_URL": "http://localhost:8001/api",
            "VPS_API_URL": "http://127.0.0.1:8002/api/v1/",
            "DATABASE_URL": "sqlite:////var/lib/snapbot/db.sqlite",
            "INCIDENT_CHANNEL": "C0INCIDENT",
            "SNAPSHOT_OPERATORS": " U01AAA , W02BBB,S03CCC ",
            "SNAPSHOT_APPROVERS": "U04DDD",
            "RESTORE_APPROVALS": "2",
            "APPROVAL_TTL_MINUTES": "30",
            "AUDIT_KEY": AUDIT_KEY,
            "SNAPSHOT_POLL_SECONDS": "2.5",
            "PORT": "8080",
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "debug",
        }
    )
    assert s.socket_mode and s.slack_app_token.get_secret_value() == APP_TOKEN
    assert s.slack_api_url == "http://localhost:8001/api/"
    assert s.vps_api_url == "http://127.0.0.1:8002/api/v1/"
    assert s.database_url == "sqlite:////var/lib/snapbot/db.sqlite"
    assert s.incident_channel == "C0INCIDENT"
    assert s.snapshot_operators == frozenset({"U01AAA", "W02BBB", "S03CCC"})
    assert s.snapshot_approvers == frozenset({"U04DDD"})
    assert s.restore_approvals == 2
    assert s.approval_ttl == timedelta(minutes=30)
    assert s.audit_key.get_secret_value() == AUDIT_KEY
    assert s.poll_seconds == 2.5
    assert s.lease_seconds == 10.0
    assert (s.port, s.host, s.log_level) == (8080, "127.0.0.1", "DEBUG")


def test_empty_values_count_as_unset() -> None:
    s = load(
        {
            **MINIMAL,
            "SNAPSHOT_OPERATORS": "",
            "SNAPSHOT_APPROVERS": "  ",
            "PORT": "",
            "AUDIT_KEY": "",
        }
    )
    assert s.snapshot_operators is None and s.snapshot_approvers is None
    assert s.port == 3000 and s.audit_key is None


def test_fractional_minutes_and_seconds_are_accepted() -> None:
    s = load({**MINIMAL, "APPROVAL_TTL_MINUTES": "0.05", "SNAPSHOT_POLL_SECONDS": "0.2"})
    assert s.approval_ttl == timedelta(seconds=3)
    assert s.poll_seconds == 0.2
    assert s.lease_seconds == 10.0


def test_lease_is_three_polls_when_that_is_longer_than_ten_seconds() -> None:
    assert load({**MINIMAL, "SNAPSHOT_POLL_SECONDS": "20"}).lease_seconds == 60.0


# --- .env -------------------------------------------------------------------------------


def test_env_file_is_read_and_the_environment_wins(tmp_path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"SLACK_BOT_TOKEN={BOT_TOKEN}\n"
        f"SLACK_SIGNING_SECRET='{SIGNING_SECRET}'\n"
        f'VPS_API_TOKEN="{VPS_TOKEN}"\n'
        "PORT=4000\n"
        "LOG_LEVEL=warning\n"
        "# a comment\n"
    )
    s = load_settings({"PORT": "5000"}, env_file=env_file)
    assert s.slack_bot_token.get_secret_value() == BOT_TOKEN
    assert s.slack_signing_secret.get_secret_value() == SIGNING_SECRET
    assert s.vps_api_token.get_secret_value() == VPS_TOKEN
    assert s.port == 5000
    assert s.log_level == "WARNING"


def test_missing_env_file_is_fine(tmp_path) -> None:
    assert load_settings(MINIMAL, env_file=tmp_path / "absent.env").port == 3000


def test_environ_none_reads_os_environ(monkeypatch, tmp_path) -> None:
    for var, value in MINIMAL.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("PORT", "3999")
    assert load_settings(env_file=tmp_path / "absent.env").port == 3999


# --- required variables ---------------------------------------------------------------


@pytest.mark.parametrize("missing", sorted(MINIMAL))
def test_each_missing_required_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in MINIMAL.items() if k != missing}
    error = problems_of(env)
    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{missing} is required")


def test_every_problem_is_reported_at_once_on_one_line() -> None:
    error = problems_of({"RESTORE_APPROVALS": "0", "PORT": "http"})
    text = str(error)
    assert "\n" not in text
    assert text.startswith("configuration error: SLACK_BOT_TOKEN is required")
    for var in ("SLACK_SIGNING_SECRET", "VPS_API_TOKEN", "RESTORE_APPROVALS", "PORT"):
        assert var in text
    assert len(error.problems) == 5
    assert text == "configuration error: " + "; ".join(error.problems)


def test_socket_mode_does_not_need_a_signing_secret() -> None:
    s = load({"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN, "VPS_API_TOKEN": "v"})
    assert s.socket_mode
    assert s.slack_signing_secret is None


def test_commands_without_slack_need_no_tokens() -> None:
    s = load({"DATABASE_URL": "sqlite:///audit.db"}, require_slack=False)
    assert s.slack_bot_token.get_secret_value() == "" and s.vps_api_token.get_secret_value() == ""
    assert s.slack_signing_secret is None
    assert s.database_url == "sqlite:///audit.db"


def test_commands_without_slack_still_check_what_is_given() -> None:
    error = problems_of({"SLACK_BOT_TOKEN": "nope", "PORT": "0"}, require_slack=False)
    assert [p.split()[0] for p in error.problems] == ["SLACK_BOT_TOKEN", "PORT"]


# --- malformed values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RESTORE_APPROVALS", "0"),
        ("RESTORE_APPROVALS", "abc"),
        ("RESTORE_APPROVALS", "11"),
        ("RESTORE_APPROVALS", "1.0"),
        ("RESTORE_APPROVALS", "-1"),
        ("APPROVAL_TTL_MINUTES", "-1"),
        ("APPROVAL_TTL_MINUTES", "nan"),
        ("APPROVAL_TTL_MINUTES", "inf"),
        ("APPROVAL_TTL_MINUTES", "0"),
        ("APPROVAL_TTL_MINUTES", "1e3"),
        ("APPROVAL_TTL_MINUTES", "99999999"),
        ("SNAPSHOT_POLL_SECONDS", "0"),
        ("SNAPSHOT_POLL_SECONDS", "-0.5"),
        ("SNAPSHOT_POLL_SECONDS", "fast"),
        ("PORT", "70000"),
        ("PORT", "0"),
        ("PORT", "80a"),
        ("PORT", "٣٠٠٠"),  # Arabic-Indic digits are not a port
        ("PORT", "9" * 5000),
        ("SNAPSHOT_OPERATORS", "bob"),
        ("SNAPSHOT_OPERATORS", "U01AAA,bob"),
        ("SNAPSHOT_OPERATORS", ","),
        ("SNAPSHOT_APPROVERS", "u01aaa"),
        ("SNAPSHOT_APPROVERS", "C0CHANNEL"),
        ("SNAPSHOT_APPROVERS", "U"),
        ("SNAPSHOT_APPROVERS", "U01-AAA"),
        ("SNAPSHOT_OPERATORS", "S01aaa"),
        ("SLACK_ALLOWED_TEAMS", "U01AAA"),
        ("SLACK_ALLOWED_TEAMS", "t01aaa"),
        ("SLACK_ALLOWED_TEAMS", "T"),
        ("SLACK_ALLOWED_TEAMS", "E01ORG"),
        ("INCIDENT_CHANNEL", "general"),
        ("INCIDENT_CHANNEL", "#incidents"),
        ("LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_URL", "snapbot.db"),
        ("VPS_API_URL", "ftp://admin.vps.org/"),
        ("VPS_API_URL", "admin.vps.org/api"),
        ("VPS_API_URL", "https:///api/"),
        ("SLACK_API_URL", "http://slack.com/api/?x=1"),
        ("HOST", "0.0.0.0 extra"),
    ],
)
def test_malformed_value_is_named_and_quoted(var: str, value: str) -> None:
    error = problems_of({**MINIMAL, var: value})
    assert len(error.problems) == 1
    problem = error.problems[0]
    assert problem.startswith(var + " ")
    assert "\n" not in str(error)
    assert len(problem) < 200  # long values are shown truncated


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SLACK_BOT_TOKEN", "abc"),
        ("SLACK_BOT_TOKEN", APP_TOKEN),
        ("SLACK_BOT_TOKEN", BOT_TOKEN + " trailing-part"),
        ("SLACK_APP_TOKEN", BOT_TOKEN),
        ("SLACK_APP_TOKEN", "APPSECRET"),
        ("SLACK_SIGNING_SECRET", SIGNING_SECRET + "\x00"),
        ("VPS_API_TOKEN", VPS_TOKEN + " more"),
    ],
)
def test_malformed_secret_is_named_but_never_echoed(var: str, value: str) -> None:
    error = problems_of({**MINIMAL, var: value})
    assert [p.split()[0] for p in error.problems] == [var]
    assert_no_secret(str(error))


def test_token_of_the_wrong_kind_gets_a_hint() -> None:
    error = problems_of({**MINIMAL, "SLACK_BOT_TOKEN": APP_TOKEN})
    assert "xoxb-" in str(error) and "xapp-" in str(error)


def test_database_url_error_shows_no_password() -> None:
    error = problems_of({**MINIMAL, "DATABASE_URL": "mysql://snap:DBPASSWORD@db/snap"})
    assert "DATABASE_URL" in str(error)
    assert "DBPASSWORD" not in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "postgres://snap:pw@db:5432/snap",
        "postgresql://snap:pw@db:5432/snap",
        "postgresql+psycopg://snap:pw@db:5432/snap",
    ],
)
def test_postgres_urls_mean_psycopg(url: str) -> None:
    s = load({**MINIMAL, "DATABASE_URL": url})
    assert s.database_url == "postgresql+psycopg://snap:pw@db:5432/snap"
    assert s.is_postgres


def test_id_lists_take_slacks_shapes_down_to_one_character_after_the_letter() -> None:
    s = load(
        {
            **MINIMAL,
            "SNAPSHOT_OPERATORS": "U1,W2,S3,U012AB3CD",
            "SNAPSHOT_APPROVERS": "S0AB",
            "SLACK_ALLOWED_TEAMS": " T1 , T0PARTNER ",
        }
    )
    assert s.snapshot_operators == frozenset({"U1", "W2", "S3", "U012AB3CD"})
    assert s.snapshot_approvers == frozenset({"S0AB"})
    assert s.slack_allowed_teams == frozenset({"T1", "T0PARTNER"})


def test_slack_allowed_teams_unset_means_only_the_installing_workspace() -> None:
    assert load(MINIMAL).slack_allowed_teams == frozenset()
    assert Settings(slack_bot_token="xoxb-t", vps_api_token="t").slack_allowed_teams == frozenset()


def test_every_malformed_id_in_a_list_is_named_in_the_one_line() -> None:
    error = problems_of(
        {**MINIMAL, "SNAPSHOT_OPERATORS": "U1,bob,u2", "SLACK_ALLOWED_TEAMS": "T1,C1,T-2"}
    )
    assert "\n" not in str(error)
    operators, teams = error.problems
    assert operators.startswith("SNAPSHOT_OPERATORS ") and "'bob'" in operators
    assert "'u2'" in operators and "'U1'" not in operators
    assert teams.startswith("SLACK_ALLOWED_TEAMS ") and "'C1'" in teams and "'T-2'" in teams


def test_log_level_is_case_insensitive() -> None:
    assert load({**MINIMAL, "LOG_LEVEL": "Error"}).log_level == "ERROR"


# --- secrets ----------------------------------------------------------------------------


def test_repr_shows_no_secret() -> None:
    s = load(
        {
            **MINIMAL,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "AUDIT_KEY": AUDIT_KEY,
            "DATABASE_URL": "postgres://snap:DBPASSWORD@db/snap",
        }
    )
    for text in (repr(s), str(s)):
        assert_no_secret(text)
        assert "DBPASSWORD" not in text
        assert "postgresql+psycopg://snap:***@db/snap" in text
        assert "port=3000" in text


def test_all_problems_at_once_echo_no_secret() -> None:
    error = problems_of(
        {
            "SLACK_BOT_TOKEN": "BOTSECRET",
            "SLACK_APP_TOKEN": "APPSECRET",
            "SLACK_SIGNING_SECRET": SIGNING_SECRET + " x",
            "VPS_API_TOKEN": VPS_TOKEN + "\n",
            "AUDIT_KEY": AUDIT_KEY,
            "PORT": "x",
        }
    )
    assert_no_secret(str(error))
    assert_no_secret(repr(error))
    assert len(error.problems) == 4  # the VPS token's trailing newline is only whitespace


# --- the CLI helper ---------------------------------------------------------------------


def test_load_or_exit_prints_one_line_and_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        load_or_exit({"SLACK_BOT_TOKEN": "BOTSECRET", "PORT": "0"}, env_file=None)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("configuration error: SLACK_BOT_TOKEN")
    assert "Traceback" not in err
    assert_no_secret(err)


def test_load_or_exit_returns_settings_when_fine() -> None:
    assert load_or_exit(MINIMAL, env_file=None).port == 3000


# --- .env.example -------------------------------------------------------------------------

ENV_EXAMPLE = Path(__file__).resolve().parents[3] / ".env.example"


def test_env_example_as_is_is_refused_naming_each_placeholder_like_a_missing_value() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, env_file=ENV_EXAMPLE)
    assert [p.split()[0] for p in caught.value.problems] == [
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "VPS_API_TOKEN",
    ]
    assert all("example value" in p for p in caught.value.problems)
    assert "replace-with" not in str(caught.value)


def test_env_example_with_every_example_filled_in_is_refused_for_each_example_value(
    tmp_path,
) -> None:
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    filled = tmp_path / ".env"
    filled.write_text(re.sub(r"^# (?=[A-Z_]+=)", "", example, flags=re.M), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, env_file=filled)
    assert [p.split()[0] for p in caught.value.problems] == [
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_APP_TOKEN",
        "VPS_API_TOKEN",
        "INCIDENT_CHANNEL",
        "SNAPSHOT_OPERATORS",
        "SNAPSHOT_APPROVERS",
        "SLACK_ALLOWED_TEAMS",
        "AUDIT_KEY",
    ]


def test_env_example_with_its_placeholders_replaced_is_a_working_configuration(tmp_path) -> None:
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    real = re.sub(r"replace-with-[a-z-]+", "real-value-4242", example)
    filled = tmp_path / ".env"
    filled.write_text(real, encoding="utf-8")
    s = load_settings({}, env_file=filled)
    assert s.slack_bot_token.get_secret_value() == "xoxb-real-value-4242" and not s.socket_mode


def test_env_example_documents_the_web_threads_the_code_defaults_to() -> None:
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    (documented,) = re.findall(r"^# WEB_THREADS=(\d+)$", example, flags=re.M)
    web = (ENV_EXAMPLE.parent / "bot" / "web.py").read_text(encoding="utf-8")
    (default,) = re.findall(r"web_setting\(\"WEB_THREADS\", (\d+)\)", web)
    assert documented == default


# --- safer restores (SPEC 2 and 9) ----------------------------------------------------


def test_safer_restores_are_on_by_default() -> None:
    s = load(MINIMAL)
    assert s.restore_safety_snapshot is True
    assert s.safety_snapshot_timeout_minutes == 20
    assert s.safety_snapshot_timeout == timedelta(minutes=20)
    assert s.restore_confirm == "typed"


@pytest.mark.parametrize(
    ("safety", "expected"), [("on", True), ("OFF", False), (" off ", False), ("on ", True)]
)
def test_restore_safety_snapshot_is_on_or_off(safety: str, expected: bool) -> None:
    s = load({**MINIMAL, "RESTORE_SAFETY_SNAPSHOT": safety, "RESTORE_CONFIRM": "Button"})
    assert s.restore_safety_snapshot is expected
    assert s.restore_confirm == "button"


def test_bad_safety_settings_are_each_named_on_one_line() -> None:
    err = problems_of(
        {
            **MINIMAL,
            "RESTORE_SAFETY_SNAPSHOT": "maybe",
            "SAFETY_SNAPSHOT_TIMEOUT_MINUTES": "0",
            "RESTORE_CONFIRM": "click",
        }
    )
    text = str(err)
    assert "\n" not in text
    assert "RESTORE_SAFETY_SNAPSHOT must be on or off" in text
    assert "SAFETY_SNAPSHOT_TIMEOUT_MINUTES must be a number of minutes above 0" in text
    assert "RESTORE_CONFIRM must be typed or button" in text
    assert text.index("RESTORE_SAFETY_SNAPSHOT") < text.index("RESTORE_CONFIRM")


# --- pydantic-settings underneath ---------------------------------------------------------


def test_secrets_are_secret_str_and_masked_even_in_their_own_repr() -> None:
    s = load({**MINIMAL, "AUDIT_KEY": AUDIT_KEY})
    for name in ("slack_bot_token", "slack_signing_secret", "vps_api_token", "audit_key"):
        assert isinstance(getattr(s, name), SecretStr)
        assert_no_secret(repr(getattr(s, name)))
    assert set(s.secrets()) == {BOT_TOKEN, SIGNING_SECRET, VPS_TOKEN, AUDIT_KEY}


def test_replace_keeps_the_secrets() -> None:
    s = load(MINIMAL).replace(port=8080)
    assert s.slack_bot_token.get_secret_value() == BOT_TOKEN and s.port == 8080


def test_settings_built_directly_ignore_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("PORT", "3999")
    monkeypatch.setenv("port", "3999")
    assert Settings(slack_bot_token="xoxb-t", vps_api_token="t").port == 3000


def test_variable_names_are_case_sensitive(tmp_path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("port=4000\n")
    assert load_settings({**MINIMAL, "log_level": "DEBUG"}, env_file=env_file).port == 3000


def test_an_env_file_that_is_not_utf8_is_named_with_the_rest(tmp_path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"PORT=\xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"PORT": "0"}, env_file=env_file)
    assert caught.value.problems[-1].endswith("cannot be read: it is not UTF-8")
    assert caught.value.problems[0].startswith("SLACK_BOT_TOKEN is required")
