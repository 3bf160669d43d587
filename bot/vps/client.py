"""The provider's snapshot API (vps-api.md), over one pooled httpx client.

Retries name what they retry:

* reads (list, get server) and DELETE are idempotent: retried on `VpsUnavailable`
  (5xx, timeout, connection failure, unreadable answer) with capped exponential
  backoff and full jitter, at most `retries` times and within `deadline` seconds;
* create and restore are never sent twice. Only a failure to connect (nothing was
  sent) is retried. When the outcome of a create is unknown, the client looks the
  name up in the list instead; a restore with an unknown outcome is reported as such.
* 401, 403, 404 and 400 are answers, never retried.

The provider is not trusted (SPEC §14.5). Every answer goes through one reader,
`_read_answer`, before anything looks at it: the body is streamed with a size cap
(`MAX_ANSWER_BYTES`), the whole attempt (connect, headers and body) ends at its
deadline however slowly the bytes drip, and the bearer token is redacted from the
body wherever the provider echoes it, so nothing shown, logged, stored or audited
can carry it. Types are checked strictly (bot/vps/models.py), a snapshot id listed
twice is an inconsistent answer, and a `200` to a restore whose body says it failed
is a failure.

The API token lives only in the httpx client's default headers: it is not in `repr`,
in any log line, or in any error.
"""

from __future__ import annotations

import functools
import ipaddress
import json as jsonlib
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote
from urllib.request import getproxies, proxy_bypass

import certifi
import httpcore
import httpx
from pydantic import ValidationError

from bot.vps.coalesce import Coalescer
from bot.vps.errors import (
    NotFoundKind,
    VpsAuthError,
    VpsBadRequest,
    VpsError,
    VpsInconsistent,
    VpsNotFound,
    VpsUnavailable,
)
from bot.vps.models import RestoreResult, Server, ServerState, Snapshot

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
#: Bytes an answer may carry, decoded: a list of hundreds of snapshots is tens of KB.
REASON_MAX = 500  # the provider's reason as shown, logged and audited
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: A restore answer whose status is one of these says the restore did not start.
RESTORE_REFUSED = frozenset({"error", "failed", "failure", "rejected", "refused", "denied"})
REDACTED = "[redacted]"

OnCall = Callable[[str, str, int | None, float], None]

