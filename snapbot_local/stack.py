"""A whole snapbot on loopback: the provider simulator, the fake Slack Web API and the
real app (build_runtime + the WSGI app) served over HTTP. The demo, the shell and
the end-to-end tests drive it with requests signed exactly as Slack signs them.

With ``LocalStack(socket_mode=True)`` the same app runs in Socket Mode instead: no HTTP
server; slack_bolt's SocketModeHandler (as `snapbot serve` starts it when
SLACK_APP_TOKEN is set) connects to the fake Slack's WebSocket endpoint
(snapbot_local.slack.socket_mode), and a SlackUser's commands and presses go there as envelopes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
from slack_bolt.adapter.socket_mode import SocketModeHandler

from bot.config import Settings, load_settings
from bot.runtime import Runtime, build_runtime
from bot.services import door
from bot.services.actors import Actor
from bot.services.deps import Deps
from bot.web import WebApp
from snapbot_local.provider import SimHandle, start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import (
    SlackClientSim,
    button_press_body,
    slash_command_body,
    view_submission_body,
)
from snapbot_local.slack.socket_mode import Ack, FakeSocketMode
from storage import repositories as repo
from storage.db import session_scope

log = logging.getLogger(__name__)

# Distinctive, so a secret scanner (tests/secret_scan.py) finds them wherever they leak,
# and the same in every process (the demo's subprocess, the tests). No literal holds a
# whole value, so no generated test input (hypothesis mines literals) contains one.
_SALT = hashlib.sha256(b"snapbot local stack secrets").hexdigest()
SIGNING_SECRET = "local-signing-secret-" + _SALT[:24]
BOT_TOKEN = "xoxb-local-bot-token-" + _SALT[24:40]
VPS_TOKEN = "local-vps-token-" + _SALT[40:56]
APP_TOKEN = "xapp-1-local-app-token-" + _SALT[56:64]
INCIDENT_CHANNEL = "CINCIDENT"
RESTORE_CALL = "POST snapshots/{id}/restore/"  # the simulator's counter key


# What `snapbot demo` and `snapbot shell` take from the environment and .env, read as
# `serve` reads them: the approval rules, so that N-of-M approval and expiry can be
# tried locally. Everything else about the stack is local by design.
LOCAL_SETTINGS = ("restore_approvals", "approval_ttl_minutes")


def settings_from_env(env_file: str | Path | None = ".env") -> dict:
    """The LOCAL_SETTINGS as configured (ConfigError names a bad value)."""
    configured = load_settings(env_file=env_file, require_slack=False)
    return {name: getattr(configured, name) for name in LOCAL_SETTINGS}


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of commands (Slack sends them
    # concurrently) would be reset by the kernel before the app saw them. gunicorn: 2048.
    request_queue_size = 128


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


def serve_wsgi(app, host: str = "127.0.0.1", port: int = 0) -> tuple[WSGIServer, threading.Thread]:
    server = make_server(
        host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    # A short poll interval: shutdown() waits for it, and the tests stop many stacks.
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="snapbot-http",
        daemon=True,
    )
    thread.start()
    return server, thread


@dataclass
class SlackUser:
    """One person in the fake workspace: types commands, presses buttons. Each returns
    what Slack got back: the HTTP response, or in Socket Mode the envelope's ack."""

    stack: LocalStack
    user_id: str
    channel: str = "C1"

    def command(self, text: str, *, channel: str | None = None, **kw) -> httpx.Response | Ack:
        channel = channel or self.channel
        fake = self.stack.slack
        body = slash_command_body(
            text,
            user_id=self.user_id,
            channel_id=channel,
            response_url=fake.response_url("command", channel=channel, user=self.user_id),
            trigger_id=fake.new_trigger_id(),
        )
        return self.stack.send(body, **kw)

    def press(
        self, message, action_id: str, *, value: str | None = None, **kw
    ) -> httpx.Response | Ack:
        fake = self.stack.slack
        channel = getattr(message, "channel", None) or self.channel
        ts = getattr(message, "ts", None) or getattr(message, "message_ts", None)
        body = button_press_body(
            message,
            action_id,
            value=value,
            user_id=self.user_id,
            response_url=fake.response_url(
                "button", channel=channel, user=self.user_id, message_ts=ts
            ),
            trigger_id=fake.new_trigger_id(),
        )
        return self.stack.send(body, **kw)

    def submit(
        self, callback_id: str, values: dict, *, private_metadata: str = ""
    ) -> httpx.Response | Ack:
        """Submit a modal; without ``private_metadata``, the one snapbot seals for a
        modal this user opened in their channel (with no response_url)."""
        opener = Actor(user=self.user_id, channel=self.channel)
        body = view_submission_body(
            callback_id,
            values,
            user_id=self.user_id,
            private_metadata=private_metadata or door.seal_opener(self.stack.deps, opener),
        )
        return self.stack.send(body)


