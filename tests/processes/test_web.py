"""Serving: the WSGI app's routes and health check, the real gunicorn `web` process
(the Procfile's command), and Socket Mode when SLACK_APP_TOKEN is set."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from slack_bolt import BoltRequest
from slack_bolt.adapter.socket_mode import SocketModeHandler
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from bot.__main__ import socket_mode_handler
from bot.config import load_settings
from bot.runtime import build_runtime
from bot.web import MAX_BODY_BYTES, WebApp
from snapbot_local.harness import (
    HANG_GUARD_S,
    child_pids,
    free_port,
    snapbot_env,
    start_web,
    web_settings,
)
from snapbot_local.provider import start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import SlackClientSim, sign, slash_command_body
from snapbot_local.stack import LocalStack, serve_wsgi
from storage.db import make_engine, session_scope
from tests.conftest import wait_until

SECRET = "web-test-signing-secret"
VPS_TOKEN = "web-test-vps-token"


@pytest.fixture
def stack(tmp_path) -> Iterator[LocalStack]:
    s = LocalStack(database_url=f"sqlite:///{tmp_path / 'web.db'}", start_duties=False).start()
    yield s
    s.stop()


def base_url(stack: LocalStack) -> str:
    return stack.url.removesuffix("/slack/events")


# -- routes and /healthz -------------------------------------------------------------------


def test_healthz_answers_200_json_when_the_database_answers(stack):
    response = httpx.get(base_url(stack) + "/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["ok"] is True and body["database"] == "ok"


def test_healthz_answers_503_when_the_database_cannot_be_opened(stack, tmp_path):
    unreadable = tmp_path / "no-such-directory" / "snapbot.db"
    broken = dataclasses.replace(stack.runtime, engine=make_engine(f"sqlite:///{unreadable}"))
    server, _ = serve_wsgi(WebApp(broken))
    try:
        response = httpx.get(f"http://127.0.0.1:{server.server_address[1]}/healthz")
    finally:
        server.shutdown()
        server.server_close()
        broken.engine.dispose()
    assert response.status_code == 503
    assert response.json() == {"ok": False, "database": "unavailable"}
    assert "no-such-directory" not in response.text  # no paths or errors leak out


def test_other_routes_and_methods_are_refused_plainly(stack):
    base = base_url(stack)
    assert httpx.get(base + "/slack/events").status_code == 405
    assert httpx.get(base + "/").status_code == 404
    assert httpx.post(base + "/slack/other", content=b"x").status_code == 404
    huge = b"x" * (MAX_BODY_BYTES + 1)
    assert httpx.post(stack.url, content=huge, headers=sign(SECRET, huge)).status_code == 413
    assert sum(stack.sim.state.calls.values()) == 0


# -- the real gunicorn process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory):
    """The Procfile's web command with one worker, the simulator and fake Slack beside it."""
    tmp = tmp_path_factory.mktemp("gunicorn")
    sim = start_simulator(token=VPS_TOKEN, create_seconds=1.0, restore_seconds=1.0)
    fake = FakeSlack().start()
    settings = web_settings(
        slack_api_url=fake.api_url,
        vps_api_url=sim.url,
        database_url=f"sqlite:///{tmp / 'web.db'}",
        signing_secret=SECRET,
        bot_token="xoxb-web-test",
        vps_token=VPS_TOKEN,
        SNAPSHOT_POLL_SECONDS="0.5",
    )
    proc = start_web(settings, tmp)
    yield proc, sim, fake
    sim.stop()  # anything still waiting on the provider fails fast
    code = proc.terminate()
    fake.stop()
    assert code == 0, proc.log()[-3000:]
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def test_gunicorn_serves_health_verifies_requests_and_answers_a_command(gunicorn):
    proc, sim, fake = gunicorn
    health = httpx.get(proc.url + "/healthz")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    slack = SlackClientSim(proc.url + "/slack/events", SECRET)
    try:
        before = sim.state.calls["GET snapshots/"]
        body = slash_command_body(
            "list web-server-01",
            user_id="UGUNI",
            response_url=fake.response_url("gunicorn", channel="C1", user="UGUNI"),
        )
        assert slack.post(body, bad_signature=True).status_code == 401
        assert slack.post(body, timestamp=int(time.time()) - 301).status_code == 401
        assert sim.state.calls["GET snapshots/"] == before
        assert slack.post(body).status_code == 200
    finally:
        slack.close()
    answer = fake.wait_for(
        lambda: [e for e in fake.ephemerals(user="UGUNI") if "snapshot(s)" in (e.text or "")],
        timeout=HANG_GUARD_S,
        what="the list in answer to the command",
    )
    assert "2 snapshot(s) for web-server-01" in answer[0].text
    assert fake.invalid_payloads == []


