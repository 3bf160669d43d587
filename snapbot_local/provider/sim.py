"""A stand-in for the provider's snapshot API (vps-api.md), on the standard library.

It serves the documented endpoints under `/api/v1/` with the documented answers and
errors, so the demo and every test run against real HTTP:

* state (servers, snapshots, faults, counters) lives in one `SimState` behind one
  lock; time comes from an injectable clock plus an offset tests can `advance()`,
  and a snapshot completes (or a restore ends) lazily, when it is next read;
* HTTP/1.1 keep-alive with exact Content-Length, one write per answer, so a pooled
  httpx client reuses its connections (see bench/simulator.py for the figures);
* fault switches (latency, failing the next N requests, a failure rate, a failed or
  vanished snapshot, the optional servers endpoint switched off) are settable from
  Python and, for a simulator in another process, over HTTP under `/_sim/`
  (no token needed there);
* holds, from Python only: ``state.hold("POST", "snapshots/{id}/restore/")`` keeps
  every matching request waiting (counted, not yet answered) until the test says
  ``release()``, so a test holds work in flight for exactly as long as it needs
  instead of guessing a latency:

    GET  /_sim/stats   {"total": N, "calls": {"GET snapshots/": N, ...},
                        "writes": [{"time": t, "method": "POST", "path": "snapshots/"}, ...],
                        "faults": {...}}
    POST /_sim/faults  {"latency": s, "fail_next": n, "fail_status": 503,
                        "fail_after_apply": bool, "fail_rate": p, "fail_snapshot": id,
                        "vanish_snapshot": id, "servers_endpoint": bool,
                        "advance_seconds": s, "huge_answer": bytes, "drip_seconds": s,
                        "restore_status": "error", "echo_token": bool,
                        "redirect_to": url, "wrong_types": bool,
                        "duplicate_ids": bool}  -> the faults now in force
    POST /_sim/reset   back to the seeded state, faults and counters cleared

An evil provider (SPEC §14.5) is a set of public fault modes too: an answer of any
size sent without a length (`huge_answer`), one byte at a time (`drip_seconds`), a
`200` to a restore that did not start (`restore_status`), the bearer token echoed
in every answer's message (`echo_token`), a redirect for every call
(`redirect_to`), ids and names of the wrong JSON types (`wrong_types`), and every
snapshot listed again on another server (`duplicate_ids`). `add_server` and
`add_snapshot` seed servers and snapshots with any name (markup included), which the
API's own create refuses.

Run it alone with `python -m snapbot_local.provider` (the CLI wires it as `snapbot vps-sim`).
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"
ADMIN_PREFIX = "/_sim/"
SNAPSHOT_LIMIT = 5
DEFAULT_TOKEN = "sim-token"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")

CREATE_MESSAGE = "Snapshot is being created. This may take 3-10 minutes depending on server size."
RESTORE_MESSAGE = "Server is being restored from snapshot. This may take 5-15 minutes."
# Every error answers {"detail": "<one sentence>"}, the provider's (DRF-style) shape.
INVALID_TOKEN = "Invalid token."
NOT_A_JSON_OBJECT = "Request body must be a JSON object."
SERVER_ID_REQUIRED = "server_id is required and must be an integer."
NAME_REQUIRED = "name is required and must be a string."
NAME_INVALID = "Snapshot name may contain only letters, digits, hyphens and underscores."
DESCRIPTION_INVALID = "description must be a string."
LIMIT_REACHED = (
    f"Snapshot limit reached ({SNAPSHOT_LIMIT} per server). "
    "Delete an old snapshot before creating a new one."
)
NOT_RESTORABLE_SERVER = "Server is not in a valid state for restoration."
FILTER_INVALID = "server_id must be an integer."

SEED_SERVERS = {12345: "web-server-01", 12346: "db-server-01", 12347: "cache-server-01"}
SEED_NEXT_ID = 802


def _seed_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# (id, server_id, name, created_at, size_mb, description): vps-api.md's examples.
SEED_SNAPSHOTS = (
    (801, 12345, "pre-migration-snapshot", _seed_time("2025-01-15T18:30:00Z"), 5120,
     "Before major migration"),
    (798, 12345, "weekly-snapshot-2025-01-08", _seed_time("2025-01-08T12:00:00Z"), 4856,
     "Weekly snapshot"),
)  # fmt: skip


class SimError(Exception):
    """An answer other than success: HTTP status and the `detail` sentence."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class _Snapshot:
    id: int
    server_id: int
    name: str
    description: str | None
    created_at: float
    completes_at: float | None  # None: already terminal
    size_mb: int | None
    status: str


