"""Soak: mixed traffic at a steady rate against the real `web` process, with the
provider failing 5 % of its requests, for minutes; then the books are balanced.

Starts the Procfile's `web` (gunicorn) and the provider simulator in a subprocess
(`snapbot vps-sim`, with `fail_rate` set over /_sim/faults), both through
snapbot_local.harness, and the loopback fake Slack in this process (it records every message, thread reply
and ephemeral, so this script can press the buttons people would press). Traffic is
open-loop at --rate requests per second, each one signed exactly as Slack signs it:
lists, pending/audit/help, creates, deletes (asked, then confirmed on the prompt),
restore requests and their approvals (by someone other than the requester).

Printed: requests served, ack latency p50/p99/max, errors by kind (HTTP and what
users were told), the web process's RSS at start (after a warm-up) and at the end,
and the load average (a shared 2-core machine shows other processes in the figures).
Asserted (exit status 1 otherwise):

* zero double restores: per snapshot, the simulator logged exactly as many restore
  calls as requests for it reached `executing` (each at most once);
* zero lost updates: every snapshot the provider created got exactly one threaded
  reply under its channel message; every approved request ended in a terminal state
  with a note in its thread;
* RSS grew by at most 10 % between the end of the warm-up and the end.

    python bench/soak.py [--seconds 600] [--rate 20] [--fault-rate 0.05]
                         [--database-url postgresql://...] [--workers 1]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import text

from snapbot_local.harness import (
    percentile,
    rss_kb,
    set_faults,
    sim_stats,
    start_simulator_process,
    start_web,
    web_settings,
)
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import button_press_body, sign, slash_command_body
from storage.db import make_engine

SECRET = "soak-signing-secret-5f1c0e"
BOT_TOKEN = "xoxb-soak-bot-token-9d2a"
VPS_TOKEN = "soak-vps-token-3b7e"
CHANNEL = "C1"
SERVERS = (12345, 12346, 12347)
USERS = [f"USOAK{i:02d}" for i in range(20)]
SENDERS = 16
WARMUP_REQUESTS = 100
DRAIN_S = 90.0
RESTORE_PATH = re.compile(r"^snapshots/(\d+)/restore/$")


class Soak:
    def __init__(self, args, web_url: str, sim_url: str, fake: FakeSlack, engine) -> None:
        self.args = args
        self.events = web_url + "/slack/events"
        self.sim_url = sim_url
        self.fake = fake
        self.engine = engine
        self.rng = random.Random(args.seed)
        self.http = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=SENDERS))
        self.pool = ThreadPoolExecutor(SENDERS)
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.http_errors: collections.Counter = collections.Counter()
        self.kinds: collections.Counter = collections.Counter()
        self.served = 0
        self.names = 0
        self.snapshots: dict[int, dict] = {}  # the provider's list, refreshed
        self.busy: dict[int, float] = {}  # snapshot -> when a restore or delete was asked
        self.approved: set[int] = set()  # request ids whose Approve was queued
        self.buttons: collections.deque = collections.deque()
        self.prompts_seen = 0
        self.askers: dict[str, str] = {}  # a delete's response_url -> who asked

    # --- sending ---

    def _send(self, kind: str, body: bytes) -> None:
        started = time.perf_counter()
        try:
            r = self.http.post(self.events, content=body, headers=sign(SECRET, body))
            status = r.status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        elapsed = time.perf_counter() - started
        with self.lock:
            self.kinds[kind] += 1
            if status == 200:
                self.served += 1
                self.latencies.append(elapsed)
            else:
                self.http_errors[f"{kind}: {status}"] += 1

    def command(self, user: str, command: str, kind: str) -> None:
        url = self.fake.response_url(kind, channel=CHANNEL, user=user)
        if kind == "delete":
            self.askers[url] = user
        body = slash_command_body(
            command,
            user_id=user,
            channel_id=CHANNEL,
            response_url=url,
            trigger_id=self.fake.new_trigger_id(),
        )
        self.pool.submit(self._send, kind, body)

    def press(self, user: str, message, action_id: str, kind: str) -> None:
        ts = message["message_ts"] if isinstance(message, dict) else message.ts
        body = button_press_body(
            message,
            action_id,
            user_id=user,
            response_url=self.fake.response_url(kind, channel=CHANNEL, user=user, message_ts=ts),
            trigger_id=self.fake.new_trigger_id(),
        )
        self.pool.submit(self._send, kind, body)

    # --- what there is to act on ---

    def refresh(self) -> None:
        """The provider's snapshots, read straight from the simulator (faults apply)."""
        for _ in range(5):
            try:
                r = httpx.get(
                    self.sim_url + "snapshots/",
                    headers={"Authorization": f"Bearer {VPS_TOKEN}"},
                    timeout=5,
                )
                if r.status_code == 200:
                    self.snapshots = {s["id"]: s for s in r.json()["results"]}
                    return
            except httpx.HTTPError:
                pass

    def scan(self) -> None:
        """Queue the buttons people would press now: Approve on each new restore
        request (by someone else), Delete on each new delete prompt."""
        for m in self.fake.messages(CHANNEL):
            match = re.match(r"Restore request #(\d+) \(pending\)", m.text or "")
            if match and int(match.group(1)) not in self.approved:
                self.approved.add(int(match.group(1)))
                requester = re.search(r"<@(U\w+)> wants", str(m.blocks))
                approver = self.rng.choice(
                    [u for u in USERS if not requester or u != requester.group(1)]
                )
                self.buttons.append((approver, m, "restore_approve", "approve"))
        prompts = self.fake.responses("delete")
        for post in prompts[self.prompts_seen :]:
            text_ = str(post.payload.get("text") or "")
            if text_.startswith("Delete snapshot") and post.status == 200:
                message = {
                    "message_ts": f"{time.time():.6f}",
                    "channel": CHANNEL,
                    "blocks": post.payload.get("blocks"),
                }
                self.buttons.append(
                    (
                        self.askers.get(post.url, USERS[0]),
                        message,
                        "snapshot_delete_confirm",
                        "delete confirm",
                    )
                )
        self.prompts_seen = len(prompts)

    # --- the traffic ---

    def one(self) -> None:
        if self.buttons:
            user, message, action, kind = self.buttons.popleft()
            self.press(user, message, action, kind)
            return
        user = self.rng.choice(USERS)
        roll = self.rng.random()
        if roll < 0.50:
            server = self.rng.choice((None, *SERVERS))
            self.command(user, "list" if server is None else f"list {server}", "list")
        elif roll < 0.60:
            self.command(user, self.rng.choice(["pending", "audit 10", "help"]), "other")
        elif roll < 0.80:
            self.create_or_make_room(user)
        else:
            self.restore(user)

    def create_or_make_room(self, user: str) -> None:
        server = self.rng.choice(SERVERS)
        on_server = [s for s in self.snapshots.values() if s["server"]["id"] == server]
        if len(on_server) < 5:
            self.names += 1
            self.command(user, f"create {server} soak-{self.names} soak test", "create")
            return
        spare = [
            s
            for s in on_server
            if s["name"].startswith("soak-")
            and s["status"] == "completed"
            and s["id"] not in self.busy
        ]
        if spare:
            oldest = min(spare, key=lambda s: s["id"])
            self.busy[oldest["id"]] = time.monotonic()
            self.command(user, f"delete {oldest['id']}", "delete")
        else:
            self.command(user, "list", "list")

    def restore(self, user: str) -> None:
        ready = [
            s
            for s in self.snapshots.values()
            if s["status"] == "completed" and s["id"] not in self.busy
        ]
        if not ready:
            self.command(user, "pending", "other")
            return
        snap = self.rng.choice(ready)
        self.busy[snap["id"]] = time.monotonic()
        self.command(user, f"restore {snap['id']} soak", "restore")

    def release_busy(self) -> None:
        """A snapshot is free again once its request ended (or its delete was done or
        refused): at most one open request per snapshot, as people would."""
        with self.engine.connect() as conn:
            open_ = {
                r[0]
                for r in conn.execute(
                    text(
                        "SELECT snapshot_id FROM restore_request "
                        "WHERE state IN ('pending', 'approved', 'executing')"
                    )
                )
            }
        now = time.monotonic()
        self.busy = {
            sid: at
            for sid, at in self.busy.items()
            if sid in open_ or (sid in self.snapshots and now - at < 20)
        }

    def run(self, seconds: float, *, start_rss) -> dict:
        interval = 1.0 / self.args.rate
        started = time.monotonic()
        sent = 0
        last_refresh = 0.0
        rss_start = None
        while (now := time.monotonic()) - started < seconds:
            if now - last_refresh > 0.5:
                self.refresh()
                self.release_busy()
                self.scan()
                last_refresh = now
            self.one()
            sent += 1
            if sent == WARMUP_REQUESTS:
                rss_start = start_rss()
            time.sleep(max(0.0, started + sent * interval - time.monotonic()))
        self.pool.shutdown(wait=True)
        return {"sent": sent, "seconds": time.monotonic() - started, "rss_start": rss_start}


