"""How fast does the provider simulator answer `GET snapshots/`?

Starts `snapbot vps-sim` as a subprocess (snapbot_local.harness, so client and server do
not share a GIL), then N client threads, each with its own pooled httpx.Client, list
snapshots for a fixed time. Prints requests per second and p50/p99 latency.

    python bench/simulator.py [--seconds 5] [--clients 8] [--in-process]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from snapbot_local.harness import cpu_seconds, start_simulator_process
from snapbot_local.provider import start_simulator

TOKEN = "bench-token"


def client_loop(url: str, until: float, latencies: list[float], errors: list[int]) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        while time.perf_counter() < until:
            begun = time.perf_counter()
            response = client.get("snapshots/")
            latencies.append(time.perf_counter() - begun)
            if response.status_code != 200:
                errors.append(response.status_code)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--in-process", action="store_true", help="run the simulator in this process"
    )
    args = parser.parse_args()

    server_cpu: list[float] = []
    tmp = tempfile.TemporaryDirectory(prefix="snapbot-sim-bench-")
    if args.in_process:
        handle = start_simulator(token=TOKEN)
        url, stop = handle.url, handle.stop
    else:
        proc = start_simulator_process(Path(tmp.name), token=TOKEN)
        url = proc.url
        # The simulator's CPU time while it served (start-up aside): its capacity on one core.
        cpu_before = cpu_seconds(proc.popen.pid)

        def stop() -> None:
            server_cpu.append(cpu_seconds(proc.popen.pid) - cpu_before)
            proc.terminate()

    try:
        per_client: list[list[float]] = [[] for _ in range(args.clients)]
        errors: list[int] = []
        until = time.perf_counter() + args.seconds
        threads = [
            threading.Thread(target=client_loop, args=(url, until, lat, errors))
            for lat in per_client
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        stop()
        tmp.cleanup()

    latencies = sorted(x for lat in per_client for x in lat)
    if not latencies:
        print("no requests completed")
        return 1
    quantiles = statistics.quantiles(latencies, n=100)
    where = "in-process" if args.in_process else "subprocess"
    print(
        f"simulator ({where}), {args.clients} clients, {elapsed:.1f} s: "
        f"{len(latencies)} requests, {len(latencies) / elapsed:,.0f} req/s, "
        f"p50 {quantiles[49] * 1000:.2f} ms, p99 {quantiles[98] * 1000:.2f} ms, "
        f"errors {len(errors)}"
    )
    if server_cpu:
        per_request = server_cpu[0] / len(latencies)
        print(
            f"simulator CPU {server_cpu[0]:.2f} s = {per_request * 1e6:.0f} us/request "
            f"(~{1 / per_request:,.0f} req/s on one core)"
        )
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
