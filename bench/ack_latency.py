"""How fast does snapbot acknowledge slash commands, and does the provider's speed matter?

Starts the real `web` process exactly as the Procfile does (gunicorn with
bot.gunicorn_conf and `bot.web:create_app()`), the provider simulator in a subprocess,
and a minimal Slack sink in another, all through snapbot_local.harness (the sink answers
`{"ok": true}` to the Web API and 200 to response_url posts, and notes when each
answer arrived), so that this process only sends requests and times them. For each
provider latency (the simulator's `latency` fault: every provider call answers after
that long), C client threads send N distinct `/snapshot list` commands, signed
exactly as Slack signs them, each client on its own keep-alive connection, and time
each request from send to the HTTP 200: the ack Slack waits for (at most 3 s).

The clients are spread over several processes and use http.client, the cheapest
client at hand: on 2 shared cores the load generator's own CPU (and GIL) otherwise
shows up as ack time. Everything runs on the same 2 cores: the clients, the web
process (its HTTP workers and its job worker), the simulator and the sink.

Printed per phase: the provider latency beside ack p50 / p90 / p99 / max, errors,
requests per second, the web process's CPU per command (acks, and the work after
them in its job worker), and how long users waited for their actual answers (the
response_url posts), which does depend on the provider. The machine's load average is printed too: on a
shared 2-core machine, other processes' CPU shows up in these figures.

Target: ack p99 <= 100 ms on a 2-core machine, whatever the provider latency. For a
burst (SPEC 14, the normal load): `--requests 50 --clients 50 --latencies 2` (and
`--ramp 0.5`, the burst spread over half a second, as people are), ack p99
<= 50 ms and every user answered within the provider's latency + 1 s (concurrent lists
share provider calls: bot/vps/coalesce.py).

    python bench/ack_latency.py [--requests 1000] [--clients 20] [--latencies 2,0]
                                [--workers 2] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import text

from snapbot_local.harness import (
    cpu_seconds,
    percentile,
    set_faults,
    start_simulator_process,
    start_slack_sink,
    start_web,
    web_settings,
)
from snapbot_local.slack.signing import sign, slash_command_body
from storage.db import make_engine

SECRET = "bench-signing-secret"
VPS_TOKEN = "bench-vps-token"
DRAIN_TIMEOUT_S = 600.0


def set_latency(sim_url: str, seconds: float) -> None:
    set_faults(sim_url, latency=seconds)


def unfinished_jobs(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM job WHERE state IN ('queued', 'running')")
        ).scalar_one()


def wait_drained(engine) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while unfinished_jobs(engine) and time.monotonic() < deadline:
        time.sleep(0.25)


def bench_settings(sink_url: str, sim_url: str, database_url: str) -> dict[str, str]:
    """The web process's settings: the Slack sink's API, the simulator, the database."""
    return web_settings(
        slack_api_url=sink_url + "/api/",
        vps_api_url=sim_url,
        database_url=database_url,
        signing_secret=SECRET,
        bot_token="xoxb-bench",
        vps_token=VPS_TOKEN,
    )


def run_phase(
    url: str,
    sink_url: str,
    *,
    phase: str,
    requests: int,
    clients: int,
    processes: int = 1,
    ramp: float = 0.0,
) -> tuple[list[float], list[str], float, dict[str, float]]:
    """Send `requests` signed commands from `clients` concurrent clients, spread over
    `processes` client processes (one Python process alone would measure its own GIL);
    return ack latencies, errors, wall time, and when each command was sent (by its
    response_url name)."""
    processes = max(1, min(processes, clients))
    shares = [list(range(requests))[p::processes] for p in range(processes)]
    threads = [len(range(clients)[p::processes]) for p in range(processes)]
    start_at = time.time() + 0.5
    if processes == 1:
        parts = [_client_process(url, sink_url, phase, shares[0], threads[0], start_at, ramp)]
    else:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
            futures = [
                pool.submit(
                    _client_process, url, sink_url, phase, shares[p], threads[p], start_at, ramp
                )
                for p in range(processes)
            ]
            parts = [f.result() for f in futures]
    latencies = [x for part in parts for x in part[0]]
    errors = [x for part in parts for x in part[1]]
    sent_at = {k: v for part in parts for k, v in part[2].items()}
    wall = max(part[3] for part in parts) - start_at
    return latencies, errors, wall, sent_at


def _client_process(
    url: str,
    sink_url: str,
    phase: str,
    indexes: list[int],
    clients: int,
    start_at: float,
    ramp: float = 0.0,
) -> tuple[list[float], list[str], dict[str, float], float]:
    bodies = {
        i: slash_command_body(
            "list",
            user_id=f"UBENCH{i:05d}",
            channel_id="CBENCH",
            response_url=f"{sink_url}/response/{phase}-{i}",
        )
        for i in indexes
    }
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    queue = iter(indexes)

    target = urlsplit(url)

    def client(n: int) -> None:
        # http.client, not httpx: a load generator should cost the 2 shared cores as
        # little as it can (httpx spends several times the CPU per request), or the
        # figures measure the client rather than the server.
        http = HTTPConnection(target.hostname, target.port, timeout=30)
        # All processes start together; with a ramp, the clients one after another.
        while time.time() < start_at + ramp * n / clients:
            time.sleep(0.001)
        while True:
            with lock:
                i = next(queue, None)
            if i is None:
                http.close()
                return
            headers = sign(SECRET, bodies[i])  # signed when sent, as Slack does
            at, begun = time.time(), time.perf_counter()
            try:
                http.request("POST", target.path, body=bodies[i], headers=headers)
                response = http.getresponse()
                response.read()
                status = response.status
            except (OSError, HTTPException) as exc:
                status = type(exc).__name__
                http.close()  # reconnects on the next request
            took = time.perf_counter() - begun
            with lock:
                sent_at[f"{phase}-{i}"] = at
                (latencies.append(took) if status == 200 else errors.append(str(status)))

    workers = [
        threading.Thread(target=client, args=(n,), name=f"bench-{n}") for n in range(clients)
    ]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return latencies, errors, sent_at, time.time()


def answer_times(log: Path, sent_at: dict[str, float], timeout: float) -> dict[str, float]:
    """When each command's answer (its first response_url post) arrived."""
    deadline = time.monotonic() + timeout
    while True:
        first: dict[str, float] = {}
        for line in log.read_text().splitlines():
            name, _, at = line.partition(" ")
            if name in sent_at:
                first.setdefault(name, float(at))
        if len(first) >= len(sent_at) or time.monotonic() > deadline:
            return first
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument(
        "--latencies", default="2,0", help="provider latencies in seconds, one phase each"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=4,
        help="processes the clients are spread over (1: all threads of this process)",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="seconds over which the clients start (a burst of people is not one instant)",
    )
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    parser.add_argument(
        "--no-drain", action="store_true", help="do not wait for the answers after each phase"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="snapbot-ack-bench-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    sink = start_slack_sink(tmp)
    sink_url, answers_log = sink.url, sink.answers
    sim = start_simulator_process(tmp, token=VPS_TOKEN)
    web = None
    try:
        web = start_web(
            bench_settings(sink_url, sim.url, database_url),
            tmp,
            workers=args.workers,
            name="bench-web",
        )
        engine = make_engine(database_url)
        url = web.url + "/slack/events"
        kind = "SQLite" if database_url.startswith("sqlite") else "PostgreSQL"
        print(
            f"snapbot ack latency: {args.requests} signed `/snapshot list` commands per phase, "
            f"{args.clients} concurrent clients in {args.client_processes} process(es), "
            f"gunicorn with {args.workers} worker(s), {kind}"
        )
        set_latency(sim.url, 0.0)  # a warm-up (imports, pools, connections), not measured
        run_phase(url, sink_url, phase="warm", requests=40, clients=args.clients)
        wait_drained(engine)
        print(
            f"{'provider':>9} | {'ack p50':>8} {'p90':>8} {'p99':>8} {'max':>8} | {'errors':>6} "
            f"{'req/s':>6} | {'CPU/cmd':>8} | load avg | answers p50 / p99 / max"
        )
        for latency in [float(x) for x in args.latencies.split(",")]:
            set_latency(sim.url, latency)
            phase = f"p{int(latency * 1000)}"
            cpu_before = cpu_seconds(web.popen.pid)
            lat, errors, wall, sent_at = run_phase(
                url,
                sink_url,
                phase=phase,
                requests=args.requests,
                clients=args.clients,
                processes=args.client_processes,
                ramp=args.ramp,
            )
            load = os.getloadavg()[0]
            answers = "(not waited for)"
            if not args.no_drain:
                wait_drained(engine)
                answered = answer_times(answers_log, sent_at, timeout=60)
                delays = [at - sent_at[name] for name, at in answered.items()]
                if delays:
                    # From the first command sent to the last answer: when everyone knew.
                    everyone = max(answered.values()) - min(sent_at.values())
                    answers = (
                        f"{statistics.median(delays):.1f} s / {percentile(delays, 99):.1f} s / "
                        f"{max(delays):.1f} s ({len(delays)} answered, "
                        f"all within {everyone:.1f} s of the first command)"
                    )
            cpu = (cpu_seconds(web.popen.pid) - cpu_before) / args.requests * 1000
            ms = [x * 1000 for x in lat] or [float("nan")]
            print(
                f"{latency:>7.1f} s | {statistics.median(ms):>5.1f} ms {percentile(ms, 90):>5.1f} ms "
                f"{percentile(ms, 99):>5.1f} ms {max(ms):>5.1f} ms | {len(errors):>6} "
                f"{len(lat) / wall:>6.0f} | {cpu:>5.1f} ms | {load:>8.1f} | {answers}"
            )
            if errors:
                print(f"          errors: {sorted(set(errors))}")
        engine.dispose()
    finally:
        if web is not None:
            set_latency(sim.url, 0.0)
            web.terminate()
        sim.terminate()
        sink.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
