"""Deleting a snapshot: asked (a prompt only the asker can confirm), confirmed (one
press goes to the provider, by a stored claim), or cancelled."""

from __future__ import annotations

from datetime import timedelta

from bot.blocks.answers import error_message, text_message
from bot.blocks.refusals import delete_taken, snapshot_in_restore
from bot.blocks.snapshots import delete_prompt, snapshot_deleted
from bot.services.actors import Actor
from bot.services.auditing import audit, provider_failed, record
from bot.services.deps import Deps
from bot.services.door import refused_in_dm, refused_operator
from bot.services.messaging import answer
from bot.user_messages import describe
from bot.vps.errors import VpsError, VpsNotFound
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest

# A deletion still marked as running after this long was cut short (its process died):
# another confirmation may take it over.
DELETE_STALE = timedelta(minutes=5)


def ask_delete(deps: Deps, actor: Actor, snapshot_id: int) -> None:
    target = f"snapshot:{snapshot_id}"
    if refused_operator(deps, actor, "snapshot.delete", "delete snapshots", target=target):
        return
    try:
        snap = deps.vps.find_snapshot(snapshot_id)
    except VpsError as exc:
        provider_failed(deps, actor, "snapshot.delete", exc, target=target)
        return
    if snap is None:
        record(
            deps,
            actor,
            "snapshot.delete",
            "error",
            target=target,
            detail="not found",
            answer=error_message(describe(VpsNotFound(kind="snapshot", ident=snapshot_id))),
        )
        return
    record(
        deps,
        actor,
        "snapshot.delete_asked",
        "ok",
        target=target,
        answer=delete_prompt(snap, actor.user, deps.clock()),
    )


def confirm_delete(deps: Deps, actor: Actor, value: str) -> None:
    """``value``: the prompt's ``<snapshot id>:<who asked>``."""
    snapshot_id, _, asked_by = value.partition(":")
    target = f"snapshot:{snapshot_id}"
    if refused_in_dm(deps, actor, "snapshot.delete", "delete snapshots", target=target):
        return
    if asked_by != actor.user:
        record(
            deps,
            actor,
            "snapshot.delete",
            "denied",
            target=target,
            detail="not the user who asked",
            answer=error_message("Only the person who asked for this delete can confirm it."),
        )
        return
    if refused_operator(deps, actor, "snapshot.delete", "delete snapshots", target=target):
        return
    sid = int(snapshot_id)
    if (open_req := open_request(deps, sid)) is not None:
        record(
            deps,
            actor,
            "snapshot.delete",
            "denied",
            target=target,
            detail="restore open",
            answer=snapshot_in_restore(open_req.id, open_req.state),
        )
        return
    if _claimed(deps, actor, sid, target):
        _delete(deps, actor, sid, target)


def _claimed(deps: Deps, actor: Actor, sid: int, target: str) -> bool:
    """Two presses of Delete (a double click: two bodies, so no redelivery key stops
    the second) race here; the stored claim lets one through (True)."""
    now = deps.clock()
    with session_scope(deps.engine) as s:
        taken = repo.begin_deletion(
            s, snapshot_id=sid, by=actor.user, now=now, stale_before=now - DELETE_STALE
        )
        if taken is not None:
            audit(deps, s, actor, "snapshot.delete", "denied", target=target, detail=taken.state)
    if taken is not None:
        answer(deps, actor, text_message(delete_taken(sid, taken.state, taken.deleted_by)))
        return False
    return True


def _delete(deps: Deps, actor: Actor, sid: int, target: str) -> None:
    try:
        deps.vps.delete_snapshot(sid)
    except VpsError as exc:
        _unclaim(deps, actor, sid)
        record(deps, actor, "provider.delete", "error", target=target, detail=describe(exc))
        answer(deps, actor, error_message(describe(exc)), replace_original=True)
        return
    except BaseException:
        # Anything else (a bug, a stop): free the claim, so the next press is not
        # told "already being deleted" for minutes; the job's crash handler answers.
        _unclaim(deps, actor, sid)
        raise
    with session_scope(deps.engine) as s:
        repo.finish_deletion(s, snapshot_id=sid, by=actor.user, deleted=True, now=deps.clock())
    record(deps, actor, "provider.delete", "ok", target=target)
    answer(
        deps,
        actor,
        snapshot_deleted(sid, actor.user),
        replace_original=True,
    )


def _unclaim(deps: Deps, actor: Actor, sid: int) -> None:
    with session_scope(deps.engine) as s:
        repo.finish_deletion(s, snapshot_id=sid, by=actor.user, deleted=False, now=deps.clock())


def cancel_delete(deps: Deps, actor: Actor, value: str) -> None:
    record(
        deps, actor, "snapshot.delete_cancelled", "ok", target=f"snapshot:{value.partition(':')[0]}"
    )
    answer(
        deps,
        actor,
        text_message("Delete cancelled; nothing was changed."),
        replace_original=True,
    )


def open_request(deps: Deps, snapshot_id: int) -> RestoreRequest | None:
    """The restore request that holds the snapshot, if any."""
    with session_scope(deps.engine, readonly=True) as s:
        return repo.open_request_for_snapshot(s, snapshot_id=snapshot_id)
