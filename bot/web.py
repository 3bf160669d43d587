"""The WSGI application gunicorn serves: POST /slack/events and GET /healthz.

No thread is started at import: gunicorn forks its workers, so each worker builds
its own runtime in ``create_app()``. HTTP workers only acknowledge; the job worker
beside them (bot/worker.py) runs the jobs and the background duties."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import time
from urllib.parse import parse_qsl

from slack_bolt import BoltContext, BoltRequest, BoltResponse
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.request.internals import build_context

from bot import request_guard
from bot.config import load_or_exit
from bot.logs import configure_logging
from bot.runtime import Runtime, build_runtime
from bot.watcher import LEASE_NAME
from storage import repositories as repo
from storage.db import check_database, session_scope, urgent_writes

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # Slack's payloads are far smaller; refuse anything huge unread


class WebApp:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.slack = _FormAwareHandler(runtime.app, path="/slack/events")
        self.secret = (runtime.settings.slack_signing_secret or "").encode()

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
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            timestamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
            if timestamp and not (
                timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12
            ):
                # Bolt's verifier would raise on it; no signature can be valid anyway.
                return _json(start_response, "401 Unauthorized", {"error": "invalid request"})
            problem = request_guard.problem(body, environ.get("CONTENT_TYPE"))
            if problem is not None:
                return self.refuse_malformed(environ, body, problem, start_response)
            # The ack's writes (delivery key, job row) go before the job workers' own.
            with urgent_writes():
                return self.slack(environ, start_response)
        return _json(start_response, "404 Not Found", {"error": "not found"})

    def refuse_malformed(self, environ, body: bytes, problem: str, start_response):
        """A body Slack would never send: 401 unless signed, else 400 (audited)."""
        if not self.signed(environ, body):
            return _json(start_response, "401 Unauthorized", {"error": "invalid request"})
        log.warning("refused a signed but malformed request: %s", problem)
        try:
            self.runtime.services.record(None, "request.malformed", "denied", detail=problem)
        except Exception:
            log.warning("could not audit a malformed request")
        return _json(start_response, "400 Bad Request", {"error": "malformed request"})

    def signed(self, environ, body: bytes) -> bool:
        """Slack's v0 signature, as Bolt checks it (but on bytes that need not be UTF-8)."""
        timestamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
        if not timestamp or abs(time.time() - int(timestamp)) > 60 * 5:
            return False
        digest = hmac.new(
            self.secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(
            f"v0={digest}".encode(), environ.get("HTTP_X_SLACK_SIGNATURE", "").encode()
        )

    def healthz(self, start_response):
        try:
            check_database(self.runtime.engine)
        except Exception as exc:
            log.warning("health check: database unavailable: %s", type(exc).__name__)
            return _json(
                start_response, "503 Service Unavailable", {"ok": False, "database": "unavailable"}
            )
        try:
            with session_scope(self.runtime.engine, readonly=True) as s:
                holder = repo.lease_holder(s, name=LEASE_NAME, now=self.runtime.services.clock())
                queued = repo.count_jobs(s, states=("queued",))
        except Exception:
            holder, queued = None, None
        return _json(
            start_response,
            "200 OK",
            {
                "ok": True,
                "database": "ok",
                # Whether this web process (its job worker) does the background duties.
                "duties_holder": bool(holder) and holder.endswith(f"/web-{os.getppid()}"),
                "jobs_queued": queued,
            },
        )


class _FormAwareHandler(SlackRequestHandler):
    """Bolt's WSGI handler, except that a form is read as a form. Bolt takes any body
    that merely contains the word "payload" for an interactivity payload, so
    `/snapshot restore 801 the payload broke it` (or a channel named payload-team)
    reached no listener and was answered 404."""

    def dispatch(self, request) -> BoltResponse:
        raw = request.get_body()
        req = BoltRequest(body=raw, query=request.query_string, headers=request.get_headers())
        if "payload" in raw and req.content_type != "application/json" and raw[:1] != "{":
            form = dict(parse_qsl(raw, keep_blank_values=True))
            if "payload" not in form:
                req.body = form
                req.context = build_context(BoltContext(), form)
        return self.app.dispatch(req)


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
    # An HTTP worker only acknowledges: the job worker beside it (bot/worker.py, started
    # by gunicorn's master) runs the jobs and the background duties.
    _current = WebApp(build_runtime(settings, runs_jobs=False, start_duties=False))
    return _current


def shutdown_current() -> None:
    if _current is not None:
        _current.runtime.stop()
