"""Assemble a running snapbot from Settings: database (migrated), provider client,
Slack client, the shared collaborators (Deps), the Bolt app and the background duties. The gunicorn
workers, `snapbot serve`, the demo, the shell and the tests all start it this way.

``check_startup`` is what a real install runs first, once (SPEC 13.6, 13.7): the
database answers and is migrated, and Slack's ``auth.test`` takes SLACK_BOT_TOKEN as
a bot's token. Anything wrong is a ConfigError naming the variable, one line."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from bot.app import build_app
from bot.config import ENV_VARS, ConfigError, Settings, exit_on_config_error, secret_value
from bot.core import approval, authz, view_metadata
from bot.jobs import DEFAULT_WORKERS, JobRunner
from bot.outbox import Outbox
from bot.services import dispatch
from bot.services.actors import GroupCache
from bot.services.deps import Deps, Installed, utcnow
from bot.vps.client import VpsClient
from bot.watcher import Duties
from storage.db import DatabaseUnusable, describe_failure, migrate, open_database

log = logging.getLogger(__name__)

# What one user interaction may spend on the provider: SPEC §8 promises an answer
# within 30 s, retries included.
PROVIDER_TIMEOUT_S = 5.0
PROVIDER_RETRIES = 2


# auth.test answers that only a wait can change (SPEC 13.3); any other refusal is final.
SLACK_TRANSIENT = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


def make_owner_id(group: str | None = None) -> str:
    """Who holds a lease or claims a job: host, pid, and a nonce; a job worker started
    by a `web` process adds ``/web-<master pid>`` so that process can tell it is its own."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    return f"{owner}/{group}" if group else owner


def make_slack_client(settings: Settings) -> WebClient:
    client = WebClient(
        token=secret_value(settings.slack_bot_token), base_url=settings.slack_api_url, timeout=10
    )
    # slack-sdk retries only connection errors by default; 429s are waited out too.
    client.retry_handlers = [
        ConnectionErrorRetryHandler(max_retry_count=2),
        RateLimitErrorRetryHandler(max_retry_count=3),
    ]
    return client


@dataclass(frozen=True, slots=True)
class Install:
    """Where the bot token belongs, as auth.test says."""

    team_id: str
    bot_user_id: str
    bot_id: str
    enterprise_id: str | None = None


# What this process's check found. gunicorn's master checks before it forks, so its
# HTTP workers inherit this and do not ask Slack again.
_checked: Install | None = None
_check_done = False


def check_startup(settings: Settings, *, slack: bool = True) -> Install | None:
    """The database (reached, then migrated) and, with ``slack``, the bot token. Raises
    ConfigError naming DATABASE_URL or SLACK_BOT_TOKEN. The Install is None only when
    Slack could not be asked (a network failure, Slack's own outage): that is logged,
    and the bot starts anyway rather than stay down while Slack is."""
    global _checked, _check_done
    engine = open_engine(settings)
    try:
        # The token before the migration: a wrong one creates no schema.
        client = make_slack_client(settings)
        install = verify_bot_token(client) if slack else None
        if install is not None:
            warn_unusable_groups(settings, GroupCache(client))
        migrate_or_raise(engine)
    finally:
        engine.dispose()
    if slack:
        _checked, _check_done = install, True
    return install


@exit_on_config_error
def check_startup_or_exit(settings: Settings) -> Install | None:
    """check_startup, but a problem prints one line and exits with status 2."""
    return check_startup(settings)


def startup_checked() -> bool:
    """Whether check_startup ran in this process (or in gunicorn's master before the fork)."""
    return _check_done


def checked_install() -> Install | None:
    return _checked


def open_engine(settings: Settings, *, must_exist: bool = False) -> Engine:
    try:
        return open_database(settings.database_url, must_exist=must_exist)
    except DatabaseUnusable as exc:
        raise ConfigError([f"DATABASE_URL {exc}"]) from None


def migrate_or_raise(engine: Engine) -> None:
    try:
        migrate(engine)
    except SQLAlchemyError as exc:
        raise ConfigError([f"DATABASE_URL {describe_failure(exc, engine)}"]) from None


def verify_bot_token(client: WebClient) -> Install | None:
    """auth.test, once: a token Slack refuses (invalid, revoked, deactivated) or that is
    not a bot's is a ConfigError; otherwise where the token belongs."""
    try:
        answer = client.auth_test()
    except SlackApiError as exc:
        response = exc.response
        error = str(response.get("error") or "") if response is not None else ""
        status = response.status_code if response is not None else 0
        if error in SLACK_TRANSIENT or status == 429 or status >= 500:
            log.warning("could not check SLACK_BOT_TOKEN now: Slack answered %s", error or status)
            return None
        raise ConfigError(
            [
                f"SLACK_BOT_TOKEN was refused by Slack ({error or status}): reinstall the app "
                "or copy its Bot User OAuth Token (xoxb-...) again"
            ]
        ) from None
    except (SlackClientError, OSError) as exc:
        log.warning(
            "could not check SLACK_BOT_TOKEN now: Slack did not answer (%s)", type(exc).__name__
        )
        return None
    if not answer.get("bot_id") or not answer.get("user_id") or not answer.get("team_id"):
        raise ConfigError(
            [
                "SLACK_BOT_TOKEN is not a bot token (Slack's auth.test names no bot): use the "
                "app's Bot User OAuth Token, xoxb-..."
            ]
        )
    install = Install(
        team_id=str(answer["team_id"]),
        bot_user_id=str(answer["user_id"]),
        bot_id=str(answer["bot_id"]),
        enterprise_id=str(answer["enterprise_id"]) if answer.get("enterprise_id") else None,
    )
    log.info(
        "installed in team %s%s as bot user %s",
        install.team_id,
        f" (enterprise {install.enterprise_id})" if install.enterprise_id else "",
        install.bot_user_id,
    )
    return install


