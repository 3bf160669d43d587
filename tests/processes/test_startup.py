"""A real install starting (SPEC 13.6, 13.7): what can only be checked by trying is
checked once, at start, by the real processes an operator runs (`snapbot serve`,
`snapbot worker`, the Procfile's gunicorn `web` line, `snapbot audit`), and anything
wrong stops them with one line naming the variable: no traceback, no respawn loop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from bot.config import ConfigError, Settings
from bot.jobs import JobRunner
from bot.runtime import build_runtime, check_startup
from bot.services.deps import utcnow
from bot.services.messaging import notify_incident
from snapbot_local.harness import ROOT, free_port, snapbot_env, start_web, wait_until
from snapbot_local.slack import FakeSlack

PROCFILE_WEB = (ROOT / "Procfile").read_text(encoding="utf-8").split("web:", 1)[1].strip()
COMMANDS = {
    "serve": [sys.executable, "-m", "bot", "serve"],
    "worker": [sys.executable, "-m", "bot", "worker"],
    # The Procfile's own line, run as the platform runs it.
    "web": ["/bin/sh", "-c", f"exec {sys.executable} -m {PROCFILE_WEB}"],
    "audit": [sys.executable, "-m", "bot", "audit", "verify"],
}
GUNICORN_BANNER = "[INFO] Starting gunicorn"  # gunicorn's master says it before any hook runs
BOT_TOKEN = "xoxb-startup-test"


def settings_env(**extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": "startup-signing-secret",
        "VPS_API_TOKEN": "startup-vps-token",
        "VPS_API_URL": f"http://127.0.0.1:{free_port()}/api/v1/",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "WEB_CONCURRENCY": "1",
        **extra,
    }


def run_bounded(command: str, env: dict[str, str], cwd: Path, timeout: float = 90.0):
    """Run one of COMMANDS to its end, in its own process group; one that has not
    stopped by ``timeout`` (a respawn loop) is killed and fails the test."""
    proc = subprocess.Popen(
        COMMANDS[command],
        cwd=cwd,
        env=snapbot_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`{command}` was still running after {timeout}s:\n{err[-3000:]}")
    return proc.returncode, out, err


def the_one_line(err: str) -> str:
    """stderr is one line (gunicorn's own start banner aside), with no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if GUNICORN_BANNER not in line]
    assert len(lines) == 1, err
    return lines[0]


def assert_stops_naming(var: str, command: str, env: dict[str, str], cwd: Path) -> str:
    code, _out, err = run_bounded(command, env, cwd)
    assert code != 0, err
    line = the_one_line(err)
    assert var in line, line
    assert "Booting worker" not in err  # gunicorn never forked an HTTP worker
    return line


@pytest.fixture
def hidden_psycopg(tmp_path) -> str:
    """A PYTHONPATH entry whose sitecustomize makes `import psycopg` fail exactly as it
    does when the package is not installed (ModuleNotFoundError naming it)."""
    folder = tmp_path / "no-psycopg"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\n\n\n"
        "class _NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'psycopg' or name.startswith('psycopg.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n\n\n"
        "sys.meta_path.insert(0, _NotInstalled())\n",
        encoding="utf-8",
    )
    return str(folder)


def pg_server_url(database: str) -> str:
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        pytest.skip("TEST_DATABASE_URL is not set: a PostgreSQL server is needed")
    return base.rsplit("/", 1)[0] + "/" + database


# --- DATABASE_URL -------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_database_url_whose_sqlite_folder_is_missing_stops_with_one_line(command, tmp_path):
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'snapbot.db'}"
    line = assert_stops_naming("DATABASE_URL", command, settings_env(DATABASE_URL=url), tmp_path)
    assert "no-such-folder" in line
    assert not (tmp_path / "no-such-folder").exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_database_url_on_a_closed_port_stops_with_one_line(command, tmp_path):
    url = f"postgresql://snapbot@127.0.0.1:{free_port()}/snapbot"
    line = assert_stops_naming("DATABASE_URL", command, settings_env(DATABASE_URL=url), tmp_path)
    assert "refused" in line.lower()


@pytest.mark.postgres
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_database_url_naming_a_missing_postgresql_database_stops_with_one_line(command, tmp_path):
    url = pg_server_url("snapbot_startup_missing")
    line = assert_stops_naming("DATABASE_URL", command, settings_env(DATABASE_URL=url), tmp_path)
    assert "snapbot_startup_missing" in line and "does not exist" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_postgresql_database_url_without_the_driver_says_what_to_install(
    command, tmp_path, hidden_psycopg
):
    env = settings_env(
        DATABASE_URL="postgresql://snapbot@127.0.0.1:5432/snapbot",
        PYTHONPATH=hidden_psycopg + os.pathsep + str(ROOT),
    )
    line = assert_stops_naming("DATABASE_URL", command, env, tmp_path)
    assert "pip install 'snapbot[postgres]'" in line


