"""Creating a snapshot (SPEC §3): the modal, the command, and the create watched
until the provider reports it done (the reports themselves: bot/watcher.py).

A create must reach the provider at most once: the job saves ``create_sent`` before
the call, and a job resumed after that finds the snapshot by name instead."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError, SlackClientError

from bot.blocks.answers import error_message, error_mrkdwn
from bot.blocks.refusals import (
    cannot_post,
    create_interrupted,
    name_taken,
    refusal_text,
    servers_unlisted,
)
from bot.blocks.snapshots import (
    create_message,
    create_modal,
    create_started_detail,
    limit_reached,
)
from bot.core import commands as cmd
from bot.core.errors import LimitReached
from bot.jobs import JobContext
from bot.services.actors import Actor
from bot.services.auditing import audit, provider_failed, record
from bot.services.deps import Deps
from bot.services.door import refused_operator, seal_opener
from bot.services.messaging import progress_key
from bot.services.reporting import ref_text, resolve
from bot.user_messages import describe
from bot.vps.errors import VpsError
from bot.vps.models import Snapshot
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import Watch

log = logging.getLogger(__name__)

SNAPSHOT_LIMIT = 5


def open_create_modal(deps: Deps, actor: Actor) -> None:
    if refused_operator(deps, actor, "snapshot.create", "create snapshots"):
        return
    # The trigger_id lives 3 s: open at once, then fill the server picker.
    try:
        opened = deps.slack.views_open(
            trigger_id=actor.trigger_id,
            view=create_modal(
                metadata=seal_opener(deps, actor), servers=None, note="Loading servers…"
            ),
        )
    except (SlackApiError, SlackClientError, OSError) as exc:
        record(
            deps,
            actor,
            "snapshot.create_modal",
            "error",
            detail=str(exc)[:200],
            answer=error_message(
                "Slack did not open the form in time. Use "
                "`/snapshot create <server> <name> [description]` instead."
            ),
        )
        return
    view_id = opened.get("view", {}).get("id")
    note = ""
    try:
        servers = sorted(
            {(s.server.id, s.server.name) for s in deps.vps.list_snapshots()},
            key=lambda x: x[1],
        )
    except VpsError as exc:
        servers, note = (
            [],
            servers_unlisted(describe(exc)),
        )
    try:
        deps.slack.views_update(
            view_id=view_id,
            view=create_modal(metadata=seal_opener(deps, actor), servers=servers, note=note),
        )
    except (SlackApiError, SlackClientError, OSError) as exc:
        log.info("could not fill the create modal: %s", exc)
    record(deps, actor, "snapshot.create_modal", "ok")


def create_from_view(deps: Deps, actor: Actor, ctx: JobContext) -> None:
    """The create modal was submitted (bot/listeners/views checked it already)."""
    server = cmd.parse_server(ctx.payload.get("server", ""))
    if isinstance(server, cmd.UsageError):
        record(
            deps,
            actor,
            "snapshot.create",
            "denied",
            detail="invalid server",
            answer=error_message(server.message),
        )
        return
    name, description = ctx.payload.get("name", ""), ctx.payload.get("description", "")
    create_snapshot(deps, actor, server, name, description, ctx)


def create_snapshot(
    deps: Deps,
    actor: Actor,
    server: cmd.ServerRef,
    name: str,
    description: str,
    ctx: JobContext,
) -> None:
    target = f"server:{ref_text(server)} name:{name}"
    if refused_operator(deps, actor, "snapshot.create", "create snapshots", target=target):
        return
    if (problem := cmd.snapshot_name_problem(name)) is not None:
        record(
            deps,
            actor,
            "snapshot.create",
            "denied",
            target=target,
            detail="invalid name",
            answer=error_message(problem),
        )
        return
    if ctx.progress.get("create_sent"):
        resume_create(deps, actor, ctx)
        return
    try:
        srv = resolve(deps, server)
        existing = deps.vps.list_snapshots(server_id=srv.id)
    except VpsError as exc:
        provider_failed(deps, actor, "snapshot.create", exc, target=target)
        return
    srv_name = (
        srv.name or next((s.server.name for s in existing if s.server.name), "") or str(srv.id)
    )
    if _refused_on_server(deps, actor, existing, srv.id, srv_name, name):
        return
    parent_key = _post_parent(deps, actor, ctx, srv.id, srv_name, name)
    if parent_key is None:
        return
    try:
        snap = deps.vps.create_snapshot(srv.id, name, description or None)
    except VpsError as exc:
        _create_failed(deps, actor, exc, srv.id, srv_name, name, parent_key)
        return
    watch_created(deps, actor, snap, srv_name, parent_key)


def _refused_on_server(
    deps: Deps, actor: Actor, existing: list[Snapshot], server_id: int, srv_name: str, name: str
) -> bool:
    """The name is taken on the server, or the server is at the provider's limit."""
    target = f"server:{server_id} name:{name}"
    if any(s.name == name for s in existing):
        record(
            deps,
            actor,
            "snapshot.create",
            "denied",
            target=target,
            detail="name taken",
            answer=name_taken(srv_name, name),
        )
        return True
    if len(existing) >= SNAPSHOT_LIMIT:
        oldest = min(existing, key=lambda s: (s.created_at or deps.clock(), s.id))
        err = LimitReached(srv_name, oldest.id, oldest.name, SNAPSHOT_LIMIT)
        record(
            deps,
            actor,
            "snapshot.create",
            "denied",
            target=target,
            detail="limit reached",
            answer=limit_reached(refusal_text(err), oldest.id, oldest.name),
        )
        return True
    return False


