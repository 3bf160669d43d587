"""A loopback stand-in for Slack's Socket Mode WebSocket endpoint.

The fake Slack's `apps.connections.open` (called with the app-level `xapp-` token)
hands out `ws://127.0.0.1:PORT/link/?ticket=…&app_id=…` from this endpoint, and the
app's own slack_sdk Socket Mode client connects to it as it would to Slack's
`wss://wss-primary.slack.com/link/…`. The endpoint then speaks what Slack speaks:

- on connect it sends `{"type": "hello", "num_connections", "debug_info", "connection_info"}`;
- `deliver()` sends an envelope `{"envelope_id", "type": "slash_commands" | "interactive" |
  "events_api", "payload": {…parsed, the same fields as over HTTP…},
  "accepts_response_payload"}` (events also carry `retry_attempt` / `retry_reason`);
- it records every ack `{"envelope_id", "payload"?}` from any of the app's connections
  (an envelope sent on one connection may be acked on its successor);
- pings are answered with pongs, and `ping()` pings the client;
- `disconnect()` sends `{"type": "disconnect", "reason": "refresh_requested"}` and closes
  the connection once the client has opened its next one (or after a grace period, as
  Slack does); `drop()` resets the TCP connection with no goodbye at all.

    with FakeSlack() as fake:
        socket = fake.socket_mode()             # apps.connections.open now answers
        ...                                     # start the app's SocketModeHandler
        envelope = socket.deliver(slash_command_body("list"))
        assert socket.wait_ack(envelope).payload == {"text": "Listing snapshots…"}

`deliver()` takes the bodies snapbot_local.slack.signing builds for HTTP and sends
their parsed content, so both transports carry the same fields.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import secrets
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

__all__ = ["Ack", "Envelope", "FakeSocketMode", "Link", "socket_mode_payload"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_APP_ID = "AFAKEAPP"  # snapbot_local.slack.signing.DEFAULT_API_APP_ID
# Slack closes a connection about 10 s after telling the client to reconnect.
DISCONNECT_GRACE_SECONDS = 10.0
# Which envelope types Slack lets the ack carry a response for (a slash command's
# message, a view submission's response_action); block actions and events: none.
_ACCEPTS_RESPONSE = {"slash_commands": True, "interactive": False, "events_api": False}


def socket_mode_payload(body: bytes | str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(envelope type, payload) for what Slack would POST over HTTP as ``body``: a slash
    command's form becomes its fields, an interactivity form its parsed `payload`, an
    Events API JSON body the parsed object. A mapping is taken as an event payload."""
    if isinstance(body, Mapping):
        return "events_api", copy.deepcopy(dict(body))
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    if text.lstrip().startswith("{"):
        return "events_api", json.loads(text)
    fields = dict(parse_qsl(text, keep_blank_values=True))
    if set(fields) == {"payload"}:
        return "interactive", json.loads(fields["payload"])
    return "slash_commands", fields


