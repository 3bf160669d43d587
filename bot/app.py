"""build_app(): the one place the Bolt app is wired. Production (gunicorn and Socket
Mode), the demo, the shell and the tests all call it."""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from slack_bolt import App
from slack_bolt.authorization import AuthorizeResult

from bot.config import secret_value
from bot.listeners import register_listeners
from bot.services import auditing
from bot.services.actors import Actor
from bot.services.deps import Deps
from bot.user_messages import describe

log = logging.getLogger(__name__)

# Listeners only store a job and ack, so this pool never waits on the provider.
LISTENER_THREADS = 32


def build_app(deps: Deps) -> App:
    settings = deps.settings

    def authorize(enterprise_id=None, team_id=None, **_) -> AuthorizeResult:
        # One install, one bot token. Without this Bolt asks auth.test on the first
        # request of each process, inside Slack's 3 s, and refuses the request when
        # Slack does not answer; start-up has asked already, and the door
        # (bot/services/door.py knows_its_install) asks again when that answer is missing.
        return AuthorizeResult(
            enterprise_id=enterprise_id, team_id=team_id, bot_token=deps.slack.token
        )

    app = App(
        client=deps.slack,
        authorize=authorize,
        signing_secret=secret_value(settings.slack_signing_secret) or "socket-mode-does-not-sign",
        request_verification_enabled=not settings.socket_mode,
        token_verification_enabled=False,
        # Listeners only store a job and ack, so they run in the request's own thread:
        # no hand-off to a pool and no 10 ms ack polling per request (Bolt's threaded
        # mode), which halves the CPU an ack costs under a burst of requests.
        process_before_response=True,
        listener_executor=ThreadPoolExecutor(
            max_workers=LISTENER_THREADS, thread_name_prefix="snapbot-ack"
        ),
        raise_error_for_unhandled_request=False,
    )

    @app.middleware
    def key_the_delivery(req, resp, next):
        # Slack retries (X-Slack-Retry-Num), double deliveries and replays inside the
        # signature window all carry a body already seen. The listener hands this key
        # to door.accept / auditing.record, which store it in the same transaction as the job
        # (or audit row): a body seen before is acknowledged and nothing is done. One
        # write before the ack instead of two (bench/ack_latency.py).
        req.context["delivery_key"] = hashlib.sha256(_delivered(req)).hexdigest()
        return next()

    register_listeners(app, deps)

    @app.error
    def on_error(error, body, respond, logger) -> None:
        logger.exception("listener failed: %s", type(error).__name__)
        user = (body.get("user") or {}).get("id") or body.get("user_id") or ""
        if respond is not None:
            try:
                respond(text=f":x: {describe(error)}", response_type="ephemeral")
            except Exception:
                logger.warning("could not tell the user about the failure")
        try:
            auditing.record(
                deps, Actor(user=user), "listener.error", "error", detail=type(error).__name__
            )
        except Exception:
            logger.warning("could not audit the failure")

    return app


def _delivered(req) -> bytes:
    """The bytes that identify one delivery. Over HTTP, the raw body as signed. Socket
    Mode hands Bolt the envelope's parsed payload and no raw body at all, so there it is
    the payload in canonical JSON: what Slack sends again on a redelivery, while two
    different requests differ in it (a trigger_id, an action_ts, a view's id and hash,
    an event_id), so they never share a key."""
    if req.raw_body:
        return req.raw_body.encode() if isinstance(req.raw_body, str) else req.raw_body
    return json.dumps(req.body, sort_keys=True, separators=(",", ":")).encode()