# Failures where httpx never put the request on the wire: safe to retry any method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class _Failure(Exception):
    """One attempt failed in a way that may be worth another (internal)."""

    def __init__(self, detail: str, *, sent: bool, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.sent = sent
        self.status = status


# The deadline of the attempt this thread is making (time.monotonic()), or None.
_deadline = threading.local()


def _within_deadline(timeout: float | None) -> float | None:
    """One socket operation's timeout, cut to what is left of the attempt's deadline."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = max(at - time.monotonic(), 0.001)
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits at most until the deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _within_deadline(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _within_deadline(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, _within_deadline(timeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _within_deadline(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, _within_deadline(timeout), socket_options)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport over connections that end each attempt at its deadline.

    httpx's timeouts apply to each read, so an answer that drips a byte at a time
    (status line, headers or body) never trips them; here every socket operation is
    given what is left of the attempt's deadline instead. httpx has no option for the
    network backend, so the pool is rebuilt with httpx's own defaults around ours."""

    def __init__(self, ssl_context: ssl.SSLContext, proxy: str | None = None) -> None:
        super().__init__(verify=ssl_context)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            # Loudly, rather than run without the deadline if httpx changes inside.
            raise RuntimeError("httpx.HTTPTransport no longer keeps an httpcore pool in _pool")
        pool = dict(
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_DeadlineBackend(),
        )
        if proxy is None:
            self._pool = httpcore.ConnectionPool(**pool)
            return
        # HTTP(S)_PROXY, as httpx would honour it without a transport of ours.
        parsed = httpx.URL(proxy)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"proxy scheme {parsed.scheme!r} is not supported (http or https)")
        user, password = parsed.username, parsed.password
        self._pool = httpcore.HTTPProxy(
            proxy_url=str(parsed.copy_with(username=None, password=None)),
            proxy_auth=(user, password) if user else None,
            **pool,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _environment_proxy(base_url: str) -> str | None:
    """The proxy the environment names for the provider's one host (HTTPS_PROXY,
    HTTP_PROXY, ALL_PROXY, minus NO_PROXY), as httpx reads them for a client of its own."""
    url = httpx.URL(base_url)
    if _is_loopback(url.host) or proxy_bypass(url.host):
        return None  # a provider on this machine (the simulator) is never proxied
    proxies = getproxies()
    return proxies.get(url.scheme) or proxies.get("all") or None


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
        sleep: Callable[[float], None] = time.sleep,
        on_call: OnCall | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        if not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout, connect=min(3.0, timeout))
        self._timeout = timeout
        self._token = token
        self._retries = max(0, retries)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._deadline = deadline
        self._sleep = sleep
        self._on_call = on_call
        self._reads = Coalescer()
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                # Compressed answers would be inflated chunk by chunk before the size cap
                # counts them: a small bomb could still take memory.
                "Accept-Encoding": "identity",
                "Content-Type": "application/json",
            },
            timeout=timeout,
            transport=transport
            or _DeadlineTransport(_tls_context(), proxy=_environment_proxy(self.base_url)),
            follow_redirects=False,
        )

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
            lambda: self._send("GET", "snapshots/", params=params, parse=_parse_snapshot_list),
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
                parse=_parse_snapshot,
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
                parse=_parse_restore,
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
            return self._send("GET", f"servers/{server_id}/", parse=_parse_server_state)
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
        is_write = method != "GET"
        attempts = self._retries + 1
        deadline = self._deadline if deadline is None else deadline
        started = time.monotonic()
        maybe_applied = False
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - (time.monotonic() - started)
            try:
                response = self._attempt(method, path, params=params, json=json, budget=remaining)
                if response.status_code == 404 and gone_after_retry_is_success and maybe_applied:
                    logger.info("%s %s: 404 after an unconfirmed attempt: done", method, path)
                    return None  # type: ignore[return-value]
                if response.status_code >= 500 or response.status_code == 429:
                    # A 429 is a refusal to process: nothing was applied.
                    raise _Failure(
                        f"HTTP {response.status_code}",
                        sent=response.status_code != 429,
                        status=response.status_code,
                    )
                self._raise_for_refusal(response, path, not_found)
                return parse(response)
            except _Failure as failure:
                maybe_applied = maybe_applied or (failure.sent and is_write)
                retry = (retry_after_send or not failure.sent) and attempt < attempts
                delay = self._backoff(attempt) if retry else 0.0
                elapsed = time.monotonic() - started
                if retry and elapsed + delay < deadline:
                    logger.warning(
                        "%s %s failed (%s); retry %d of %d in %.2f s",
                        method,
                        path,
                        failure.detail,
                        attempt,
                        self._retries,
                        delay,
                    )
                    self._sleep(delay)
                    continue
                raise VpsUnavailable(
                    f"The provider API is unreachable or failing ({failure.detail})"
                    + ("; nothing was changed." if not maybe_applied else "."),
                    status=failure.status,
                    nothing_changed=not maybe_applied,
                    detail=failure.detail,
                ) from failure

    def _attempt(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None,
        json: dict[str, Any] | None,
        budget: float,
    ) -> httpx.Response:
        budget = max(budget, 0.1)
        timeout = self._timeout
        if timeout.read is not None and budget < timeout.read:
            # Keep the whole call inside its deadline: shrink the last attempt.
            timeout = httpx.Timeout(budget, connect=min(timeout.connect or budget, budget))
        begun = time.perf_counter()
        status: int | None = None
        _deadline.at = time.monotonic() + budget
        try:
            request = self._http.build_request(
                method, path, params=params, json=json, timeout=timeout
            )
            response = self._http.send(request, stream=True)
            status = response.status_code
            try:
                return self._read_answer(response)
            finally:
                response.close()
        except _NOT_SENT as exc:
            raise _Failure(_describe(exc), sent=False) from None
        except httpx.TransportError as exc:
            raise _Failure(_describe(exc), sent=True) from None
        finally:
            _deadline.at = None
            seconds = time.perf_counter() - begun
            logger.debug("%s %s -> %s in %.3f s", method, path, status, seconds)
            if self._on_call is not None:
                try:
                    self._on_call(method, path, status, seconds)
                except Exception:
                    logger.exception("on_call hook failed")

    def _read_answer(self, response: httpx.Response) -> httpx.Response:
        """The one reader of the provider's answers: at most MAX_ANSWER_BYTES, within
        the attempt's deadline (the transport's), the token redacted. The answer, read."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            raise _Failure(f"answer too large ({declared} bytes)", sent=True)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _Failure(f"answer too large (over {MAX_ANSWER_BYTES} bytes)", sent=True)
            chunks.append(chunk)
        content_type = response.headers.get("Content-Type", "application/json")
        content, content_type = self._redact_answer(b"".join(chunks), content_type)
        return httpx.Response(
            response.status_code,
            headers={"Content-Type": content_type},
            content=content,
            request=response.request,
        )

    def _redact_answer(self, body: bytes, content_type: str) -> tuple[bytes, str]:
        """The token removed from an answer in every form it can take there: as sent,
        JSON-escaped (unicode escapes, escaped slashes), percent-encoded, or in another
        charset.
        The bytes first; then the decoded JSON strings (or text), re-encoded only when
        something was found, so an answer without the token is passed on as it came."""
        body = self._redact_bytes(body)
        if not self._token:
            return body, content_type
        try:
            data = jsonlib.loads(body)  # detects UTF-8, -16 and -32
        except ValueError:
            charset = httpx.Response(200, headers={"Content-Type": content_type}).charset_encoding
            text = body.decode(charset or "utf-8", errors="replace")
            cleaned = self._redact_text(text)
            if cleaned == text:
                return body, content_type
            return cleaned.encode(), "text/plain; charset=utf-8"
        cleaned = self._redact_json(data)
        if cleaned == data:
            return body, content_type
        return jsonlib.dumps(cleaned).encode(), "application/json"

    def _redact_text(self, text: str) -> str:
        for form in (self._token, quote(self._token, safe=""), quote(self._token)):
            text = text.replace(form, REDACTED)
        return text

    def _redact_json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redact_text(value)
        if isinstance(value, list):
            return [self._redact_json(v) for v in value]
        if isinstance(value, dict):
            return {self._redact_text(k): self._redact_json(v) for k, v in value.items()}
        return value

    def _raise_for_refusal(
        self,
        response: httpx.Response,
        path: str,
        not_found: tuple[NotFoundKind, int | str] | None,
    ) -> None:
        status = response.status_code
        if status < 300:
            return
        if status < 400:
            # Redirects are not followed: a POST must not turn into a GET elsewhere.
            raise VpsUnavailable(
                f"The provider answered with a redirect (HTTP {status}); "
                "check that VPS_API_URL is the API's base URL.",
                status=status,
                detail=f"HTTP {status}",
            )
        if status in (401, 403):
            raise VpsAuthError(status=status)
        if status == 404:
            kind, ident = not_found or _kind_from_path(path)
            raise VpsNotFound(kind, ident)
        raise VpsBadRequest(_reason(response), status=status)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
        return random.uniform(0, ceiling) if ceiling > 0 else 0.0

    def _redact_bytes(self, body: bytes) -> bytes:
        """The token removed from a body, as sent and as a JSON string would carry it."""
        if not self._token:
            return body
        forms = {self._token.encode(), jsonlib.dumps(self._token)[1:-1].encode()}
        forms.add(jsonlib.dumps(self._token)[1:-1].replace("/", "\\/").encode())
        for form in sorted(forms, key=len, reverse=True):
            body = body.replace(form, REDACTED.encode())
        return body

    def _find_created(
        self, server_id: int, name: str, started: datetime, budget: float
    ) -> Snapshot | None:
        """The snapshot an unconfirmed create made, if the list shows it."""
        oldest = started - timedelta(seconds=CREATE_LOOKUP_WINDOW)
        listed = self._send(
            "GET",
            "snapshots/",
            params={"server_id": server_id},
            parse=_parse_snapshot_list,
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


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verification, built once: a context per client costs ~30 ms."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())


# ---- answers ---------------------------------------------------------------------------


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise _Failure(f"unreadable answer, HTTP {response.status_code}", sent=True) from None


def _parse_snapshot_list(response: httpx.Response) -> list[Snapshot]:
    data = _json(response)
    results = data.get("results") if isinstance(data, dict) else data
    if not isinstance(results, list):
        raise _Failure("unexpected answer: no results list", sent=True)
    snapshots: list[Snapshot] = []
    servers_of: dict[int, int] = {}
    for item in results:
        try:
            snapshot = Snapshot.model_validate(item)
        except ValidationError:
            # One garbled entry should not hide all the others.
            logger.warning("skipping an unreadable snapshot in the list: %.200r", item)
            continue
        if snapshot.id in servers_of:
            # Buttons, block ids and requests name a snapshot by its id alone: an id
            # listed twice cannot be acted on safely, so the whole answer is refused.
            raise VpsInconsistent(
                f"The provider's answer is inconsistent: snapshot {snapshot.id} is listed "
                f"twice (servers {servers_of[snapshot.id]} and {snapshot.server.id}); "
                "nothing was changed.",
                status=response.status_code,
            )
        servers_of[snapshot.id] = snapshot.server.id
        snapshots.append(snapshot)
    return snapshots


def _parse_snapshot(response: httpx.Response) -> Snapshot:
    try:
        return Snapshot.model_validate(_json(response))
    except ValidationError:
        raise _Failure("unexpected answer: not a snapshot", sent=True) from None


def _parse_restore(response: httpx.Response) -> RestoreResult:
    """A 2xx means the provider accepted the restore, unless its body says otherwise:
    a status of failure is a refusal; an odd body (no status) must not hide a restore
    that started; a status we do not know leaves the outcome unknown, for the caller to
    confirm from the server's state."""
    try:
        data = response.json()
    except ValueError:
        data = None
    status = data.get("status") if isinstance(data, dict) else None
    if isinstance(data, dict) and (
        (status is not None and not isinstance(status, str))
        or (status is None and (data.get("error") or data.get("success") is False))
    ):
        # {"status": false}, {"success": false, "error": …}: not a restore that started,
        # and not one we can call refused either; the server's state will say.
        raise _Failure(f"restore answered with status {str(status)[:40]!r}", sent=True)
    if isinstance(status, str) and status:
        if status.casefold() in RESTORE_REFUSED:
            raise VpsBadRequest(_reason(response), status=response.status_code)
        if status.casefold() != "success":
            raise _Failure(f"restore answered with status {status[:40]!r}", sent=True)
    try:
        return RestoreResult.model_validate(data)
    except ValidationError:
        logger.warning("restore accepted (HTTP %s) with an unreadable body", response.status_code)
        return RestoreResult(status="success")


