"""The API token removed from the provider's answers wherever it echoes it (SPEC §14.5),
so nothing shown, logged, stored or audited can carry it."""

from __future__ import annotations

import json as jsonlib
from typing import Any
from urllib.parse import quote

import httpx

REDACTED = "[redacted]"


class Redactor:
    """Removes one token from answers, in every form it can take there."""

    def __init__(self, token: str) -> None:
        self._token = token

    def answer(self, body: bytes, content_type: str) -> tuple[bytes, str]:
        """The token removed from an answer in every form it can take there: as sent,
        JSON-escaped (unicode escapes, escaped slashes), percent-encoded, or in another
        charset.
        The bytes first; then the decoded JSON strings (or text), re-encoded only when
        something was found, so an answer without the token is passed on as it came."""
        body = self._bytes(body)
        if not self._token:
            return body, content_type
        try:
            data = jsonlib.loads(body)  # detects UTF-8, -16 and -32
        except ValueError:
            charset = httpx.Response(200, headers={"Content-Type": content_type}).charset_encoding
            text = body.decode(charset or "utf-8", errors="replace")
            cleaned = self._text(text)
            if cleaned == text:
                return body, content_type
            return cleaned.encode(), "text/plain; charset=utf-8"
        cleaned = self._json(data)
        if cleaned == data:
            return body, content_type
        return jsonlib.dumps(cleaned).encode(), "application/json"

    def _text(self, text: str) -> str:
        for form in (self._token, quote(self._token, safe=""), quote(self._token)):
            text = text.replace(form, REDACTED)
        return text

    def _json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, list):
            return [self._json(v) for v in value]
        if isinstance(value, dict):
            return {self._text(k): self._json(v) for k, v in value.items()}
        return value

    def _bytes(self, body: bytes) -> bytes:
        """The token removed from a body, as sent and as a JSON string would carry it."""
        if not self._token:
            return body
        forms = {self._token.encode(), jsonlib.dumps(self._token)[1:-1].encode()}
        forms.add(jsonlib.dumps(self._token)[1:-1].replace("/", "\\/").encode())
        for form in sorted(forms, key=len, reverse=True):
            body = body.replace(form, REDACTED.encode())
        return body
