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
from dataclasses import dataclass

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
    body = json.dumps(
        {
            "u": opener.user,
            "c": opener.channel,
            "n": opener.channel_name,
            "r": opener.response_url or "",
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    sealed = f"{_b64(body)}.{_b64(_mac(key, body))}"
    if len(sealed) > MAX_LENGTH:
        # Too long to carry the response_url: answers fall back to an ephemeral.
        return seal(Opener(opener.user, opener.channel, opener.channel_name), key)
    return sealed


def unseal(text: str, key: bytes, *, user: str) -> Opener | None:
    """The opener, if ``text`` is metadata this bot sealed for ``user``; else None."""
    if not isinstance(text, str) or text.count(".") != 1 or len(text) > MAX_LENGTH:
        return None
    encoded, mac = text.split(".")
    try:
        body, given = _unb64(encoded), _unb64(mac)
    except ValueError:
        return None
    if not hmac.compare_digest(given, _mac(key, body)):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("u") != user or not user:
        return None
    fields = [data.get(k) for k in ("c", "n", "r")]
    if not all(isinstance(f, str) for f in fields):
        return None
    channel, name, url = fields
    return Opener(user=user, channel=channel, channel_name=name, response_url=url or None)


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
