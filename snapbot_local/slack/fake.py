"""A loopback stand-in for the Slack Web API and `response_url`s.

`snapbot demo`, `snapbot shell` and the test suite point slack_sdk's
`WebClient(base_url=fake.api_url)` at this server instead of slack.com. It answers
the handful of methods snapbot uses the way Slack does (including the errors an app
must survive: `not_in_channel`, `channel_not_found` in a DM between people,
`is_archived`, `restricted_action_read_only_channel`, `msg_blocks_too_long`,
`plan_upgrade_required` on a free plan, 429 with `Retry-After`, 5xx, a reused
`trigger_id`, a sixth post to a `response_url`), keeps the resulting state (channel messages,
threads, edits, ephemerals, modals) and records every call, so a test asserts on
what a user would see rather than on mocks:

    with FakeSlack().start() as fake:
        client = WebClient(token="xoxb-test", base_url=fake.api_url)
        client.chat_postMessage(channel="C1", text="hi")
        assert fake.messages("C1")[0].text == "hi"
        assert fake.invalid_payloads == []

Every Block Kit payload is checked with `snapbot_local.slack.blockkit`; one Slack
would refuse is answered `invalid_blocks` and kept in `fake.invalid_payloads`.

`fake.socket_mode()` turns Socket Mode on: `apps.connections.open` (with an app-level
`xapp-` token) then hands out URLs of a loopback WebSocket endpoint
(snapbot_local.slack.socket_mode) that delivers envelopes to the app. Without it the method
answers `unknown_method`, as for an app that has no Socket Mode.

Standard library and slack_sdk only (websockets for Socket Mode): the installed package
ships this module.
"""

from __future__ import annotations

import contextlib
import copy
import email.parser
import email.policy
import itertools
import json
import logging
import secrets
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from snapbot_local.slack.blockkit import message_warnings, validate_message_blocks, validate_view

if TYPE_CHECKING:
    from snapbot_local.slack.socket_mode import FakeSocketMode

__all__ = [
    "DEFAULT_BOT_USER_ID",
    "METHOD_SCOPES",
    "Call",
    "Ephemeral",
    "FakeSlack",
    "InvalidPayload",
    "Message",
    "OpenedView",
    "ResponsePost",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BOT_USER_ID = "UBOT"
DEFAULT_BOT_ID = "BBOT"
DEFAULT_TEAM_ID = "T1"
PERMALINK_HOST = "https://fake.slack.test"
RESPONSE_URL_MAX_USES = 5  # Slack: 5 posts per response_url ...
RESPONSE_URL_TTL_SECONDS = 30 * 60  # ... within 30 minutes
TRIGGER_TTL_SECONDS = 3.0  # Slack: a trigger_id is good for 3 s, once
_FIRST_TS_MICROS = 1_700_000_000_000_100
_JSON_PARAMS = ("blocks", "attachments", "view", "metadata")
# Slack refuses a message whose blocks hold more text than this in all, though each
# block is within its own limit (observed about 13,000 characters; not documented).
BLOCKS_TEXT_MAX = 12_000
CHANNEL_KINDS = ("channel", "private", "im", "mpim")
POSTING = ("everyone", "read_only", "thread_only")

# The OAuth scope each method needs. With `FakeSlack(scopes=...)` set (e.g. to the
# manifest's bot scopes) a call the app's token could not make answers
# `missing_scope`, as it would in a real workspace.
METHOD_SCOPES: dict[str, tuple[str, ...]] = {
    "auth.test": (),
    "chat.postMessage": ("chat:write",),
    "chat.update": ("chat:write",),
    "chat.delete": ("chat:write",),
    "chat.postEphemeral": ("chat:write",),
    "chat.getPermalink": (),
    "views.open": (),
    "views.push": (),
    "views.update": (),
    "usergroups.users.list": ("usergroups:read",),
    "users.info": ("users:read",),
    "conversations.info": ("channels:read", "groups:read", "im:read", "mpim:read"),
    "apps.connections.open": (),  # the app-level token's connections:write
}
# Methods called with the app-level token (xapp-), not the bot token.
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})


# -- what the fake records ----------------------------------------------------------------


@dataclass
class Call:
    """One request as the fake received it; `params` decoded, JSON strings parsed."""

    method: str
    params: dict[str, Any]
    at: float
    ok: bool
    error: str | None = None
    status: int = 200


@dataclass
class Message:
    """A message as it now stands in a channel (chat.update edits it in place)."""

    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None
    user: str = "bot"
    attachments: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] | None = None
    reply_count: int = 0
    source: str = "chat.postMessage"
    # earlier versions, oldest first: {"text", "blocks", "attachments", "at"}
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def edited(self) -> bool:
        return bool(self.history)

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts


@dataclass
class Ephemeral:
    """A message only `user` sees (chat.postEphemeral, or an ephemeral response_url post)."""

    channel: str | None
    user: str | None
    text: str | None
    blocks: list[dict[str, Any]] | None = None
    message_ts: str | None = None
    thread_ts: str | None = None
    source: str = "chat.postEphemeral"
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ResponsePost:
    """One POST to a response_url, accepted or not (status 200 means accepted)."""

    name: str | None
    url: str
    payload: dict[str, Any]
    at: float
    status: int = 200
    error: str | None = None