@dataclass
class _Server:
    id: int
    name: str
    restoring_until: float = 0.0


@dataclass
class Faults:
    latency: float = 0.0
    fail_next: int = 0
    fail_status: int = 503
    fail_after_apply: bool = False
    fail_rate: float = 0.0
    servers_endpoint: bool = True
    # The evil provider: see the module docstring.
    huge_answer: int = 0
    drip_seconds: float = 0.0
    restore_status: str | None = None
    restore_message: str | None = None
    fail_detail: str | None = None
    echo_token: bool = False
    redirect_to: str | None = None
    wrong_types: bool = False
    duplicate_ids: bool = False


class Hold:
    """API requests kept waiting by `SimState.hold` until `release()`.

    A held request has been counted (``calls``) and waits before its latency, faults
    and answer; released, it goes on as if it had just arrived, or (``release(status=
    503)``) answers that failure without taking effect. The client's own
    timeout still runs while it waits, so release it within that. Usable as a context
    manager, which releases on the way out (a failing test leaves nothing hanging).
    """

    def __init__(self, method: str, template: str, query: str | None) -> None:
        self.method = method
        self.template = template
        self.query = query
        self._cond = threading.Condition()
        self._released = False
        self._status: int | None = None
        self.arrived = 0  # requests that reached the hold (released or not)

    def __repr__(self) -> str:
        query = "" if self.query is None else f"?{self.query}"
        return f"Hold({self.method} {self.template}{query}, arrived={self.arrived})"

    def matches(self, method: str, template: str, query: str) -> bool:
        return (method, template) == (self.method, self.template) and (
            self.query is None or query == self.query
        )

    def wait(self) -> int | None:
        """Called by the request's thread: wait here until released; the failure status
        it must answer instead, if any."""
        with self._cond:
            self.arrived += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._released)
            return self._status

    def wait_arrived(self, n: int = 1, timeout: float = 60.0) -> int:
        """Block until ``n`` requests reached the hold; AssertionError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.arrived >= n, timeout):
                raise AssertionError(f"{self}: {n} request(s) did not arrive in {timeout} s")
            return self.arrived

    def release(self, *, status: int | None = None) -> None:
        """Let every held request (and every later one) through; with ``status``, they
        answer it (a 5xx, say) and change nothing, as a provider that refused them."""
        with self._cond:
            if not self._released:
                self._status = status
            self._released = True
            self._cond.notify_all()

    @property
    def released(self) -> bool:
        return self._released

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plausible_size(snapshot_id: int, server_id: int) -> int:
    return 4096 + (snapshot_id * 7919 + server_id) % 2048


class SimState:
    """Everything the simulated provider knows; every method takes the one lock."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        create_seconds: float = 5.0,
        restore_seconds: float = 5.0,
        clock: Callable[[], float] | None = None,
        seed: int = 0,
    ) -> None:
        self._token = token.encode()
        self.create_seconds = create_seconds
        self.restore_seconds = restore_seconds
        self._clock = clock or time.time
        self._seed = seed
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.writes: list[tuple[float, str, str]] = []
        self._holds: list[Hold] = []
        self.reset()

    def __repr__(self) -> str:
        return f"SimState(servers={len(self._servers)}, snapshots={len(self._snapshots)})"

    # ---- time and faults ----------------------------------------------------------

    def now(self) -> float:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the simulator's time forward (snapshots complete, restores end)."""
        with self._lock:
            self._offset += seconds

    def reset(self) -> None:
        """Back to vps-api.md's servers and snapshots; faults, counters and time reset
        (holds released)."""
        self.release_holds()
        with self._lock:
            self._offset = 0.0
            self._servers = {sid: _Server(sid, name) for sid, name in SEED_SERVERS.items()}
            self._snapshots = {
                sid: _Snapshot(sid, server, name, desc, created, None, size, "completed")
                for sid, server, name, created, size, desc in SEED_SNAPSHOTS
            }
            self._next_id = SEED_NEXT_ID
            self.faults = Faults()
            self._redirect_status = 302
            self.streamed = 0
            self._rng = random.Random(self._seed)
            self.calls.clear()
            self.writes.clear()

    @property
    def latency(self) -> float:
        return self.faults.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        with self._lock:
            self.faults.latency = max(0.0, float(seconds))

    @property
    def fail_rate(self) -> float:
        return self.faults.fail_rate

    @fail_rate.setter
    def fail_rate(self, probability: float) -> None:
        with self._lock:
            self.faults.fail_rate = min(1.0, max(0.0, float(probability)))

    @property
    def servers_endpoint_enabled(self) -> bool:
        return self.faults.servers_endpoint

    @servers_endpoint_enabled.setter
    def servers_endpoint_enabled(self, enabled: bool) -> None:
        with self._lock:
            self.faults.servers_endpoint = bool(enabled)

    def fail_next(
        self,
        n: int,
        status: int = 503,
        *,
        after_apply: bool = False,
        detail: str | None = None,
    ) -> None:
        """The next n API requests answer `status`; with after_apply, they take effect first
        (the answer is lost on the way back, as behind a failing gateway). `detail`: the
        provider's own sentence in the answer (any text: markup, a long reason)."""
        with self._lock:
            self.faults.fail_next = max(0, int(n))
            self.faults.fail_status = int(status)
            self.faults.fail_after_apply = bool(after_apply)
            self.faults.fail_detail = detail

    def hold(self, method: str, template: str, *, query: str | None = None) -> Hold:
        """Keep the matching API requests waiting until the returned hold is released.

        ``template`` is a route as counted in ``calls`` ("snapshots/", "snapshots/{id}/restore/");
        ``query``, when given, must equal the request's query string ("server_id=12346";
        "" for none), so a test can hold one server's lists and not another's.
        """
        held = Hold(method.upper(), template, query)
        with self._lock:
            self._holds = [h for h in self._holds if not h.released] + [held]
        return held

    def release_holds(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, []
        for held in holds:
            held.release()

    def wait_if_held(self, method: str, template: str, query: str) -> int | None:
        """Called for each API request after `begin`: wait out every hold it matches;
        the failure status a release gave it, if any."""
        with self._lock:
            holds = [h for h in self._holds if not h.released]
        status = None
        for held in holds:
            if held.matches(method, template, query):
                status = held.wait() or status
        return status

    def fail_snapshot(self, snapshot_id: int) -> None:
        """The snapshot ends now in status `failed`, without a size."""
        with self._lock:
            snap = self._get_snapshot(snapshot_id)
            snap.status, snap.completes_at, snap.size_mb = "failed", None, None

    def vanish_snapshot(self, snapshot_id: int) -> None:
        """The snapshot disappears from the provider, as if deleted behind our back."""
        with self._lock:
            self._get_snapshot(snapshot_id)
            del self._snapshots[snapshot_id]

    # ---- seeding and the evil provider ----------------------------------------------

    def seed_server(self, server_id: int, name: str) -> None:
        """A server with any name (markup, quotes, emoji), without snapshots; one with the
        same id is replaced (its snapshots stay)."""
        with self._lock:
            self._servers[int(server_id)] = _Server(int(server_id), str(name))

    def seed_snapshot(
        self,
        server_id: int,
        name: str,
        *,
        snapshot_id: int | None = None,
        description: str | None = None,
        status: str = "completed",
        size_mb: int | None = 2048,
        created_at: float | None = None,
        completes_at: float | None = None,
    ) -> int:
        """A snapshot with any id, name, description or status; its id. Unlike the API's
        create, no name rule or per-server limit applies. ``created_at`` defaults to now
        (simulator time); with ``completes_at`` an ``in_progress`` snapshot completes then
        (with a plausible size), as one the API created; later creates take ids above
        every seeded one."""
        with self._lock:
            server_id = int(server_id)
            if server_id not in self._servers:
                raise SimError(404, f"Server {server_id} does not exist.")
            ident = self._next_id if snapshot_id is None else int(snapshot_id)
            snap = _Snapshot(
                id=ident,
                server_id=server_id,
                name=name,
                description=description,
                created_at=self.now() if created_at is None else float(created_at),
                completes_at=completes_at,
                size_mb=size_mb,
                status=status,
            )
            self._next_id = max(self._next_id, ident + 1)
            self._snapshots[ident] = snap
            return ident

    def add_server(self, server_id: int, name: str) -> None:
        """`seed_server`, by its older name."""
        self.seed_server(server_id, name)

    def add_snapshot(
        self,
        server_id: int,
        name: str,
        *,
        description: str | None = None,
        status: str = "completed",
        size_mb: int | None = 2048,
    ) -> int:
        """A snapshot taken now with the next id (`seed_snapshot` without its options)."""
        return self.seed_snapshot(
            server_id, name, description=description, status=status, size_mb=size_mb
        )

    def huge_answer(self, size: int) -> None:
        """Every API answer becomes a JSON document of `size` bytes, sent without a
        Content-Length (0: off). `streamed` in stats() counts the bytes that left."""
        with self._lock:
            self.faults.huge_answer = max(0, int(size))

    def drip_answers(self, seconds_per_byte: float) -> None:
        """Every API answer is written one byte at a time, this far apart (0: off)."""
        with self._lock:
            self.faults.drip_seconds = max(0.0, float(seconds_per_byte))

    def lie_about_restores(self, status: str | None = "error") -> None:
        """A restore answers 200 with this status and does not restore (None: off)."""
        with self._lock:
            self.faults.restore_status = status

    def answer_restores_with(self, message: str | None) -> None:
        """The message of a restore that starts (None: the documented one)."""
        with self._lock:
            self.faults.restore_message = message

    def echo_token(self, enabled: bool = True) -> None:
        """Every JSON answer repeats the request's Authorization header in its message."""
        with self._lock:
            self.faults.echo_token = bool(enabled)

    def redirect_to(self, url: str | None, status: int = 302) -> None:
        """Every API request answers a redirect to `url` (None: off)."""
        with self._lock:
            self.faults.redirect_to = url
            self._redirect_status = int(status)

    def wrong_types(self, enabled: bool = True) -> None:
        """Listed snapshots carry ids of the wrong JSON type (`true`, "801"), and names
        and statuses that are not strings."""
        with self._lock:
            self.faults.wrong_types = bool(enabled)

    def duplicate_ids(self, enabled: bool = True) -> None:
        """Every listed snapshot is listed again, with the same id, on another server."""
        with self._lock:
            self.faults.duplicate_ids = bool(enabled)

    def count_streamed(self, sent: int) -> None:
        with self._lock:
            self.streamed += sent

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": sum(self.calls.values()),
                "calls": dict(self.calls),
                "writes": [{"time": t, "method": m, "path": p} for t, m, p in self.writes],
                "faults": self._faults_json(),
                "streamed": self.streamed,
            }

    def _faults_json(self) -> dict[str, Any]:
        f = self.faults
        return {
            "latency": f.latency,
            "fail_next": f.fail_next,
            "fail_status": f.fail_status,
            "fail_after_apply": f.fail_after_apply,
            "fail_rate": f.fail_rate,
            "servers_endpoint": f.servers_endpoint,
            "huge_answer": f.huge_answer,
            "drip_seconds": f.drip_seconds,
            "restore_status": f.restore_status,
            "restore_message": f.restore_message,
            "echo_token": f.echo_token,
            "redirect_to": f.redirect_to,
            "wrong_types": f.wrong_types,
            "duplicate_ids": f.duplicate_ids,
        }

    def apply_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        """The /_sim/faults body: set what it names, answer the faults in force."""
        known = {
            "latency", "fail_next", "fail_status", "fail_after_apply", "fail_rate",
            "fail_snapshot", "vanish_snapshot", "servers_endpoint", "advance_seconds",
            "huge_answer", "drip_seconds", "restore_status", "echo_token", "redirect_to",
            "wrong_types", "duplicate_ids",
        }  # fmt: skip
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SimError(400, f"Unknown fault(s): {', '.join(unknown)}.")
        try:
            if "latency" in changes:
                self.latency = float(changes["latency"])
            if "fail_rate" in changes:
                self.fail_rate = float(changes["fail_rate"])
            if "servers_endpoint" in changes:
                self.servers_endpoint_enabled = bool(changes["servers_endpoint"])
            if "fail_next" in changes:
                self.fail_next(
                    int(changes["fail_next"]),
                    int(changes.get("fail_status", 503)),
                    after_apply=bool(changes.get("fail_after_apply", False)),
                )
            if "fail_snapshot" in changes:
                self.fail_snapshot(int(changes["fail_snapshot"]))
            if "vanish_snapshot" in changes:
                self.vanish_snapshot(int(changes["vanish_snapshot"]))
            if "advance_seconds" in changes:
                self.advance(float(changes["advance_seconds"]))
            if "huge_answer" in changes:
                self.huge_answer(int(changes["huge_answer"]))
            if "drip_seconds" in changes:
                self.drip_answers(float(changes["drip_seconds"]))
            if "restore_status" in changes:
                self.lie_about_restores(changes["restore_status"])
            if "echo_token" in changes:
                self.echo_token(bool(changes["echo_token"]))
            if "redirect_to" in changes:
                self.redirect_to(changes["redirect_to"])
            if "wrong_types" in changes:
                self.wrong_types(bool(changes["wrong_types"]))
            if "duplicate_ids" in changes:
                self.duplicate_ids(bool(changes["duplicate_ids"]))
        except (TypeError, ValueError) as exc:
            raise SimError(400, f"Invalid fault value: {exc}.") from None
        with self._lock:
            return self._faults_json()

    # ---- one API request ---------------------------------------------------------------

    def begin(self, method: str, template: str, path: str) -> tuple[float, int | None, bool]:
        """Count the request and decide its fault: (latency, failure status, after apply)."""
        with self._lock:
            self.calls[f"{method} {template}"] += 1
            if method not in ("GET", "HEAD"):
                self.writes.append((self.now(), method, path))
            f = self.faults
            if f.fail_next > 0:
                f.fail_next -= 1
                return f.latency, f.fail_status, f.fail_after_apply
            if f.fail_rate and self._rng.random() < f.fail_rate:
                return f.latency, 503, False
            return f.latency, None, False

    def authorized(self, header: str | None) -> bool:
        expected = b"Bearer " + self._token
        return header is not None and hmac.compare_digest(header.encode(), expected)

    # ---- the documented operations (raise SimError for the documented errors) -------

    def list_snapshots(self, server_id: int | None = None) -> dict[str, Any]:
        with self._lock:
            now = self.now()
            snaps = [
                s for s in self._snapshots.values() if server_id is None or s.server_id == server_id
            ]
            snaps.sort(key=lambda s: (s.created_at, s.id), reverse=True)
            results = [self._snapshot_json(s, now) for s in snaps]
            if self.faults.duplicate_ids:
                others = sorted(self._servers)
                for item in list(results):
                    sid = item["server"]["id"]
                    other = next((o for o in others if o != sid), sid)
                    results.append(
                        {**item, "server": {"id": other, "name": self._servers[other].name}}
                    )
            if self.faults.wrong_types:
                results = [_mistyped(item, n) for n, item in enumerate(results)]
        return {"count": len(results), "results": results}

    def create_snapshot(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise SimError(400, NOT_A_JSON_OBJECT)
        server_id = body.get("server_id")
        if not isinstance(server_id, int) or isinstance(server_id, bool):
            raise SimError(400, SERVER_ID_REQUIRED)
        name = body.get("name")
        if not isinstance(name, str):
            raise SimError(400, NAME_REQUIRED)
        if not NAME_PATTERN.fullmatch(name):
            raise SimError(400, NAME_INVALID)
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise SimError(400, DESCRIPTION_INVALID)
        with self._lock:
            if server_id not in self._servers:
                raise SimError(404, f"Server {server_id} does not exist.")
            # The limit counts every snapshot of the server, whatever its status.
            if sum(s.server_id == server_id for s in self._snapshots.values()) >= SNAPSHOT_LIMIT:
                raise SimError(400, LIMIT_REACHED)
            now = self.now()
            snap = _Snapshot(
                id=self._next_id,
                server_id=server_id,
                name=name,
                description=description,
                created_at=now,
                completes_at=now + self.create_seconds,
                size_mb=None,
                status="in_progress",
            )
            self._next_id += 1
            self._snapshots[snap.id] = snap
            answer = self._snapshot_json(snap, now)
        answer["message"] = CREATE_MESSAGE
        return answer

    def restore_snapshot(self, snapshot_id: int) -> dict[str, Any]:
        with self._lock:
            now = self.now()
            snap = self._get_snapshot(snapshot_id)
            self._settle(snap, now)
            server = self._servers[snap.server_id]
            if now < server.restoring_until:
                raise SimError(400, NOT_RESTORABLE_SERVER)
            if snap.status != "completed":
                raise SimError(
                    400,
                    f"Snapshot {snapshot_id} cannot be restored: its status is {snap.status}.",
                )
            if self.faults.restore_status is not None:
                return {
                    "status": self.faults.restore_status,
                    "message": "The restore could not be started.",
                    "snapshot": {"id": snap.id, "name": snap.name},
                    "server": {"id": server.id, "name": server.name, "status": "running"},
                }
            server.restoring_until = now + self.restore_seconds
            return {
                "status": "success",
                "message": self.faults.restore_message or RESTORE_MESSAGE,
                "snapshot": {"id": snap.id, "name": snap.name, "created_at": _iso(snap.created_at)},
                "server": {"id": server.id, "name": server.name, "status": "restoring"},
            }

    def delete_snapshot(self, snapshot_id: int) -> None:
        with self._lock:
            self._get_snapshot(snapshot_id)
            del self._snapshots[snapshot_id]

    def get_server(self, server_id: int) -> dict[str, Any]:
        with self._lock:
            if not self.faults.servers_endpoint:
                raise SimError(404, "Not found.")
            server = self._servers.get(server_id)
            if server is None:
                raise SimError(404, f"Server {server_id} does not exist.")
            status = "restoring" if self.now() < server.restoring_until else "running"
            return {"id": server.id, "name": server.name, "status": status}

    # ---- under the lock -------------------------------------------------------------------

    def _get_snapshot(self, snapshot_id: int) -> _Snapshot:
        snap = self._snapshots.get(snapshot_id)
        if snap is None:
            raise SimError(404, f"Snapshot {snapshot_id} does not exist.")
        return snap

    def _settle(self, snap: _Snapshot, now: float) -> None:
        if snap.completes_at is not None and now >= snap.completes_at:
            snap.status = "completed"
            snap.size_mb = _plausible_size(snap.id, snap.server_id)
            snap.completes_at = None

    def _snapshot_json(self, snap: _Snapshot, now: float) -> dict[str, Any]:
        self._settle(snap, now)
        return {
            "id": snap.id,
            "server": {"id": snap.server_id, "name": self._servers[snap.server_id].name},
            "name": snap.name,
            "status": snap.status,
            "size_mb": snap.size_mb,
            "created_at": _iso(snap.created_at),
            "description": snap.description,
        }


# ---- HTTP ---------------------------------------------------------------------------------

_ID = re.compile(r"[0-9]+")
_MAX_BODY = 1 << 20


def _mistyped(item: dict[str, Any], n: int) -> dict[str, Any]:
    """One listed snapshot with a field of the wrong JSON type, in turn: the id, the
    server's id, the name, the status."""
    field = n % 4
    if field == 0:
        return {**item, "id": True}
    if field == 1:
        return {**item, "server": {**item["server"], "id": str(item["server"]["id"])}}
    if field == 2:
        return {**item, "name": 42}
    return {**item, "status": None}


def route(path: str) -> tuple[str, int | None]:
    """(path template, id) for a request path; the template of anything else is '<unknown>'."""
    if not (path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/")):
        return "<unknown>", None
    parts = [p for p in path[len(API_PREFIX) :].split("/") if p]
    match parts:
        case ["snapshots"]:
            return "snapshots/", None
        case ["snapshots", ident] if _ID.fullmatch(ident):
            return "snapshots/{id}/", int(ident)
        case ["snapshots", ident, "restore"] if _ID.fullmatch(ident):
            return "snapshots/{id}/restore/", int(ident)
        case ["servers", ident] if _ID.fullmatch(ident):
            return "servers/{id}/", int(ident)
    return "<unknown>", None


_ALLOWED = {
    "snapshots/": ("GET", "POST"),
    "snapshots/{id}/": ("DELETE",),
    "snapshots/{id}/restore/": ("POST",),
    "servers/{id}/": ("GET",),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vps-sim"
    disable_nagle_algorithm = True
    server: SimServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, open_=False)

    def _handle(self, method: str) -> None:
        self._redirect: str | None = None
        try:
            raw = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._reply(400, {"detail": str(exc)})
            return
        path, _, query = self.path.partition("?")
        try:
            if path.startswith(ADMIN_PREFIX):
                status, payload = self._admin(method, path, raw)
            else:
                status, payload = self._api(method, path, query, raw)
        except Exception:
            logger.exception("simulator failed on %s %s", method, path)
            status, payload = 500, {"detail": "Internal simulator error."}
        faults = self.server.state.faults
        if path.startswith(API_PREFIX) and faults.huge_answer:
            self._reply_huge(status, faults.huge_answer)
        elif path.startswith(API_PREFIX) and faults.drip_seconds:
            self._reply(status, payload, drip=faults.drip_seconds)
        else:
            self._reply(status, payload)

    def _api(self, method: str, path: str, query: str, raw: bytes) -> tuple[int, Any]:
        state = self.server.state
        template, ident = route(path)
        relative = path if template == "<unknown>" else path[len(API_PREFIX) :].strip("/") + "/"
        latency, fail_status, after_apply = state.begin(method, template, relative)
        refused = state.wait_if_held(method, template, query)
        if refused is not None:
            return refused, {"detail": _failure_detail(refused)}
        if latency:
            time.sleep(latency)
        if state.faults.redirect_to:
            self._redirect = state.faults.redirect_to
            return state._redirect_status, None
        detail = state.faults.fail_detail
        if fail_status is not None and not after_apply:
            return self._echo(fail_status, {"detail": detail or _failure_detail(fail_status)})
        if not state.authorized(self.headers.get("Authorization")):
            status, payload = 401, {"detail": INVALID_TOKEN}
        else:
            try:
                status, payload = self._operate(state, method, template, ident, query, raw)
            except SimError as exc:
                status, payload = exc.status, {"detail": exc.detail}
        if fail_status is not None:
            return self._echo(fail_status, {"detail": detail or _failure_detail(fail_status)})
        return self._echo(status, payload)

    def _echo(self, status: int, payload: Any) -> tuple[int, Any]:
        """With `echo_token`, the answer repeats the Authorization header: in its message
        (or detail), and in the description of every snapshot it carries."""
        if not self.server.state.faults.echo_token or not isinstance(payload, dict):
            return status, payload
        echoed = f" (authorized with {self.headers.get('Authorization', '')})"
        key = "message" if "message" in payload or "detail" not in payload else "detail"
        payload = {**payload, key: str(payload.get(key) or "") + echoed}
        if isinstance(payload.get("results"), list):
            payload["results"] = [
                {**item, "description": str(item.get("description") or "") + echoed}
                for item in payload["results"]
            ]
        return status, payload

    def _operate(
        self,
        state: SimState,
        method: str,
        template: str,
        ident: int | None,
        query: str,
        raw: bytes,
    ) -> tuple[int, Any]:
        allowed = _ALLOWED.get(template)
        if allowed is None:
            raise SimError(404, "Not found.")
        if method not in allowed:
            raise SimError(405, f'Method "{method}" not allowed.')
        if template == "snapshots/" and method == "GET":
            values = [v.strip() for v in parse_qs(query).get("server_id", []) if v.strip()]
            server_id = None
            if values:
                if not re.fullmatch(r"-?[0-9]+", values[-1]):
                    raise SimError(400, FILTER_INVALID)
                server_id = int(values[-1])
            return 200, state.list_snapshots(server_id)
        if template == "snapshots/":
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise SimError(400, NOT_A_JSON_OBJECT) from None
            return 201, state.create_snapshot(body)
        assert ident is not None
        if template == "snapshots/{id}/restore/":
            return 200, state.restore_snapshot(ident)
        if template == "snapshots/{id}/":
            state.delete_snapshot(ident)
            return 204, None
        return 200, state.get_server(ident)

    def _admin(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        state = self.server.state
        action = path[len(ADMIN_PREFIX) :].strip("/")
        if action == "stats" and method == "GET":
            return 200, state.stats()
        if action == "reset" and method == "POST":
            state.reset()
            return 200, {"reset": True}
        if action == "faults" and method == "POST":
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return 400, {"detail": NOT_A_JSON_OBJECT}
            if not isinstance(body, dict):
                return 400, {"detail": NOT_A_JSON_OBJECT}
            try:
                return 200, state.apply_faults(body)
            except SimError as exc:
                return exc.status, {"detail": exc.detail}
        return 404, {"detail": "Not found."}

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline(100).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1000).strip():  # trailers
                        pass
                    return b"".join(chunks)
                total += size
                if total > _MAX_BODY:
                    raise ValueError("Request body too large.")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(10)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        if not length.isdigit() or int(length) > _MAX_BODY:
            raise ValueError("Invalid Content-Length.")
        return self.rfile.read(int(length))

    def _head(self, status: int, *fields: str) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {_phrase(status)}",
            "Server: vps-sim",
            f"Date: {self.date_time_string()}",
            *fields,
        ]
        if self._redirect:
            lines.append(f"Location: {self._redirect}")
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _reply(self, status: int, payload: Any, *, drip: float = 0.0) -> None:
        body = b""
        if status != 204 and payload is not None:
            body = json.dumps(payload, separators=(",", ":")).encode()
        fields = []
        if status != 204:
            fields = ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        head = self._head(status, *fields)
        if not drip:
            self.wfile.write(head + body)  # one write: header and body in one segment
            return
        self.close_connection = True
        for byte in head + body:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(drip)

    def _reply_huge(self, status: int, size: int) -> None:
        """`size` bytes of valid JSON, with no length: read until the connection ends."""
        self.close_connection = True
        self.wfile.write(self._head(status, "Content-Type: application/json"))
        prefix, suffix = b'{"count":0,"results":[],"padding":"', b'"}'
        chunk = b"x" * 65536
        left = max(0, size - len(prefix) - len(suffix))
        sent = 0
        try:
            self.wfile.write(prefix)
            sent += len(prefix)
            while left > 0:
                part = chunk[: min(left, len(chunk))]
                self.wfile.write(part)
                sent += len(part)
                left -= len(part)
            self.wfile.write(suffix)
            sent += len(suffix)
        finally:
            self.server.state.count_streamed(sent)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _failure_detail(status: int) -> str:
    return {
        500: "Internal server error.",
        502: "Bad gateway.",
        503: "Service temporarily unavailable.",
        504: "Gateway timeout.",
    }.get(status, f"Simulated failure (HTTP {status}).")


class SimServer(ThreadingHTTPServer):
    """The HTTP side: one thread per connection, all of them sharing `state`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SimState) -> None:
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        # A client that hung up before reading its answer (a timed-out test client, a
        # killed process) is normal here; anything else is still printed.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """End idle keep-alive connections, whose threads would otherwise linger."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class SimHandle:
    """A running simulator: `.url` (ends in /api/v1/), `.state`, `.stop()`."""

    def __init__(self, server: SimServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.state = server.state
        self.host = host
        self.port: int = server.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self.url = f"{self.base}{API_PREFIX}"
        self.admin_url = f"{self.base}{ADMIN_PREFIX}"
        self._stopped = False

    def __repr__(self) -> str:
        return f"SimHandle(url={self.url!r})"

    def stop(self) -> None:
        """Stop serving and close every connection; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.state.release_holds()  # held requests answer; their threads end
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        # serve_forever sees the request only when it wakes up: wake it now with a
        # connection instead of waiting for its poll interval (tests stop many).
        address = self._server.server_address[:2]
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection(address, timeout=0.2).close()
            stopper.join(0.005)
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SimHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    token: str = DEFAULT_TOKEN,
    create_seconds: float = 5.0,
    restore_seconds: float = 5.0,
    clock: Callable[[], float] | None = None,
    *,
    seed: int = 0,
) -> SimHandle:
    """Serve the simulated provider from a daemon thread; port 0 picks a free port."""
    state = SimState(
        token=token,
        create_seconds=create_seconds,
        restore_seconds=restore_seconds,
        clock=clock,
        seed=seed,
    )
    server = SimServer((host, port), state)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.5},
        name=f"vps-sim:{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return SimHandle(server, thread, host)


# ---- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vps-sim",
        description="Serve a simulated VPS snapshot API (vps-api.md) at http://HOST:PORT/api/v1/.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default $PORT, else 3000; 0 picks one)")
    parser.add_argument("--token", help="accepted API token (default $VPS_API_TOKEN)")
    parser.add_argument(
        "--create-seconds", type=float, default=5.0, help="how long a snapshot takes (5)"
    )
    parser.add_argument(
        "--restore-seconds", type=float, default=5.0, help="how long a restore takes (5)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    token = args.token or os.environ.get("VPS_API_TOKEN")
    if not token:
        print("vps-sim: give --token or set VPS_API_TOKEN", file=sys.stderr)
        return 2
    port = args.port
    if port is None:
        env_port = os.environ.get("PORT", "3000")
        if not env_port.isdigit() or int(env_port) > 65535:
            print("vps-sim: PORT must be a port number", file=sys.stderr)
            return 2
        port = int(env_port)
    try:
        handle = start_simulator(
            args.host,
            port,
            token,
            create_seconds=args.create_seconds,
            restore_seconds=args.restore_seconds,
        )
    except OSError as exc:
        print(f"vps-sim: cannot listen on {args.host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    stop = threading.Event()
    _on_signals((signal.SIGINT, signal.SIGTERM), stop.set)
    print(f"vps-sim serving {handle.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return 0


def _on_signals(signals: Iterable[signal.Signals], action: Callable[[], None]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for sig in signals:
        signal.signal(sig, lambda _signum, _frame: action())


if __name__ == "__main__":
    raise SystemExit(main())
