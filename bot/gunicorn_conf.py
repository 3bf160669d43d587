"""gunicorn settings for the `web` process (Procfile) and `snapbot serve`."""

import os
import signal
import sys

from bot.config import ConfigError, web_setting

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '3000')}"
try:
    workers = web_setting("WEB_CONCURRENCY", 2)
    web_setting("WEB_THREADS", 4)  # read by bot/web.py in each worker; checked once here
except ConfigError as exc:
    # One line and a stop, not gunicorn's traceback of a config file that failed.
    print(str(exc), file=sys.stderr, flush=True)
    raise SystemExit(2) from None
# uvicorn event loops (bot/server.py): a connection holds a thread only once its whole
# request is in, so slow or idle clients cannot starve the acks. The threads that run
# the app are bot/web.py's (WEB_THREADS).
worker_class = "bot.server.Worker"
timeout = 30
graceful_timeout = 25
keepalive = 5
accesslog = None
# Several servers may share a machine (replicas, tests): no shared control socket.
control_socket_disable = True
preload_app = False  # each worker builds its own runtime (engine, clients) after the fork


_job_worker = None


def on_starting(server):
    # In the master, before it binds the port or forks a worker: a bad setting, an
    # unusable DATABASE_URL or a refused SLACK_BOT_TOKEN stops the `web` process here
    # with one line, instead of every worker failing and being forked again, forever.
    from bot.config import load_or_exit
    from bot.logs import configure_logging
    from bot.runtime import check_startup_or_exit

    settings = load_or_exit()
    if problems := settings.http_problems():
        print(str(ConfigError(problems)), file=sys.stderr, flush=True)
        raise SystemExit(2)
    configure_logging(settings.log_level, secrets=settings.secrets())
    check_startup_or_exit(settings)


def when_ready(server):
    # The jobs the HTTP workers queue run in one job worker process beside them
    # (bot/worker.py), restarted if it dies: the `web` process stays a complete install.
    global _job_worker
    from bot.worker import JobWorkerSupervisor

    _job_worker = JobWorkerSupervisor().start()

    # From the master's first sight of a stop signal, not at on_exit (after the HTTP
    # workers have drained): the job worker got the same signal and may be gone by then.
    def stopping():
        _job_worker.no_restarts()
        server.log.info("Stopping: the job worker is not replaced from now on")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        _before(sig, stopping)


def _before(sig, action):
    previous = signal.getsignal(sig)

    def handler(signum, frame):
        action()
        if callable(previous):
            previous(signum, frame)

    signal.signal(sig, handler)


def on_exit(server):
    if _job_worker is not None:
        _job_worker.stop(timeout=graceful_timeout)


def worker_exit(server, worker):
    # SIGTERM: let the worker's urgent jobs (modals) finish; hand queued ones back.
    from bot.web import shutdown_current

    shutdown_current()
