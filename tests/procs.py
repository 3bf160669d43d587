"""Real processes for the tests that matter across processes: snapbot's gunicorn
web process (the Procfile's command) and the provider simulator, each in its own
process group so a test can SIGTERM or ``kill -9`` the whole thing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


# A deadline only tells a hang from slowness: on a loaded 2-core machine (xdist workers,
# other suites) a healthy step can take many seconds, and that must never fail a test.
HANG_GUARD_S = 60.0


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = ""
):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``, but
    never sooner than HANG_GUARD_S: the timeout a test names is what it expects on an
    idle machine, not a limit it asserts (speed targets live in bench/)."""
    timeout = max(timeout, HANG_GUARD_S)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s ({last})")


@dataclass
class Proc:
    popen: subprocess.Popen
    url: str
    log_path: Path
    env: dict = field(default_factory=dict)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM to the process group: gunicorn's graceful stop."""
        self.send_sigterm()
        return self.wait(timeout)

    def send_sigterm(self) -> None:
        """SIGTERM to the process group, as a platform stops it; returns at once, so a
        test can release what the stop is waiting for."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit status; past ``timeout`` (a hang) the group is killed."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        return self.popen.returncode

    def kill9(self) -> None:
        """kill -9 of the master and every worker at once: nothing runs any clean-up."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# The drills of sections 5-8 run as before SPEC 9 (no safety snapshot, one-click
# Approve); the drills of section 9 set these to on/typed themselves.
SECTION_9_OFF = {"RESTORE_SAFETY_SNAPSHOT": "off", "RESTORE_CONFIRM": "button"}


def snapbot_env(settings: dict[str, str]) -> dict[str, str]:
    prefixes = ("SLACK_", "VPS_", "SNAPSHOT_", "RESTORE_", "SAFETY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(SECTION_9_OFF)
    env.update(settings)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_web(
    settings: dict[str, str], tmp_path: Path, *, workers: int = 1, name: str = "web"
) -> Proc:
    """The Procfile's `web:` command, on a free loopback port, in a fresh directory
    (so no stray .env is read)."""
    port = free_port()
    env = snapbot_env(settings)
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": str(workers)})
    log_path = tmp_path / f"{name}-{port}.log"
    cwd = tmp_path / f"cwd-{name}-{port}"
    cwd.mkdir(exist_ok=True)
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                "python:bot.gunicorn_conf",
                "bot.web:create_app()",
            ],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = Proc(popen, f"http://127.0.0.1:{port}", log_path, env)
    try:
        wait_http(proc.url + "/healthz", proc=popen)
    except Exception:
        proc.kill9()
        raise RuntimeError(f"snapbot web did not start:\n{proc.log()[-3000:]}") from None
    return proc


def start_simulator_process(
    tmp_path: Path, *, token: str, create_seconds: float = 2.0, restore_seconds: float = 2.0
) -> Proc:
    port = free_port()
    log_path = tmp_path / f"sim-{port}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bot",
                "vps-sim",
                "--port",
                str(port),
                "--token",
                token,
                "--create-seconds",
                str(create_seconds),
                "--restore-seconds",
                str(restore_seconds),
            ],
            cwd=tmp_path,
            env=snapbot_env({}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = Proc(popen, f"http://127.0.0.1:{port}/api/v1/", log_path)
    wait_http(f"http://127.0.0.1:{port}/_sim/stats", proc=popen)
    return proc
