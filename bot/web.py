"""The WSGI application gunicorn serves: POST /slack/events and GET /healthz.

No thread is started at import: gunicorn forks its workers, so each worker builds
its own runtime (and duties thread) in ``create_app()``; the lease picks the one
that does the background duties."""

from __future__ import annotations

import json
import logging

from slack_bolt.adapter.wsgi import SlackRequestHandler

from bot.config import load_or_exit
from bot.logs import configure_logging
from bot.runtime import Runtime, build_runtime
from storage.db import check_database

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # Slack's payloads are far smaller; refuse anything huge unread


class WebApp:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.slack = SlackRequestHandler(runtime.app, path="/slack/events")

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz" and method in ("GET", "HEAD"):
            return self.healthz(start_response)
        if path == "/slack/events":
            if method != "POST":
                return _json(start_response, "405 Method Not Allowed", {"error": "POST only"})
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                return _json(start_response, "413 Content Too Large", {"error": "body too large"})
            return self.slack(environ, start_response)
        return _json(start_response, "404 Not Found", {"error": "not found"})

    def healthz(self, start_response):
        try:
            check_database(self.runtime.engine)
        except Exception as exc:
            log.warning("health check: database unavailable: %s", type(exc).__name__)
            return _json(
                start_response, "503 Service Unavailable", {"ok": False, "database": "unavailable"}
            )
        duties = self.runtime.duties
        return _json(
            start_response,
            "200 OK",
            {
                "ok": True,
                "database": "ok",
                "duties_holder": duties.is_holder,
                "jobs_running": duties.s.jobs.running,
            },
        )


def _json(start_response, status: str, body: dict):
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


_current: WebApp | None = None


def create_app() -> WebApp:
    """gunicorn's app factory (``bot.web:create_app()``), called in each worker."""
    global _current
    settings = load_or_exit()
    configure_logging(settings.log_level, secrets=settings.secrets())
    _current = WebApp(build_runtime(settings))
    return _current


def shutdown_current() -> None:
    if _current is not None:
        _current.runtime.stop()