@dataclass
class LocalStack:
    database_url: str | None = None
    create_seconds: float = 2.0
    restore_seconds: float = 2.0
    poll_seconds: float = 0.5
    settings_overrides: dict = field(default_factory=dict)
    # SPEC 9 (a safety snapshot first, Approve confirmed by typing the server's name):
    # on in the demo and the shell, as in production; the tests of sections 5-8 run
    # without it, and those of section 9 turn it on.
    safer_restores: bool = False
    start_duties: bool = True
    socket_mode: bool = False
    # The Socket Mode client pings this often, and checks its connection (reconnecting
    # a dead one) as often: short, so a test's dropped connection comes back soon.
    socket_ping_interval: float = 2.0

    sim: SimHandle | None = None
    slack: FakeSlack | None = None
    runtime: Runtime | None = None
    server: WSGIServer | None = None
    url: str = ""
    client: SlackClientSim | None = None
    socket: FakeSocketMode | None = None
    handler: SocketModeHandler | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    def start(self) -> LocalStack:
        try:
            return self._start()
        except BaseException:
            self.stop()  # whatever did start (servers, threads, the temp dir) goes again
            raise

    def _start(self) -> LocalStack:
        self.sim = start_simulator(
            token=VPS_TOKEN,
            create_seconds=self.create_seconds,
            restore_seconds=self.restore_seconds,
        )
        self.slack = FakeSlack().start()
        if self.database_url is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="snapbot-")
            self.database_url = f"sqlite:///{Path(self._tmp.name) / 'snapbot.db'}"
        values = {
            "slack_bot_token": BOT_TOKEN,
            **(
                {"slack_app_token": APP_TOKEN}
                if self.socket_mode
                else {"slack_signing_secret": SIGNING_SECRET}
            ),
            "slack_api_url": self.slack.api_url,
            "vps_api_url": self.sim.url,
            "vps_api_token": VPS_TOKEN,
            "database_url": self.database_url,
            "incident_channel": INCIDENT_CHANNEL,
            "poll_seconds": self.poll_seconds,
            "audit_key": "local-audit-key-" + secrets.token_hex(8),
            "restore_safety_snapshot": self.safer_restores,
            "restore_confirm": "typed" if self.safer_restores else "button",
        }
        values.update(self.settings_overrides)
        settings = Settings(**values)
        self.runtime = build_runtime(
            settings, start_duties=self.start_duties, poll_interval=self.poll_seconds
        )
        if self.socket_mode:
            self.socket = self.slack.socket_mode()
            self.handler = SocketModeHandler(
                self.runtime.app, APP_TOKEN, ping_interval=self.socket_ping_interval
            )
            self.handler.connect()
            self.socket.wait_for(
                lambda: any(link.open for link in self.socket.links),
                what="the app's Socket Mode connection",
            )
            return self
        self.server, _ = serve_wsgi(WebApp(self.runtime))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slack/events"
        self.client = SlackClientSim(self.url, SIGNING_SECRET)
        return self

    def send(self, body: bytes, **kw) -> httpx.Response | Ack:
        """Deliver ``body`` as Slack would: POSTed and signed (``kw`` as for
        SlackClientSim.post), or in Socket Mode as an envelope whose ack is waited for."""
        if self.socket_mode:
            return self.socket.wait_ack(self.socket.deliver(body, **kw))
        return self.client.post(body, **kw)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def deps(self) -> Deps:
        return self.runtime.deps

    def user(self, user_id: str, channel: str = "C1") -> SlackUser:
        return SlackUser(self, user_id, channel)

    @property
    def restore_calls(self) -> int:
        """How many restores reached the provider (the simulator counts them)."""
        return self.sim.state.calls[RESTORE_CALL]

    def settled(self) -> bool:
        """Nothing left to do for what was asked so far: no request still queued or
        running, and no Slack message waiting to be sent. (Watches are not work in
        progress: their replies come when the provider says so.)"""
        with session_scope(self.runtime.engine, readonly=True) as s:
            busy = repo.count_jobs(s, states=("queued", "running"))
            unsent = repo.count_messages(s, state="pending")
        return busy == 0 and unsent == 0

    def wait_settled(self, timeout: float = 15.0) -> None:
        """Wait until `settled()`, re-checking whenever the fake Slack records something."""
        self.slack.wait_for(self.settled, timeout, what="the app to finish its work")

    def stop(self) -> None:
        if self.handler is not None:
            # The client's reader holds its lock through a 3 s receive timeout; hanging
            # up from the server side first (reconnecting turned off) ends it at once.
            self.handler.client.closed = True
            self.handler.client.auto_reconnect_enabled = False
            if self.socket is not None:
                with contextlib.suppress(Exception):
                    self.socket.drop()
            self.handler.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.runtime is not None:
            self.runtime.stop()
        if self.slack is not None:
            self.slack.stop()
        if self.sim is not None:
            self.sim.stop()
        if self.client is not None:
            self.client.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
