"""What does watching N in-progress snapshots cost, and how soon is a finish reported?

For N = 10, 100, 1000 snapshots spread over 50 servers, twice: snapbot's watcher
(one unfiltered `GET snapshots/` per cycle) and a naive watcher that re-reads each
snapshot through `GET snapshots/?server_id=` (VpsClient.find_snapshot), the same
`Duties` otherwise. Each run gets a fresh database and a fresh simulator in a
subprocess, seeded directly with N in-progress snapshots (the 5-per-server rule
guards creates, not seeding), and a fresh fake Slack in another subprocess (neither
one's CPU, nor its share of the GIL, is counted here). The parent messages are
posted to the fake Slack and the watches inserted as rows.

The real `Duties` loop runs (start()); each cycle is timed from inside. Printed:

* provider calls per cycle (counted by VpsClient's on_call hook) while all N are in
  progress, and the simulator's own count of `GET snapshots/` over the whole run
  beside the number of cycles;
* CPU per such cycle: time.thread_time of the duties thread, and time.process_time
  of this whole process (watcher, database driver, outbox pump), and wall;
* then the snapshots complete at --rate per second (the simulator's clock is moved
  once; the seeded finish times are spread); time from each completion to its
  threaded reply arriving at the fake Slack, p50 / p99 / max; target p99 <= poll + 1 s;
* last, a burst: N snapshots all finishing within one second (reporting throughput).

With --safety K, K restore requests also wait on their safety snapshots (SPEC 9.4: one
server each, the request approved and its safety snapshot in progress) beside the N
watched creates: the same single list call per cycle must serve both, and each of the
K restores is called exactly once when its safety snapshot completes.

With --slack-latency S the fake Slack answers each call after S seconds, as Slack
does across the internet (set after the parent messages are posted).

    python bench/watcher.py [--poll 1.0] [--sizes 10,100,1000] [--rate 20] [--burst 1000]
                            [--slack-latency 0.1] [--database-url postgresql://...]
                            [--safety 100]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, select

from bot.config import Settings
from bot.runtime import build_runtime
from bot.services.messaging import request_key
from bot.services.watches import report_snapshot
from bot.vps.client import VpsClient
from bot.vps.errors import VpsError
from bot.watcher import REPORT_SENDERS, STUCK_AFTER, Duties
from snapbot_local.harness import Child, start_child
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest, Watch

TOKEN = "bench-token"
SERVERS = 50
FIRST_SERVER = 20000
FIRST_SNAPSHOT = 100000
FAR = 10**6  # seconds: seeded snapshots complete this far ahead until the clock is moved
SAFETY_SERVER = 30000  # --safety: request j restores server SAFETY_SERVER + j ...
SAFETY_TARGET = 500000  # ... from snapshot SAFETY_TARGET + j, once SAFETY_SNAPSHOT + j completes
SAFETY_SNAPSHOT = 600000


# ---- the simulator, in a child process, seeded directly -------------------------------------


def serve_seeded_simulator(n: int, window: float, safety: int = 0) -> int:
    """Child mode: serve the real simulator with n in-progress snapshots over SERVERS
    servers; snapshot i completes at base + FAR + window * rank(i) / n. With ``safety``,
    as many servers more, each with a completed target and an in-progress safety
    snapshot completing in the same window. Prints `URL BASE`."""
    from snapbot_local.provider import start_simulator

    handle = start_simulator(token=TOKEN, create_seconds=FAR)
    state = handle.state
    base = state.now()
    ranks = completion_ranks(n)
    for s in range(SERVERS):
        state.seed_server(FIRST_SERVER + s, f"bench-server-{s:02d}")
    for i in range(n):
        state.seed_snapshot(
            FIRST_SERVER + i % SERVERS,
            f"bench-{i:04d}",
            snapshot_id=FIRST_SNAPSHOT + i,
            status="in_progress",
            size_mb=None,
            created_at=base,
            completes_at=base + FAR + window * ranks[i] / n,
        )
    for j in range(safety):
        state.seed_server(SAFETY_SERVER + j, f"restored-{j:03d}")
        state.seed_snapshot(
            SAFETY_SERVER + j, f"target-{j:03d}", snapshot_id=SAFETY_TARGET + j, created_at=base
        )
        state.seed_snapshot(
            SAFETY_SERVER + j,
            f"pre-restore-r{j + 1}",
            snapshot_id=SAFETY_SNAPSHOT + j,
            status="in_progress",
            size_mb=None,
            created_at=base,
            completes_at=base + FAR + window * (j + 0.5) / safety,
        )
    print(f"{handle.url} {base!r}", flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        handle.stop()
    return 0


def completion_ranks(n: int) -> list[int]:
    """The order in which the snapshots finish: shuffled (seeded), not the watches' id
    order, which a watcher scanning its watches in id order would follow for free."""
    ranks = list(range(n))
    random.Random(n).shuffle(ranks)
    return ranks


@dataclass
class Simulator:
    url: str
    base: float
    child: Child

    @classmethod
    def start(cls, n: int, window: float, safety: int = 0) -> Simulator:
        child = start_child(
            [__file__, "--serve-sim", str(n), "--window", str(window), "--safety", str(safety)]
        )
        url, base = child.read_line().split()
        return cls(url, float(base), child)

    def admin(self, method: str, action: str, body: dict | None = None) -> dict:
        admin = self.url.replace("/api/v1/", "/_sim/")
        return httpx.request(method, admin + action, json=body, timeout=10).json()

    def start_completing(self) -> float:
        """Move the simulator's clock so snapshot i completes at t0 + window * rank(i) / n
        of real time; returns t0."""
        t0 = time.time()
        self.admin("POST", "faults", {"advance_seconds": self.base + FAR - t0})
        return t0

    def stop(self) -> None:
        self.child.stop()


# ---- the fake Slack, in a child process -----------------------------------------------------


def serve_fake_slack() -> int:
    """Child mode: serve FakeSlack; print its API URL; on stdin, `latency S` makes it
    answer after S seconds (like Slack across the internet) and `calls` is answered
    with one JSON line [[method, ok, thread_ts, at], ...]; stop at EOF."""
    from snapbot_local.slack import FakeSlack

    fake = FakeSlack().start()
    print(fake.api_url, flush=True)
    try:
        for line in sys.stdin:
            if line.startswith("latency "):
                fake.latency = {"*": float(line.split()[1])}
                print("ok", flush=True)
            elif line.strip() == "calls":
                calls = [[c.method, c.ok, c.params.get("thread_ts"), c.at] for c in fake.calls()]
                print(json.dumps(calls), flush=True)
    finally:
        fake.stop()
    return 0


@dataclass
class SlackChild:
    api_url: str
    child: Child

    @classmethod
    def start(cls) -> SlackChild:
        child = start_child([__file__, "--serve-slack"])
        return cls(child.read_line().strip(), child)

    def set_latency(self, seconds: float) -> None:
        assert self.child.ask(f"latency {seconds}").strip() == "ok"

    def calls(self) -> list[list]:
        return json.loads(self.child.ask("calls"))

    def stop(self) -> None:
        self.child.stop()


# ---- the naive baseline -------------------------------------------------------------------


class NaiveDuties(Duties):
    """Duties whose poll re-reads every watched snapshot on its own (one filtered list
    per snapshot), the obvious implementation the real one is measured against. It
    reports exactly as the real one does (messages sent by REPORT_SENDERS threads)."""

    def poll_snapshots(self) -> None:
        with session_scope(self.deps.engine, readonly=True) as s:
            watches = repo.active_watches(s, kind="snapshot")
        now = self.clock()
        with ThreadPoolExecutor(REPORT_SENDERS) as pool:

            def send(ids):
                for i in ids:
                    if i is not None:
                        pool.submit(self.deps.outbox.deliver, i)

            for w in watches:
                try:
                    snap = self.deps.vps.find_snapshot(w.snapshot_id, w.server_id)
                except VpsError:
                    continue
                finally:
                    self.polls += 1
                if snap is None:
                    report_snapshot(self.deps, w, "gone", None, now, send=send)
                elif snap.is_terminal:
                    report_snapshot(self.deps, w, snap.status, snap.size_mb, now, send=send)
                elif now - w.started_at > STUCK_AFTER:
                    report_snapshot(self.deps, w, "stuck", None, now, send=send)


# ---- one run ------------------------------------------------------------------------------


@dataclass
class CycleSample:
    calls: int
    thread_cpu: float
    process_cpu: float
    wall: float
    watching: int


@dataclass
class Result:
    mode: str
    n: int
    idle: list[CycleSample] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    sim_calls: Counter = field(default_factory=Counter)
    cycles: int = 0
    # CPU of the cycles after the idle ones, per snapshot: the duties thread (claims) and
    # this whole process (with the threads sending the messages)
    claim_cpu: float = 0.0
    report_cpu: float = 0.0
    lost: int = 0
    duplicates: int = 0
    restored: int = 0  # --safety: requests whose restore was called after their safety snapshot


def run(
    mode: str,
    n: int,
    *,
    poll: float,
    window: float,
    idle_cycles: int,
    db_url: str | None,
    slack_latency: float = 0.0,
    safety: int = 0,
):
    sim = Simulator.start(n, window, safety)
    fake = SlackChild.start()
    tmp = tempfile.TemporaryDirectory(prefix="bench-watcher-")
    calls: Counter = Counter()
    calls_lock = threading.Lock()

    def on_call(method, path, status, seconds):
        with calls_lock:
            calls["total"] += 1

    settings = Settings(
        slack_bot_token="xoxb-bench",
        slack_signing_secret="bench-signing-secret",
        slack_api_url=fake.api_url,
        vps_api_url=sim.url,
        vps_api_token=TOKEN,
        database_url=db_url or f"sqlite:///{Path(tmp.name) / 'bench.db'}",
        poll_seconds=poll,
    )
    vps = VpsClient(sim.url, TOKEN, timeout=10.0, retries=2, on_call=on_call)
    runtime = build_runtime(settings, start_duties=False, vps=vps, poll_interval=poll)
    services = runtime.deps
    result = Result(mode, n)
    try:
        parents = seed_watches(services, n)
        seed_safety(services, safety)
        fake.set_latency(slack_latency)  # from here on, Slack answers as slowly as asked
        duties_cls = NaiveDuties if mode == "naive" else Duties
        duties = duties_cls(services, interval=poll)
        runtime.duties = duties
        samples: list[CycleSample] = []
        real_cycle = duties.cycle

        def timed_cycle() -> bool:
            with session_scope(services.engine, readonly=True) as s:
                watching = s.scalar(
                    select(func.count()).select_from(Watch).where(Watch.state == "watching")
                )
            with calls_lock:
                before = calls["total"]
            t, p, w = time.thread_time(), time.process_time(), time.perf_counter()
            held = real_cycle()
            sample = CycleSample(
                calls=0,
                thread_cpu=time.thread_time() - t,
                process_cpu=time.process_time() - p,
                wall=time.perf_counter() - w,
                watching=watching,
            )
            with calls_lock:
                sample.calls = calls["total"] - before
            samples.append(sample)
            return held

        duties.cycle = timed_cycle  # the real loop calls self.cycle()
        duties.start()
        # The first cycle takes the lease and opens connections: a warm-up, not counted.
        wait(lambda: len(samples) > idle_cycles, timeout=(idle_cycles + 1) * (poll + 60))
        result.idle = list(samples[1 : idle_cycles + 1])
        measured = len(samples)

        t0 = sim.start_completing()
        completes = [t0 + window * rank / n for rank in completion_ranks(n)]
        wait(lambda: all_done(services), timeout=120 + n * 0.2)
        wait(lambda: pending(services) == 0, timeout=60)  # the loop's pump sends the rest
        duties.stop()
        result.cycles = len(samples)
        result.claim_cpu = sum(s.thread_cpu for s in samples[measured:]) / n
        result.report_cpu = sum(s.process_cpu for s in samples[measured:]) / n
        arrived: dict[str, float] = {}
        watched = set(parents)  # (the safety requests' threads get replies of their own)
        for method, ok, ts, at in fake.calls():
            if method == "chat.postMessage" and ok and ts in watched:
                if ts in arrived:
                    result.duplicates += 1
                arrived.setdefault(ts, at)
        for i, ts in enumerate(parents):
            if ts in arrived:
                result.latencies.append(arrived[ts] - completes[i])
            else:
                result.lost += 1
        result.sim_calls = Counter(sim.admin("GET", "stats")["calls"])
        if safety:
            wait(lambda: restores_done(services) == safety, timeout=120 + safety * 0.5)
            result.sim_calls = Counter(sim.admin("GET", "stats")["calls"])
            result.restored = restores_done(services)
    finally:
        runtime.stop()
        fake.stop()
        sim.stop()
        tmp.cleanup()
    return result


def seed_watches(services, n: int) -> list[str]:
    """N parent messages in the fake Slack (through the outbox, as a create posts them)
    and N watch rows; returns the parents' ts in snapshot order."""
    now = services.clock()
    with session_scope(services.engine) as s:
        ids = [
            services.outbox.post(
                s, "C1", {"text": f"Snapshot bench-{i:04d} is being created"}, key=f"bench:{i}"
            )
            for i in range(n)
        ]
        for i in range(n):
            repo.add_watch(
                s,
                Watch(
                    snapshot_id=FIRST_SNAPSHOT + i,
                    snapshot_name=f"bench-{i:04d}",
                    server_id=FIRST_SERVER + i % SERVERS,
                    server_name=f"bench-server-{i % SERVERS:02d}",
                    channel="C1",
                    parent_ts=f"bench:{i}",
                    requester=f"U{i:04d}",
                    started_at=now,
                ),
            )
    services.outbox.flush(ids)
    return [services.outbox.ts_of(f"bench:{i}") for i in range(n)]


