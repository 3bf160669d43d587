"""Job kind -> use case: the one table (``JOB_HANDLERS``).

Listeners name the kind: a command's text is parsed once, in the listener, and its
canonical form stored in the job (``command_job``); a button's action id (and whether
its value is one snapbot can read) picks its kind (``button_job``); the create modal's
submission is ``create_view``. Every job passes the door first (bot/services/door.py):
no use case sees an actor it refuses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

from bot.blocks import ids
from bot.blocks.answers import error_message
from bot.core import commands as cmd
from bot.jobs import JobContext
from bot.services import creates, deletes, door, reporting
from bot.services.actors import Actor, text
from bot.services.auditing import record
from bot.services.deps import Deps
from bot.services.restores import confirm, decisions, requests
from bot.user_messages import describe

Run = Callable[[Deps, Actor, JobContext], None]


@dataclass(frozen=True, slots=True)
class Job:
    run: Run
    action: str  # what it would do, as audited: a refusal at the door reads the same
    surface: str  # where it came from: "command", "action" or "create_view" (its crash)


def _fields(ctx: JobContext) -> dict:
    return ctx.payload.get("command") or {}


def _value(ctx: JobContext) -> str:
    return ctx.payload.get("value", "")


def _server(fields: dict | None) -> cmd.ServerRef | None:
    if not fields:
        return None
    return cmd.ServerId(fields["id"]) if "id" in fields else cmd.ServerName(fields["name"])


def _server_fields(server: cmd.ServerRef | None) -> dict | None:
    if server is None:
        return None
    return {"id": server.id} if isinstance(server, cmd.ServerId) else {"name": server.name}


def _list(deps: Deps, actor: Actor, ctx: JobContext) -> None:
    server = _server(_fields(ctx).get("server"))
    reporting.list_snapshots(deps, actor, server, fresh_since=ctx.accepted_at)


def _create(deps: Deps, actor: Actor, ctx: JobContext) -> None:
    f = _fields(ctx)
    server = _server(f["server"])
    creates.create_snapshot(deps, actor, server, f["name"], f.get("description", ""), ctx)


def _button_malformed(deps: Deps, actor: Actor, ctx: JobContext) -> None:
    action_id = ctx.payload.get("action_id", "")
    if action_id == ids.DELETE_CONFIRM:
        record(deps, actor, "snapshot.delete", "denied", detail="malformed value")
        return
    record(
        deps,
        actor,
        f"button.{action_id}",
        "denied",
        detail="malformed value",
        answer=error_message("That button carried a value snapbot cannot read."),
    )


def _button_unknown(deps: Deps, actor: Actor, ctx: JobContext) -> None:
    record(
        deps,
        actor,
        "button.unknown",
        "denied",
        detail=ctx.payload.get("action_id", "")[:100],
        answer=error_message("snapbot does not know that button."),
    )


JOB_HANDLERS: dict[str, Job] = {
    # /snapshot <subcommand>
    "snapshot.list": Job(_list, "snapshot.list", "command"),
    "snapshot.create": Job(_create, "snapshot.create", "command"),
    "snapshot.create_modal": Job(
        lambda d, a, c: creates.open_create_modal(d, a), "snapshot.create", "command"
    ),
    "restore.request": Job(
        lambda d, a, c: requests.request_restore(
            d,
            a,
            _fields(c)["snapshot_id"],
            _fields(c).get("reason", ""),
            no_safety_snapshot=_fields(c).get("no_safety_snapshot", False),
        ),
        "restore.request",
        "command",
    ),
    "snapshot.delete_ask": Job(
        lambda d, a, c: deletes.ask_delete(d, a, _fields(c)["snapshot_id"]),
        "snapshot.delete",
        "command",
    ),
    "audit.show": Job(
        lambda d, a, c: reporting.show_audit(d, a, _fields(c)["limit"]), "audit.show", "command"
    ),
    "pending.show": Job(lambda d, a, c: reporting.show_pending(d, a), "pending.show", "command"),
    "command.help": Job(lambda d, a, c: reporting.show_usage(d, a), "command.help", "command"),
    "command.invalid": Job(
        lambda d, a, c: reporting.show_usage(d, a, _fields(c).get("problem", "")),
        "command.invalid",
        "command",
    ),
    # buttons (the action is the door's for a button: see _BUTTON_ACTIONS)
    "restore.open": Job(
        lambda d, a, c: requests.request_restore(d, a, int(_value(c)), ""), "", "action"
    ),
    "snapshot.delete_open": Job(
        lambda d, a, c: deletes.ask_delete(d, a, int(_value(c))), "", "action"
    ),
    "snapshot.delete_confirm": Job(
        lambda d, a, c: deletes.confirm_delete(d, a, _value(c)), "", "action"
    ),
    "snapshot.delete_cancel": Job(
        lambda d, a, c: deletes.cancel_delete(d, a, _value(c)), "", "action"
    ),
    "restore.approve": Job(
        lambda d, a, c: confirm.approve_pressed(d, a, int(_value(c)), c.payload), "", "action"
    ),
    "restore.reject": Job(lambda d, a, c: decisions.reject(d, a, int(_value(c))), "", "action"),
    "restore.undo": Job(lambda d, a, c: requests.undo_restore(d, a, int(_value(c))), "", "action"),
    "button.malformed": Job(_button_malformed, "", "action"),
    "button.unknown": Job(_button_unknown, "", "action"),
    # the create modal, submitted
    "create_view": Job(creates.create_from_view, "snapshot.create", "create_view"),
}

# What each button would have done, and what its value names: a refusal at the door
# is audited as that action on that target.
_BUTTON_ACTIONS = {
    ids.APPROVE: ("restore.approve", "request"),
    ids.REJECT: ("restore.reject", "request"),
    ids.UNDO: ("restore.request", "request"),
    ids.RESTORE_OPEN: ("restore.request", "snapshot"),
    ids.DELETE_OPEN: ("snapshot.delete", "snapshot"),
    ids.DELETE_CONFIRM: ("snapshot.delete", "snapshot"),
    ids.DELETE_CANCEL: ("snapshot.delete_cancelled", "snapshot"),
}
_BUTTON_JOBS = {
    ids.RESTORE_OPEN: "restore.open",
    ids.DELETE_OPEN: "snapshot.delete_open",
    ids.DELETE_CONFIRM: "snapshot.delete_confirm",
    ids.DELETE_CANCEL: "snapshot.delete_cancel",
    ids.APPROVE: "restore.approve",
    ids.REJECT: "restore.reject",
    ids.UNDO: "restore.undo",
}
# Buttons whose whole value is an id (a delete's confirm: its first part).
_ID_VALUED = (ids.RESTORE_OPEN, ids.DELETE_OPEN, ids.APPROVE, ids.REJECT, ids.UNDO)


def command_job(parsed: cmd.Command | cmd.UsageError) -> tuple[str, dict]:
    """(job kind, canonical command) of a parsed /snapshot command."""
    if isinstance(parsed, cmd.ListSnapshots):
        return "snapshot.list", {"server": _server_fields(parsed.server)}
    if isinstance(parsed, cmd.CreateSnapshot):
        return "snapshot.create", {
            "server": _server_fields(parsed.server),
            "name": parsed.name,
            "description": parsed.description,
        }
    if isinstance(parsed, cmd.OpenCreateModal):
        return "snapshot.create_modal", {}
    if isinstance(parsed, cmd.RequestRestore):
        fields = {"snapshot_id": parsed.snapshot_id, "reason": parsed.reason}
        if parsed.no_safety_snapshot:
            fields["no_safety_snapshot"] = True
        return "restore.request", fields
    if isinstance(parsed, cmd.DeleteSnapshot):
        return "snapshot.delete_ask", {"snapshot_id": parsed.snapshot_id}
    if isinstance(parsed, cmd.ShowAudit):
        return "audit.show", {"limit": parsed.limit}
    if isinstance(parsed, cmd.ShowPending):
        return "pending.show", {}
    if isinstance(parsed, cmd.UsageError):
        return "command.invalid", {"problem": parsed.message}
    return "command.help", {}


def button_job(action_id: str, value: str) -> str:
    """The job kind of a button press (its action id, and whether its value reads)."""
    kind = _BUTTON_JOBS.get(action_id)
    if kind is None:
        return "button.unknown"
    if action_id in _ID_VALUED and not door.is_id(value):
        return "button.malformed"
    if action_id == ids.DELETE_CONFIRM and not door.is_id(value.partition(":")[0]):
        return "button.malformed"
    return kind


def attempted(kind: str, payload: dict) -> tuple[str, str]:
    """(audit action, target) of what a job asked for."""
    job = JOB_HANDLERS[kind]
    if job.surface == "action":
        action, noun = _BUTTON_ACTIONS.get(text(payload.get("action_id")), ("button.unknown", ""))
        value = text(payload.get("value")).partition(":")[0]
        return action, f"{noun}:{value}" if noun and door.is_id(value) else ""
    target = (payload.get("command") or {}).get("snapshot_id")
    return job.action, f"snapshot:{target}" if target is not None else ""


def run_job(deps: Deps, kind: str, ctx: JobContext) -> None:
    if kind in _UPGRADES:
        kind, ctx = _UPGRADES[kind](ctx)
    action, target = attempted(kind, ctx.payload)
    if door.at_the_door(deps, ctx.payload, action, target):
        JOB_HANDLERS[kind].run(deps, Actor.from_payload(ctx.payload), ctx)


def job_crashed(deps: Deps, ctx: JobContext, exc: BaseException) -> None:
    """A use case raised: the actor is told (and the crash audited as its surface's)."""
    actor = Actor.from_payload(ctx.payload)
    if actor.user:
        job = JOB_HANDLERS.get(ctx.kind)
        record(
            deps,
            actor,
            f"{job.surface if job else ctx.kind}.crash",
            "error",
            detail=type(exc).__name__,
            answer=error_message(describe(exc)),
        )


# Jobs queued by a snapbot from before the kinds (during a rolling upgrade): the
# command's text, or the button, is read here once.
def _upgrade_command(ctx: JobContext) -> tuple[str, JobContext]:
    kind, fields = command_job(cmd.parse(text(ctx.payload.get("text"))))
    return kind, replace(ctx, payload={**ctx.payload, "command": fields})


def _upgrade_action(ctx: JobContext) -> tuple[str, JobContext]:
    p = ctx.payload
    return button_job(text(p.get("action_id")), text(p.get("value"))), ctx


_UPGRADES = {"command": _upgrade_command, "action": _upgrade_action}


def register(deps: Deps) -> None:
    """Give the job runner one handler per kind (and the legacy ones)."""
    for kind in (*JOB_HANDLERS, *_UPGRADES):
        deps.jobs.register(kind, functools.partial(run_job, deps, kind))
    deps.jobs.on_crash = functools.partial(job_crashed, deps)