def _post_parent(
    deps: Deps, actor: Actor, ctx: JobContext, server_id: int, srv_name: str, name: str
) -> str | None:
    """The channel message first: it is where the result will be threaded, and a
    channel the bot cannot post in is found out before anything is created. Its outbox
    key, or None (refused and answered)."""
    parent_key = f"create:{ctx.id}:msg"
    with session_scope(deps.engine) as s:
        mid = deps.outbox.post(
            s,
            actor.channel,
            create_message(
                server_name=srv_name,
                server_id=server_id,
                name=name,
                requester=actor.user,
                state="starting",
            ),
            key=parent_key,
        )
    (delivery,) = deps.outbox.flush([mid]) or [None]
    if delivery is not None and not delivery.sent and delivery.permanent:
        record(
            deps,
            actor,
            "snapshot.create",
            "error",
            target=f"server:{server_id} name:{name}",
            detail=delivery.error,
            answer=error_mrkdwn(cannot_post(delivery.error, actor.channel)),
        )
        return None
    ctx.save(
        create_sent=True,
        server_id=server_id,
        server_name=srv_name,
        name=name,
        parent_key=parent_key,
    )
    return parent_key


def _create_failed(
    deps: Deps,
    actor: Actor,
    exc: VpsError,
    server_id: int,
    srv_name: str,
    name: str,
    parent_key: str,
) -> None:
    with session_scope(deps.engine) as s:
        deps.outbox.update(
            s,
            actor.channel,
            create_message(
                server_name=srv_name,
                server_id=server_id,
                name=name,
                requester=actor.user,
                state="error",
                detail=describe(exc),
            ),
            ts_from=parent_key,
        )
        audit(
            deps,
            s,
            actor,
            "provider.create",
            "error",
            target=f"server:{server_id} name:{name}",
            detail=describe(exc),
        )
        mid = deps.outbox.respond(
            s,
            response_url=actor.response_url,
            channel=actor.channel,
            user=actor.user,
            message=error_message(describe(exc)),
        )
    deps.outbox.flush([mid])
    deps.outbox.pump()


def watch_created(deps: Deps, actor: Actor, snap: Snapshot, srv_name: str, parent_key: str) -> None:
    """The provider took the create: watch it (bot/watcher.py reports its end)."""
    detail = create_started_detail(snap.message)
    with session_scope(deps.engine) as s:
        if repo.snapshot_watch(s, snapshot_id=snap.id) is not None:
            # A resumed job whose first run got this far before dying: the snapshot
            # is watched (and its create audited) already; a second watch would
            # report it twice.
            return
        repo.add_watch(
            s,
            Watch(
                kind="snapshot",
                snapshot_id=snap.id,
                snapshot_name=snap.name,
                server_id=snap.server.id,
                server_name=srv_name,
                channel=actor.channel,
                parent_ts=parent_key,
                requester=actor.user,
                team=actor.team,
                started_at=deps.clock(),
                last_status=snap.status,
            ),
        )
        mid = deps.outbox.update(
            s,
            actor.channel,
            create_message(
                server_name=srv_name,
                server_id=snap.server.id,
                name=snap.name,
                requester=actor.user,
                state="in_progress",
                detail=detail,
                snapshot_id=snap.id,
            ),
            ts_from=parent_key,
            key=progress_key(parent_key),
        )
        audit(
            deps,
            s,
            actor,
            "provider.create",
            "ok",
            target=f"server:{snap.server.id} snapshot:{snap.id}",
            detail=snap.name,
        )
    deps.outbox.flush([mid])


def resume_create(deps: Deps, actor: Actor, ctx: JobContext) -> None:
    """A create whose worker died after it may have reached the provider: find it
    by name rather than send it again."""
    p = ctx.progress
    try:
        found = [
            s for s in deps.vps.list_snapshots(server_id=p["server_id"]) if s.name == p["name"]
        ]
    except VpsError as exc:
        provider_failed(deps, actor, "snapshot.create", exc)
        return
    if found:
        watch_created(deps, actor, found[0], p["server_name"], p["parent_key"])
    else:
        record(
            deps,
            actor,
            "snapshot.create",
            "error",
            detail="interrupted before the provider answered",
            answer=create_interrupted(p["name"]),
        )