def seed_safety(services, k: int) -> None:
    """K approved restore requests whose safety snapshots are in progress (SPEC 9.4):
    each with its request message posted and its safety watch stored, as the execution
    leaves them."""
    now = services.clock()
    with session_scope(services.engine) as s:
        mids = []
        for j in range(k):
            req = repo.open_restore_request(
                s,
                RestoreRequest(
                    snapshot_id=SAFETY_TARGET + j,
                    snapshot_name=f"target-{j:03d}",
                    server_id=SAFETY_SERVER + j,
                    server_name=f"restored-{j:03d}",
                    requester="UREQ",
                    channel="C1",
                    state="safeguarding",
                    created_at=now,
                    expires_at=now + timedelta(hours=1),
                    decided_by="UAPPROVER",
                    decided_at=now,
                    safety_plan="on",
                    safety_step="watch",
                    safety_step_at=now,
                    safety_snapshot_id=SAFETY_SNAPSHOT + j,
                ),
            )
            mids.append(
                services.outbox.post(
                    s, "C1", {"text": f"Restore request #{req.id}"}, key=request_key(req.id)
                )
            )
            repo.add_watch(
                s,
                Watch(
                    kind="safety",
                    snapshot_id=SAFETY_SNAPSHOT + j,
                    snapshot_name=f"pre-restore-r{req.id}",
                    server_id=SAFETY_SERVER + j,
                    server_name=f"restored-{j:03d}",
                    request_id=req.id,
                    channel="C1",
                    parent_ts=request_key(req.id),
                    requester="UREQ",
                    started_at=now,
                ),
            )
    services.outbox.flush(mids)


