"""gunicorn settings for the `web` process (Procfile) and `snapbot serve`."""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '3000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads, so a slow client never blocks acks; the app itself never waits on the provider.
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
timeout = 30
graceful_timeout = 25
keepalive = 5
accesslog = None
# Several servers may share a machine (replicas, tests): no shared control socket.
control_socket_disable = True
preload_app = False  # each worker builds its own runtime and duties thread


def worker_exit(server, worker):
    # SIGTERM: let running jobs finish and hand the duties lease back.
    from bot.web import shutdown_current

    shutdown_current()
