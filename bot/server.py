"""`snapbot serve` in HTTP mode: the same gunicorn server the Procfile runs."""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from bot import gunicorn_conf
from bot.config import Settings


class _Server(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for name in (
            "workers",
            "worker_class",
            "threads",
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