def test_a_database_password_never_reaches_the_error_line(tmp_path):
    url = f"postgresql://snapbot:PASSWORD-4242@127.0.0.1:{free_port()}/snapbot"
    line = assert_stops_naming("DATABASE_URL", "worker", settings_env(DATABASE_URL=url), tmp_path)
    assert "PASSWORD-4242" not in line


# --- settings in the Procfile's web process ----------------------------------------------


def test_the_web_process_with_a_missing_setting_stops_once_instead_of_respawning(tmp_path):
    env = settings_env(DATABASE_URL=f"sqlite:///{tmp_path / 'snapbot.db'}")
    del env["VPS_API_TOKEN"]
    line = assert_stops_naming("VPS_API_TOKEN", "web", env, tmp_path)
    assert line.startswith("configuration error: VPS_API_TOKEN is required")


def test_the_web_process_refuses_env_example_as_it_ships(tmp_path):
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text(encoding="utf-8"))
    env = {"HOST": "127.0.0.1", "PORT": str(free_port()), "WEB_CONCURRENCY": "1"}
    line = assert_stops_naming("SLACK_BOT_TOKEN", "web", env, tmp_path)
    assert "SLACK_SIGNING_SECRET" in line and "VPS_API_TOKEN" in line
    assert not (tmp_path / "snapbot.db").exists()  # refused before anything was opened


@pytest.mark.parametrize(
    ("var", "value"),
    # gunicorn itself reads WEB_CONCURRENCY first (a traceback for "two", its own one
    # line for "-1"), so only what it lets through is ours to refuse there.
    [("WEB_CONCURRENCY", "0"), ("WEB_THREADS", "two"), ("WEB_THREADS", "0"), ("WEB_THREADS", "-1")],
)
def test_the_web_process_with_a_malformed_web_setting_stops_with_one_line(var, value, tmp_path):
    env = settings_env(DATABASE_URL=f"sqlite:///{tmp_path / 'snapbot.db'}", **{var: value})
    line = assert_stops_naming(var, "web", env, tmp_path)
    assert line == f"configuration error: {var} must be a whole number from 1 to 64"


def test_the_web_process_needs_the_signing_secret_even_with_an_app_token(tmp_path):
    """With SLACK_APP_TOKEN set the bot may run in Socket Mode, but the `web` process
    serves HTTP: without a secret every signature would be checked with an empty key,
    which anyone can compute."""
    env = settings_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'snapbot.db'}", SLACK_APP_TOKEN="xapp-1-startup"
    )
    del env["SLACK_SIGNING_SECRET"]
    line = assert_stops_naming("SLACK_SIGNING_SECRET", "web", env, tmp_path)
    assert "even with SLACK_APP_TOKEN set" in line


def test_a_web_app_without_a_secret_counts_no_request_as_signed():
    import hashlib
    import hmac
    import time

    from bot.web import WebApp

    body, ts = b"command=%2Fsnapshot&text=list", str(int(time.time()))
    forged = "v0=" + hmac.new(b"", f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    app = WebApp.__new__(WebApp)  # only the signature check, no runtime
    app.secret = b""
    environ = {"HTTP_X_SLACK_REQUEST_TIMESTAMP": ts, "HTTP_X_SLACK_SIGNATURE": forged}
    assert app.signed(environ, body) is False
    app.secret = b"s3cret"
    signed = "v0=" + hmac.new(b"s3cret", f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    assert app.signed({**environ, "HTTP_X_SLACK_SIGNATURE": signed}, body) is True


def test_the_database_password_is_a_secret_the_log_scrubber_knows():
    settings = Settings(
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret="startup-signing-secret",
        vps_api_token="startup-vps-token",
        database_url="postgresql+psycopg://snap:pa55-word-9@db.example/snapbot",
    )
    assert "pa55-word-9" in settings.secrets()


def test_a_postgresql_engine_gives_up_connecting_within_seconds():
    """psycopg waits over two minutes by default for a host that drops packets."""
    from storage.db import PG_CONNECT_TIMEOUT_S, make_engine

    engine = make_engine("postgresql+psycopg://snap@127.0.0.1:1/snapbot")
    seen: list[dict] = []
    event.listen(engine, "do_connect", lambda _d, _r, _a, params: seen.append(dict(params)))
    try:
        with pytest.raises(OperationalError):
            engine.connect()  # refused at once on a closed port; the arguments are what count
    finally:
        engine.dispose()
    assert seen and seen[0]["connect_timeout"] == PG_CONNECT_TIMEOUT_S <= 10


# --- SLACK_BOT_TOKEN: auth.test at start -------------------------------------------------


@pytest.fixture
def fake_slack():
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ("worker", "invalid_auth"),
        ("worker", "token_revoked"),
        ("worker", "account_inactive"),
        ("worker", "not_authed"),
        ("web", "token_revoked"),
        ("serve", "invalid_auth"),
    ],
)
def test_a_token_slack_refuses_stops_the_process_naming_slack_bot_token(
    command, error, fake_slack, tmp_path
):
    fake_slack.token_error = error
    env = settings_env(
        SLACK_API_URL=fake_slack.api_url, DATABASE_URL=f"sqlite:///{tmp_path / 'snapbot.db'}"
    )
    line = assert_stops_naming("SLACK_BOT_TOKEN", command, env, tmp_path)
    assert error in line
    assert [c.method for c in fake_slack.calls()] == ["auth.test"]  # asked once, nothing else


