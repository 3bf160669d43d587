"""N people press Approve on the same restore request at the same moment, their
presses split across two snapbot `web` processes (gunicorn, the Procfile's command)
on one PostgreSQL database. How many restores reach the provider per request (must
be exactly 1.000), and how long from the click to the restore call?

The provider simulator and the fake Slack API run in this process; each round opens
a request (/snapshot restore, alternating processes), waits for its message, then
releases N threads from a barrier, each posting a signed Approve press to one of the
two processes. The click time is the barrier's release; the restore time is the
simulator's write-log timestamp of `POST snapshots/{id}/restore/` (same clock).

    python bench/approval_race.py [--database-url postgresql://…] [--rounds 200]
                                  [--approvers 2,8,32] [--typed]

With --typed (RESTORE_CONFIRM=typed, SPEC 9.3) each approver's press first opens the
confirmation modal (views.open, before the press is acknowledged); the race is then
between the N modal submissions, each typing the server's name, released from the
barrier across the two processes as the presses are without it. The click time is
then the release of the submissions. The N presses themselves are sent at once too,
and their acks (views.open made before each) timed: Slack's trigger_id lives 3 s.

The database URL comes from --database-url, else TEST_DATABASE_URL. A fresh schema
is created in it and dropped afterwards. Exit status 0 only when every N saw exactly
one restore call per request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bot.blocks import ids
from snapbot_local.harness import Proc, fresh_schema, start_webs, wait_until, web_settings
from snapbot_local.provider import start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import (
    SlackClientSim,
    button_press_body,
    slash_command_body,
    view_submission_body,
)
from snapbot_local.stack import SIGNING_SECRET, VPS_TOKEN
from storage import repositories as repo
from storage.db import make_engine, normalise_url, session_scope

TERMINAL = {"succeeded", "failed", "interrupted", "rejected", "cancelled", "expired"}
ROUND_TIMEOUT_S = 30.0


class Bench:
    def __init__(self, db_url: str, workdir: Path, *, typed: bool = False) -> None:
        self.typed = typed
        self.sim = start_simulator(token=VPS_TOKEN, create_seconds=0.0, restore_seconds=0.05)
        self.fake = FakeSlack().start()
        self.db_url = db_url
        settings = web_settings(
            slack_api_url=self.fake.api_url,
            vps_api_url=self.sim.url,
            database_url=db_url,
            SNAPSHOT_POLL_SECONDS="0.5",
            RESTORE_CONFIRM="typed" if typed else "button",
        )
        self.procs: list[Proc] = start_webs(settings, workdir, ("a", "b"))
        self.engine = make_engine(db_url)
        self.clients = {
            p.url: SlackClientSim(p.url + "/slack/events", SIGNING_SECRET) for p in self.procs
        }
        # One completed snapshot per server: consecutive rounds restore different servers
        # (a server is `restoring` for a moment after each restore).
        self.snapshots = [801] + [
            self.sim.state.create_snapshot({"server_id": server, "name": "bench-race"})["id"]
            for server in (12346, 12347)
        ]
        self.opened = 0
        self.calls_seen = 0  # the fake Slack's calls already scanned for opened modals
        self.closed_answers = 0  # submissions answered "already decided" in the ack
        self.press_acks: list[float] = []  # --typed: press -> ack, views.open included

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for client in self.clients.values():
            client.close()
        self.engine.dispose()
        self.fake.stop()
        self.sim.stop()

    def post(self, proc: Proc, body: bytes) -> int:
        return self.clients[proc.url].post(body).status_code

    def request(self, rid: int):
        with session_scope(self.engine, readonly=True) as s:
            return repo.get_restore_request(s, request_id=rid)

    def jobs_done(self) -> bool:
        with session_scope(self.engine, readonly=True) as s:
            return repo.count_jobs(s, states=["queued", "running"]) == 0

    def restore_writes(self, snapshot_id: int) -> list[float]:
        path = f"snapshots/{snapshot_id}/restore/"
        return [t for t, m, p in list(self.sim.state.writes) if m == "POST" and p == path]

    def open_request(self, proc: Proc, snapshot_id: int):
        before = {m.ts for m in self.fake.messages("C1")}
        body = slash_command_body(
            f"restore {snapshot_id} bench",
            user_id="UREQ",
            channel_id="C1",
            response_url=self.fake.response_url("command", channel="C1", user="UREQ"),
        )
        assert self.post(proc, body) == 200

        def posted():
            for m in self.fake.messages("C1"):
                if m.ts not in before and (m.text or "").startswith("Restore request #"):
                    return m
            return None

        message = wait_until(posted, ROUND_TIMEOUT_S, 0.005, "the request message")
        rid = int(message.text.split("#", 1)[1].split(" ", 1)[0])
        return rid, message

    def round(self, n: int, approvers: int) -> tuple[int, float | None]:
        """One request, ``approvers`` simultaneous presses: (restore calls, seconds from
        click to restore call)."""
        snapshot = self.snapshots[self.opened % len(self.snapshots)]
        proc = self.procs[self.opened % 2]
        self.opened += 1
        before = len(self.restore_writes(snapshot))
        rid, message = self.open_request(proc, snapshot)
        users = [f"UB{n:03d}X{i:02d}" for i in range(approvers)]
        triggers = [self.fake.new_trigger_id() for _ in users]
        presses = [
            button_press_body(
                message,
                ids.APPROVE,
                user_id=user,
                trigger_id=trigger,
                response_url=self.fake.response_url(
                    "button", channel="C1", user=user, message_ts=message.ts
                ),
            )
            for user, trigger in zip(users, triggers, strict=True)
        ]
        bodies = self.confirmations(rid, users, triggers, presses) if self.typed else presses
        released: list[float] = []
        barrier = threading.Barrier(approvers, action=lambda: released.append(time.time()))
        statuses = [0] * approvers
        answers: list[dict] = [{} for _ in range(approvers)]

        def press(i: int) -> None:
            barrier.wait()
            response = self.clients[self.procs[i % 2].url].post(bodies[i])
            statuses[i] = response.status_code
            answers[i] = response.json() if response.content else {}

        threads = [threading.Thread(target=press, args=(i,)) for i in range(approvers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if statuses != [200] * approvers:
            raise RuntimeError(f"round {n}: presses answered {statuses}")
        wait_until(
            lambda: self.request(rid).state in TERMINAL and self.jobs_done(),
            ROUND_TIMEOUT_S,
            0.005,
            f"round {n} (request #{rid}) to finish",
        )
        self.closed_answers += sum(a.get("response_action") == "update" for a in answers)
        writes = self.restore_writes(snapshot)[before:]
        latency = writes[0] - released[0] if writes else None
        state = self.request(rid).state
        if state != "succeeded":
            print(f"  round {n}: request #{rid} ended {state}", file=sys.stderr)
        return len(writes), latency

    def confirmations(
        self, rid: int, users: list[str], triggers: list[str], presses: list[bytes]
    ) -> list[bytes]:
        """Every approver presses Approve (alternating processes) and gets the modal,
        opened before the press was acknowledged; the submissions to race, each with
        the server's name typed (surrounding spaces and all) into its own modal."""

        def press(i: int) -> int:
            sent = time.monotonic()
            status = self.post(self.procs[i % 2], presses[i])
            self.press_acks.append(time.monotonic() - sent)
            return status

        with ThreadPoolExecutor(len(users)) as pool:
            statuses = list(pool.map(press, range(len(users))))
        if set(statuses) != {200}:
            raise RuntimeError(f"request #{rid}: presses answered {statuses}")
        calls = self.fake.calls_since(self.calls_seen)
        self.calls_seen += len(calls)
        sealed = {}
        for call in calls:
            if (
                call.method == "views.open"
                and call.ok
                and call.params.get("trigger_id") in triggers
            ):
                view = call.params["view"]
                view = json.loads(view) if isinstance(view, str) else view
                sealed[call.params["trigger_id"]] = view["private_metadata"]
        if len(sealed) != len(users):
            raise RuntimeError(f"request #{rid}: {len(sealed)} of {len(users)} modals opened")
        typed = f"  {self.request(rid).server_name} "
        return [
            view_submission_body(
                ids.RESTORE_CONFIRM_MODAL,
                {ids.RESTORE_CONFIRM_BLOCK: {ids.RESTORE_CONFIRM_ACTION: typed}},
                user_id=user,
                private_metadata=sealed[trigger],
            )
            for user, trigger in zip(users, triggers, strict=True)
        ]


