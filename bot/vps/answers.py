"""The provider's answers read into models (bot/vps/models.py), strictly.

Each `parse_*` takes an answer already read (size-capped, token redacted) and returns
the model, or raises `Failure` (an answer that makes no sense: worth another try where
the call may be retried) or a `VpsError` (a refusal, or an inconsistent answer).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from pydantic import ValidationError

from bot.vps.errors import (
    NotFoundKind,
    VpsAuthError,
    VpsBadRequest,
    VpsInconsistent,
    VpsNotFound,
    VpsUnavailable,
)
from bot.vps.models import RestoreResult, ServerState, Snapshot
from bot.vps.transport import Failure

logger = logging.getLogger("bot.vps.client")  # the client's log, as it was before the split

REASON_MAX = 500  # the provider's reason as shown, logged and audited
#: A restore answer whose status is one of these says the restore did not start.
RESTORE_REFUSED = frozenset({"error", "failed", "failure", "rejected", "refused", "denied"})


def raise_for_refusal(
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


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise Failure(f"unreadable answer, HTTP {response.status_code}", sent=True) from None


def parse_snapshot_list(response: httpx.Response) -> list[Snapshot]:
    data = _json(response)
    results = data.get("results") if isinstance(data, dict) else data
    if not isinstance(results, list):
        raise Failure("unexpected answer: no results list", sent=True)
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


def parse_snapshot(response: httpx.Response) -> Snapshot:
    try:
        return Snapshot.model_validate(_json(response))
    except ValidationError:
        raise Failure("unexpected answer: not a snapshot", sent=True) from None


def parse_restore(response: httpx.Response) -> RestoreResult:
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
        raise Failure(f"restore answered with status {str(status)[:40]!r}", sent=True)
    if isinstance(status, str) and status:
        if status.casefold() in RESTORE_REFUSED:
            raise VpsBadRequest(_reason(response), status=response.status_code)
        if status.casefold() != "success":
            raise Failure(f"restore answered with status {status[:40]!r}", sent=True)
    try:
        return RestoreResult.model_validate(data)
    except ValidationError:
        logger.warning("restore accepted (HTTP %s) with an unreadable body", response.status_code)
        return RestoreResult(status="success")


def parse_server_state(response: httpx.Response) -> ServerState:
    try:
        return ServerState.model_validate(_json(response))
    except ValidationError:
        raise Failure("unexpected answer: not a server", sent=True) from None


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