@pytest.mark.parametrize("command", ["worker", "web"])
def test_a_token_that_is_not_a_bots_stops_the_process_naming_slack_bot_token(
    command, fake_slack, tmp_path
):
    fake_slack.user_tokens.add(BOT_TOKEN)  # Slack knows it as a person's token
    env = settings_env(
        SLACK_API_URL=fake_slack.api_url, DATABASE_URL=f"sqlite:///{tmp_path / 'snapbot.db'}"
    )
    line = assert_stops_naming("SLACK_BOT_TOKEN", command, env, tmp_path)
    assert "not a bot token" in line


def test_the_web_process_asks_slack_once_in_its_master_and_names_the_install(fake_slack, tmp_path):
    fake_slack.valid_tokens = {BOT_TOKEN}
    env = settings_env(
        SLACK_API_URL=fake_slack.api_url, DATABASE_URL=f"sqlite:///{tmp_path / 'web.db'}"
    )
    del env["HOST"], env["PORT"], env["WEB_CONCURRENCY"]
    proc = start_web(env, tmp_path, workers=2)
    try:
        # The master, then the job worker it starts: the HTTP workers inherit the answer.
        wait_until(lambda: "job worker ready" in proc.log(), timeout=60, what="the job worker")
        assert len(fake_slack.calls("auth.test")) == 2
        assert "installed in team T1 as bot user UBOT" in proc.log()
    finally:
        proc.terminate()


# --- what the check finds, in process -----------------------------------------------------


def test_check_startup_keeps_the_installs_team_for_the_services(fake_slack, tmp_path):
    fake_slack.enterprise_id = "E0ORG"
    settings = Settings(
        slack_bot_token=BOT_TOKEN,
        vps_api_token="t",
        slack_signing_secret="s",
        slack_api_url=fake_slack.api_url,
        database_url=f"sqlite:///{tmp_path / 'snapbot.db'}",
    )
    install = check_startup(settings)
    assert (install.team_id, install.enterprise_id, install.bot_user_id) == ("T1", "E0ORG", "UBOT")
    runtime = build_runtime(settings, start_duties=False, install=install)
    try:
        assert runtime.deps.installed.team == "T1"
        assert runtime.deps.installed.enterprise == "E0ORG"
    finally:
        runtime.stop()


def test_check_startup_goes_on_without_the_install_when_slack_cannot_be_asked(tmp_path):
    settings = Settings(
        slack_bot_token=BOT_TOKEN,
        vps_api_token="t",
        slack_signing_secret="s",
        slack_api_url=f"http://127.0.0.1:{free_port()}/api/",
        database_url=f"sqlite:///{tmp_path / 'snapbot.db'}",
    )
    assert check_startup(settings) is None  # Slack down is not a wrong token


def test_check_startup_raises_one_problem_naming_the_database(tmp_path):
    settings = Settings(
        slack_bot_token=BOT_TOKEN,
        vps_api_token="t",
        database_url=f"sqlite:///{tmp_path / 'gone' / 'snapbot.db'}",
    )
    with pytest.raises(ConfigError) as caught:
        check_startup(settings, slack=False)
    assert [p.split()[0] for p in caught.value.problems] == ["DATABASE_URL"]


# --- quiet logs (SPEC 13.10) ------------------------------------------------------------


