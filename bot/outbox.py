"""Slack messages that must not be lost.

A message is a row first (queued in the same transaction as the state change it
reports), then sent, then marked sent only after Slack accepted it. The thread that
queued it sends it at once (``flush``); whatever that could not send, any process's
pump sends later, one claim per message. A crash between Slack's answer and the
mark can repeat a message once; it can never lose one.

A payload may name another outbox message whose ``ts`` it needs (``thread_ts_from``,
``ts_from``: the key of that message). It waits until that message is sent, so a
thread reply never arrives before its parent.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from storage import repositories as repo
from storage.db import session_scope

log = logging.getLogger(__name__)

CLAIM = timedelta(seconds=60)
MAX_ATTEMPTS = 12
WAIT_FOR_PARENT = timedelta(seconds=1)
BACKOFF_CAP_S = 120.0
CHANNEL_HEALTH_KEY = "incident_channel.health"  # kv: "ok" or "unreachable: <Slack's error>"
# The only Slack errors worth another try (SPEC 13.3): rate limits and Slack's own
# failures. Any other `ok: false` is final: retrying an error nobody listed (a
# read-only channel, a plan limit) only delays telling the user for minutes.
TRANSIENT = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
    }
)


def is_transient(error: str, status: int) -> bool:
    """Whether a refused Slack call may succeed if sent again: a named transient
    error, or an HTTP 429/5xx (whatever body came with it)."""
    return error in TRANSIENT or status == 429 or status >= 500


# Where Slack puts response_urls (SPEC 14.6). Anything else in a payload's
# response_url (the database port, a loopback service, a redirector) is not Slack's.
RESPONSE_URL_HOSTS = frozenset({"hooks.slack.com", "hooks.slack-gov.com"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``url``; None when it has credentials or is not a URL.
    urlsplit drops tabs and newlines that an HTTP client would refuse (or read
    otherwise), so any whitespace or control character makes it no URL at all."""
    if not isinstance(url, str) or any(c <= " " or c == "\x7f" for c in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if parts.username is not None or not parts.hostname or port is None:
        return None
    return parts.scheme, parts.hostname, port


def trusted_response_url(url: str, api_url: str) -> bool:
    """``https`` on Slack's hooks hosts, or the origin of SLACK_API_URL (a local
    stand-in for Slack serves both there)."""
    origin = _origin(url)
    if origin is None:
        return False
    scheme, host, port = origin
    if scheme == "https" and host in RESPONSE_URL_HOSTS and port == 443:
        return True
    return origin == _origin(api_url)


def _shown(url: str) -> str:
    """A response_url for the log: its path is the secret that lets anyone answer."""
    origin = _origin(url)
    if origin is None:
        return "(not a URL)"
    scheme, host, port = origin
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class Delivery:
    sent: bool
    ts: str | None = None
    error: str = ""
    permanent: bool = False


class Outbox:
    def __init__(
        self,
        engine: Engine,
        slack: WebClient,
        *,
        owner: str,
        clock: Callable[[], datetime],
        webhooks: httpx.Client | None = None,
        watch_channel: str | None = None,
    ) -> None:
        self.engine = engine
        self.slack = slack
        self.owner = owner
        self.clock = clock
        # Redirects are never followed: a 3xx from a response_url is an answer, not a
        # new address to post the user's message to (SPEC 14.6).
        self._webhooks = webhooks or httpx.Client(timeout=10, follow_redirects=False)
        # INCIDENT_CHANNEL: whether its last post arrived is kept for /healthz.
        self.watch_channel = watch_channel

    # --- queueing (inside the caller's unit of work) ---

    def queue(self, session, method: str, payload: dict, *, key: str | None = None) -> int | None:
        return repo.enqueue_message(
            session, method=method, payload=payload, now=self.clock(), key=key
        )

    def post(
        self,
        session,
        channel: str,
        message: dict,
        *,
        key: str | None = None,
        thread_from: str | None = None,
        thread_ts: str | None = None,
    ) -> int | None:
        payload = {"channel": channel, **message, "unfurl_links": False}
        if thread_from:
            payload["thread_ts_from"] = thread_from
        if thread_ts:
            payload["thread_ts"] = thread_ts
        return self.queue(session, "chat.postMessage", payload, key=key)

    def update(
        self,
        session,
        channel: str,
        message: dict,
        *,
        ts: str | None = None,
        ts_from: str | None = None,
        key: str | None = None,
        after: str | None = None,
    ) -> int | None:
        """``after``: the key of an earlier edit of the same message; this one waits
        until that one is sent or given up, so a retried older edit never lands last."""
        payload = {"channel": channel, **message}
        if ts:
            payload["ts"] = ts
        if ts_from:
            payload["ts_from"] = ts_from
        if after:
            payload["after_key"] = after
        return self.queue(session, "chat.update", payload, key=key)

    def respond(
        self,
        session,
        *,
        response_url: str | None,
        channel: str,
        user: str,
        message: dict,
        replace_original: bool = False,
        key: str | None = None,
    ) -> int | None:
        """An answer only the actor sees: through response_url where Slack gave one,
        else (or if Slack refuses that for good) chat.postEphemeral. A response_url
        that is not where Slack puts them is refused (logged here, once, without its
        path) and the Web API answers instead."""
        if response_url and not trusted_response_url(response_url, self.slack.base_url):
            log.warning(
                "response_url refused: %s is not Slack's; answering with chat.postEphemeral",
                _shown(response_url),
            )
            response_url = None
        if response_url:
            body = {"response_type": "ephemeral", **message}
            if replace_original:
                body["replace_original"] = True
            fallback = {"channel": channel, "user": user}
            return self.queue(
                session,
                "response_url",
                {"url": response_url, "body": body, "fallback": fallback},
                key=key,
            )
        return self.queue(
            session, "chat.postEphemeral", {"channel": channel, "user": user, **message}, key=key
        )

    # --- sending ---

    def flush(self, ids: Iterable[int | None]) -> list[Delivery]:
        return [self._try_deliver(i) for i in ids if i is not None]

    def _try_deliver(self, message_id: int) -> Delivery:
        """Send now if the database lets us; the row is stored either way, and a pump
        sends it later (a dead connection must not fail the work that queued it)."""
        try:
            return self.deliver(message_id)
        except SQLAlchemyError as exc:
            log.warning("message %s left for the pump: %s", message_id, type(exc).__name__)
            return Delivery(False, error=f"database: {type(exc).__name__}")

    def pump(self, limit: int = 100) -> int:
        with session_scope(self.engine, readonly=True) as s:
            due = repo.due_messages(s, now=self.clock(), limit=limit)
        sent = 0
        for message_id in due:
            try:
                sent += self.deliver(message_id).sent
            except SQLAlchemyError:
                raise  # the database is down: the caller's outage handling says so once
            except Exception:
                # One message snapbot cannot send must not keep the rest of the batch
                # from Slack; its claim lapses and it is tried again later.
                log.exception("could not deliver message %s", message_id)
        return sent

    def ts_of(self, key: str) -> str | None:
        """The ts Slack gave the message queued under ``key``, once it is sent."""
        with session_scope(self.engine, readonly=True) as s:
            return repo.message_by_key(s, key=key)[1]

    def _parent(self, key: str) -> tuple[str | None, str | None]:
        with session_scope(self.engine, readonly=True) as s:
            return repo.message_by_key(s, key=key)

    def deliver(self, message_id: int) -> Delivery:
        with session_scope(self.engine) as s:
            row = repo.claim_message(
                s, message_id=message_id, owner=self.owner, now=self.clock(), lease=CLAIM
            )
            if row is None:
                return Delivery(False, error="claimed elsewhere or not due")
            method, payload, attempts = row.method, json.loads(row.payload), row.attempts
        try:
            payload = self._resolve(payload)
        except _Waiting as waiting:
            with session_scope(self.engine) as s:
                repo.defer_message(
                    s, message_id=message_id, next_attempt_at=self.clock() + WAIT_FOR_PARENT
                )
            return Delivery(False, error=f"waiting for {waiting}")
        except _ParentFailed as failed:
            result = Delivery(
                False, error=f"parent message {failed} was never sent", permanent=True
            )
        else:
            result = self._send(method, payload)
        with session_scope(self.engine) as s:
            if result.sent:
                repo.mark_message_sent(s, message_id=message_id, now=self.clock(), ts=result.ts)
                self._note_channel(s, method, payload, "ok")
            elif result.permanent or attempts >= MAX_ATTEMPTS:
                log.warning(
                    "slack %s dropped for good: %s (message %s)", method, result.error, message_id
                )
                repo.mark_message_failed(
                    s, message_id=message_id, now=self.clock(), error=result.error
                )
                self._note_channel(s, method, payload, f"unreachable: {result.error}")
            else:
                delay = min(BACKOFF_CAP_S, 0.5 * 2 ** max(0, attempts - 1)) * (
                    0.5 + random.random() / 2
                )
                repo.mark_message_retry(
                    s,
                    message_id=message_id,
                    error=result.error,
                    next_attempt_at=self.clock() + timedelta(seconds=delay),
                )
        return result

    def _note_channel(self, session, method: str, payload: dict, health: str) -> None:
        """Keep INCIDENT_CHANNEL's health as its last post's outcome, in the database
        so that every process's /healthz shows it; say so loudly when it changes."""
        if method != "chat.postMessage" or payload.get("channel") != self.watch_channel:
            return
        before = repo.get_setting(session, key=CHANNEL_HEALTH_KEY)
        if before == health:
            return
        repo.put_setting(session, key=CHANNEL_HEALTH_KEY, value=health)
        if health == "ok":
            if before is not None:  # the first post ever is no news
                log.warning("INCIDENT_CHANNEL %s is reachable again", self.watch_channel)
        else:
            log.error(
                "INCIDENT_CHANNEL %s is %s: nobody there hears of requests, restores and "
                "failures; invite snapbot to it (/invite @snapbot) or fix INCIDENT_CHANNEL",
                self.watch_channel,
                health,
            )

    def _resolve(self, payload: dict) -> dict:
        payload = dict(payload)
        after = payload.pop("after_key", None)
        if after and self._parent(after)[0] == "pending":
            raise _Waiting(after)
        for field, target in (("thread_ts_from", "thread_ts"), ("ts_from", "ts")):
            key = payload.pop(field, None)
            if not key:
                continue
            state, ts = self._parent(key)
            if ts is not None:
                payload[target] = ts
            elif state != "failed":
                raise _Waiting(key)
            elif target == "ts":
                raise _ParentFailed(key)  # nothing to update
            # a reply whose parent never made it is posted unthreaded rather than lost
        return payload

    def _send(self, method: str, payload: dict) -> Delivery:
        try:
            if method == "response_url":
                try:
                    resp = self._webhooks.post(payload["url"], json=payload["body"])
                except httpx.InvalidURL:
                    return self._ephemeral_instead(payload, "response_url is not a URL")
                except httpx.HTTPError as exc:
                    return Delivery(False, error=f"response_url {type(exc).__name__}")
                if resp.status_code == 200:
                    return Delivery(True)
                error = f"response_url {resp.status_code} {resp.text[:80]}"
                if is_transient(resp.text, resp.status_code):
                    return Delivery(False, error=error)
                return self._ephemeral_instead(payload, error)
            resp = self.slack.api_call(method, json=payload)
            return Delivery(True, ts=resp.get("ts") or resp.get("message_ts"))
        except SlackApiError as exc:
            error = exc.response.get("error", "") if exc.response is not None else ""
            status = exc.response.status_code if exc.response is not None else 0
            return Delivery(
                False, error=f"{error or status}", permanent=not is_transient(error, status)
            )
        except (SlackClientError, OSError) as exc:
            return Delivery(False, error=f"{type(exc).__name__}: {exc}"[:200])
        except ValueError as exc:
            # e.g. a signed slash command whose response_url is not a URL: no retry helps
            return Delivery(False, error=f"{type(exc).__name__}: {exc}"[:200], permanent=True)

    def _ephemeral_instead(self, payload: dict, error: str) -> Delivery:
        """A response_url Slack refused for good (used up, expired): the answer still
        reaches the user, as an ephemeral message where the bot can post one."""
        fallback = payload.get("fallback") or {}
        if not (fallback.get("channel") and fallback.get("user")):
            return Delivery(False, error=error, permanent=True)
        body = {
            k: v
            for k, v in payload["body"].items()
            if k not in ("response_type", "replace_original", "delete_original")
        }
        sent = self._send("chat.postEphemeral", {**fallback, **body})
        if sent.sent or not sent.permanent:
            return sent
        return replace(sent, error=f"{error}; then {sent.error}")


class _Waiting(Exception):
    pass


class _ParentFailed(Exception):
    pass