def _parse_server_state(response: httpx.Response) -> ServerState:
    try:
        return ServerState.model_validate(_json(response))
    except ValidationError:
        raise _Failure("unexpected answer: not a server", sent=True) from None


def _reason(response: httpx.Response) -> str:
    """The provider's own words: message/detail/error, else the first string, else the text."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:REASON_MAX] or f"HTTP {response.status_code}"
    if isinstance(data, dict):
        for key in ("message", "detail", "error"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value[:REASON_MAX]
        # Field errors, e.g. {"name": ["Snapshot name may contain only ..."]}
        for key, value in data.items():
            text = _first_string(value)
            if text:
                return f"{key}: {text}"[:REASON_MAX]
    text = _first_string(data) or response.text.strip()
    return text[:REASON_MAX] or f"HTTP {response.status_code}"


def _first_string(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            text = _first_string(item)
            if text:
                return text
    return None


def _kind_from_path(path: str) -> tuple[NotFoundKind, int | str]:
    parts = [p for p in path.split("/") if p]
    kind: NotFoundKind = "server" if parts and parts[0] == "servers" else "snapshot"
    ident: int | str = parts[1] if len(parts) > 1 else path
    if isinstance(ident, str) and ident.isdigit():
        ident = int(ident)
    return kind, ident


def _describe(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    return "connection lost"