class DatabaseDown:
    """While ``down`` is set, the statements matching ``tables`` fail as a database
    that went away fails them (an OperationalError at the driver's call)."""

    def __init__(self, engine, *tables: str) -> None:
        self.down = threading.Event()
        self.tries = 0
        self.tables = tables
        event.listen(engine, "before_cursor_execute", self._check)

    def _check(self, conn, cursor, statement, params, context, executemany):
        if self.down.is_set() and any(
            f"FROM {t}" in statement or f"UPDATE {t}" in statement or f"INTO {t}" in statement
            for t in self.tables
        ):
            self.tries += 1
            raise OperationalError(statement, {}, ConnectionError("server closed the connection"))


def outage_lines(caplog, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


def test_a_database_outage_in_the_job_feeder_logs_once_backs_off_and_logs_recovery(
    sqlite_engine, caplog
):
    caplog.set_level(logging.INFO)
    outage = DatabaseDown(sqlite_engine, "job")
    outage.down.set()
    runner = JobRunner(sqlite_engine, owner="feeder-test", clock=utcnow, workers=1)
    runner.start_feeding(idle=0.01)
    try:
        wait_until(lambda: outage.tries >= 4, timeout=60, what="four tries")
        outage.down.clear()
        wait_until(lambda: len(outage_lines(caplog, "bot.jobs")) >= 2, timeout=60, what="recovery")
    finally:
        runner.shutdown(wait=True)
    failed, recovered = outage_lines(caplog, "bot.jobs")
    assert "failed" in failed.getMessage() and "server closed the connection" in failed.getMessage()
    assert failed.exc_info is None  # one line, no traceback
    assert "works again" in recovered.getMessage()
    assert "Traceback" not in caplog.text


def test_a_database_outage_in_the_background_duties_logs_once_and_logs_recovery(sqlite_url, caplog):
    from bot.watcher import Duties
    from snapbot_local.stack import LocalStack

    caplog.set_level(logging.INFO)
    with LocalStack(database_url=sqlite_url, start_duties=False) as stack:
        outage = DatabaseDown(stack.runtime.engine, "lease", "outbox")
        outage.down.set()
        duties = Duties(stack.deps, interval=0.05).start()
        try:
            wait_until(lambda: outage.tries >= 4, timeout=60, what="four tries")
            outage.down.clear()
            wait_until(
                lambda: len(outage_lines(caplog, "bot.watcher")) >= 2, timeout=60, what="recovery"
            )
        finally:
            duties.stop()
    failed, recovered = outage_lines(caplog, "bot.watcher")
    assert "background duties failed" in failed.getMessage() and failed.exc_info is None
    assert "works again" in recovered.getMessage()
    assert "Traceback" not in caplog.text


def test_library_chatter_stays_out_of_info_but_shows_at_debug(capfd, tmp_path, monkeypatch):
    from bot.logs import configure_logging
    from storage.db import make_engine, migrate

    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)  # what makes Bolt warn about its token
    settings = Settings(
        slack_bot_token=BOT_TOKEN,
        vps_api_token="t",
        slack_signing_secret="s",
        slack_api_url=f"http://127.0.0.1:{free_port()}/api/",
        database_url=f"sqlite:///{tmp_path / 'snapbot.db'}",
    )
    try:
        configure_logging("INFO")
        runtime = build_runtime(settings, start_duties=False)
        runtime.stop()
        info = capfd.readouterr().err
        configure_logging("DEBUG")
        engine = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
        migrate(engine)
        engine.dispose()
        debug = capfd.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    assert "setup plugin" not in info and "Context impl" not in info
    assert "`token` will be unused" not in info
    assert "snapbot ready" in info  # our own lines still show
    assert "setup plugin" in debug or "Context impl" in debug


# --- user groups Slack cannot use (SPEC 13.6) -------------------------------------------


def told(stack, user: str, needle: str) -> str:
    def find():
        return next(
            (e.text for e in stack.slack.ephemerals(user=user) if needle in (e.text or "")), None
        )

    return stack.slack.wait_for(find, 30, what=f"{user} to be told {needle!r}")


