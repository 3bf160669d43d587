"""The end of what is watched (SPEC §3, 13.9): a create the provider reports done
(or gone, or stuck), and a restore whose server left ``restoring``. The lease holder
(bot/watcher.py) polls; each report here is claimed and its messages queued in one
transaction, so exactly one process ever reports a watch and nothing is lost."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bot.blocks.format import span
from bot.blocks.notices import restore_finished_notice, snapshot_ended_notice
from bot.blocks.restore import restore_finished_note
from bot.blocks.snapshots import create_ended_detail, create_message, create_thread_reply
from bot.services.auditing import audit
from bot.services.deps import Deps
from bot.services.messaging import notify_incident, permalink, progress_key
from bot.services.restores.message import show_restore_end
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import Watch


def report_snapshot(
    deps: Deps,
    w: Watch,
    status: str,
    size_mb: int | None,
    now: datetime,
    *,
    send: Callable[[list[int | None]], object] | None = None,
) -> None:
    """A watched create ended as ``status``: a reply in its thread, its channel
    message edited, and the incident channel told unless it completed. ``send``: how
    the queued messages go out (default: now, one after another)."""
    with session_scope(deps.engine) as s:
        if not repo.finish_watch(s, watch_id=w.id, final_status=status, now=now, size_mb=size_mb):
            return
        duration = now - w.started_at
        reply = create_thread_reply(
            status=status,
            name=w.snapshot_name,
            requester=w.requester,
            size_mb=size_mb,
            duration=duration,
            snapshot_id=w.snapshot_id,
        )
        parent_state = status if status in ("completed", "gone", "stuck") else "failed"
        detail = create_ended_detail(parent_state, status, duration)
        mids = [
            deps.outbox.post(
                s, w.channel, reply, thread_from=w.parent_ts, key=f"watch:{w.id}:reply"
            ),
            deps.outbox.update(
                s,
                w.channel,
                create_message(
                    server_name=w.server_name,
                    server_id=w.server_id,
                    name=w.snapshot_name,
                    requester=w.requester,
                    state=parent_state,
                    detail=detail,
                    snapshot_id=w.snapshot_id,
                ),
                ts_from=w.parent_ts,
                key=f"watch:{w.id}:parent",
                after=progress_key(w.parent_ts) if w.parent_ts else None,
            ),
        ]
        if status != "completed":
            mids.append(
                notify_incident(
                    deps, s, snapshot_ended_notice(w, status), key=f"incident:watch:{w.id}"
                )
            )
    (send or deps.outbox.flush)(mids)


def report_restore(deps: Deps, w: Watch, status: str, now: datetime) -> None:
    """A followed restore's server is ``status`` now (or still ``restoring`` after too
    long): the request message, its thread and the incident channel say so."""
    with session_scope(deps.engine, readonly=True) as s:
        req = repo.get_restore_request(s, request_id=w.request_id) if w.request_id else None
    link = permalink(deps, req.channel, req.message_ts) if req else None
    with session_scope(deps.engine) as s:
        if not repo.finish_watch(s, watch_id=w.id, final_status=status, now=now):
            return
        took = span(now - w.started_at)
        mids = [
            # The request message itself shows the end, not only its thread.
            show_restore_end(deps, s, w.request_id, status=status, took=took)
            if w.request_id
            else None,
            deps.outbox.post(
                s,
                w.channel,
                restore_finished_note(w, status, took),
                thread_from=w.parent_ts,
                key=f"watch:{w.id}:reply",
            ),
            notify_incident(
                deps,
                s,
                restore_finished_notice(w, status, took, link),
                key=f"incident:watch:{w.id}",
            ),
        ]
        ended = status != "restoring"
        audit(
            deps,
            s,
            None,
            "restore.finished" if ended else "restore.stuck",
            "ok" if ended else "error",
            target=f"request:{w.request_id} server:{w.server_id}",
            detail=f"server {status} after {took}",
        )
    deps.outbox.flush(mids)