def percentile(values: list[float], p: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--rounds", type=int, default=200, help="requests per N (200)")
    parser.add_argument(
        "--approvers", default="2,8,32", help="comma-separated N: simultaneous approvers"
    )
    parser.add_argument(
        "--typed",
        action="store_true",
        help="RESTORE_CONFIRM=typed: the race is between the confirmation modals' submissions",
    )
    args = parser.parse_args()
    if not args.database_url or not normalise_url(args.database_url).startswith("postgresql"):
        print(
            "approval_race: needs PostgreSQL (several processes share it): pass "
            "--database-url postgresql://user@host/db or set TEST_DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    counts = [int(x) for x in args.approvers.split(",") if x.strip()]
    if args.rounds < 1 or not counts or min(counts) < 1:
        print("approval_race: --rounds and every N must be positive", file=sys.stderr)
        return 2

    db_url, drop = fresh_schema(args.database_url, prefix="bench")
    ok = True
    try:
        with tempfile.TemporaryDirectory(prefix="approval-race-") as workdir:
            bench = Bench(db_url, Path(workdir), typed=args.typed)
            try:
                mode = (
                    "typed confirmation: N modals, then N submissions race"
                    if args.typed
                    else "Approve presses race"
                )
                print(
                    f"2 gunicorn processes, 1 worker each, PostgreSQL; {args.rounds} rounds "
                    f"per N; {mode}"
                )
                for approvers in counts:
                    calls, latencies = 0, []
                    started = time.monotonic()
                    for n in range(args.rounds):
                        c, latency = bench.round(n, approvers)
                        calls += c
                        if latency is not None:
                            latencies.append(latency)
                    elapsed = time.monotonic() - started
                    closed, bench.closed_answers = bench.closed_answers, 0
                    acks, bench.press_acks = bench.press_acks, []
                    per_request = calls / args.rounds
                    good = calls == args.rounds and len(latencies) == args.rounds
                    ok = ok and good
                    lat = (
                        f"click -> restore call p50 {percentile(latencies, 50) * 1000:.0f} ms, "
                        f"p99 {percentile(latencies, 99) * 1000:.0f} ms, "
                        f"max {max(latencies) * 1000:.0f} ms"
                        if latencies
                        else "no restore call"
                    )
                    print(
                        f"N={approvers:>2}: {args.rounds} requests, {calls} restore calls = "
                        f"{per_request:.3f} per request{'' if good else '  <-- NOT EXACTLY ONE'}; "
                        f"{lat}; {elapsed:.1f} s"
                        + (
                            f"; {closed} submissions told in the ack it was already decided; "
                            f"press -> ack with the modal opened p50 "
                            f"{percentile(acks, 50) * 1000:.0f} ms, p99 "
                            f"{percentile(acks, 99) * 1000:.0f} ms, max {max(acks) * 1000:.0f} ms"
                            if args.typed and acks
                            else ""
                        ),
                        flush=True,
                    )
            finally:
                bench.close()
    finally:
        drop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