def test_user_groups_slack_does_not_know_are_named_in_one_warning_at_start(
    fake_slack, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    fake_slack.usergroups = {"S0OPS": ["U1"]}
    settings = Settings(
        slack_bot_token=BOT_TOKEN,
        vps_api_token="t",
        slack_signing_secret="s",
        slack_api_url=fake_slack.api_url,
        database_url=f"sqlite:///{tmp_path / 'snapbot.db'}",
        snapshot_operators=frozenset({"U1", "S0OPS", "S0GONE"}),
        snapshot_approvers=frozenset({"S0LEADS", "S0GONE"}),
    )
    check_startup(settings)
    (line,) = [r.getMessage() for r in caplog.records if "user groups" in r.getMessage()]
    assert "SNAPSHOT_OPERATORS: S0GONE (no_such_subteam)" in line
    assert "SNAPSHOT_APPROVERS: S0GONE (no_such_subteam), S0LEADS (no_such_subteam)" in line
    assert "S0OPS" not in line


def test_a_workspace_without_user_groups_is_named_at_start(fake_slack, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    fake_slack.plan = "free"  # user groups are a paid feature
    settings = Settings(
        slack_bot_token=BOT_TOKEN,
        vps_api_token="t",
        slack_signing_secret="s",
        slack_api_url=fake_slack.api_url,
        database_url=f"sqlite:///{tmp_path / 'snapbot.db'}",
        snapshot_operators=frozenset({"S0OPS"}),
    )
    check_startup(settings)
    (line,) = [r.getMessage() for r in caplog.records if "user groups" in r.getMessage()]
    assert "SNAPSHOT_OPERATORS: S0OPS (plan_upgrade_required)" in line


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("no_such_subteam", "user group S0GONE does not exist"),
        ("plan_upgrade_required", "this workspace's plan has no user groups"),
    ],
)
def test_a_refusal_through_a_group_slack_cannot_use_says_the_real_reason(sqlite_url, error, reason):
    from snapbot_local.stack import LocalStack

    with LocalStack(
        database_url=sqlite_url, settings_overrides={"snapshot_operators": frozenset({"S0GONE"})}
    ) as stack:
        if error == "plan_upgrade_required":  # else: the fake knows no S0GONE
            stack.slack.plan = "free"
        stack.user("U1").command("delete 798")
        said = told(stack, "U1", "You may not delete snapshots")
    assert reason in said
    assert "try again" not in said


# --- INCIDENT_CHANNEL unreachable (SPEC 13.6) -------------------------------------------


def healthz_of(runtime) -> dict:
    import json

    from bot.web import WebApp

    statuses = []
    body = WebApp(runtime).healthz(lambda status, headers: statuses.append(status))
    assert statuses == ["200 OK"]
    return json.loads(b"".join(body))


def post_incident(stack, text: str) -> None:
    from bot.blocks.notices import incident_notice
    from storage.db import session_scope

    with session_scope(stack.runtime.engine) as s:
        mid = notify_incident(stack.deps, s, incident_notice(text, None))
    stack.deps.outbox.flush([mid])


def test_an_unreachable_incident_channel_is_said_loudly_once_and_shown_by_healthz_until_a_post_works(
    sqlite_url, caplog
):
    from snapbot_local.stack import INCIDENT_CHANNEL, LocalStack

    caplog.set_level(logging.INFO)
    with LocalStack(database_url=sqlite_url, start_duties=False) as stack:
        assert healthz_of(stack.runtime)["incident_channel"] == "untested"
        stack.slack.not_in_channels.add(INCIDENT_CHANNEL)
        post_incident(stack, "first")
        post_incident(stack, "second")
        health = healthz_of(stack.runtime)
        assert health["incident_channel"] == "unreachable: not_in_channel"
        assert health["ok"] is True and "jobs_queued" in health and "duties_holder" in health
        # Every process sees it: another runtime on the same database.
        other = build_runtime(stack.settings, start_duties=False)
        try:
            assert healthz_of(other)["incident_channel"] == "unreachable: not_in_channel"
            stack.slack.not_in_channels.discard(INCIDENT_CHANNEL)
            post_incident(stack, "third")
            assert healthz_of(other)["incident_channel"] == "ok"
        finally:
            other.stop()
    loud = [r for r in caplog.records if "INCIDENT_CHANNEL" in r.getMessage()]
    assert [r.levelno for r in loud] == [logging.ERROR, logging.WARNING]
    assert INCIDENT_CHANNEL in loud[0].getMessage() and "not_in_channel" in loud[0].getMessage()
    assert "reachable again" in loud[1].getMessage()


def test_the_first_post_to_a_reachable_incident_channel_logs_nothing(sqlite_url, caplog):
    from snapbot_local.stack import LocalStack

    caplog.set_level(logging.INFO)
    with LocalStack(database_url=sqlite_url, start_duties=False) as stack:
        post_incident(stack, "first")
        assert healthz_of(stack.runtime)["incident_channel"] == "ok"
    assert [r.getMessage() for r in caplog.records if "INCIDENT_CHANNEL" in r.getMessage()] == []
