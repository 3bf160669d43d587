"""The provider's snapshot API (vps-api.md), over one pooled httpx client.

Retries name what they retry (bot/vps/retries.py, run by stamina):

* reads (list, get server) and DELETE are idempotent: retried on `VpsUnavailable`
  (5xx, timeout, connection failure, unreadable answer) with capped exponential
  backoff and full jitter, at most `retries` times and within `deadline` seconds;
* create and restore are never sent twice. Only a failure to connect (nothing was
  sent) is retried. When the outcome of a create is unknown, the client looks the
  name up in the list instead; a restore with an unknown outcome is reported as such.
* 401, 403, 404 and 400 are answers, never retried.

The provider is not trusted (SPEC §14.5). Every answer goes through one reader,
`VpsClient._read_answer`, before anything looks at it: the body is streamed with a
size cap (`MAX_ANSWER_BYTES`), the whole attempt (connect, headers and body) ends at
its deadline however slowly the bytes drip (bot/vps/transport.py), and the bearer
token is redacted from the body wherever the provider echoes it
(bot/vps/redaction.py), so nothing shown, logged, stored or audited can carry it.
Types are checked strictly (bot/vps/answers.py, bot/vps/models.py), a snapshot id
listed twice is an inconsistent answer, and a `200` to a restore whose body says it
failed is a failure.

The API token lives only in the httpx client's default headers: it is not in `repr`,
in any log line, or in any error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import httpx

from bot.vps import answers
from bot.vps.coalesce import Coalescer
from bot.vps.errors import NotFoundKind, VpsError, VpsNotFound, VpsUnavailable
from bot.vps.models import RestoreResult, Server, ServerState, Snapshot
from bot.vps.retries import CallPolicy
from bot.vps.transport import MAX_ANSWER_BYTES, Failure, OnCall, ProviderHttp
from bot.vps.transport import environment_proxy as _environment_proxy

__all__ = [
    "CREATE_LOOKUP_WINDOW",
    "DEFAULT_DEADLINE",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "MAX_ANSWER_BYTES",
    "MIN_LOOKUP_SECONDS",
    "VpsClient",
    "_environment_proxy",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds: 10 to read an answer, 3 to connect (httpx applies them per phase).
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
#: Retries after the first attempt, for idempotent calls.
DEFAULT_RETRIES = 3
#: Seconds one call may spend in all, retries included: SPEC §8 answers within 30 s.
DEFAULT_DEADLINE = 25.0
#: A snapshot found by name after an unconfirmed create must be this recent
#: (seconds before the call started), so an older namesake is never mistaken for it.
CREATE_LOOKUP_WINDOW = 600.0
#: Seconds the lookup after an unconfirmed create may take even when the deadline is spent.
MIN_LOOKUP_SECONDS = 3.0


class VpsClient:
    """Client for the provider's snapshot API. Thread-safe (httpx.Client is)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff_base: float = 0.2,
        backoff_cap: float = 2.0,
        deadline: float = DEFAULT_DEADLINE,
        on_call: OnCall | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        if not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout, connect=min(3.0, timeout))
        self._retries = max(0, retries)
        self._backoff = (backoff_base, backoff_cap)
        self._deadline = deadline
        self._reads = Coalescer()
        self._http = ProviderHttp(self.base_url, token, timeout, transport, on_call)

    def __repr__(self) -> str:
        return f"VpsClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VpsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- the API -------------------------------------------------------------------

    def list_snapshots(
        self, server_id: int | None = None, *, not_before: datetime | None = None
    ) -> list[Snapshot]:
        """Every snapshot the provider lists (for one server when given), newest first.
        Callers share calls (bot/vps/coalesce.py): the answer comes from a call begun
        at or after ``not_before`` (default: now), each caller with its own list."""
        params = {"server_id": server_id} if server_id is not None else None
        snapshots = self._reads.run(
            ("snapshots/", server_id),
            lambda: self._send(
                "GET", "snapshots/", params=params, parse=answers.parse_snapshot_list
            ),
            not_before=not_before.timestamp() if not_before is not None else None,
        )
        return list(snapshots)

    def find_snapshot(self, snapshot_id: int, server_id: int | None = None) -> Snapshot | None:
        """One snapshot, re-read through the list (there is no single-snapshot endpoint)."""
        for snapshot in self.list_snapshots(server_id):
            if snapshot.id == snapshot_id:
                return snapshot
        return None

    def create_snapshot(
        self, server_id: int, name: str, description: str | None = None
    ) -> Snapshot:
        """Ask for a snapshot; answered at once with status `in_progress`.

        Never sent twice. If the provider may have received it but did not confirm
        (timeout, dropped connection, 5xx, unreadable answer), the new snapshot is
        looked up by name; when it is not there the outcome is unknown and
        `VpsUnavailable(nothing_changed=False)` says to check the list first.
        """
        body: dict[str, Any] = {"server_id": server_id, "name": name}
        if description is not None:
            body["description"] = description
        started = datetime.now(UTC)
        begun = time.monotonic()
        try:
            return self._send(
                "POST",
                "snapshots/",
                json=body,
                parse=answers.parse_snapshot,
                retry_after_send=False,
                not_found=("server", server_id),
            )
        except VpsUnavailable as exc:
            if exc.nothing_changed:
                raise
            detail = exc.detail
        logger.warning(
            "create of snapshot %r on server %s unconfirmed (%s); looking it up",
            name,
            server_id,
            detail,
        )
        # The lookup gets what is left of the call's deadline (at least a few seconds).
        budget = max(self._deadline - (time.monotonic() - begun), MIN_LOOKUP_SECONDS)
        try:
            found = self._find_created(server_id, name, started, budget)
        except VpsError as exc:
            raise VpsUnavailable(
                f"The provider did not confirm the snapshot {name!r} ({detail}) and its list "
                "could not be read; the outcome is unknown. "
                "Check `/snapshot list` before retrying.",
                status=exc.status,
                nothing_changed=False,
                detail=detail,
            ) from exc
        if found is None:
            raise VpsUnavailable(
                f"The provider did not confirm the snapshot {name!r} ({detail}) and it is "
                "not in the list; the outcome is unknown. "
                "Check `/snapshot list` before retrying.",
                nothing_changed=False,
                detail=detail,
            )
        return found

    def restore_snapshot(self, snapshot_id: int) -> RestoreResult:
        """Start a restore: the server is overwritten. Never sent twice."""
        try:
            return self._send(
                "POST",
                f"snapshots/{snapshot_id}/restore/",
                parse=answers.parse_restore,
                retry_after_send=False,
            )
        except VpsUnavailable as exc:
            if exc.nothing_changed:
                raise
            raise VpsUnavailable(
                f"The provider did not confirm the restore from snapshot {snapshot_id} "
                f"({exc.detail}); the outcome is unknown. "
                "Check the server's state before trying again.",
                status=exc.status,
                nothing_changed=False,
                detail=exc.detail,
            ) from exc

    def delete_snapshot(self, snapshot_id: int) -> None:
        """Delete for good. Idempotent: retried, and a 404 after a lost answer is success."""
        try:
            self._send(
                "DELETE",
                f"snapshots/{snapshot_id}/",
                parse=lambda _response: None,
                gone_after_retry_is_success=True,
            )
        except VpsUnavailable as exc:
            if exc.nothing_changed:
                raise
            raise VpsUnavailable(
                f"The provider did not confirm the deletion of snapshot {snapshot_id} "
                f"({exc.detail}); it may or may not be gone. "
                "Check `/snapshot list`.",
                status=exc.status,
                nothing_changed=False,
                detail=exc.detail,
            ) from exc

    def get_server(self, server_id: int) -> ServerState | None:
        """The server's state, or None where the optional endpoint (or server) is absent."""
        try:
            return self._send("GET", f"servers/{server_id}/", parse=answers.parse_server_state)
        except VpsNotFound:
            return None

    def resolve_server(self, ref: int | str) -> Server:
        """A server from its id or its name.

        There is no server list: names are known only from the servers that appear on
        snapshots, so a server without snapshots can be named only by its id.
        """
        if isinstance(ref, str) and ref.strip().isdigit():
            ref = int(ref.strip())
        if isinstance(ref, int):
            for snapshot in self.list_snapshots(ref):
                if snapshot.server.id == ref:
                    return snapshot.server
            return Server(id=ref)
        name = ref.strip()
        servers = {s.server.id: s.server for s in self.list_snapshots()}
        exact = [s for s in servers.values() if s.name == name]
        folded = [s for s in servers.values() if s.name.casefold() == name.casefold()]
        match = exact or folded
        if len(match) == 1:
            return match[0]
        raise VpsNotFound(
            "server",
            name,
            f"No server named {name!r} is known (names come from servers that have "
            "snapshots); use its numeric id.",
        )

    # ---- one call, with its retry policy ------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        parse: Callable[[httpx.Response], T],
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        retry_after_send: bool = True,
        gone_after_retry_is_success: bool = False,
        not_found: tuple[NotFoundKind, int | str] | None = None,
        deadline: float | None = None,
    ) -> T:
        """Send until an answer, applying the retry policy; map the answer to a result.

        At most 1 + `retries` attempts, all within `deadline` seconds.
        retry_after_send: False for non-idempotent writes, which are then retried
        only when the request cannot have been applied (connect failure, 429).
        """
        policy = CallPolicy(
            method,
            path,
            retries=self._retries,
            deadline=self._deadline if deadline is None else deadline,
            retry_after_send=retry_after_send,
            backoff=self._backoff,
        )

        def attempt() -> T:
            response = self._http.attempt(
                method, path, params=params, json=json, budget=policy.remaining()
            )
            if response.status_code == 404 and gone_after_retry_is_success and policy.maybe_applied:
                logger.info("%s %s: 404 after an unconfirmed attempt: done", method, path)
                return None  # type: ignore[return-value]
            if response.status_code >= 500 or response.status_code == 429:
                # A 429 is a refusal to process: nothing was applied.
                raise Failure(
                    f"HTTP {response.status_code}",
                    sent=response.status_code != 429,
                    status=response.status_code,
                )
            answers.raise_for_refusal(response, path, not_found)
            return parse(response)

        return policy.run(attempt)

    def _find_created(
        self, server_id: int, name: str, started: datetime, budget: float
    ) -> Snapshot | None:
        """The snapshot an unconfirmed create made, if the list shows it."""
        oldest = started - timedelta(seconds=CREATE_LOOKUP_WINDOW)
        listed = self._send(
            "GET",
            "snapshots/",
            params={"server_id": server_id},
            parse=answers.parse_snapshot_list,
            deadline=budget,
        )
        candidates = [
            s
            for s in listed
            if s.name == name
            and s.server.id == server_id
            and (not s.is_terminal or s.created_at is None or s.created_at >= oldest)
        ]
        return max(candidates, key=lambda s: s.id, default=None)
