"""A modal's `private_metadata`, sealed by the bot and checked when it comes back.

Slack hands a view's `private_metadata` back in the `view_submission` exactly as the
bot set it, but nothing stops a client from sending a submission with any text there.
What the bot stores in it (where to answer: the opener's channel and `response_url`)
is therefore signed with an HMAC under a key only the bot has, bound to the user the
modal was opened for, and refused unless the signature holds (SPEC 13.2, 14.7).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, replace

_CONTEXT = b"snapbot view private_metadata v1"
MAX_LENGTH = 3000  # Slack's limit for private_metadata


@dataclass(frozen=True, slots=True)
class Opener:
    """Who opened the modal, from where, and how to answer them."""

    user: str
    channel: str
    channel_name: str = ""
    response_url: str | None = None


def metadata_key(secret: str) -> bytes:
    """A key for this purpose only, derived from a secret the bot already holds."""
    return hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()


def seal(opener: Opener, key: bytes) -> str:
    fields = {
        "u": opener.user,
        "c": opener.channel,
        "n": opener.channel_name,
        "r": opener.response_url or "",
    }
    sealed = _seal(fields, key)
    if len(sealed) > MAX_LENGTH:
        # Too long to carry the response_url: answers fall back to an ephemeral.
        return seal(Opener(opener.user, opener.channel, opener.channel_name), key)
    return sealed


def unseal(text: str, key: bytes, *, user: str) -> Opener | None:
    """The opener, if ``text`` is metadata this bot sealed for ``user``; else None."""
    data = _open(text, key, user)
    if data is None:
        return None
    fields = [data.get(k) for k in ("c", "n", "r")]
    if not all(isinstance(f, str) for f in fields):
        return None
    channel, name, url = fields
    return Opener(user=user, channel=channel, channel_name=name, response_url=url or None)


def _seal(fields: dict, key: bytes, purpose: bytes = b"") -> str:
    """``fields`` as JSON with its HMAC (under ``key``, for ``purpose``), base64url."""
    body = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    return f"{_b64(body)}.{_b64(_mac(key, purpose + body))}"


def _open(text: str, key: bytes, user: str, purpose: bytes = b"") -> dict | None:
    """The fields ``_seal`` sealed for ``user`` and ``purpose``, if the seal holds."""
    if not isinstance(text, str) or text.count(".") != 1 or len(text) > MAX_LENGTH:
        return None
    encoded, mac = text.split(".")
    try:
        body, given = _unb64(encoded), _unb64(mac)
    except ValueError:
        return None
    if not hmac.compare_digest(given, _mac(key, purpose + body)):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("u") != user or not user:
        return None
    return data


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc


# ------------------------------------------------------------------ a confirmation's click

_BINDING_PURPOSE = b"restore confirmation\x00"  # so no other modal's seal passes for one


@dataclass(frozen=True, slots=True)
class Binding:
    """The restore confirmation modal's request and the Approve press that opened it:
    the submission counts only as that press would (SPEC 9.3, 14.7), and is answered
    through its ``response_url`` (SPEC 13.2)."""

    user: str
    request_id: int
    channel: str
    message_ts: str
    thread_ts: str | None = None
    channel_name: str = ""
    response_url: str | None = None


def seal_binding(binding: Binding, key: bytes) -> str:
    fields = {
        "u": binding.user,
        "q": binding.request_id,
        "c": binding.channel,
        "m": binding.message_ts,
        "t": binding.thread_ts or "",
        "n": binding.channel_name,
        "r": binding.response_url or "",
    }
    sealed = _seal(fields, key, _BINDING_PURPOSE)
    if len(sealed) > MAX_LENGTH and binding.response_url:
        # Too long to carry the response_url: answers fall back to an ephemeral.
        return seal_binding(replace(binding, response_url=None), key)
    return sealed


def unseal_binding(text: str, key: bytes, *, user: str) -> Binding | None:
    """The binding, if ``text`` is one this bot sealed for ``user``; else None."""
    data = _open(text, key, user, _BINDING_PURPOSE)
    if data is None:
        return None
    request_id = data.get("q")
    texts = [data.get(k) for k in ("c", "m", "t", "n", "r")]
    if type(request_id) is not int or not all(isinstance(t, str) for t in texts):
        return None
    channel, message_ts, thread_ts, name, url = texts
    return Binding(user, request_id, channel, message_ts, thread_ts or None, name, url or None)