def rows(engine, sql: str) -> list:
    with engine.connect() as conn:
        return conn.execute(text(sql)).all()


def drain(engine, deadline: float) -> bool:
    while time.monotonic() < deadline:
        busy = rows(
            engine,
            "SELECT (SELECT count(*) FROM job WHERE state IN ('queued','running')) + "
            "(SELECT count(*) FROM outbox WHERE state = 'pending') + "
            "(SELECT count(*) FROM watch WHERE state = 'watching') + "
            "(SELECT count(*) FROM restore_request WHERE state IN ('approved','executing'))",
        )[0][0]
        if busy == 0:
            return True
        time.sleep(0.5)
    return False


def check(engine, fake: FakeSlack, sim_url: str) -> tuple[list[str], int, int, int]:
    problems: list[str] = []
    # Zero double restores: one provider restore call per request that reached executing.
    calls = collections.Counter(
        int(m.group(1))
        for w in sim_stats(sim_url)["writes"]
        if w["method"] == "POST" and (m := RESTORE_PATH.match(w["path"]))
    )
    executed = collections.Counter(
        r[0]
        for r in rows(
            engine, "SELECT snapshot_id FROM restore_request WHERE executing_at IS NOT NULL"
        )
    )
    for sid in set(calls) | set(executed):
        if calls[sid] > executed[sid]:
            problems.append(
                f"snapshot {sid}: {calls[sid]} restore calls for {executed[sid]} requests"
            )
        elif calls[sid] < executed[sid]:
            problems.append(
                f"snapshot {sid}: {executed[sid]} requests executed, {calls[sid]} calls"
            )
    # Zero lost updates, creates: every snapshot the provider made has one threaded reply.
    parents = {m.text: m for m in fake.messages(CHANNEL) if not m.is_reply}
    watches = rows(
        engine, "SELECT snapshot_id, snapshot_name, state FROM watch WHERE kind = 'snapshot'"
    )
    created = {r[1] for r in watches}
    for sid, name, state in watches:
        parent = next((m for t, m in parents.items() if f"*{name}*" in (t or "")), None)
        replies = fake.thread(CHANNEL, parent.ts) if parent else []
        if state == "watching" or len(replies) != 1:
            problems.append(f"snapshot {name} ({sid}): watch {state}, {len(replies)} replies")
    # Zero lost updates, restores: every approved request ended, with a thread note.
    decided = rows(
        engine,
        "SELECT id, state, message_ts FROM restore_request "
        "WHERE state IN ('approved','executing','succeeded','failed','interrupted')",
    )
    for rid, state, _ in decided:
        message = next(
            (m for t, m in parents.items() if f"Restore request #{rid} " in (t or "")), None
        )
        notes = fake.thread(CHANNEL, message.ts) if message else []
        if state not in ("succeeded", "failed", "interrupted") or not notes:
            problems.append(f"request #{rid}: {state}, {len(notes)} thread notes")
    return problems, len(created), len(decided), sum(calls.values())


