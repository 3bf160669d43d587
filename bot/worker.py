"""The job worker: runs the jobs that gunicorn's HTTP workers queue, and the
background duties (watcher, expiry, checkpoints, the outbox pump).

The `web` process's gunicorn master starts one beside its HTTP workers and starts it
again if it dies (``JobWorkerSupervisor``, from bot/gunicorn_conf.py), so one `web`
process is still a complete install. Keeping the work out of the HTTP workers means a
burst of commands never competes with the acks for a worker's GIL, and the job worker
runs at a lower CPU priority (``nice``) than the acks: the ack of the 1,000th command
of a burst does not wait behind the answers to the first 999 (bench/ack_latency.py).
Jobs stay rows in the database either way: a job worker that dies loses nothing, and
several (replicas, or `snapbot worker` run by hand) share the queue safely, since a
job is claimed with one conditional UPDATE.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from bot.config import Settings

log = logging.getLogger(__name__)

# They mostly wait on the provider, so many more than the cores: enough that a burst
# of commands (bench/ack_latency.py: 50 at once) all start and share provider calls
# at once, rather than the last of them waiting for a thread behind the first.
JOB_THREADS = 64
NICE = 10  # below the HTTP workers: acks first, answers with what CPU is left
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_S = 60.0  # a worker that lived this long starts the backoff afresh
PARENT_CHECK_S = 1.0


def run_worker(settings: Settings, *, parent_pid: int | None = None, install=None) -> int:
    """Run until SIGTERM (or, with ``parent_pid``, until that process is gone).
    ``install``: what bot.runtime.check_startup found."""
    from bot.runtime import build_runtime, make_owner_id

    with contextlib.suppress(OSError):
        os.nice(NICE)
    group = f"web-{parent_pid}" if parent_pid else None
    runtime = build_runtime(
        settings,
        feed_jobs=True,
        job_workers=JOB_THREADS,
        owner=make_owner_id(group),
        install=install,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("job worker ready (%d threads, nice %d)", JOB_THREADS, NICE)
    while not stop.wait(PARENT_CHECK_S):
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("the web process is gone; the job worker stops")
            break
    runtime.stop()  # running jobs finish; queued ones stay rows for the next worker
    return 0


class JobWorkerSupervisor:
    """In gunicorn's master: keep one `snapbot worker` child running."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.starts = 0

    def start(self) -> JobWorkerSupervisor:
        self._thread = threading.Thread(target=self._loop, name="snapbot-supervisor", daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "bot", "worker", "--parent", str(os.getpid())]
        # close_fds=False lets subprocess use posix_spawn. Its default path forks and
        # waits for the child's exec on a pipe; gunicorn forking an HTTP worker at
        # that moment hands the pipe to the worker, and the wait (with this thread)
        # then lasted as long as that worker. Our descriptors are not inheritable
        # anyway (PEP 446), so nothing leaks into the job worker.
        return subprocess.Popen(cmd, env=os.environ.copy(), close_fds=False)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = self._spawn()
                self.starts += 1
                started = time.monotonic()
            # gunicorn's master reaps every child it sees exit, ours included: poll()
            # then reports an exit (status unknown), which is all this loop needs.
            while self._proc.poll() is None and not self._stop.wait(0.5):
                if failures and time.monotonic() - started > STABLE_AFTER_S:
                    log.warning("the job worker runs again (after %d failed starts)", failures)
                    failures = 0
            if self._stop.is_set():
                return
            failures = 0 if time.monotonic() - started > STABLE_AFTER_S else failures + 1
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S)) - 1] if failures else 0
            # Once per run of failures (e.g. the database is down: each start says why
            # in one line of its own); the backoff keeps those rare.
            log.log(
                logging.WARNING if failures <= 1 else logging.DEBUG,
                "the job worker exited; starting another in %.0f s",
                delay,
            )
            self._stop.wait(delay)

    def no_restarts(self) -> None:
        """The web process is stopping. Platforms signal the whole process group, so
        the job worker may leave before the master gets to ``stop``: it is not
        replaced by one that would take queued jobs meant for the next process."""
        self._stop.set()

    def stop(self, timeout: float = 25.0) -> None:
        """SIGTERM to the job worker, and wait for its running jobs to finish."""
        with self._lock:
            self._stop.set()
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
