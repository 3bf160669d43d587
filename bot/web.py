"""The application gunicorn serves: POST /slack/events and GET /healthz.

``WebApp`` is a WSGI app (a plain WSGI server runs it in tests and tools); in the `web`
process it sits behind ``AsgiFront`` on uvicorn's event loop (bot/server.py), which
reads each whole request, within a deadline and a size cap, before a thread of its
small pool runs it: a slow or idle client holds a socket, never a thread.

No thread is started at import: gunicorn forks its workers, so each worker builds
its own runtime in ``create_app()``. HTTP workers only acknowledge; the job worker
beside them (bot/worker.py) runs the jobs and the background duties."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl

from slack_bolt import BoltContext, BoltRequest, BoltResponse
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.request.internals import build_context

from bot import request_guard
from bot.config import ConfigError, load_settings, secret_value, web_setting
from bot.logs import Outage, configure_logging
from bot.outbox import CHANNEL_HEALTH_KEY
from bot.runtime import Runtime, build_runtime, check_startup, checked_install, startup_checked
from bot.services import auditing
from bot.watcher import LEASE_NAME
from storage import repositories as repo
from storage.db import check_database, session_scope, urgent_writes

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # Slack's payloads are far smaller; refuse anything huge unread
# Slack sends its few kilobytes at once: a body still incomplete after this long (one
# shorter than its Content-Length, or dripped) is answered 408 and its connection closed.
BODY_TIMEOUT_S = 5.0


class WebApp:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.slack = _FormAwareHandler(runtime.app, path="/slack/events")
        self.secret = secret_value(runtime.settings.slack_signing_secret).encode()
        self._database_outage = Outage(log, "health check: the database")

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
            if not self.signed(environ, body) and not _is_ssl_check(body):
                # Before any parsing: an unsigned body can be made costly to parse
                # (deep JSON, a huge form), and Bolt would refuse it anyway.
                return _json(start_response, "401 Unauthorized", {"error": "invalid request"})
            problem = request_guard.problem(body, environ.get("CONTENT_TYPE"))
            if problem is not None:
                return self.refuse_malformed(problem, start_response)
            # The ack's writes (delivery key, job row) go before the job workers' own.
            with urgent_writes():
                return self.slack(environ, start_response)
        return _json(start_response, "404 Not Found", {"error": "not found"})

    def refuse_malformed(self, problem: str, start_response):
        """A signed body Slack would never send: 400, audited."""
        log.warning("refused a signed but malformed request: %s", problem)
        try:
            auditing.record(self.runtime.deps, None, "request.malformed", "denied", detail=problem)
        except Exception:
            log.warning("could not audit a malformed request")
        return _json(start_response, "400 Bad Request", {"error": "malformed request"})

    def signed(self, environ, body: bytes) -> bool:
        """Slack's v0 signature, as Bolt checks it (but on bytes that need not be UTF-8).
        Without a secret nothing is signed: an empty HMAC key is anyone's key."""
        timestamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
        if not self.secret or not timestamp or abs(time.time() - int(timestamp)) > 60 * 5:
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
            # Probed every few seconds: said once per outage, not once per probe.
            self._database_outage.failed(exc)
            return _json(
                start_response, "503 Service Unavailable", {"ok": False, "database": "unavailable"}
            )
        self._database_outage.ok()
        channel = self.runtime.settings.incident_channel
        try:
            with session_scope(self.runtime.engine, readonly=True) as s:
                holder = repo.lease_holder(s, name=LEASE_NAME, now=self.runtime.deps.clock())
                queued = repo.count_jobs(s, states=("queued",))
                # Its last post's outcome, whichever process sent it (bot/outbox.py).
                health = repo.get_setting(s, key=CHANNEL_HEALTH_KEY) if channel else "unset"
        except Exception:
            holder, queued, health = None, None, "unknown"
        return _json(
            start_response,
            "200 OK",
            {
                "ok": True,
                "database": "ok",
                # Whether this web process (its job worker) does the background duties.
                "duties_holder": bool(holder) and holder.endswith(f"/web-{os.getppid()}"),
                "jobs_queued": queued,
                # "ok", "unreachable: not_in_channel" (until a post succeeds), "untested"
                # (nothing posted there yet) or "unset".
                "incident_channel": health or "untested",
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


def _is_ssl_check(body: bytes) -> bool:
    """Slack's certificate check, which Bolt answers without a signature (a short form)."""
    return (
        len(body) <= 1024
        and b"ssl_check" in body
        and (dict(parse_qsl(body.decode("latin-1"))).get("ssl_check") == "1")
    )


def _json(start_response, status: str, body: dict):
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class _Refused(Exception):
    def __init__(self, status: str, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


class _Gone(Exception):
    """The client hung up before its request was in."""


class AsgiFront:
    """ASGI in front of a WSGI app: the whole request is read on the event loop, and
    only then does one of ``threads`` threads run the app. Acks store rows (SQLite,
    psycopg: blocking calls), so they run on threads, never on the loop."""

    def __init__(self, app, *, threads: int) -> None:
        self.app = app
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="snapbot-web")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return None  # (uvicorn refuses WebSocket upgrades before they get here)
        try:
            body = await self._body(scope, receive)
        except _Refused as refused:
            # The rest of the body is never read: the connection cannot carry on.
            return await _send(
                send, refused.status, [(b"connection", b"close")], {"error": refused.error}
            )
        except _Gone:
            return None
        environ = _environ(scope, body)
        loop = asyncio.get_running_loop()
        status, headers, data = await loop.run_in_executor(self.pool, self._run, environ)
        await send(
            {
                "type": "http.response.start",
                "status": int(status.split(" ", 1)[0]),
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": data})
        return None

    async def _body(self, scope, receive) -> bytes:
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and int(declared) > MAX_BODY_BYTES:  # (h11 checked it is a number)
            raise _Refused("413 Content Too Large", "body too large")
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Gone
                    body += message.get("body", b"")
                    if len(body) > MAX_BODY_BYTES:  # (chunked: no Content-Length to go by)
                        raise _Refused("413 Content Too Large", "body too large")
                    if not message.get("more_body"):
                        return bytes(body)
        except TimeoutError:
            raise _Refused("408 Request Timeout", "the body came too slowly") from None

    def _run(self, environ) -> tuple[str, list[tuple[str, str]], bytes]:
        answer: list = []

        def start_response(status, headers, exc_info=None):
            answer[:] = [status, headers]

        try:
            chunks = self.app(environ, start_response)
            try:
                data = b"".join(chunks)
            finally:
                if hasattr(chunks, "close"):
                    chunks.close()
        except Exception:
            log.exception("the web app failed on a request")
            data = json.dumps({"error": "internal error"}).encode()
            return "500 Internal Server Error", [("Content-Type", "application/json")], data
        return answer[0], answer[1], data

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # uvicorn has answered every request by now; nothing is left to run.
                self.pool.shutdown(wait=True)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _environ(scope, body: bytes) -> dict:
    server = scope.get("server") or ("localhost", 80)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"],
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope["scheme"],
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name == "content-length":
            continue
        key = "CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


async def _send(send, status: str, headers: list, body: dict) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": int(status.split(" ", 1)[0]),
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


_current: WebApp | None = None


# gunicorn's master stops (instead of forking a new worker) when one exits with this.
WORKER_BOOT_ERROR = 3


def create_app() -> AsgiFront:
    """gunicorn's app factory (``bot.web:create_app()``), called in each worker."""
    global _current
    try:
        settings = load_settings()
        if problems := settings.http_problems():
            raise ConfigError(problems)
        threads = web_setting("WEB_THREADS", 4)
        configure_logging(settings.log_level, secrets=settings.secrets())
        # The master checked before forking (bot/gunicorn_conf.py): its answer is ours.
        install = checked_install() if startup_checked() else check_startup(settings)
        # An HTTP worker only acknowledges: the job worker beside it (bot/worker.py,
        # started by gunicorn's master) runs the jobs and the background duties.
        runtime = build_runtime(settings, runs_jobs=False, start_duties=False, install=install)
    except ConfigError as exc:
        # Say it once and stop the server: exiting otherwise, gunicorn would fork
        # another worker, forever.
        print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(WORKER_BOOT_ERROR) from None
    _current = WebApp(runtime)
    # Acks only store a row (the job worker does the work), so a few threads keep the
    # cores busy; more only contend for the GIL and stretch the slowest acks.
    return AsgiFront(_current, threads=threads)


def shutdown_current() -> None:
    if _current is not None:
        _current.runtime.stop()
