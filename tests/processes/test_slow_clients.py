"""Slow and idle clients cannot starve the acks (SPEC 14.1), against the real `web`
process started as the Procfile starts it (two workers, as deployed by default).

The attackers are raw sockets that keep reconnecting whenever the server drops them,
so they are open whenever a command is sent. Deadlines here are hang guards, never
latency thresholds (speed figures: bench/slow_clients.py)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from snapbot_local.harness import HANG_GUARD_S, start_web, wait_until, web_settings
from snapbot_local.provider import start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import sign, slash_command_body

pytestmark = pytest.mark.slow

SECRET = "slow-clients-signing-secret"
VPS_TOKEN = "slow-clients-vps-token"


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("slow-clients")
    sim = start_simulator(token=VPS_TOKEN)
    fake = FakeSlack().start()
    proc = start_web(
        web_settings(
            slack_api_url=fake.api_url,
            vps_api_url=sim.url,
            database_url=f"sqlite:///{tmp / 'slow.db'}",
            signing_secret=SECRET,
            bot_token="xoxb-slow-clients",
            vps_token=VPS_TOKEN,
        ),
        tmp,
        workers=2,
    )
    yield proc, fake
    code = proc.terminate()
    sim.stop()
    fake.stop()
    assert code == 0, proc.log()[-3000:]
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


class Attacker(threading.Thread):
    """One hostile connection, reopened each time the server closes it:
    ``slowloris`` sends a header line every second and never finishes its headers,
    ``idle`` sends nothing, ``short`` sends a body shorter than its Content-Length."""

    def __init__(self, kind: str, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"attacker-{kind}")
        self.kind, self.port, self.stop = kind, port, stop
        self.opened = 0
        self.closed_by_server = 0
        self.statuses: list[int] = []  # what the server answered before closing, if anything

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                continue  # (the listen queue was full: try again, as an attacker would)
            self.opened += 1
            with conn:
                self._attack(conn)

    def _attack(self, conn: socket.socket) -> None:
        if self.kind in ("slowloris", "short"):
            head = b"POST /slack/events HTTP/1.1\r\nHost: snapbot\r\n"
            if self.kind == "short":
                head += b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a": 1'
            conn.sendall(head)
        conn.settimeout(1.0)  # a slowloris's pace: one line per second
        received = b""
        while not self.stop.is_set():
            try:
                data = conn.recv(4096)
            except TimeoutError:
                if self.kind == "slowloris":
                    try:
                        conn.sendall(b"X-Drip: 1\r\n")
                    except OSError:
                        break
                continue
            except OSError:
                break
            if not data:
                self.closed_by_server += 1
                break
            received += data
        if received.startswith(b"HTTP/1.1 "):
            self.statuses.append(int(received.split(b" ", 2)[1]))


@pytest.fixture
def attack(web) -> Iterator[dict[str, list[Attacker]]]:
    proc, _ = web
    port = proc.port
    stop = threading.Event()
    # Far more hostile connections than the 2 workers x 4 threads that once served.
    crowd = {
        "slowloris": [Attacker("slowloris", port, stop) for _ in range(24)],
        "idle": [Attacker("idle", port, stop) for _ in range(24)],
        "short": [Attacker("short", port, stop) for _ in range(8)],
    }
    everyone = [a for group in crowd.values() for a in group]
    for a in everyone:
        a.start()
    wait_until(lambda: all(a.opened for a in everyone), timeout=HANG_GUARD_S, what="the attack")
    yield crowd
    stop.set()
    for a in everyone:
        a.join(10)
    assert not any(a.is_alive() for a in everyone)


def test_signed_commands_are_acknowledged_and_answered_while_slow_and_idle_clients_hold_connections(
    web, attack
):
    proc, fake = web
    statuses: dict[str, int] = {}

    def command(user: str) -> None:
        body = slash_command_body(
            "list", user_id=user, response_url=fake.response_url(user, channel="C1", user=user)
        )
        with httpx.Client(timeout=HANG_GUARD_S) as client:
            response = client.post(
                proc.url + "/slack/events", content=body, headers=sign(SECRET, body)
            )
        statuses[user] = response.status_code

    users = [f"USLOW{i}" for i in range(10)]
    threads = [threading.Thread(target=command, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD_S + 10)
    assert statuses == dict.fromkeys(users, 200)
    for user in users:
        fake.wait_for(
            lambda u=user: [e for e in fake.ephemerals(user=u) if "snapshot(s)" in (e.text or "")],
            timeout=HANG_GUARD_S,
            what=f"the list in answer to {user}",
        )
    # Every attacker was still at it (or back at it) all along.
    assert all(a.is_alive() for group in attack.values() for a in group)


def test_the_server_closes_short_bodies_idle_and_dripping_connections_without_a_5xx(web, attack):
    everyone = [a for group in attack.values() for a in group]
    wait_until(
        lambda: all(a.closed_by_server for a in everyone),
        timeout=HANG_GUARD_S,
        what="the server to close every hostile connection",
    )
    # A body shorter than its Content-Length is told so (408), then dropped.
    assert all(408 in a.statuses for a in attack["short"])
    assert all(s < 500 for a in everyone for s in a.statuses)


def test_no_hostile_body_gets_a_5xx_signed_or_not(web):
    proc, _ = web
    deep = b'{"payload": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    deep_form = b"payload=" + b"%5B" * 50_000
    huge_form = b"&".join(b"k%d=v" % i for i in range(150_000))[: (1 << 20) - 1]
    no_view_type = b"payload=" + json.dumps(
        {"type": "view_submission", "user": {"id": "U1"}, "view": {"callback_id": "x"}}
    ).encode().replace(b" ", b"")
    with httpx.Client(timeout=HANG_GUARD_S) as client:
        for body in (deep, deep_form, huge_form, no_view_type, b"\xff\xfe", b"{"):
            for headers in ({"Content-Type": "application/json"}, sign(SECRET, body)):
                response = client.post(proc.url + "/slack/events", content=body, headers=headers)
                assert response.status_code < 500, (body[:40], response.status_code)
                if "X-Slack-Signature" not in headers:
                    assert response.status_code == 401


def test_sigterm_with_hostile_connections_open_stops_the_web_process_cleanly(tmp_path):
    sim = start_simulator(token=VPS_TOKEN)
    fake = FakeSlack().start()
    proc = start_web(
        web_settings(
            slack_api_url=fake.api_url,
            vps_api_url=sim.url,
            database_url=f"sqlite:///{tmp_path / 'sigterm.db'}",
            signing_secret=SECRET,
            bot_token="xoxb-slow-clients",
            vps_token=VPS_TOKEN,
        ),
        tmp_path,
        workers=2,
    )
    stop = threading.Event()
    port = proc.port
    crowd = [Attacker(kind, port, stop) for kind in ("slowloris", "idle", "short") * 4]
    try:
        for a in crowd:
            a.start()
        wait_until(lambda: all(a.opened for a in crowd), timeout=HANG_GUARD_S, what="the attack")
        # Hostile connections do not hold the shutdown up past gunicorn's grace period.
        code = proc.terminate(timeout=HANG_GUARD_S)
    finally:
        stop.set()
        for a in crowd:
            a.join(10)
        proc.kill9()
        sim.stop()
        fake.stop()
    assert code == 0, proc.log()[-3000:]
    assert "Traceback" not in proc.log(), proc.log()[-3000:]
