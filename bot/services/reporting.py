"""What is there: usage, the snapshot list, the audit trail, what is pending."""

from __future__ import annotations

from datetime import datetime

from bot.blocks.audit import audit_list
from bot.blocks.help import usage_message
from bot.blocks.pending import pending_list
from bot.blocks.snapshots import snapshot_list
from bot.core import approval
from bot.core import commands as cmd
from bot.services.actors import Actor
from bot.services.auditing import provider_failed, record
from bot.services.deps import Deps
from bot.vps.errors import VpsError
from storage import repositories as repo
from storage.db import session_scope


def show_usage(deps: Deps, actor: Actor, problem: str | None = None) -> None:
    """Help, or a command snapbot could not read (``problem``)."""
    if problem is not None:
        record(
            deps,
            actor,
            "command.invalid",
            "denied",
            detail=problem,
            answer=usage_message(cmd.USAGE, problem),
        )
    else:
        record(deps, actor, "command.help", "ok", answer=usage_message(cmd.USAGE))


def list_snapshots(
    deps: Deps,
    actor: Actor,
    server: cmd.ServerRef | None,
    *,
    fresh_since: datetime | None = None,
) -> None:
    """``fresh_since``: when the command was acknowledged. Its list comes from a
    provider call begun no earlier, possibly one shared with other commands
    (bot/vps/coalesce.py): a burst of lists costs the provider a few calls."""
    target = ref_text(server)
    try:
        if server is None:
            snaps, scope = deps.vps.list_snapshots(not_before=fresh_since), "all servers"
        else:
            srv = resolve(deps, server)
            snaps = deps.vps.list_snapshots(server_id=srv.id, not_before=fresh_since)
            scope = f"{srv.name} ({srv.id})" if srv.name else f"server {srv.id}"
    except VpsError as exc:
        provider_failed(deps, actor, "snapshot.list", exc, target=target)
        return
    record(
        deps,
        actor,
        "snapshot.list",
        "ok",
        target=target,
        detail=f"{len(snaps)} snapshot(s)",
        answer=snapshot_list(snaps, deps.clock(), scope=scope),
    )


def show_audit(deps: Deps, actor: Actor, limit: int) -> None:
    with session_scope(deps.engine, readonly=True) as s:
        events = repo.latest_audit(s, limit=limit)
    record(deps, actor, "audit.show", "ok", detail=f"last {limit}", answer=audit_list(events))


def show_pending(deps: Deps, actor: Actor) -> None:
    with session_scope(deps.engine, readonly=True) as s:
        requests = repo.requests_in_state(s, states=approval.ACTIVE_STATES)
        watches = repo.active_watches(s)
    record(deps, actor, "pending.show", "ok", answer=pending_list(requests, watches, deps.clock()))


def resolve(deps: Deps, server: cmd.ServerRef):
    """The provider's server for an id or a name (VpsNotFound if none)."""
    return deps.vps.resolve_server(server.id if isinstance(server, cmd.ServerId) else server.name)


def ref_text(server) -> str:
    if server is None:
        return ""
    return str(server.id) if isinstance(server, cmd.ServerId) else server.name