def restores_done(services) -> int:
    """Requests whose restore was called (and answered): they left safeguarding."""
    with session_scope(services.engine, readonly=True) as s:
        return len(repo.requests_in_state(s, states=["succeeded"]))


def all_done(services) -> bool:
    with session_scope(services.engine, readonly=True) as s:
        return not repo.active_watches(s, kinds=("snapshot", "safety"))


def pending(services) -> int:
    with session_scope(services.engine, readonly=True) as s:
        return repo.count_messages(s, state="pending")


def wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s")
        time.sleep(0.02)


# ---- report -------------------------------------------------------------------------------


def pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-sim", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--safety",
        type=int,
        default=0,
        help="restore requests waiting on safety snapshots beside the creates (SPEC 9; 0)",
    )
    parser.add_argument("--serve-slack", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--poll", type=float, default=1.0, help="SNAPSHOT_POLL_SECONDS (1)")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--idle-cycles", type=int, default=4)
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="completions per second in the latency phase (20; 1000 snapshots of 3-10 "
        "minutes finish at about 2.6/s)",
    )
    parser.add_argument(
        "--burst", type=int, default=1000, help="then N snapshots finishing within 1 s (0: skip)"
    )
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument(
        "--slack-latency",
        type=float,
        default=0.0,
        help="seconds the fake Slack takes per call (0; real Slack: ~0.1-0.3)",
    )
    args = parser.parse_args()
    if args.serve_sim is not None:
        return serve_seeded_simulator(args.serve_sim, args.window, args.safety)
    if args.serve_slack:
        return serve_fake_slack()

    sizes = [int(x) for x in args.sizes.split(",")]
    print(
        f"watcher bench: poll {args.poll:g} s, {SERVERS} servers, completions at "
        f"{args.rate:g}/s (window max(1 s, N / rate)), Slack answering in "
        f"{args.slack_latency * 1000:.0f} ms, "
        f"database {'a SQLite file' if not args.database_url else 'as given'}, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    header = (
        f"{'mode':<7}{'N':>6} | {'calls/cycle':>11} {'sim GETs':>8} {'cycles':>6} | "
        f"{'CPU/cycle thread':>16} {'process':>9} {'wall':>9} | "
        f"{'reply p50':>9} {'p99':>7} {'max':>7} | {'lost':>4} {'dup':>3}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for n in sizes:
        for mode in ("watcher", "naive"):
            r = run(
                mode,
                n,
                poll=args.poll,
                window=max(1.0, n / args.rate),
                idle_cycles=args.idle_cycles,
                db_url=args.database_url,
                slack_latency=args.slack_latency,
                safety=args.safety if mode == "watcher" else 0,
            )
            print(row(r), flush=True)
            if mode == "watcher":
                ok = ok and max(s.calls for s in r.idle) == 1
                ok = ok and pct(r.latencies, 99) <= args.poll + 1.0
                ok = ok and r.lost == 0 and r.duplicates == 0
            if mode == "watcher" and args.safety:
                restores = r.sim_calls.get("POST snapshots/{id}/restore/", 0)
                print(
                    f"        + {args.safety} restores waiting on safety snapshots: "
                    f"{max(s.calls for s in r.idle)} provider call(s) per cycle while waiting "
                    f"(with {n} creates); {r.restored} restored, {restores} restore calls",
                    flush=True,
                )
                ok = ok and r.restored == args.safety and restores == args.safety
    safety_target = (
        f", each of the {args.safety} safety-snapshot restores called exactly once"
        if args.safety
        else ""
    )
    print(
        "targets (watcher): 1 provider call per cycle whatever N, reply p99 <= poll + 1 s "
        f"= {args.poll + 1:g} s, none lost or doubled{safety_target}: "
        f"{'met' if ok else 'NOT met'}"
    )
    if args.burst:
        r = run(
            "watcher",
            args.burst,
            poll=args.poll,
            window=1.0,
            idle_cycles=1,
            db_url=args.database_url,
            slack_latency=args.slack_latency,
        )
        drain = max(r.latencies, default=float("nan"))
        print(
            f"burst: {args.burst} snapshots finishing within 1 s: replies p50 "
            f"{pct(r.latencies, 50):.2f} s, p99 {pct(r.latencies, 99):.2f} s, last after "
            f"{drain:.1f} s (~{args.burst / drain:.0f} reports/s); CPU per report "
            f"{r.report_cpu * 1000:.1f} ms in this process, {r.claim_cpu * 1000:.1f} ms of it "
            f"the duties thread's claim; "
            f"lost {r.lost}, doubled {r.duplicates}"
        )
    return 0


def row(r: Result) -> str:
    ms = 1000
    idle = r.idle
    return (
        f"{r.mode:<7}{r.n:>6} | {statistics.mean(s.calls for s in idle):>11.1f} "
        f"{r.sim_calls.get('GET snapshots/', 0):>8} {r.cycles:>6} | "
        f"{statistics.mean(s.thread_cpu for s in idle) * ms:>13.1f} ms "
        f"{statistics.mean(s.process_cpu for s in idle) * ms:>6.1f} ms "
        f"{statistics.mean(s.wall for s in idle) * ms:>6.1f} ms | "
        f"{pct(r.latencies, 50):>8.2f}s {pct(r.latencies, 99):>6.2f}s "
        f"{max(r.latencies, default=float('nan')):>6.2f}s | "
        f"{r.lost:>4} {r.duplicates:>3}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