def warn_unusable_groups(settings: Settings, groups: GroupCache) -> None:
    """One warning line naming the user groups of SNAPSHOT_OPERATORS/APPROVERS that Slack
    says do not exist, or that the workspace's plan cannot have: nobody gets rights
    through them, and an operator should hear it now, not from a refused colleague."""
    found = []
    for name in ("snapshot_operators", "snapshot_approvers"):
        allowed = getattr(settings, name)
        gone = groups.unusable(sorted(authz.groups_of(allowed)))
        if gone:
            listed = ", ".join(f"{g} ({error})" for g, error in sorted(gone.items()))
            found.append(f"{ENV_VARS[name]}: {listed}")
    if found:
        log.warning(
            "user groups Slack cannot use, whose members get no rights: %s", "; ".join(found)
        )


def make_deps(
    settings: Settings,
    *,
    engine: Engine,
    vps: VpsClient,
    slack: WebClient,
    clock: Callable[[], datetime] = utcnow,
    owner: str | None = None,
    workers: int = DEFAULT_WORKERS,
    runs_jobs: bool = True,
    install: Install | None = None,
) -> Deps:
    """Every collaborator the use cases share, built here and only here; the job
    runner gets one handler per job kind (bot/services/dispatch.py).
    ``runs_jobs``: False in gunicorn's HTTP workers (bot/jobs.py, bot/worker.py).
    ``install``: what check_startup found; None: the door asks auth.test again."""
    owner = owner or make_owner_id()
    deps = Deps(
        settings=settings,
        engine=engine,
        vps=vps,
        slack=slack,
        clock=clock,
        owner=owner,
        outbox=Outbox(
            engine, slack, owner=owner, clock=clock, watch_channel=settings.incident_channel
        ),
        jobs=JobRunner(engine, owner=owner, clock=clock, workers=workers, runs_jobs=runs_jobs),
        groups=GroupCache(slack),
        policy=approval.Policy(
            approvers=settings.snapshot_approvers,
            required_approvals=settings.restore_approvals,
            ttl=settings.approval_ttl,
        ),
        audit_key=secret_value(settings.audit_key).encode() or None,
        # Socket Mode has no signing secret; the bot token is as private.
        metadata_key=view_metadata.metadata_key(
            secret_value(settings.slack_signing_secret) or secret_value(settings.slack_bot_token)
        ),
        installed=Installed(
            team=install.team_id if install else None,
            enterprise=install.enterprise_id if install else None,
        ),
    )
    dispatch.register(deps)
    return deps


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    deps: Deps
    app: App
    duties: Duties
    install: Install | None = None

    def stop(self) -> None:
        """Graceful stop (SIGTERM): no new work, running jobs finish, lease handed back."""
        self.deps.jobs.shutdown(wait=True)
        self.duties.stop()
        self.deps.vps.close()
        self.engine.dispose()


def build_runtime(
    settings: Settings,
    *,
    start_duties: bool = True,
    vps: VpsClient | None = None,
    poll_interval: float | None = None,
    runs_jobs: bool = True,
    feed_jobs: bool = False,
    job_workers: int = DEFAULT_WORKERS,
    owner: str | None = None,
    install: Install | None = None,
) -> Runtime:
    """One process's snapbot. The defaults make a complete install in one process;
    gunicorn's HTTP workers pass ``runs_jobs=False, start_duties=False`` (they only
    acknowledge), and the job worker beside them ``feed_jobs=True`` (bot/worker.py).
    ``install``: what check_startup found (``Deps.installed``).
    A database that cannot be used is a ConfigError naming DATABASE_URL."""
    engine = open_engine(settings)
    migrate_or_raise(engine)
    vps = vps or VpsClient(
        settings.vps_api_url,
        secret_value(settings.vps_api_token),
        timeout=PROVIDER_TIMEOUT_S,
        retries=PROVIDER_RETRIES,
    )
    deps = make_deps(
        settings,
        engine=engine,
        vps=vps,
        slack=make_slack_client(settings),
        owner=owner,
        workers=job_workers,
        runs_jobs=runs_jobs,
        install=install,
    )
    app = build_app(deps)
    duties = Duties(deps, interval=poll_interval)
    if start_duties:
        duties.start()
    if feed_jobs:
        deps.jobs.start_feeding()
    log.info("snapbot ready (owner %s, database %s)", deps.owner, settings.redacted_database_url)
    return Runtime(
        settings=settings,
        engine=engine,
        deps=deps,
        app=app,
        duties=duties,
        install=install,
    )
