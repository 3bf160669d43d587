"""How the provider client reaches the provider: one pooled httpx client whose every
attempt ends at its deadline, whose answers are read with a size cap, over the proxy
the environment names, verifying TLS as httpx would.

httpx's timeouts apply to each read, so an answer that drips a byte at a time never
trips them; `DeadlineTransport` gives every socket operation what is left of the
attempt's deadline instead (`attempt_deadline`). `read_capped` is the one reader of
an answer's body: at most `MAX_ANSWER_BYTES`, decoded.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.request import getproxies, proxy_bypass

import certifi
import httpcore
import httpx

from bot.vps.redaction import Redactor

logger = logging.getLogger("bot.vps.client")  # the client's log, as it was before the split

#: Bytes an answer may carry, decoded: a list of hundreds of snapshots is tens of KB.
MAX_ANSWER_BYTES = 4 * 1024 * 1024

# Failures where httpx never put the request on the wire: safe to retry any method.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class Failure(Exception):
    """One attempt failed in a way that may be worth another (internal to bot/vps)."""

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


class DeadlineTransport(httpx.HTTPTransport):
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


def environment_proxy(base_url: str) -> str | None:
    """The proxy the environment names for the provider's one host (HTTPS_PROXY,
    HTTP_PROXY, ALL_PROXY, minus NO_PROXY), as httpx reads them for a client of its own."""
    url = httpx.URL(base_url)
    if _is_loopback(url.host) or proxy_bypass(url.host):
        return None  # a provider on this machine (the simulator) is never proxied
    proxies = getproxies()
    return proxies.get(url.scheme) or proxies.get("all") or None


@contextlib.contextmanager
def attempt_deadline(budget: float) -> Iterator[None]:
    """Every socket operation of this thread, inside the block, ends `budget` s from now."""
    _deadline.at = time.monotonic() + budget
    try:
        yield
    finally:
        _deadline.at = None


def http_client(
    base_url: str, token: str, timeout: httpx.Timeout, transport: httpx.BaseTransport | None
) -> httpx.Client:
    """The pooled client: the token only in its default headers, redirects not followed."""
    return httpx.Client(
        base_url=base_url,
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            # Compressed answers would be inflated chunk by chunk before the size cap
            # counts them: a small bomb could still take memory.
            "Accept-Encoding": "identity",
            "Content-Type": "application/json",
        },
        timeout=timeout,
        transport=transport or DeadlineTransport(tls_context(), proxy=environment_proxy(base_url)),
        follow_redirects=False,
    )


def read_capped(response: httpx.Response) -> bytes:
    """The body of a streamed answer, refused past MAX_ANSWER_BYTES (declared or read)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise Failure(f"answer too large ({declared} bytes)", sent=True)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise Failure(f"answer too large (over {MAX_ANSWER_BYTES} bytes)", sent=True)
        chunks.append(chunk)
    return b"".join(chunks)


OnCall = Callable[[str, str, int | None, float], None]


class ProviderHttp:
    """The pooled httpx client and how one attempt goes: within its deadline, the
    answer read with the size cap and the token redacted, reported to `on_call`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: httpx.Timeout,
        transport: httpx.BaseTransport | None,
        on_call: OnCall | None,
    ) -> None:
        self._timeout = timeout
        self._redactor = Redactor(token)
        self._on_call = on_call
        self._client = http_client(base_url, token, timeout, transport)

    def close(self) -> None:
        self._client.close()

    def attempt(
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
        try:
            with attempt_deadline(budget):
                request = self._client.build_request(
                    method, path, params=params, json=json, timeout=timeout
                )
                response = self._client.send(request, stream=True)
                status = response.status_code
                try:
                    return self._read_answer(response)
                finally:
                    response.close()
        except NOT_SENT as exc:
            raise Failure(describe(exc), sent=False) from None
        except httpx.TransportError as exc:
            raise Failure(describe(exc), sent=True) from None
        finally:
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
        body = read_capped(response)
        content_type = response.headers.get("Content-Type", "application/json")
        content, content_type = self._redactor.answer(body, content_type)
        return httpx.Response(
            response.status_code,
            headers={"Content-Type": content_type},
            content=content,
            request=response.request,
        )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verification, built once: a context per client costs ~30 ms."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())


def describe(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    return "connection lost"
