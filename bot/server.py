"""The `web` process's serving stack, and `snapbot serve` in HTTP mode (the same
gunicorn server the Procfile runs).

gunicorn's master (with its hooks: the job worker supervisor) forks ``Worker``s: uvicorn
event loops, where a connection costs a socket and a few kilobytes, never a thread.
A request reaches a thread (bot/web.py's ``AsgiFront``) only once its headers and its
whole body are in, so clients that send slowly, or nothing at all, hold no thread the
acks need. Each connection has deadlines of its own: its request's headers within
``HEADERS_TIMEOUT_S`` of connecting (or of its previous answer), its body within
``web.BODY_TIMEOUT_S`` of its headers; then it is closed.
"""

from __future__ import annotations

import asyncio

from gunicorn.app.base import BaseApplication
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn_worker import UvicornWorker

from bot import gunicorn_conf
from bot.config import Settings

# Slack sends a request in one go; a client still short of its headers after this long
# is idle or dripping them (slowloris), and its socket is better spent on someone else.
HEADERS_TIMEOUT_S = 5.0


class _DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol (it refuses headers over 16 KB: 400), plus a deadline for
    each request's headers: uvicorn itself waits for them forever (its keep-alive timer
    ends at the first byte)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_deadline: asyncio.TimerHandle | None = None
        self._arm_headers_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_headers_deadline()  # the next request on this connection starts now

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
        super().connection_lost(exc)

    def _arm_headers_deadline(self) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
        self._headers_deadline = self.loop.call_later(HEADERS_TIMEOUT_S, self._headers_too_late)

    def _headers_too_late(self) -> None:
        # A request whose headers are in is the app's to time (its body's deadline).
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()


class Worker(UvicornWorker):
    """gunicorn's worker class for the `web` process (bot/gunicorn_conf.py)."""

    # The standard-library loop: psycopg and SQLite run on the front's threads, not on it.
    CONFIG_KWARGS = {
        "loop": "asyncio",
        "http": _DeadlineProtocol,
        "lifespan": "on",
        "access_log": False,  # (as gunicorn's `accesslog = None`: a line per ack costs CPU)
    }


class _Server(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for name in (
            "workers",
            "worker_class",
            "timeout",
            "graceful_timeout",
            "keepalive",
            "worker_exit",
            "when_ready",
            "on_exit",
        ):
            self.cfg.set(name, getattr(gunicorn_conf, name))
        if "control_socket_disable" in self.cfg.settings:
            self.cfg.set("control_socket_disable", True)
        self.cfg.set("bind", f"{self.settings.host}:{self.settings.port}")

    def load(self):
        from bot.web import create_app

        return create_app()


def run_gunicorn(settings: Settings) -> int:
    _Server(settings).run()
    return 0
