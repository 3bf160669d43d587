"""A restore request as stored and as its channel message shows it. Every change of
state edits that one message; the edits are chained so the last one lands last."""

from __future__ import annotations

from bot.blocks.restore import restore_request
from bot.core import approval
from bot.services.deps import Deps
from bot.services.messaging import RESTORE_ENDED, request_edit_keys, request_key
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest, Watch


def request_view(
    session, request_id: int, *, lock: bool = False
) -> tuple[RestoreRequest | None, frozenset[str]]:
    """The request (locked for this transaction with ``lock``) and who approved it."""
    req = repo.get_restore_request(session, request_id=request_id, lock=lock)
    return req, (repo.approvers_of(session, request_id=request_id) if req else frozenset())


def rules_view(req: RestoreRequest, approvals: frozenset[str]) -> approval.RequestView:
    """The stored request as the pure rules see it."""
    return approval.RequestView(
        state=approval.State(req.state),
        requester=req.requester,
        expires_at=req.expires_at,
        approvals=approvals,
        decided_by=req.decided_by,
    )


def typed_confirm(deps: Deps) -> bool:
    """Approve opens the typed confirmation (SPEC 9.3) rather than approving at once."""
    return deps.settings.restore_confirm == "typed"  # bot/services/restores/confirm.py


def update_request_message(
    deps: Deps, session, req: RestoreRequest, approvals, *, ended: tuple[str, str] | None = None
) -> int | None:
    """Queue the edit of the request message that shows ``req`` as it is now."""
    payload = restore_request(req, approvals, deps.clock(), ended=ended, typed=typed_confirm(deps))
    # Edits are chained in the order of the request's states (each waits for the one
    # before it), so an older edit that Slack delayed or refused once never lands last.
    state = RESTORE_ENDED if ended is not None else req.state
    key, after = request_edit_keys(req.id, state, len(approvals), safeguarded=bool(req.safety_step))
    if req.message_ts:
        return deps.outbox.update(
            session, req.channel, payload, ts=req.message_ts, key=key, after=after
        )
    return deps.outbox.update(
        session, req.channel, payload, ts_from=request_key(req.id), key=key, after=after
    )


def show_restore_end(deps: Deps, session, request_id: int, *, status: str, took: str) -> int | None:
    """The request message shows how its restore ended (SPEC 13.9): the follow-up
    (bot/watcher.py) saw the server leave ``restoring``, or gave up on it
    (``status`` still ``restoring``). Queued in the follow-up's transaction."""
    req, approvals = request_view(session, request_id)
    if req is None or req.state != approval.State.SUCCEEDED:
        return None
    return update_request_message(deps, session, req, approvals, ended=(status, took))


def refresh_request(deps: Deps, request_id: int) -> None:
    with session_scope(deps.engine) as s:
        # Locked: an approval that completes the quorum meanwhile queues its edit
        # after this one, never before.
        req, approvals = request_view(s, request_id, lock=True)
        mid = update_request_message(deps, s, req, approvals)
    deps.outbox.flush([mid])


def request_watch(
    req: RestoreRequest, *, kind: str, snapshot_id: int, snapshot_name: str, started_at, status: str
) -> Watch:
    """A watch that reports into the request's thread: its safety snapshot (``safety``)
    or its started restore (``restore``)."""
    return Watch(
        kind=kind,
        snapshot_id=snapshot_id,
        snapshot_name=snapshot_name,
        server_id=req.server_id,
        server_name=req.server_name,
        request_id=req.id,
        channel=req.channel,
        parent_ts=request_key(req.id),
        requester=req.requester,
        team=req.team,
        started_at=started_at,
        last_status=status,
    )
