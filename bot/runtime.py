"""Assemble a running snapbot from Settings: database (migrated), provider client,
Slack client, services, the Bolt app and the background duties. The gunicorn
workers, `snapbot serve`, the demo, the shell and the tests all start it this way."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from slack_bolt import App
from sqlalchemy import Engine

from bot.app import build_app
from bot.config import Settings
from bot.jobs import DEFAULT_WORKERS
from bot.services import Services, make_slack_client
from bot.vps.client import VpsClient
from bot.watcher import Duties
from storage.db import make_engine, migrate

log = logging.getLogger(__name__)

# What one user interaction may spend on the provider: SPEC §8 promises an answer
# within 30 s, retries included.
PROVIDER_TIMEOUT_S = 5.0
PROVIDER_RETRIES = 2


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    services: Services
    app: App
    duties: Duties

    def stop(self) -> None:
        """Graceful stop (SIGTERM): no new work, running jobs finish, lease handed back."""
        self.services.jobs.shutdown(wait=True)
        self.duties.stop()
        self.services.vps.close()
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
) -> Runtime:
    """One process's snapbot. The defaults make a complete install in one process;
    gunicorn's HTTP workers pass ``runs_jobs=False, start_duties=False`` (they only
    acknowledge), and the job worker beside them ``feed_jobs=True`` (bot/worker.py)."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    vps = vps or VpsClient(
        settings.vps_api_url,
        settings.vps_api_token,
        timeout=PROVIDER_TIMEOUT_S,
        retries=PROVIDER_RETRIES,
    )
    services = Services(
        settings=settings,
        engine=engine,
        vps=vps,
        slack=make_slack_client(settings),
        workers=job_workers,
        runs_jobs=runs_jobs,
        **({"owner": owner} if owner else {}),
    )
    app = build_app(services)
    duties = Duties(services, interval=poll_interval)
    if start_duties:
        duties.start()
    if feed_jobs:
        services.jobs.start_feeding()
    log.info(
        "snapbot ready (owner %s, database %s)", services.owner, settings.redacted_database_url
    )
    return Runtime(settings=settings, engine=engine, services=services, app=app, duties=duties)