def told_errors(fake: FakeSlack) -> collections.Counter:
    kinds: collections.Counter = collections.Counter()
    for e in fake.ephemerals():
        text_ = e.text or ""
        if "unreachable or failing" in text_:
            kinds["told: provider unreachable or failing"] += 1
        elif "outcome is unknown" in text_:
            kinds["told: outcome unknown"] += 1
        elif "already has 5 snapshots" in text_:
            kinds["told: 5-per-server limit"] += 1
        elif "is already" in text_:
            kinds["told: already decided or open"] += 1
        elif "Something went wrong" in text_:
            kinds["told: internal error"] += 1
        elif text_.startswith(":x:") or "does not exist" in text_:
            kinds["told: other refusal"] += 1
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--database-url")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="snapbot-soak-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'soak.db'}"
    fake = FakeSlack().start()
    sim = start_simulator_process(tmp, token=VPS_TOKEN, create_seconds=3.0, restore_seconds=2.0)
    web = None
    try:
        web = start_web(
            web_settings(
                slack_api_url=fake.api_url,
                vps_api_url=sim.url,
                database_url=database_url,
                signing_secret=SECRET,
                bot_token=BOT_TOKEN,
                vps_token=VPS_TOKEN,
                INCIDENT_CHANNEL="CINCIDENT",
                SNAPSHOT_POLL_SECONDS="1",
            ),
            tmp,
            workers=args.workers,
            name="soak-web",
        )
        engine = make_engine(database_url)
        rss_boot = rss_kb(web.popen.pid)
        kind = "SQLite" if database_url.startswith("sqlite") else "PostgreSQL"
        print(
            f"snapbot soak: {args.seconds:.0f} s at {args.rate:.0f} requests/s, provider "
            f"failing {args.fault_rate:.0%} of its requests, gunicorn with {args.workers} "
            f"worker(s), {kind}"
        )
        set_faults(sim.url, fail_rate=args.fault_rate)
        soak = Soak(args, web.url, sim.url, fake, engine)
        result = soak.run(args.seconds, start_rss=lambda: rss_kb(web.popen.pid))
        set_faults(sim.url, fail_rate=0.0)
        drained = drain(engine, time.monotonic() + DRAIN_S)
        rss_end = rss_kb(web.popen.pid)
        problems, created, decided, restores = check(engine, fake, sim.url)
        if not drained:
            problems.append(f"work still pending {DRAIN_S:.0f} s after the traffic stopped")

        ms = [x * 1000 for x in soak.latencies] or [float("nan")]
        rss_start = result["rss_start"] or rss_boot
        growth = (rss_end - rss_start) / rss_start * 100
        print(
            f"requests sent {result['sent']} in {result['seconds']:.1f} s "
            f"({result['sent'] / result['seconds']:.1f}/s); served (HTTP 200) {soak.served}"
        )
        print("  by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(soak.kinds.items())))
        print(
            f"ack latency: p50 {statistics.median(ms):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
            f"max {max(ms):.1f} ms"
        )
        errors = soak.http_errors + told_errors(fake)
        print(
            "errors by kind: "
            + (", ".join(f"{k} {n}" for k, n in sorted(errors.items())) or "none")
        )
        print(
            f"provider: {sum(sim_stats(sim.url)['calls'].values())} requests; snapshots created "
            f"{created}, requests approved {decided}, restore calls {restores}"
        )
        outcomes = collections.Counter(
            r[0] for r in rows(engine, "SELECT state FROM restore_request")
        )
        print(
            "restore requests by state: "
            + ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items()))
        )
        why = collections.Counter(
            r[0][:90]
            for r in rows(
                engine,
                "SELECT outcome_detail FROM restore_request WHERE state IN ('failed', 'interrupted')",
            )
        )
        for reason, n in why.most_common(4):
            print(f"  {n} x {reason}")
        print(
            f"RSS of the web process: {rss_boot / 1024:.1f} MB at boot, {rss_start / 1024:.1f} MB "
            f"after {WARMUP_REQUESTS} requests, {rss_end / 1024:.1f} MB at the end "
            f"({growth:+.1f} %)"
        )
        print(f"load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if growth > 10:
            problems.append(f"RSS grew {growth:.1f} % (limit 10 %)")
        for p in problems:
            print(f"FAIL {p}")
        print("OK: zero double restores, zero lost updates" if not problems else "FAILED")
        return 1 if problems else 0
    finally:
        if web is not None:
            web.terminate()
        sim.terminate()
        fake.stop()


if __name__ == "__main__":
    raise SystemExit(main())
