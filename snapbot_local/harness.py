"""Real processes, for the tests that matter across processes (tests/processes/) and for
the benchmarks (bench/): snapbot's gunicorn `web` process (the Procfile's command), the
provider simulator (`snapbot vps-sim`), a Slack sink that costs the caller nothing, and
helper processes of a script's own; each in its own process group, so a caller can
SIGTERM or ``kill -9`` the whole thing. Beside them, what both need to drive and read
those processes: polling with a deadline, the settings a web process is started with,
the simulator's admin endpoints, a fresh PostgreSQL schema, /proc figures.

One module, so that a test and a benchmark start the very same process the same way.
Like the rest of snapbot_local it is never imported by bot/ or storage/.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from snapbot_local.stack import BOT_TOKEN, SIGNING_SECRET, VPS_TOKEN
from storage.db import normalise_url

# The checkout (or install) snapbot_local is loaded from: put first on a child's
# PYTHONPATH, so the child runs the very code the caller imported.
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


# -- processes --------------------------------------------------------------------------------


@dataclass
class Proc:
    popen: subprocess.Popen
    url: str
    log_path: Path
    env: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

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


# The drills and benches of sections 5-8 run as before SPEC 9 (no safety snapshot,
# one-click Approve); those of section 9 set these to on/typed in ``settings``.
SECTION_9_OFF = {"RESTORE_SAFETY_SNAPSHOT": "off", "RESTORE_CONFIRM": "button"}


def snapbot_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without snapbot's own settings, plus ``settings``, with
    ROOT first on PYTHONPATH: what a child snapbot process is started with."""
    prefixes = ("SLACK_", "VPS_", "SNAPSHOT_", "RESTORE_", "SAFETY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(SECTION_9_OFF)
    env.update(settings)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def web_settings(
    *,
    slack_api_url: str,
    vps_api_url: str,
    database_url: str,
    signing_secret: str = SIGNING_SECRET,
    bot_token: str = BOT_TOKEN,
    vps_token: str = VPS_TOKEN,
    log_level: str = "WARNING",
    **extra: str,
) -> dict[str, str]:
    """The settings a web process needs to talk to a fake Slack and a simulator, by
    their environment names; ``extra`` adds more (``SNAPSHOT_POLL_SECONDS="0.2"``)."""
    return {
        "SLACK_BOT_TOKEN": bot_token,
        "SLACK_SIGNING_SECRET": signing_secret,
        "SLACK_API_URL": slack_api_url,
        "VPS_API_URL": vps_api_url,
        "VPS_API_TOKEN": vps_token,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": log_level,
        **extra,
    }


def start_web(
    settings: dict[str, str], tmp_path: Path, *, workers: int = 1, name: str = "web"
) -> Proc:
    """The Procfile's `web:` command, on a free loopback port, in a fresh directory
    (so no stray .env is read); its output goes to ``tmp_path/<name>-<port>.log``."""
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


def start_webs(
    settings: dict[str, str], tmp_path: Path, names: Iterable[str], *, workers: int = 1
) -> list[Proc]:
    """Several web processes on the same settings, started together (as replicas are)."""
    names = list(names)
    with ThreadPoolExecutor(len(names)) as pool:
        return list(
            pool.map(lambda n: start_web(settings, tmp_path, workers=workers, name=n), names)
        )


def start_simulator_process(
    tmp_path: Path, *, token: str, create_seconds: float = 2.0, restore_seconds: float = 2.0
) -> Proc:
    """`snapbot vps-sim` on a free port; the Proc's url is its API base (…/api/v1/)."""
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


def sim_admin(sim_url: str, action: str) -> str:
    """The simulator's admin endpoint ``action`` (faults, stats, ...) beside its API URL."""
    return sim_url.replace("/api/v1/", f"/_sim/{action}")


def set_faults(sim_url: str, **faults) -> None:
    """Set the simulator's faults (``latency=2.0``, ``fail_rate=0.05``, ...)."""
    httpx.post(sim_admin(sim_url, "faults"), json=faults, timeout=5).raise_for_status()


def sim_stats(sim_url: str) -> dict:
    return httpx.get(sim_admin(sim_url, "stats"), timeout=10).json()


# The Slack stand-in for a benchmark: answers everything (auth.test as a bot's token of
# team T1, the team signing.slash_command_body sends), records response_url posts
# ("<name> <unix time>" lines), costs the caller nothing (a process of its own).
SLACK_SINK = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
log = open(sys.argv[2], "a", buffering=1)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/response/"):
            log.write(f"{self.path[len('/response/'):]} {time.time():.6f}\n")
            body, ctype = b"ok", "text/plain"
        elif self.path.endswith("/auth.test"):  # a bot's token, of team T1 (start-up checks it)
            body, ctype = json.dumps({"ok": True, "team_id": "T1", "user_id": "UBOT", "bot_id": "BBOT"}).encode(), "application/json"
        else:
            body, ctype = json.dumps({"ok": True, "ts": "1700000000.000100"}).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@dataclass
class SlackSink(Proc):
    """A Slack Web API (url + "/api/") that answers ``{"ok": true}`` to everything, and
    response_url endpoints (url + "/response/<name>") whose posts it notes in
    ``answers``, one "<name> <unix time>" line each."""

    answers: Path = Path()


def start_slack_sink(tmp_path: Path) -> SlackSink:
    port = free_port()
    answers = tmp_path / f"sink-{port}-answers.log"
    answers.touch()
    log_path = tmp_path / f"sink-{port}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-c", SLACK_SINK, str(port), str(answers)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sink = SlackSink(popen, f"http://127.0.0.1:{port}", log_path, answers=answers)
    try:
        wait_http(sink.url + "/api/auth.test", proc=popen)
    except Exception:
        sink.kill9()
        raise
    return sink


@dataclass
class Child:
    """A helper process of the caller's own that talks in lines over stdin/stdout (a
    seeded simulator, a fake Slack out of the caller's GIL); stopped by closing stdin."""

    popen: subprocess.Popen

    def read_line(self) -> str:
        return self.popen.stdout.readline()

    def ask(self, line: str) -> str:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()
        return self.read_line()

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.stdin:
            self.popen.stdin.close()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def start_child(argv: list[str], cwd: Path = ROOT) -> Child:
    """``python <argv>`` with pipes for stdin and stdout (text, line by line)."""
    popen = subprocess.Popen(
        [sys.executable, *argv],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=snapbot_env({}),
    )
    return Child(popen)


# -- databases --------------------------------------------------------------------------------


def fresh_schema(base_url: str, prefix: str = "t") -> tuple[str, Callable[[], None]]:
    """A new PostgreSQL schema in ``base_url``'s database: (a URL whose search_path is
    that schema, a function that drops it)."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{normalise_url(base_url)}{sep}options=-csearch_path%3D{schema}", drop


# -- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile ``p`` (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(p / 100 * len(ordered) + 0.5) - 1))]


def child_pids(pid: int) -> dict[int, str]:
    """The direct children of ``pid`` and their command lines, from /proc."""
    found = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            found[int(child)] = cmdline.decode(errors="replace")
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a gunicorn master, its workers, its job worker)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += list(child_pids(p))
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and all its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError):
            continue
    return total


def rss_kb(pid: int) -> int:
    """Resident memory (kB) of a process and all its descendants, from /proc."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total