@dataclass
class OpenedView:
    """A modal opened with views.open / views.push; views.update edits it in place."""

    id: str
    trigger_id: str | None
    view: dict[str, Any]
    hash: str
    external_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class InvalidPayload:
    """A payload answered `invalid_blocks`; a green test expects none."""

    method: str
    problems: list[str]
    payload: dict[str, Any]
    at: float


@dataclass
class _Channel:
    """How a conversation is set up: see `FakeSlack.set_channel`."""

    kind: str = "channel"
    member: bool = True
    archived: bool = False
    posting: str = "everyone"


@dataclass
class _Fault:
    status: int = 200
    error: str = "ratelimited"
    retry_after: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _ResponseUrl:
    name: str | None
    url: str
    created: float
    channel: str | None = None
    user: str | None = None
    message_ts: str | None = None
    uses: int = 0


class _ApiError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


# -- the fake -------------------------------------------------------------------------------


class FakeSlack:
    """A thread-safe fake Slack Web API on loopback; see the module docstring.

    Configuration you may change at any time (the server reads it per request):
    `not_in_channels` (posting there answers `not_in_channel`), `unknown_channels`
    (`channel_not_found`), `usergroups` ({"S1": ["U1", ...]}), `users` (extra fields
    for users.info), `scopes` (None: every method allowed), `latency` ({method or
    "*": seconds} before answering), `trigger_ttl`, `response_url_ttl`, `plan`
    ("free": user groups answer `plan_upgrade_required`), `token_error` (e.g.
    "token_revoked", "account_inactive", "invalid_auth": every call answers it, as Slack
    does once a token stops working), `user_tokens` (tokens Slack knows as a person's,
    not a bot's: auth.test answers without `bot_id`), `enterprise_id` (an Enterprise Grid
    org: auth.test names it). `set_channel` makes a conversation a DM or group DM
    between people, archived, read-only or thread-only.
    `reset()` forgets what was recorded and pending faults, and keeps configuration.
    """

    def __init__(
        self,
        *,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        not_in_channels: Iterable[str] = (),
        unknown_channels: Iterable[str] = (),
        scopes: Iterable[str] | None = None,
        valid_tokens: Iterable[str] | None = None,
        bot_user_id: str = DEFAULT_BOT_USER_ID,
        team_id: str = DEFAULT_TEAM_ID,
        trigger_ttl: float | None = TRIGGER_TTL_SECONDS,
        response_url_ttl: float = RESPONSE_URL_TTL_SECONDS,
        plan: str = "pro",
    ) -> None:
        self.bot_user_id = bot_user_id
        self.bot_id = DEFAULT_BOT_ID
        self.team_id = team_id
        self.usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        self.not_in_channels: set[str] = set(not_in_channels)
        self.unknown_channels: set[str] = set(unknown_channels)
        self.users: dict[str, dict[str, Any]] = {}
        self.scopes: set[str] | None = set(scopes) if scopes is not None else None
        self.valid_tokens: set[str] | None = set(valid_tokens) if valid_tokens is not None else None
        self.latency: dict[str, float] = {}
        self.trigger_ttl = trigger_ttl
        self.response_url_ttl = response_url_ttl
        self.plan = plan
        self._channels: dict[str, _Channel] = {}
        self.token_error: str | None = None
        self.user_tokens: set[str] = set()
        self.enterprise_id: str | None = None

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._ts_micros = itertools.count(_FIRST_TS_MICROS, 100)
        self._ids = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._socket_mode: FakeSocketMode | None = None
        self._clear_state()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeSlack:
        if self._server is not None:
            raise RuntimeError("FakeSlack is already running")
        server = _Server((host, port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-slack:{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        socket_mode, self._socket_mode = self._socket_mode, None
        if socket_mode is not None:
            socket_mode.stop()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()  # keep-alive clients see Slack go away, too
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSlack:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/`"""
        if self._server is None:
            raise RuntimeError("FakeSlack is not running: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def api_url(self) -> str:
        """`http://127.0.0.1:PORT/api/`: pass as WebClient(base_url=...) / SLACK_API_URL."""
        return self.base_url + "api/"

    def bot_token_ok(self, token: str | None) -> bool:
        if not token or not token.startswith("xoxb-"):
            return False
        return self.valid_tokens is None or token in self.valid_tokens

    def socket_mode(self) -> FakeSocketMode:
        """Turn Socket Mode on (once) and return its WebSocket endpoint; stopped with
        the fake. Any `xapp-` token opens a connection (`valid_tokens` restricts them)."""
        from snapbot_local.slack.socket_mode import FakeSocketMode  # websockets: only if asked

        with self._lock:
            if self._socket_mode is None:
                self._socket_mode = FakeSocketMode().start()
            return self._socket_mode

    # -- set-up helpers ----------------------------------------------------------------

    def response_url(
        self,
        name: str | None = None,
        *,
        channel: str | None = None,
        user: str | None = None,
        message_ts: str | None = None,
    ) -> str:
        """A fresh response_url. With `channel` (and `user`, `message_ts` of the message
        the button sat on) its posts also change channel state like Slack's do:
        ephemeral posts land in `ephemerals(user)`, `in_channel` ones in `messages`,
        `replace_original`/`delete_original` edit or remove that message."""
        with self._lock:
            key = f"{next(self._ids)}{secrets.token_hex(4)}"
            url = f"{self.base_url}response/{key}"
            self._response_urls[key] = _ResponseUrl(
                name=name,
                url=url,
                created=time.monotonic(),
                channel=channel,
                user=user,
                message_ts=message_ts,
            )
            return url

    def set_channel(
        self,
        channel: str,
        *,
        kind: str = "channel",
        member: bool | None = None,
        archived: bool = False,
        posting: str = "everyone",
    ) -> None:
        """Set up a conversation as Slack would have it. ``kind``: "channel", "private",
        "im" (a DM) or "mpim" (a group DM); a DM or group DM is between people unless
        ``member`` (the bot is in it), and the bot's posts there answer
        `channel_not_found`. ``member=False`` in a channel: `not_in_channel`.
        ``archived``: `is_archived`. ``posting`` "read_only" or "thread_only": a
        chat.postMessage answers `restricted_action_read_only_channel` /
        `restricted_action_thread_only_channel` (the latter only outside a thread)."""
        if kind not in CHANNEL_KINDS or posting not in POSTING:
            raise ValueError(f"kind must be one of {CHANNEL_KINDS}, posting one of {POSTING}")
        if member is None:
            member = kind not in ("im", "mpim")
        with self._lock:
            self._channels[channel] = _Channel(kind, member, archived, posting)
            if not member:
                self.not_in_channels.add(channel)
            else:
                self.not_in_channels.discard(channel)

    def new_trigger_id(self) -> str:
        """A trigger_id that expires `trigger_ttl` seconds from now, as Slack's do.

        trigger_ids the fake did not issue are accepted once, whenever they come."""
        with self._lock:
            trigger_id = f"{next(self._ids)}.{int(time.time())}.{secrets.token_hex(10)}"
            self._triggers_issued[trigger_id] = time.monotonic()
            return trigger_id

    def fail_next(
        self, method: str, n: int = 1, *, status: int = 429, retry_after: int | None = 1
    ) -> None:
        """The next `n` calls of `method` ("*" for any; "response_url" for those posts)
        fail at the HTTP level: 429 with `Retry-After: retry_after`, or e.g. 500."""
        if status == 429:
            fault = _Fault(status=429, error="ratelimited", retry_after=retry_after)
        elif status >= 500:
            fault = _Fault(status=status, error="fatal_error")
        else:
            fault = _Fault(status=status, error=f"http_{status}")
        with self._lock:
            self._faults[method].extend([fault] * n)

    def error_next(
        self, method: str, n: int = 1, *, error: str = "channel_not_found", **extra: Any
    ) -> None:
        """The next `n` calls of `method` answer HTTP 200 `{"ok": false, "error": error}`."""
        with self._lock:
            self._faults[method].extend([_Fault(status=200, error=error, extra=extra)] * n)

    def reset(self) -> None:
        """Forget calls, state and pending faults; keep configuration and the port."""
        with self._changed:
            self._clear_state()
            self._touch()

    # -- what happened -----------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [copy.deepcopy(c) for c in self._calls if method is None or c.method == method]

    def calls_since(self, start: int) -> list[Call]:
        """The calls recorded after the first `start`, oldest first, not copied (cheap for
        a scan after every test): read them, do not change them."""
        with self._lock:
            return self._calls[start:]

    def messages(self, channel: str | None = None) -> list[Message]:
        """Messages as they now stand, in posting order (thread replies included)."""
        with self._lock:
            chans = [channel] if channel is not None else list(self._messages)
            return [copy.deepcopy(m) for c in chans for m in self._messages.get(c, [])]

    def message(self, channel: str, ts: str) -> Message | None:
        with self._lock:
            found = self._find_message(channel, ts)
            return copy.deepcopy(found) if found else None

    def thread(self, channel: str, ts: str) -> list[Message]:
        """Replies in the thread of message `ts`, oldest first (the parent excluded)."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for m in self._messages.get(channel, [])
                if m.thread_ts == ts and m.ts != ts
            ]

    def ephemerals(self, user: str | None = None, channel: str | None = None) -> list[Ephemeral]:
        with self._lock:
            return [
                copy.deepcopy(e)
                for e in self._ephemerals
                if (user is None or e.user == user) and (channel is None or e.channel == channel)
            ]

    def responses(self, name: str | None = None) -> list[ResponsePost]:
        """Every POST to a response_url (`name` as given to response_url())."""
        with self._lock:
            return [copy.deepcopy(r) for r in self._responses if name is None or r.name == name]

    def views(self) -> list[OpenedView]:
        with self._lock:
            return [copy.deepcopy(v) for v in self._views.values()]

    @property
    def invalid_payloads(self) -> list[InvalidPayload]:
        with self._lock:
            return copy.deepcopy(self._invalid)

    @property
    def warnings(self) -> list[str]:
        """Accepted but careless payloads, e.g. blocks without a `text` fallback."""
        with self._lock:
            return list(self._warnings)

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 5.0, *, what: str | None = None
    ) -> T:
        """Re-evaluate `predicate()` whenever the fake records something (and at least
        every 50 ms, for state kept elsewhere) until it returns a truthy value, which is
        returned. At the deadline raise AssertionError with a dump of the fake's state."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = self._version
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                label = what or getattr(predicate, "__name__", "predicate")
                raise AssertionError(
                    f"FakeSlack.wait_for: {label} still false after {timeout:.1f}s\n{self.dump()}"
                )
            with self._changed:
                if self._version == seen:
                    self._changed.wait(min(remaining, 0.05))

    def wait_for_call(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 5.0,
    ) -> Call:
        """The first recorded call of `method` matching `predicate`, waiting for it."""

        def found() -> Call | None:
            return next((c for c in self.calls(method) if predicate is None or predicate(c)), None)

        result = self.wait_for(found, timeout, what=f"a {method} call")
        assert result is not None
        return result

    def dump(self, last: int = 30) -> str:
        """A readable summary of recorded calls and state, for failure messages."""
        with self._lock:
            lines = [f"calls ({len(self._calls)}, last {last}):"]
            for c in self._calls[-last:]:
                outcome = "ok" if c.ok else f"{c.status} {c.error}"
                lines.append(f"  {c.method} [{outcome}] {_brief(c.params)}")
            for chan, msgs in self._messages.items():
                lines.append(f"channel {chan}:")
                for m in msgs:
                    thread = f" thread={m.thread_ts}" if m.is_reply else ""
                    edited = " (edited)" if m.edited else ""
                    lines.append(f"  {m.ts}{thread}{edited}: {_short(m.text)}")
            for e in self._ephemerals:
                lines.append(f"ephemeral to {e.user} in {e.channel}: {_short(e.text)}")
            for r in self._responses:
                lines.append(f"response_url {r.name} [{r.status}]: {_brief(r.payload)}")
            for v in self._views.values():
                lines.append(f"view {v.id}: callback_id={v.view.get('callback_id')!r}")
            for p in self._invalid:
                lines.append(f"INVALID {p.method}: {'; '.join(p.problems)}")
            for w in self._warnings:
                lines.append(f"warning: {w}")
            return "\n".join(lines)

    def __repr__(self) -> str:
        where = self.base_url if self._server else "stopped"
        return f"<FakeSlack {where} calls={len(self._calls)}>"

    # -- internals: state --------------------------------------------------------------

    def _clear_state(self) -> None:
        self._calls: list[Call] = []
        self._messages: dict[str, list[Message]] = {}
        self._ephemerals: list[Ephemeral] = []
        self._responses: list[ResponsePost] = []
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._views: dict[str, OpenedView] = {}
        self._invalid: list[InvalidPayload] = []
        self._warnings: list[str] = []
        self._faults: defaultdict[str, deque[_Fault]] = defaultdict(deque)
        self._triggers_issued: dict[str, float] = {}
        self._triggers_used: set[str] = set()

    def _touch(self) -> None:
        self._version += 1
        self._changed.notify_all()

    def _next_ts(self) -> str:
        micros = next(self._ts_micros)
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _find_message(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self._messages.get(channel, []) if m.ts == ts), None)

    def _take_fault(self, method: str) -> _Fault | None:
        for key in (method, "*"):
            queue = self._faults.get(key)
            if queue:
                return queue.popleft()
        return None

    def _delay_for(self, method: str) -> float:
        return float(self.latency.get(method, self.latency.get("*", 0.0)))

    # -- internals: the Web API --------------------------------------------------------

    def _handle_api(
        self, method: str, params: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(HTTP status, JSON body, extra headers) for one Web API call."""
        with self._changed:
            try:
                handler = _METHODS.get(method)
                if handler is None:
                    raise _ApiError("unknown_method")
                if not token:
                    raise _ApiError("not_authed")
                if self.token_error and method not in APP_TOKEN_METHODS:
                    raise _ApiError(self.token_error)
                if token in self.user_tokens and method == "auth.test":
                    return self._answer_user_auth_test(params)
                self._check_token(method, token)
                fault = self._take_fault(method)
                if fault is not None:
                    return self._answer_fault(method, params, fault)
                self._check_scope(method)
                body = {"ok": True, **handler(self, params)}
            except _ApiError as exc:
                body = {"ok": False, "error": exc.error, **exc.extra}
            self._calls.append(
                Call(method, params, time.time(), body["ok"], body.get("error"), 200)
            )
            self._touch()
            return 200, body, {}

    def _answer_fault(
        self, method: str, params: dict[str, Any], fault: _Fault
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        body = {"ok": False, "error": fault.error, **fault.extra}
        self._calls.append(Call(method, params, time.time(), False, fault.error, fault.status))
        self._touch()
        return fault.status, body, headers

    def _check_token(self, method: str, token: str) -> None:
        if method not in APP_TOKEN_METHODS:
            if not self.bot_token_ok(token):
                raise _ApiError("invalid_auth")
            return
        if token.startswith(("xoxb-", "xoxp-")):
            raise _ApiError("not_allowed_token_type")
        if not token.startswith("xapp-") or (
            self.valid_tokens is not None and token not in self.valid_tokens
        ):
            raise _ApiError("invalid_auth")

    def _check_scope(self, method: str) -> None:
        needed = METHOD_SCOPES.get(method, ())
        if self.scopes is None or not needed or self.scopes.intersection(needed):
            return
        raise _ApiError(
            "missing_scope", needed=",".join(needed), provided=",".join(sorted(self.scopes))
        )

    def _check_blocks(self, method: str, params: dict[str, Any]) -> None:
        if params.get("blocks") is not None:
            problems = validate_message_blocks(params["blocks"])
            if problems:
                self._reject(method, params, problems)
            if _blocks_text_length(params["blocks"]) > BLOCKS_TEXT_MAX:
                raise _ApiError("msg_blocks_too_long")
        for warning in message_warnings(params):
            self._warnings.append(f"{method} to {params.get('channel')}: {warning}")

    def _reject(self, method: str, payload: dict[str, Any], problems: list[str]) -> None:
        self._invalid.append(InvalidPayload(method, problems, copy.deepcopy(payload), time.time()))
        logger.warning("fake Slack refused %s: %s", method, "; ".join(problems))
        raise _ApiError(
            "invalid_blocks", response_metadata={"messages": [f"[ERROR] {p}" for p in problems]}
        )

    def _channel_for_posting(self, params: dict[str, Any], method: str = "") -> str:
        """The channel a post goes to, or the error Slack gives for it there."""
        channel = params.get("channel")
        if not channel:
            raise _ApiError("channel_not_found")
        channel = str(channel)
        conf = self._channels.get(channel, _Channel())
        if channel in self.unknown_channels:
            raise _ApiError("channel_not_found")
        if conf.kind in ("im", "mpim") and not conf.member:
            # A bot cannot see a conversation between people it is not part of.
            raise _ApiError("channel_not_found")
        if conf.archived:
            raise _ApiError("is_archived")
        if channel in self.not_in_channels:
            raise _ApiError("not_in_channel")
        if method == "chat.postMessage":
            if conf.posting == "read_only":
                raise _ApiError("restricted_action_read_only_channel")
            if conf.posting == "thread_only" and not params.get("thread_ts"):
                raise _ApiError("restricted_action_thread_only_channel")
        return channel

    def _visible_channel(self, channel: str) -> None:
        """Methods on an existing message: the conversation must be one the bot sees."""
        conf = self._channels.get(channel, _Channel())
        if channel in self.unknown_channels or (conf.kind in ("im", "mpim") and not conf.member):
            raise _ApiError("channel_not_found")
        if conf.archived:
            raise _ApiError("is_archived")

    def _message_json(self, m: Message) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "team": self.team_id,
            "ts": m.ts,
            "text": m.text or "",
        }
        if m.blocks is not None:
            out["blocks"] = m.blocks
        if m.attachments is not None:
            out["attachments"] = m.attachments
        if m.thread_ts is not None:
            out["thread_ts"] = m.thread_ts
        return out

    def _post_message(
        self, channel: str, params: dict[str, Any], *, source: str = "chat.postMessage"
    ) -> Message:
        thread_ts = params.get("thread_ts") or None
        message = Message(
            channel=channel,
            ts=self._next_ts(),
            text=params.get("text"),
            blocks=copy.deepcopy(params.get("blocks")),
            thread_ts=str(thread_ts) if thread_ts else None,
            attachments=copy.deepcopy(params.get("attachments")),
            metadata=copy.deepcopy(params.get("metadata")),
            source=source,
        )
        if message.thread_ts:
            parent = self._find_message(channel, message.thread_ts)
            if parent is None:
                self._warnings.append(
                    f"{source} to {channel}: thread_ts {message.thread_ts} is not a message "
                    "in that channel"
                )
            else:
                parent.reply_count += 1
                if parent.thread_ts is None:
                    parent.thread_ts = parent.ts
        self._messages.setdefault(channel, []).append(message)
        return message

    def _edit(self, target: Message | Ephemeral, params: Mapping[str, Any]) -> None:
        target.history.append(
            {
                "text": target.text,
                "blocks": copy.deepcopy(target.blocks),
                "attachments": copy.deepcopy(getattr(target, "attachments", None)),
                "at": time.time(),
            }
        )
        # Like chat.update: a field left out keeps its value; blocks=[] clears them.
        if "text" in params:
            target.text = params["text"]
        if "blocks" in params:
            target.blocks = copy.deepcopy(params["blocks"]) or None
        if "attachments" in params and isinstance(target, Message):
            target.attachments = copy.deepcopy(params["attachments"]) or None

    def _api_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._socket_mode is None:
            raise _ApiError("unknown_method")
        return {"url": self._socket_mode.issue_url()}

    def _api_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        answer = {
            "url": f"{PERMALINK_HOST}/",
            "team": "Fake Team",
            "user": "snapbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }
        if self.enterprise_id:
            answer["enterprise_id"] = self.enterprise_id
        return answer

    def _answer_user_auth_test(
        self, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """auth.test for a person's token: the same answer, but no ``bot_id``."""
        body = {"ok": True, **self._api_auth_test(params), "user": "someone", "user_id": "U0PERSON"}
        del body["bot_id"]
        self._calls.append(Call("auth.test", params, time.time(), True, None, 200))
        self._touch()
        return 200, body, {}

    def _api_chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_for_posting(params, "chat.postMessage")
        if not params.get("text") and not params.get("blocks") and not params.get("attachments"):
            raise _ApiError("no_text")
        self._check_blocks("chat.postMessage", params)
        message = self._post_message(channel, params)
        return {"channel": channel, "ts": message.ts, "message": self._message_json(message)}

    def _api_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        self._visible_channel(channel)
        message = self._find_message(channel, ts)
        if message is None:
            raise _ApiError("message_not_found")
        self._check_blocks("chat.update", params)
        self._edit(message, params)
        return {
            "channel": channel,
            "ts": ts,
            "text": message.text or "",
            "message": self._message_json(message),
        }

    def _api_chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        message = self._find_message(channel, ts)
        if message is None:
            raise _ApiError("message_not_found")
        self._messages[channel].remove(message)
        return {"channel": channel, "ts": ts}

    def _api_chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_for_posting(params)
        user = params.get("user")
        if not user:
            raise _ApiError("user_not_found")
        if not params.get("text") and not params.get("blocks") and not params.get("attachments"):
            raise _ApiError("no_text")
        self._check_blocks("chat.postEphemeral", params)
        ephemeral = Ephemeral(
            channel=channel,
            user=str(user),
            text=params.get("text"),
            blocks=copy.deepcopy(params.get("blocks")),
            message_ts=self._next_ts(),
            thread_ts=params.get("thread_ts") or None,
        )
        self._ephemerals.append(ephemeral)
        return {"message_ts": ephemeral.message_ts}

    def _api_chat_get_permalink(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        ts = str(params.get("message_ts") or "")
        message = self._find_message(channel, ts)
        if message is None:
            raise _ApiError("message_not_found")
        link = f"{PERMALINK_HOST}/archives/{channel}/p{ts.replace('.', '')}"
        if message.is_reply:
            link += f"?thread_ts={message.thread_ts}&cid={channel}"
        return {"channel": channel, "permalink": link}

    def _exchange_trigger(self, trigger_id: Any) -> str:
        if not trigger_id:
            raise _ApiError("invalid_trigger_id")
        trigger_id = str(trigger_id)
        if trigger_id in self._triggers_used:
            raise _ApiError("expired_trigger_id")
        issued = self._triggers_issued.get(trigger_id)
        if (
            issued is not None
            and self.trigger_ttl is not None
            and time.monotonic() - issued > self.trigger_ttl
        ):
            raise _ApiError("expired_trigger_id")
        return trigger_id

    def _view_json(self, opened: OpenedView) -> dict[str, Any]:
        return {
            **opened.view,
            "id": opened.id,
            "team_id": self.team_id,
            "hash": opened.hash,
            "root_view_id": opened.id,
            "bot_id": self.bot_id,
            "external_id": opened.external_id or "",
            "state": {"values": {}},
        }

    def _api_views_open(self, params: dict[str, Any], *, method: str = "views.open") -> dict:
        trigger_id = self._exchange_trigger(params.get("trigger_id"))
        view = params.get("view")
        problems = validate_view(view)
        if problems:
            self._reject(method, params, problems)
        assert isinstance(view, dict)
        external_id = view.get("external_id") or None
        if external_id and any(v.external_id == external_id for v in self._views.values()):
            raise _ApiError("duplicate_external_id")
        self._triggers_used.add(trigger_id)
        opened = OpenedView(
            id=f"V{next(self._ids):08d}",
            trigger_id=trigger_id,
            view=copy.deepcopy(view),
            hash=f"{time.time():.6f}.{secrets.token_hex(4)}",
            external_id=external_id,
        )
        self._views[opened.id] = opened
        return {"view": self._view_json(opened)}

    def _api_views_push(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._api_views_open(params, method="views.push")

    def _api_views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        view_id, external_id = params.get("view_id"), params.get("external_id")
        if view_id:
            opened = self._views.get(str(view_id))
        elif external_id:
            opened = next((v for v in self._views.values() if v.external_id == external_id), None)
        else:
            raise _ApiError("invalid_arguments")
        if opened is None:
            raise _ApiError("not_found")
        if params.get("hash") and params["hash"] != opened.hash:
            raise _ApiError("hash_conflict")
        view = params.get("view")
        problems = validate_view(view)
        if problems:
            self._reject("views.update", params, problems)
        assert isinstance(view, dict)
        opened.history.append({"view": opened.view, "at": time.time()})
        opened.view = copy.deepcopy(view)
        opened.hash = f"{time.time():.6f}.{secrets.token_hex(4)}"
        return {"view": self._view_json(opened)}

    def _api_usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.plan == "free":
            raise _ApiError("plan_upgrade_required")  # user groups are a paid feature
        group = params.get("usergroup")
        if not group or group not in self.usergroups:
            raise _ApiError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

    def _api_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = str(params.get("user") or "")
        if user not in self.users and not user.startswith(("U", "W")):
            raise _ApiError("user_not_found")
        name = f"user-{user.lower()}"
        info: dict[str, Any] = {
            "id": user,
            "team_id": self.team_id,
            "name": name,
            "real_name": name,
            "deleted": False,
            "is_bot": user == self.bot_user_id,
            "tz": "Etc/UTC",
            "profile": {"real_name": name, "display_name": name},
        }
        info.update(self.users.get(user, {}))
        return {"user": info}

    def _api_conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not channel:
            raise _ApiError("channel_not_found")
        self._visible_channel(channel)
        conf = self._channels.get(channel)
        kind = conf.kind if conf else {"G": "private", "D": "im"}.get(channel[:1], "channel")
        return {
            "channel": {
                "id": channel,
                "name": channel.lower(),
                "is_channel": kind == "channel",
                "is_group": kind == "private",
                "is_private": kind in ("private", "im", "mpim"),
                "is_im": kind == "im",
                "is_mpim": kind == "mpim",
                "is_archived": bool(conf and conf.archived),
                "is_read_only": bool(conf and conf.posting == "read_only"),
                "is_thread_only": bool(conf and conf.posting == "thread_only"),
                "is_member": channel not in self.not_in_channels,
            }
        }

    # -- internals: response_url -------------------------------------------------------

    def _handle_response_url(
        self, key: str, payload: dict[str, Any] | None
    ) -> tuple[int, str, dict[str, str]]:
        """(HTTP status, text body, extra headers) for one response_url POST."""
        with self._changed:
            target = self._response_urls.get(key)
            name = target.name if target else None
            url = target.url if target else f"{self.base_url}response/{key}"
            body = payload if payload is not None else {}

            def answer(status: int, text: str) -> tuple[int, str, dict[str, str]]:
                ok = status == 200
                self._responses.append(
                    ResponsePost(
                        name, url, copy.deepcopy(body), time.time(), status, None if ok else text
                    )
                )
                self._calls.append(
                    Call("response_url", body, time.time(), ok, None if ok else text, status)
                )
                self._touch()
                return status, text, {}

            fault = self._take_fault("response_url")
            if fault is not None:
                status, _, headers = self._answer_fault("response_url", body, fault)
                self._responses.append(
                    ResponsePost(name, url, copy.deepcopy(body), time.time(), status, fault.error)
                )
                return status, fault.error, headers
            if target is None:
                return answer(404, "no_such_url")
            if time.monotonic() - target.created > self.response_url_ttl:
                return answer(404, "expired_url")
            if target.uses >= RESPONSE_URL_MAX_USES:
                return answer(404, "used_url")
            if payload is None:
                return answer(400, "invalid_payload")
            target.uses += 1
            if _truthy(payload.get("delete_original")):
                self._delete_original(target)
                return answer(200, "ok")
            if not payload.get("text") and not payload.get("blocks"):
                return answer(400, "no_text")
            if payload.get("blocks") is not None:
                problems = validate_message_blocks(payload["blocks"])
                if problems:
                    self._invalid.append(
                        InvalidPayload(
                            "response_url", problems, copy.deepcopy(payload), time.time()
                        )
                    )
                    logger.warning(
                        "fake Slack refused a response_url post: %s", "; ".join(problems)
                    )
                    return answer(400, "invalid_blocks")
            for warning in message_warnings(payload):
                self._warnings.append(f"response_url {name or key}: {warning}")
            self._apply_response(target, payload)
            return answer(200, "ok")

    def _delete_original(self, target: _ResponseUrl) -> None:
        if target.channel and target.message_ts:
            message = self._find_message(target.channel, target.message_ts)
            if message is not None:
                self._messages[target.channel].remove(message)
                return
            self._ephemerals = [e for e in self._ephemerals if e.message_ts != target.message_ts]

    def _apply_response(self, target: _ResponseUrl, payload: dict[str, Any]) -> None:
        if target.channel is None:
            return  # a bare URL: the post is recorded in responses() only
        if _truthy(payload.get("replace_original")) and target.message_ts:
            original: Message | Ephemeral | None = self._find_message(
                target.channel, target.message_ts
            ) or next((e for e in self._ephemerals if e.message_ts == target.message_ts), None)
            if original is not None:
                self._edit(original, {"text": payload.get("text"), "blocks": payload.get("blocks")})
                return
        if payload.get("response_type") == "in_channel":
            self._post_message(target.channel, payload, source="response_url")
        else:
            self._ephemerals.append(
                Ephemeral(
                    channel=target.channel,
                    user=target.user,
                    text=payload.get("text"),
                    blocks=copy.deepcopy(payload.get("blocks")),
                    message_ts=self._next_ts(),
                    thread_ts=payload.get("thread_ts"),
                    source="response_url",
                )
            )


_METHODS: dict[str, Callable[[FakeSlack, dict[str, Any]], dict[str, Any]]] = {
    "auth.test": FakeSlack._api_auth_test,
    "chat.postMessage": FakeSlack._api_chat_post_message,
    "chat.update": FakeSlack._api_chat_update,
    "chat.delete": FakeSlack._api_chat_delete,
    "chat.postEphemeral": FakeSlack._api_chat_post_ephemeral,
    "chat.getPermalink": FakeSlack._api_chat_get_permalink,
    "views.open": FakeSlack._api_views_open,
    "views.push": FakeSlack._api_views_push,
    "views.update": FakeSlack._api_views_update,
    "usergroups.users.list": FakeSlack._api_usergroups_users_list,
    "users.info": FakeSlack._api_users_info,
    "conversations.info": FakeSlack._api_conversations_info,
    "apps.connections.open": FakeSlack._api_apps_connections_open,
}


# -- HTTP plumbing ----------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeSlack

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def track(self, conn: socket.socket, active: bool) -> None:
        with self._connections_lock:
            if active:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._connections_lock:
            conns, self._connections = self._connections, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Slack's edge does
    server_version = "FakeSlack/1.0"
    timeout = 30  # an idle keep-alive connection is closed after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake Slack: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            self._route()
        except (ConnectionError, TimeoutError):
            raise  # the client went away; the server closes the connection
        except Exception as exc:
            # A bug in the fake must look like a failing Slack, not hang the client.
            logger.exception("fake Slack failed on %s %s", self.command, self.path)
            self._send_json(500, {"ok": False, "error": f"fake_slack_bug: {exc!r}"})

    def _route(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        body = self._read_body()
        if parts.path.startswith("/api/"):
            method = parts.path[len("/api/") :].strip("/")
            try:
                params = _decode_params(self.headers.get("Content-Type", ""), body, parts.query)
            except ValueError:
                self._send_json(200, {"ok": False, "error": "invalid_json"})
                return
            token = _bearer(self.headers.get("Authorization")) or params.pop("token", None)
            params.pop("token", None)  # never recorded
            delay = fake._delay_for(method)
            if delay > 0:
                time.sleep(delay)
            status, answer, headers = fake._handle_api(method, params, token)
            self._send_json(status, answer, headers)
        elif parts.path.startswith("/response/") and self.command == "POST":
            key = parts.path[len("/response/") :].strip("/")
            delay = fake._delay_for("response_url")
            if delay > 0:
                time.sleep(delay)
            status, text, headers = fake._handle_response_url(
                key, _decode_response_payload(self.headers.get("Content-Type", ""), body)
            )
            self._send(status, text.encode(), "text/plain; charset=utf-8", headers)
        else:
            self._send(404, b"not_found", "text/plain; charset=utf-8", {})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(
        self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self._send(status, data, "application/json; charset=utf-8", headers or {})

    def _send(self, status: int, data: bytes, ctype: str, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


def _decode_params(content_type: str, body: bytes, query: str) -> dict[str, Any]:
    """Web API parameters from the query string and a form, multipart or JSON body."""
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    ctype = content_type.split(";")[0].strip().lower()
    if body:
        if ctype == "application/json":
            data = json.loads(body.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("a JSON body must be an object")
            params.update(data)
        elif ctype == "multipart/form-data":
            params.update(_decode_multipart(content_type, body))
        else:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    # Form bodies carry structured arguments as JSON strings; slack_sdk may, too.
    for key in _JSON_PARAMS:
        value = params.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            # left as the string it is when it does not parse; validation will say so
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params


def _decode_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    out: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename:
            out[str(name)] = {"filename": filename, "size": len(data)}
        else:
            out[str(name)] = data.decode("utf-8", errors="replace")
    return out


def _decode_response_payload(content_type: str, body: bytes) -> dict[str, Any] | None:
    """A response_url post: JSON, or (older clients) a form with payload=<JSON>."""
    try:
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(body.decode("utf-8")))
            data = json.loads(form.get("payload", ""))
        else:
            data = json.loads(body.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("blocks", "attachments"):
        if isinstance(data.get(key), str):
            with contextlib.suppress(ValueError):
                data[key] = json.loads(data[key])
    return data


def _blocks_text_length(blocks: Any) -> int:
    """All the text a message's blocks carry, as Slack counts it against its total."""
    if isinstance(blocks, dict):
        return sum(
            len(v) if k == "text" and isinstance(v, str) else _blocks_text_length(v)
            for k, v in blocks.items()
        )
    if isinstance(blocks, list):
        return sum(_blocks_text_length(b) for b in blocks)
    return 0


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def _short(text: str | None, limit: int = 100) -> str:
    if text is None:
        return "<no text>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _brief(params: Mapping[str, Any]) -> str:
    keys = ("channel", "ts", "thread_ts", "user", "usergroup", "trigger_id", "response_type")
    parts = [f"{k}={params[k]}" for k in keys if params.get(k)]
    if params.get("text"):
        parts.append(f"text={_short(str(params['text']), 60)!r}")
    if params.get("blocks"):
        blocks = params["blocks"]
        parts.append(f"blocks={len(blocks) if isinstance(blocks, list) else '?'}")
    return " ".join(parts)