def test_gunicorn_acks_forty_concurrent_commands_while_the_provider_holds_every_call(gunicorn):
    proc, sim, fake = gunicorn
    # No ack can wait for the provider: it answers nothing until every ack is in.
    held = sim.state.hold("GET", "snapshots/")
    statuses: list[int] = []
    barrier = threading.Barrier(40)

    def command(i: int) -> None:
        body = slash_command_body(
            "list",
            user_id=f"UBURST{i}",
            response_url=fake.response_url(f"burst{i}", channel="C1", user=f"UBURST{i}"),
        )
        with httpx.Client(timeout=HANG_GUARD_S) as client:
            barrier.wait()
            response = client.post(
                proc.url + "/slack/events", content=body, headers=sign(SECRET, body)
            )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=command, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD_S)
    held.wait_arrived(1)  # the lists reached the provider, which has answered nothing
    held.release()
    assert sorted(statuses) == [200] * 40


# -- Socket Mode ------------------------------------------------------------------------------


def _env(tmp_path, fake: FakeSlack, **extra) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": "xoxb-socket-test",
        "VPS_API_TOKEN": VPS_TOKEN,
        "VPS_API_URL": "http://127.0.0.1:9/api/v1/",
        "SLACK_API_URL": fake.api_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'socket.db'}",
        **extra,
    }


def test_with_an_app_token_serve_builds_a_socket_mode_app_that_needs_no_signature(tmp_path):
    with FakeSlack().start() as fake:
        settings = load_settings(
            _env(tmp_path, fake, SLACK_APP_TOKEN="xapp-1-socket-test"), env_file=None
        )
        assert settings.socket_mode
        runtime, handler = socket_mode_handler(settings, start_duties=False)
        try:
            assert isinstance(handler, SocketModeHandler) and handler.app is runtime.app
            assert handler.client.app_token == "xapp-1-socket-test"
            # apps.connections.open goes where SLACK_API_URL points (GovSlack, tests).
            assert handler.client.web_client.base_url == fake.api_url
            # Socket Mode frames carry no signature: an unsigned request is handled.
            unsigned = BoltRequest(body=slash_command_body("help").decode(), headers={})
            answer = runtime.app.dispatch(unsigned)
            assert answer.status == 200 and "/snapshot list [server]" in answer.body
        finally:
            handler.close()
            runtime.stop()
        # Over HTTP (no app token, a signing secret) the very same request is refused.
        http_settings = load_settings(
            _env(tmp_path, fake, SLACK_SIGNING_SECRET=SECRET), env_file=None
        )
        assert not http_settings.socket_mode
        http_runtime = build_runtime(http_settings, start_duties=False)
        try:
            unsigned = BoltRequest(body=slash_command_body("help").decode(), headers={})
            assert http_runtime.app.dispatch(unsigned).status == 401
        finally:
            http_runtime.stop()


