"""Do slow and idle clients slow the acks down? (SPEC 14.1)

Starts the real `web` process exactly as the Procfile does, the provider simulator and
the Slack sink (all through snapbot_local.harness), then, with bench/ack_latency.py's
load generator, sends N signed `/snapshot list` commands from C concurrent clients
twice: once alone, once while an attacker process holds A hostile connections open:
half send a header line every second and never finish their headers (slowloris), half
connect and send nothing; each reconnects as soon as the server drops it, so A stay
open all along. Printed per phase: ack p50 / p99 / max, errors, and (under attack) how
many hostile connections were open and how many the server had dropped.

The clients, the attackers and the web process share the machine's cores: on a shared
machine other processes' CPU shows up in these figures too (the load average is
printed).

Target: ack p99 under 300 ms with 200 hostile connections open.

    python bench/slow_clients.py [--attackers 200] [--requests 100] [--clients 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
from pathlib import Path

# bench/ is this script's folder, first on sys.path: the ack benchmark's load generator.
from ack_latency import VPS_TOKEN, bench_settings, run_phase, set_latency, wait_drained

from snapbot_local.harness import (
    percentile,
    start_simulator_process,
    start_slack_sink,
    start_web,
)
from storage.db import make_engine


def attack(port: int, count: int, open_now, dropped, stop) -> None:
    """In its own process: ``count`` hostile connections, each reopened when dropped."""

    async def one(kind: str) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            with open_now.get_lock():
                open_now.value += 1
            try:
                if kind == "slowloris":
                    writer.write(b"POST /slack/events HTTP/1.1\r\nHost: snapbot\r\n")
                while not stop.is_set():
                    try:
                        data = await asyncio.wait_for(reader.read(4096), 1.0)
                    except TimeoutError:
                        if kind == "slowloris":
                            writer.write(b"X-Drip: 1\r\n")  # a header line a second
                        continue
                    if not data:
                        with dropped.get_lock():
                            dropped.value += 1
                        break
            except OSError:
                pass
            finally:
                with open_now.get_lock():
                    open_now.value -= 1
                writer.close()

    async def main() -> None:
        kinds = ["slowloris", "idle"] * (count // 2) + ["idle"] * (count % 2)
        await asyncio.gather(*(one(k) for k in kinds))

    asyncio.run(main())


def report(name: str, lat: list[float], errors: list[str], extra: str = "") -> None:
    ms = [x * 1000 for x in lat] or [float("nan")]
    print(
        f"{name:<22} | {statistics.median(ms):>6.1f} ms {percentile(ms, 99):>6.1f} ms "
        f"{max(ms):>6.1f} ms | {len(errors):>6} | {os.getloadavg()[0]:>8.1f} | {extra}"
    )
    if errors:
        print(f"{'':<22}   errors: {sorted(set(errors))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attackers", type=int, default=200)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (WEB_CONCURRENCY)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="snapbot-slow-bench-"))
    database_url = f"sqlite:///{tmp / 'bench.db'}"
    sink = start_slack_sink(tmp)
    sink_url = sink.url
    sim = start_simulator_process(tmp, token=VPS_TOKEN)
    web = attacker = None
    stop = multiprocessing.Event()
    try:
        web = start_web(
            bench_settings(sink_url, sim.url, database_url),
            tmp,
            workers=args.workers,
            name="bench-web",
        )
        engine = make_engine(database_url)
        url = web.url + "/slack/events"
        set_latency(sim.url, 0.0)
        print(
            f"snapbot acks under slow clients: {args.requests} signed `/snapshot list` commands, "
            f"{args.clients} concurrent, gunicorn with {args.workers} worker(s), SQLite"
        )
        run_phase(url, sink_url, phase="warm", requests=40, clients=args.clients)
        wait_drained(engine)
        print(f"{'phase':<22} | {'ack p50':>9} {'p99':>9} {'max':>9} | {'errors':>6} | load avg |")
        lat, errors, _, _ = run_phase(
            url, sink_url, phase="alone", requests=args.requests, clients=args.clients
        )
        report("no attackers", lat, errors)
        wait_drained(engine)

        open_now, dropped = multiprocessing.Value("i", 0), multiprocessing.Value("i", 0)
        port = web.port
        attacker = multiprocessing.get_context("fork").Process(
            target=attack, args=(port, args.attackers, open_now, dropped, stop), daemon=True
        )
        attacker.start()
        deadline = 60.0
        while open_now.value < args.attackers and deadline > 0:
            stop.wait(0.1)  # (the attackers connecting, not a measurement)
            deadline -= 0.1
        held = open_now.value
        lat, errors, _, _ = run_phase(
            url, sink_url, phase="attacked", requests=args.requests, clients=args.clients
        )
        report(
            f"{args.attackers} slow/idle open",
            lat,
            errors,
            f"{held} open at start, {open_now.value} at end, {dropped.value} dropped by the server",
        )
        wait_drained(engine)
        engine.dispose()
    finally:
        stop.set()
        if attacker is not None:
            attacker.join(10)
            if attacker.is_alive():
                attacker.kill()
        if web is not None:
            web.terminate()
        sim.terminate()
        sink.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