@dataclass
class Envelope:
    """One envelope as sent (a redelivery is a second send of the same envelope)."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    link: int
    at: float
    retry_attempt: int | None = None
    retry_reason: str | None = None

    def message(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "envelope_id": self.envelope_id,
            "type": self.type,
            "payload": self.payload,
            "accepts_response_payload": self.accepts_response_payload,
        }
        if self.type == "events_api":
            out["retry_attempt"] = self.retry_attempt or 0
            out["retry_reason"] = self.retry_reason or ""
        return out


@dataclass
class Ack:
    """An acknowledgement the app sent; `payload` is its response, if any."""

    envelope_id: str
    payload: dict[str, Any] | None
    link: int
    at: float


@dataclass
class Link:
    """One WebSocket connection of the app."""

    id: int
    ticket: str
    opened: float
    closed: float | None = None
    close_reason: str | None = None
    disconnect_sent: bool = False
    connection: ServerConnection | None = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        return self.closed is None


class FakeSocketMode:
    """Slack's Socket Mode endpoint on loopback; see the module docstring.

    Thread-safe. `links` are the app's connections (oldest first), `acks()` what it
    acknowledged, `envelopes()` what was sent, `stray` any message from the app that is
    not an ack of an envelope sent (a green test expects none)."""

    def __init__(self, *, app_id: str = DEFAULT_APP_ID) -> None:
        self.app_id = app_id
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._tickets: set[str] = set()
        self._links: list[Link] = []
        self._envelopes: list[Envelope] = []
        self._acks: list[Ack] = []
        self._stray: list[str] = []
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeSocketMode:
        if self._server is not None:
            raise RuntimeError("FakeSocketMode is already running")
        self._server = serve(
            self._serve_link,
            host,
            port,
            process_request=self._check_ticket,
            compression=None,  # slack_sdk's built-in client offers no extensions
            ping_interval=None,  # pings are the client's to send (and ours in ping())
            server_header="FakeSlack/1.0",
            logger=logger,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name=f"fake-socket-mode:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeSocketMode is not running: call start() first")
        return self._server.socket.getsockname()[1]

    def issue_url(self) -> str:
        """A fresh WebSocket URL, as apps.connections.open returns one."""
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        return f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"

    # -- what Slack does ---------------------------------------------------------------

    def deliver(
        self,
        body: bytes | str | Mapping[str, Any],
        *,
        envelope_id: str | None = None,
        timeout: float = 10.0,
    ) -> Envelope:
        """Send what Slack would POST over HTTP as ``body`` (snapbot_local.slack.signing
        builds those) as an envelope on the app's newest open connection, waiting up to
        ``timeout`` for one."""
        kind, payload = socket_mode_payload(body)
        return self.send(kind, payload, envelope_id=envelope_id, timeout=timeout)

    def send(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        envelope_id: str | None = None,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
        timeout: float = 10.0,
    ) -> Envelope:
        if kind not in _ACCEPTS_RESPONSE:
            raise ValueError(f"Slack sends no {kind!r} envelopes")
        accepts = _ACCEPTS_RESPONSE[kind] or (
            kind == "interactive" and payload.get("type") == "view_submission"
        )
        link = self.wait_for(self._current_link, timeout, what="an open Socket Mode connection")
        envelope = Envelope(
            envelope_id=envelope_id or str(uuid.uuid4()),
            type=kind,
            payload=copy.deepcopy(dict(payload)),
            accepts_response_payload=accepts,
            link=link.id,
            at=time.time(),
            retry_attempt=retry_attempt,
            retry_reason=retry_reason,
        )
        with self._changed:
            self._envelopes.append(envelope)
            self._changed.notify_all()
        assert link.connection is not None
        link.connection.send(json.dumps(envelope.message(), separators=(",", ":")))
        return envelope

    def redeliver(self, envelope: Envelope, *, reason: str = "timeout") -> Envelope:
        """Send ``envelope`` again, same id and payload (events carry the next
        retry_attempt, as Slack's retries of an unacknowledged event do)."""
        attempt = (envelope.retry_attempt or 0) + 1 if envelope.type == "events_api" else None
        return self.send(
            envelope.type,
            envelope.payload,
            envelope_id=envelope.envelope_id,
            retry_attempt=attempt,
            retry_reason=reason if attempt else None,
        )

    def disconnect(self, reason: str = "refresh_requested", *, grace: float | None = None) -> Link:
        """Tell the app's newest connection to go away, then close it once the app has
        opened another (at the latest after ``grace`` seconds, Slack's ~10 s)."""
        link = self.wait_for(self._current_link, 10.0, what="an open Socket Mode connection")
        with self._changed:
            link.disconnect_sent = True
            self._changed.notify_all()
        message = {
            "type": "disconnect",
            "reason": reason,
            "debug_info": {"host": "applink-fake"},
        }
        assert link.connection is not None
        link.connection.send(json.dumps(message))
        wait = DISCONNECT_GRACE_SECONDS if grace is None else grace

        def close_when_replaced() -> None:
            with contextlib.suppress(AssertionError):
                self.wait_for(lambda: self._successor(link), wait, what="a new connection")
            assert link.connection is not None
            with contextlib.suppress(OSError):  # the client may have closed it first
                link.connection.close(1000, reason)

        threading.Thread(target=close_when_replaced, name="fake-socket-disconnect").start()
        return link

    def drop(self) -> Link:
        """Reset the app's newest connection (no close frame): a network failure."""
        link = self.wait_for(self._current_link, 10.0, what="an open Socket Mode connection")
        with self._changed:
            link.closed, link.close_reason = time.time(), "dropped"
            self._changed.notify_all()
        assert link.connection is not None
        sock = link.connection.socket
        # SO_LINGER 0: close() sends a RST, as a dropped route or a restarted peer does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()
        return link

    def ping(self, timeout: float = 5.0) -> bool:
        """Ping the app's newest connection; True when its pong came back in time."""
        link = self.wait_for(self._current_link, timeout, what="an open Socket Mode connection")
        assert link.connection is not None
        return link.connection.ping(secrets.token_hex(4)).wait(timeout)

    # -- what happened -----------------------------------------------------------------

    @property
    def links(self) -> list[Link]:
        with self._lock:
            return [copy.copy(link) for link in self._links]

    def envelopes(self) -> list[Envelope]:
        with self._lock:
            return copy.deepcopy(self._envelopes)

    def acks(self, envelope: Envelope | str | None = None) -> list[Ack]:
        wanted = envelope.envelope_id if isinstance(envelope, Envelope) else envelope
        with self._lock:
            return [
                copy.deepcopy(a) for a in self._acks if wanted is None or a.envelope_id == wanted
            ]

    def acked_ids(self) -> set[str]:
        with self._lock:
            return {a.envelope_id for a in self._acks}

    @property
    def stray(self) -> list[str]:
        with self._lock:
            return list(self._stray)

    def wait_ack(self, envelope: Envelope | str, timeout: float = 10.0) -> Ack:
        """The first ack of ``envelope``, waiting for it."""
        wanted = envelope.envelope_id if isinstance(envelope, Envelope) else envelope
        return self.wait_for(
            lambda: next((a for a in self.acks(wanted)), None),
            timeout,
            what=f"the ack of envelope {wanted}",
        )

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, *, what: str = "") -> T:
        """Re-evaluate ``predicate()`` whenever the endpoint records something (and at
        least every 50 ms) until it is truthy; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"FakeSocketMode: {what or 'predicate'} still false after {timeout:.1f}s "
                        f"(links: {self._links})"
                    )
                self._changed.wait(min(remaining, 0.05))

    # -- internals ---------------------------------------------------------------------

    def _current_link(self) -> Link | None:
        """Where Slack sends next: the newest open connection not told to go away."""
        with self._lock:
            return next(
                (
                    link
                    for link in reversed(self._links)
                    if link.open and not link.disconnect_sent and link.connection is not None
                ),
                None,
            )

    def _successor(self, link: Link) -> bool:
        with self._lock:
            return any(other.id > link.id and other.open for other in self._links)

    def _check_ticket(self, connection: ServerConnection, request) -> Any:
        parts = urlsplit(request.path)
        ticket = dict(parse_qsl(parts.query)).get("ticket", "")
        with self._lock:
            known = parts.path.rstrip("/") == "/link" and ticket in self._tickets
        if not known:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid ticket\n")
        return None

    def _serve_link(self, connection: ServerConnection) -> None:
        ticket = dict(parse_qsl(urlsplit(connection.request.path).query)).get("ticket", "")
        with self._changed:
            link = Link(id=next(self._ids), ticket=ticket, opened=time.time())
            self._links.append(link)
            open_now = sum(1 for other in self._links if other.open)
            self._changed.notify_all()
        try:
            connection.send(
                json.dumps(
                    {
                        "type": "hello",
                        "num_connections": open_now,
                        "debug_info": {
                            "host": "applink-fake",
                            "build_number": 1,
                            "approximate_connection_time": 18060,
                        },
                        "connection_info": {"app_id": self.app_id},
                    }
                )
            )
            with self._changed:  # deliverable from now on: Slack says hello first
                link.connection = connection
                self._changed.notify_all()
            for message in connection:
                self._receive(link, message)
        except (ConnectionClosed, OSError):
            pass  # the client went away, or drop() cut the connection
        finally:
            with self._changed:
                if link.closed is None:
                    link.closed = time.time()
                    link.close_reason = connection.close_reason or None
                self._changed.notify_all()

    def _receive(self, link: Link, message: str | bytes) -> None:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        with self._changed:
            sent = {e.envelope_id for e in self._envelopes}
            if isinstance(data, dict) and data.get("envelope_id") in sent:
                payload = data.get("payload")
                self._acks.append(
                    Ack(
                        envelope_id=data["envelope_id"],
                        payload=payload if isinstance(payload, dict) else None,
                        link=link.id,
                        at=time.time(),
                    )
                )
            else:
                logger.warning("fake Socket Mode: not an ack of a sent envelope: %.200s", text)
                self._stray.append(text)
            self._changed.notify_all()