def test_snapbot_serve_with_an_app_token_opens_a_socket_mode_connection_not_a_port(tmp_path):
    port = free_port()
    with FakeSlack().start() as fake:
        env = snapbot_env(
            _env(
                tmp_path,
                fake,
                SLACK_APP_TOKEN="xapp-1-socket-test",
                PORT=str(port),
                HOST="127.0.0.1",
            )
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            # The fake does not speak Socket Mode (apps.connections.open answers
            # unknown_method): what matters is that serve() asked Slack for a WebSocket
            # URL through SLACK_API_URL, bound no port, and said what to check.
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        assert [c.method for c in fake.calls("apps.connections.open")] == ["apps.connections.open"]
    assert proc.returncode == 1
    assert "Traceback" not in err and "xapp-1-socket-test" not in err + out
    assert "Slack refused the Socket Mode connection (unknown_method)" in err
    assert "SLACK_APP_TOKEN" in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


# -- the web process's SQLite writers take turns (storage/db.py) ------------------------------


def test_a_sqlite_write_turn_comes_back_after_commit_rollback_error_and_invalidation(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    with session_scope(engine) as s:
        s.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        s.execute(text("INSERT INTO t VALUES (2)"))
        raise RuntimeError("rolled back")
    conn = engine.connect()
    conn.execute(text("INSERT INTO t VALUES (3)"))
    conn.invalidate()  # dropped mid-transaction, as on a lost connection
    conn.close()
    with pytest.raises(OperationalError), session_scope(engine) as s:
        s.execute(text("INSERT INTO no_such_table VALUES (4)"))

    def writers() -> None:
        for i in range(20):
            with session_scope(engine) as s:
                s.execute(text("INSERT INTO t VALUES (:x)"), {"x": 10 + i})

    threads = [threading.Thread(target=writers) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "a writer never got its turn"
    with session_scope(engine, readonly=True) as s:
        assert s.execute(text("SELECT count(*) FROM t")).scalar_one() == 81
    engine.dispose()


# -- the job worker beside the HTTP workers -----------------------------------------------------


def job_worker_pid(proc) -> int | None:
    workers = [p for p, cmd in child_pids(proc.popen.pid).items() if " bot worker " in f"{cmd} "]
    return workers[0] if len(workers) == 1 else None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc")
def test_the_web_process_runs_jobs_in_a_job_worker_it_restarts_and_stops(tmp_path):
    """The HTTP workers only acknowledge: the job is run by the job worker the gunicorn
    master started (its owner names the master), except a modal's, which opens from
    the HTTP worker at once; a killed job worker is started again and the queue
    carries on, and SIGTERM stops it with the rest (no orphan)."""
    sim = start_simulator(token=VPS_TOKEN)
    fake = FakeSlack().start()
    database_url = f"sqlite:///{tmp_path / 'split.db'}"
    proc = start_web(
        web_settings(
            slack_api_url=fake.api_url,
            vps_api_url=sim.url,
            database_url=database_url,
            signing_secret=SECRET,
            bot_token="xoxb-web-test",
            vps_token=VPS_TOKEN,
        ),
        tmp_path,
        workers=2,
    )
    slack = SlackClientSim(proc.url + "/slack/events", SECRET)
    engine = make_engine(database_url)
    second = None

    def ask(user: str) -> None:
        body = slash_command_body(
            "list", user_id=user, response_url=fake.response_url(user, channel="C1", user=user)
        )
        assert slack.post(body).status_code == 200
        fake.wait_for(
            lambda: [e for e in fake.ephemerals(user=user) if "snapshot(s)" in (e.text or "")],
            timeout=HANG_GUARD_S,
            what=f"the answer to {user}",
        )

    try:
        first = wait_until(lambda: job_worker_pid(proc), timeout=15, what="the job worker")
        ask("USPLIT1")
        with engine.connect() as conn:
            owners = conn.execute(text("SELECT owner FROM job")).scalars().all()
        assert owners and all(o.endswith(f"/web-{proc.popen.pid}") for o in owners), owners
        assert f":{first}:" in owners[0]  # ...and it is that process, not an HTTP worker

        # A modal must open within its trigger_id's 3 s: that job runs in the HTTP
        # worker that acknowledged it, not behind the job worker's queue.
        trigger = fake.new_trigger_id()
        body = slash_command_body(
            "create",
            user_id="USPLIT1",
            trigger_id=trigger,
            response_url=fake.response_url("modal", channel="C1", user="USPLIT1"),
        )
        assert slack.post(body).status_code == 200
        opened = fake.wait_for_call("views.open", timeout=HANG_GUARD_S)
        assert opened.ok and opened.params["trigger_id"] == trigger
        with engine.connect() as conn:
            owner = conn.execute(text("SELECT owner FROM job ORDER BY id DESC")).scalars().first()
        assert "/web-" not in owner and f":{first}:" not in owner, owner

        # Asked while no job worker lives: acknowledged all the same, and answered once
        # the next job worker starts (the job waits as a row, not in a dead process).
        os.kill(first, signal.SIGKILL)
        ask("USPLIT2")
        second = job_worker_pid(proc)
        assert second not in (None, first)
        with engine.connect() as conn:
            owner = conn.execute(text("SELECT owner FROM job ORDER BY id DESC")).scalars().first()
        assert f":{second}:" in owner
    finally:
        slack.close()
        engine.dispose()
        code = proc.terminate()
        sim.stop()
        fake.stop()
    assert code == 0, proc.log()[-3000:]
    assert second is not None and not Path(f"/proc/{second}").exists()  # no orphan
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def test_an_unsigned_body_is_refused_before_it_is_parsed(stack, monkeypatch):
    """Deep JSON or a huge form costs nothing unsigned: it is refused on the signature."""
    from bot import request_guard

    def parse(*_):
        raise AssertionError("an unsigned body was parsed")

    monkeypatch.setattr(request_guard, "problem", parse)
    deep = b'{"payload": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    huge_form = b"&".join(b"k%d=v" % i for i in range(100_000))
    for body in (deep, huge_form):
        headers = {**sign(SECRET, body), "X-Slack-Signature": "v0=" + "0" * 64}
        assert httpx.post(stack.url, content=body, headers=headers).status_code == 401
