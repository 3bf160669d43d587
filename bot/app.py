"""build_app(): the one place the Bolt app is wired. Production (gunicorn and Socket
Mode), the demo, the shell and the tests all call it."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor

from slack_bolt import App, BoltResponse

from bot.listeners import register_listeners
from bot.services import Actor, Services
from bot.user_messages import describe
from storage import repositories as repo
from storage.db import session_scope

log = logging.getLogger(__name__)

# Listeners only store a job and ack, so this pool never waits on the provider.
LISTENER_THREADS = 32


def build_app(services: Services) -> App:
    settings = services.settings
    app = App(
        client=services.slack,
        signing_secret=settings.slack_signing_secret or "socket-mode-does-not-sign",
        request_verification_enabled=not settings.socket_mode,
        token_verification_enabled=False,
        process_before_response=False,
        listener_executor=ThreadPoolExecutor(
            max_workers=LISTENER_THREADS, thread_name_prefix="snapbot-ack"
        ),
        raise_error_for_unhandled_request=False,
    )

    @app.middleware
    def drop_redeliveries(req, resp, next):
        # Slack retries (X-Slack-Retry-Num), double deliveries and replays inside the
        # signature window all carry a body already seen: acknowledge, do nothing.
        key = hashlib.sha256(
            req.raw_body.encode() if isinstance(req.raw_body, str) else req.raw_body
        ).hexdigest()
        with session_scope(services.engine) as s:
            first = repo.record_delivery(s, key=key, now=services.clock())
        if not first:
            log.info(
                "redelivery ignored (retry %s)", (req.headers.get("x-slack-retry-num") or ["-"])[0]
            )
            return BoltResponse(status=200, body="")
        return next()

    register_listeners(app, services)

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
            services.record(
                Actor(user=user), "listener.error", "error", detail=type(error).__name__
            )
        except Exception:
            logger.warning("could not audit the failure")

    return app
