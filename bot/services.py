"""Use cases: load -> decide (core) -> save -> call the provider -> notify.

Listeners hand every acknowledged request to a job (bot/jobs.py); the handlers here
do the work. Each step that must not be repeated is guarded by stored state:
a conditional update for the restore, saved job progress for a create, a unique key
for every message that must arrive (bot/outbox.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)
from sqlalchemy import Engine

from bot.blocks import ids
from bot.blocks.answers import error_message, error_mrkdwn, text_message
from bot.blocks.audit import audit_list
from bot.blocks.format import age, mention
from bot.blocks.help import usage_message
from bot.blocks.notices import (
    checkpoint_notice,
    request_approved_notice,
    request_decided_notice,
    request_opened_notice,
    request_unposted_notice,
    restore_outcome_notice,
)
from bot.blocks.pending import pending_list
from bot.blocks.refusals import (
    cannot_post,
    click_not_on_request,
    delete_taken,
    not_in_a_dm,
    request_already_open,
    turned_away,
)
from bot.blocks.restore import (
    request_decided_note,
    request_unposted,
    restore_outcome_note,
    restore_request,
    restore_unfollowed_note,
)
from bot.blocks.snapshots import (
    CREATE_ESTIMATE,
    RUNNING_SERVER_ADVICE,
    create_message,
    create_modal,
    delete_prompt,
    limit_reached,
    snapshot_list,
)
from bot.config import Settings
from bot.core import approval, authz, conversations, view_metadata
from bot.core import commands as cmd
from bot.core.errors import LimitReached, NotAllowed, NotRestorable
from bot.jobs import JobContext, JobRunner
from bot.logs import event_line
from bot.outbox import Delivery, Outbox
from bot.user_messages import describe
from bot.vps.client import VpsClient
from bot.vps.errors import VpsError, VpsNotFound, VpsUnavailable
from bot.vps.models import Snapshot
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import RestoreRequest, Watch

log = logging.getLogger(__name__)

SNAPSHOT_LIMIT = 5
RESTORE_USUALLY = "A restore usually takes 5-15 minutes."
GROUP_CACHE_SECONDS = 60.0
# A deletion still marked as running after this long was cut short (its process died):
# another confirmation may take it over.
DELETE_STALE = timedelta(minutes=5)
# Outbox states after which a message's ts is known (sent) or never will be; None: no
# such message was ever queued.
# The door refuses everyone while the installing team is unknown (Slack did not
# answer auth.test): the reason, and how often auth.test is tried again.
UNKNOWN_INSTALL = (
    "Slack has not yet told snapbot which workspace it is installed in; try again in a minute"
)
INSTALL_RETRY_S = 30.0
SETTLED_STATES = frozenset({"sent", "failed", None})
MESSAGE_WAIT_S = 15.0  # above one Slack call's budget (10 s timeout) and a first retry


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_owner_id(group: str | None = None) -> str:
    """Who holds a lease or claims a job: host, pid, and a nonce; a job worker started
    by a `web` process adds ``/web-<master pid>`` so that process can tell it is its own."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    return f"{owner}/{group}" if group else owner


def make_slack_client(settings: Settings) -> WebClient:
    client = WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url, timeout=10)
    # slack-sdk retries only connection errors by default; 429s are waited out too.
    client.retry_handlers = [
        ConnectionErrorRetryHandler(max_retry_count=2),
        RateLimitErrorRetryHandler(max_retry_count=3),
    ]
    return client


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted and where, taken from what Slack sent (never from a button's value)."""

    user: str
    channel: str = ""
    team: str = ""
    response_url: str | None = None
    trigger_id: str | None = None
    message_ts: str | None = None  # the message a button sat on (channel: ``channel``)
    thread_ts: str | None = None  # the thread that message is in, if any
    # Whose organisation the user is of (SPEC 13.5): their own team and Grid org, and
    # the installing team as the request names it (a Slack Connect partner's
    # ``user.team_id`` differs from it).
    user_team: str = ""
    enterprise: str = ""
    home_team: str = ""
    channel_name: str = ""  # Slack's name for it: tells a DM (bot/core/conversations.py)

    @classmethod
    def from_payload(cls, p: dict) -> Actor:
        # A signed request may still carry nulls (or numbers) where Slack sends ids:
        # the audit chain hashes strings, so "" stands in for a missing id. Jobs stored
        # before the user's own team was carried fall back to the request's team.
        team = _text(p.get("team"))
        return cls(
            user=_text(p.get("user")),
            channel=_text(p.get("channel")),
            team=team,
            response_url=p.get("response_url"),
            trigger_id=p.get("trigger_id"),
            message_ts=p.get("message_ts"),
            user_team=_text(p.get("user_team", team)),
            enterprise=_text(p.get("enterprise")),
            home_team=_text(p.get("home_team", team)),
            channel_name=_text(p.get("channel_name")),
            thread_ts=p.get("thread_ts"),
        )


# What Slack answers usergroups.users.list for a group that cannot be read at all: the
# configuration is wrong (or the plan has no user groups), not the moment.
GROUP_GONE = {
    "no_such_subteam": "user group {group} does not exist",
    "plan_upgrade_required": "this workspace's plan has no user groups",
}


class GroupCache:
    """Members of Slack user groups (usergroups.users.list), cached briefly."""

    def __init__(self, slack: WebClient, ttl: float = GROUP_CACHE_SECONDS) -> None:
        self.slack = slack
        self.ttl = ttl
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._unread: set[str] = set()  # groups Slack did not list on the last try
        self._gone: dict[str, str] = {}  # group -> Slack's GROUP_GONE error on the last try
        self._lock = threading.Lock()

    def groups_of(self, user: str, allowed: authz.Allowed) -> frozenset[str]:
        return frozenset(g for g in authz.groups_of(allowed) if user in self.members(g))

    def unread_note(self, allowed: authz.Allowed) -> str:
        """What a refusal should add when it may be due to Slack, not to the person."""
        groups = sorted(authz.groups_of(allowed))
        with self._lock:
            gone = {g: self._gone[g] for g in groups if g in self._gone}
            unread = [g for g in groups if g in self._unread and g not in gone]
        notes = sorted({GROUP_GONE[error].format(group=g) for g, error in gone.items()})
        if unread:
            names = ", ".join(f"<!subteam^{g}>" for g in unread)
            notes.append(
                f"Slack did not say who is in {names} just now; if you are, try again soon"
            )
        return f" ({'; '.join(notes)}.)" if notes else ""

    def unusable(self, groups: Iterable[str]) -> dict[str, str]:
        """Of ``groups``, those Slack answers a GROUP_GONE error for: {group: error}.
        Asks Slack (through the cache); for the warning at start-up."""
        for group in groups:
            self.members(group)
        with self._lock:
            return {g: self._gone[g] for g in groups if g in self._gone}

    def members(self, group: str) -> frozenset[str]:
        with self._lock:
            hit = self._cache.get(group)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        try:
            users = frozenset(self.slack.usergroups_users_list(usergroup=group).get("users") or [])
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "") if exc.response is not None else ""
            if error in GROUP_GONE:
                # Fail closed, and remember why: refusals say so (not "try again").
                with self._lock:
                    self._gone[group] = error
                    self._unread.discard(group)
                    self._cache[group] = (time.monotonic(), frozenset())
                return frozenset()
            return self._unreadable(group, hit, exc)
        except (SlackClientError, OSError) as exc:
            return self._unreadable(group, hit, exc)
        with self._lock:
            self._cache[group] = (time.monotonic(), users)
            self._unread.discard(group)
            self._gone.pop(group, None)
        return users

    def _unreadable(self, group: str, hit, exc: Exception) -> frozenset[str]:
        # Fail closed: an unknown membership grants nothing.
        log.warning("could not read user group %s: %s", group, exc)
        if hit:
            return hit[1]
        with self._lock:
            self._unread.add(group)
        return frozenset()


@dataclass
class Services:
    settings: Settings
    engine: Engine
    vps: VpsClient
    slack: WebClient
    clock: Callable[[], datetime] = utcnow
    owner: str = field(default_factory=make_owner_id)
    workers: int = 16
    runs_jobs: bool = True  # False in gunicorn's HTTP workers: bot/jobs.py, bot/worker.py
    # The workspace (and Enterprise Grid org) the bot is installed in, from auth.test at
    # start-up; None: the team each request came through stands in (SPEC 13.5).
    install_team: str | None = None
    install_enterprise: str | None = None

    def __post_init__(self) -> None:
        self.audit_key = self.settings.audit_key.encode() if self.settings.audit_key else None
        self._install_lock = threading.Lock()
        self._install_next_try = 0.0
        # Socket Mode has no signing secret; the bot token is as private.
        self.metadata_key = view_metadata.metadata_key(
            self.settings.slack_signing_secret or self.settings.slack_bot_token
        )
        self.groups = GroupCache(self.slack)
        self.outbox = Outbox(
            self.engine,
            self.slack,
            owner=self.owner,
            clock=self.clock,
            watch_channel=self.settings.incident_channel,
        )
        self.jobs = JobRunner(
            self.engine,
            owner=self.owner,
            clock=self.clock,
            workers=self.workers,
            runs_jobs=self.runs_jobs,
            on_crash=self._job_crashed,
        )
        # Every job kind passes the door first: no use case sees an actor it refuses.
        self.jobs.register("command", self._at_the_door(self.run_command))
        self.jobs.register("action", self._at_the_door(self.run_action))
        self.jobs.register("create_view", self._at_the_door(self.run_create_view))
        self.policy = approval.Policy(
            approvers=self.settings.snapshot_approvers,
            required_approvals=self.settings.restore_approvals,
            ttl=self.settings.approval_ttl,
        )

    # ------------------------------------------------------------------ plumbing

    def audit(
        self,
        session,
        actor: Actor | None,
        action: str,
        outcome: str,
        *,
        target: str = "",
        detail: str = "",
    ) -> None:
        row = repo.append_audit(
            session,
            now=self.clock(),
            action=action,
            outcome=outcome,
            actor=actor.user if actor else "",
            team=actor.team if actor else "",
            channel=actor.channel if actor else "",
            target=target,
            detail=detail[:1000],
            key=self.audit_key,
        )
        # The same event as one structured log line (bot/logs.py).
        log.info(
            "%s",
            event_line(
                action,
                target=target,
                actor=row.actor or "snapbot",
                channel=row.channel,
                team=row.team,
                outcome=outcome,
                audit=row.id,
                detail=row.detail[:200],
            ),
        )

    def record(
        self,
        actor: Actor | None,
        action: str,
        outcome: str,
        *,
        target: str = "",
        detail: str = "",
        answer: dict | None = None,
        delivery_key: str | None = None,
    ) -> None:
        """Audit one event and, where given, answer the actor: one unit of work.
        With a Slack request's ``delivery_key``, a request seen before does neither."""
        with session_scope(self.engine) as s:
            if delivery_key and not repo.record_delivery(s, key=delivery_key, now=self.clock()):
                return
            mid = None
            if answer is not None and actor is not None:
                mid = self.outbox.respond(
                    s,
                    response_url=actor.response_url,
                    channel=actor.channel,
                    user=actor.user,
                    message=answer,
                )
            self.audit(s, actor, action, outcome, target=target, detail=detail)
        self.outbox.flush([mid])

    def answer(self, actor: Actor, message: dict, *, replace_original: bool = False) -> None:
        with session_scope(self.engine) as s:
            mid = self.outbox.respond(
                s,
                response_url=actor.response_url,
                channel=actor.channel,
                user=actor.user,
                message=message,
                replace_original=replace_original,
            )
        self.outbox.flush([mid])

    def notify_incident(self, session, notice: dict, *, key: str | None = None) -> int | None:
        """Post a notice built in bot/blocks/notices.py to the incident channel, if any."""
        if not self.settings.incident_channel:
            return None
        return self.outbox.post(session, self.settings.incident_channel, notice, key=key)

    def permalink(self, channel: str, ts: str | None) -> str | None:
        if not ts:
            return None
        try:
            return self.slack.chat_getPermalink(channel=channel, message_ts=ts).get("permalink")
        except (SlackApiError, SlackClientError, OSError):
            return None

    def _job_crashed(self, ctx: JobContext, exc: BaseException) -> None:
        actor = Actor.from_payload(ctx.payload)
        if actor.user:
            self.record(
                actor,
                f"{ctx.kind}.crash",
                "error",
                detail=type(exc).__name__,
                answer=error_message(describe(exc)),
            )

    def may_operate(self, actor: Actor) -> bool:
        allowed = self.settings.snapshot_operators
        return authz.is_allowed(actor.user, self.groups.groups_of(actor.user, allowed), allowed)

    def _refuse(
        self, actor: Actor, action: str, what: str, allowed: authz.Allowed, *, target: str = ""
    ) -> None:
        err = NotAllowed(what, authz.describe_allowed(allowed))
        self.record(
            actor,
            action,
            "denied",
            target=target,
            detail="not an operator",
            answer=error_mrkdwn(str(err) + self.groups.unread_note(allowed)),
        )

    def _refused_in_dm(self, actor: Actor, action: str, what: str, *, target: str = "") -> bool:
        """A DM or group DM between people: snapbot cannot post its channel message
        there (Slack says `channel_not_found`) nor be invited, so refuse at once."""
        if not conversations.is_direct_message(actor.channel, actor.channel_name):
            return False
        self.record(
            actor,
            action,
            "denied",
            target=target,
            detail="direct message",
            answer=error_message(not_in_a_dm(what)),
        )
        return True

    def seal_opener(self, actor: Actor) -> str:
        """The create modal's private_metadata: where and how to answer its opener."""
        opener = view_metadata.Opener(
            actor.user, actor.channel, actor.channel_name, actor.response_url
        )
        return view_metadata.seal(opener, self.metadata_key)

    def opener_of(self, private_metadata: str, user: str) -> view_metadata.Opener | None:
        """The opener sealed in a submitted view's private_metadata, if snapbot sealed
        it for ``user``; None for anything else (typed, edited, another user's)."""
        return view_metadata.unseal(private_metadata, self.metadata_key, user=user)

    def _provider_failed(
        self, actor: Actor, action: str, exc: Exception, *, target: str = "", answer: bool = True
    ) -> None:
        log.warning("provider call for %s failed: %s", action, exc)
        self.record(
            actor,
            action,
            "error",
            target=target,
            detail=describe(exc),
            answer=error_message(describe(exc)) if answer else None,
        )

    # ------------------------------------------------------------------ the door (SPEC 13.5, 14.3)

    def turned_away(self, payload: dict) -> str | None:
        """Why the actor of a request may do nothing at all, or None: not a Slack user
        ID, or a user of another organisation not in SLACK_ALLOWED_TEAMS. Pure: the
        listeners also ask it before answering in the ack."""
        actor = Actor.from_payload(payload)
        if not authz.is_user_id(actor.user):
            return "not a Slack user ID"
        return authz.outsider(
            user_team=actor.user_team,
            user_enterprise=actor.enterprise,
            home_team=self.install_team or actor.home_team,
            home_enterprise=self.install_enterprise or "",
            allowed_teams=self.settings.slack_allowed_teams,
        )

    def knows_its_install(self) -> bool:
        """Whether the installing team is known. Start-up asks auth.test once and goes
        on without an answer when Slack is down; until one comes, the door cannot tell
        our users from another organisation's (a slash command names only one team),
        so it asks again here, at most every INSTALL_RETRY_S, and refuses meanwhile."""
        if self.install_team is not None:
            return True
        with self._install_lock:
            if self.install_team is not None or time.monotonic() < self._install_next_try:
                return self.install_team is not None
            self._install_next_try = time.monotonic() + INSTALL_RETRY_S
            try:
                answer = self.slack.auth_test()
            except (SlackApiError, SlackClientError, OSError) as exc:
                log.warning("auth.test still unanswered (%s): requests are refused", exc)
                return False
            if not answer.get("team_id"):
                return False
            self.install_enterprise = answer.get("enterprise_id") or None
            self.install_team = answer["team_id"]
            log.info("snapbot is installed in team %s", self.install_team)
            return True

    def _at_the_door(self, handler: Callable[[JobContext], None]) -> Callable[[JobContext], None]:
        def run(ctx: JobContext) -> None:
            why = self.turned_away(ctx.payload) if self.knows_its_install() else UNKNOWN_INSTALL
            if why is None:
                handler(ctx)
                return
            actor = Actor.from_payload(ctx.payload)
            action, target = _attempted(ctx.kind, ctx.payload)
            self.record(
                # Whatever was typed as the id is kept for the auditor, but never raw
                # control characters (PostgreSQL refuses NUL in text).
                replace(actor, user=_printable(actor.user), team=_printable(actor.team)),
                action,
                "denied",
                target=target,
                detail=f"turned away at the door: {_printable(why, 200)}",
                # Without a response_url the answer is an ephemeral: only to a real
                # user in a known channel.
                answer=turned_away(
                    why,
                    another_org=authz.is_user_id(actor.user),
                    install_unknown=why == UNKNOWN_INSTALL,
                )
                if actor.response_url or (authz.is_user_id(actor.user) and actor.channel)
                else None,
            )

        return run

    # ------------------------------------------------------------------ listeners' entry points

    def accept(
        self,
        kind: str,
        payload: dict,
        *,
        delivery_key: str | None = None,
        urgent: bool = False,
    ) -> int | None:
        """Called by a listener before ack(): the request is durable from here on.
        Listeners pass the request's ``delivery_key`` (bot/app.py): a redelivery or
        replay is then stored and done only once (None the other times). ``urgent``:
        the job must reach Slack within the trigger_id's 3 s (it opens a modal), so
        the process that acknowledged it runs it at once."""
        return self.jobs.submit(kind, payload, delivery_key=delivery_key, urgent=urgent)

    # ------------------------------------------------------------------ /snapshot

    def run_command(self, ctx: JobContext) -> None:
        actor = Actor.from_payload(ctx.payload)
        command = cmd.parse(ctx.payload.get("text", ""))
        if isinstance(command, cmd.UsageError | cmd.Help):
            self.show_usage(actor, command)
        elif isinstance(command, cmd.ListSnapshots):
            self.list_snapshots(actor, command.server, fresh_since=ctx.accepted_at)
        elif isinstance(command, cmd.CreateSnapshot):
            self.create_snapshot(actor, command.server, command.name, command.description, ctx)
        elif isinstance(command, cmd.OpenCreateModal):
            self.open_create_modal(actor)
        elif isinstance(command, cmd.RequestRestore):
            self.request_restore(actor, command.snapshot_id, command.reason)
        elif isinstance(command, cmd.DeleteSnapshot):
            self.ask_delete(actor, command.snapshot_id)
        elif isinstance(command, cmd.ShowAudit):
            self.show_audit(actor, command.limit)
        elif isinstance(command, cmd.ShowPending):
            self.show_pending(actor)

    def show_usage(self, actor: Actor, command) -> None:
        if isinstance(command, cmd.UsageError):
            self.record(
                actor,
                "command.invalid",
                "denied",
                detail=command.message,
                answer=usage_message(cmd.USAGE, command.message),
            )
        else:
            self.record(actor, "command.help", "ok", answer=usage_message(cmd.USAGE))

    def list_snapshots(
        self, actor: Actor, server: cmd.ServerRef | None, *, fresh_since: datetime | None = None
    ) -> None:
        """``fresh_since``: when the command was acknowledged. Its list comes from a
        provider call begun no earlier, possibly one shared with other commands
        (bot/vps/coalesce.py): a burst of lists costs the provider a few calls."""
        target = _ref_text(server)
        try:
            if server is None:
                snaps, scope = self.vps.list_snapshots(not_before=fresh_since), "all servers"
            else:
                srv = self._resolve(server)
                snaps = self.vps.list_snapshots(server_id=srv.id, not_before=fresh_since)
                scope = f"{srv.name} ({srv.id})" if srv.name else f"server {srv.id}"
        except VpsError as exc:
            self._provider_failed(actor, "snapshot.list", exc, target=target)
            return
        self.record(
            actor,
            "snapshot.list",
            "ok",
            target=target,
            detail=f"{len(snaps)} snapshot(s)",
            answer=snapshot_list(snaps, self.clock(), scope=scope),
        )

    def _resolve(self, server: cmd.ServerRef):
        return self.vps.resolve_server(
            server.id if isinstance(server, cmd.ServerId) else server.name
        )

    # --- create

    def open_create_modal(self, actor: Actor) -> None:
        if self._refused_in_dm(actor, "snapshot.create", "create snapshots"):
            return
        if not self.may_operate(actor):
            self._refuse(
                actor, "snapshot.create", "create snapshots", self.settings.snapshot_operators
            )
            return
        # The trigger_id lives 3 s: open at once, then fill the server picker.
        try:
            opened = self.slack.views_open(
                trigger_id=actor.trigger_id,
                view=create_modal(
                    metadata=self.seal_opener(actor), servers=None, note="Loading servers…"
                ),
            )
        except (SlackApiError, SlackClientError, OSError) as exc:
            self.record(
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
                {(s.server.id, s.server.name) for s in self.vps.list_snapshots()},
                key=lambda x: x[1],
            )
        except VpsError as exc:
            servers, note = (
                [],
                f"Could not load the server list ({describe(exc)}); type an ID or name.",
            )
        try:
            self.slack.views_update(
                view_id=view_id,
                view=create_modal(metadata=self.seal_opener(actor), servers=servers, note=note),
            )
        except (SlackApiError, SlackClientError, OSError) as exc:
            log.info("could not fill the create modal: %s", exc)
        self.record(actor, "snapshot.create_modal", "ok")

    def run_create_view(self, ctx: JobContext) -> None:
        actor = Actor.from_payload(ctx.payload)
        server = cmd.parse_server(ctx.payload.get("server", ""))
        if isinstance(server, cmd.UsageError):
            self.record(
                actor,
                "snapshot.create",
                "denied",
                detail="invalid server",
                answer=error_message(server.message),
            )
            return
        self.create_snapshot(
            actor, server, ctx.payload.get("name", ""), ctx.payload.get("description", ""), ctx
        )

    def create_snapshot(
        self, actor: Actor, server: cmd.ServerRef, name: str, description: str, ctx: JobContext
    ) -> None:
        target = f"server:{_ref_text(server)} name:{name}"
        if self._refused_in_dm(actor, "snapshot.create", "create snapshots", target=target):
            return
        if not self.may_operate(actor):
            self._refuse(
                actor,
                "snapshot.create",
                "create snapshots",
                self.settings.snapshot_operators,
                target=target,
            )
            return
        if (problem := cmd.snapshot_name_problem(name)) is not None:
            self.record(
                actor,
                "snapshot.create",
                "denied",
                target=target,
                detail="invalid name",
                answer=error_message(problem),
            )
            return
        if ctx.progress.get("create_sent"):
            self._resume_create(actor, ctx)
            return
        try:
            srv = self._resolve(server)
            existing = self.vps.list_snapshots(server_id=srv.id)
        except VpsError as exc:
            self._provider_failed(actor, "snapshot.create", exc, target=target)
            return
        srv_name = (
            srv.name or next((s.server.name for s in existing if s.server.name), "") or str(srv.id)
        )
        target = f"server:{srv.id} name:{name}"
        if any(s.name == name for s in existing):
            self.record(
                actor,
                "snapshot.create",
                "denied",
                target=target,
                detail="name taken",
                answer=error_message(f"Server {srv_name} already has a snapshot named {name}."),
            )
            return
        if len(existing) >= SNAPSHOT_LIMIT:
            oldest = min(existing, key=lambda s: (s.created_at or self.clock(), s.id))
            err = LimitReached(srv_name, oldest.id, oldest.name, SNAPSHOT_LIMIT)
            self.record(
                actor,
                "snapshot.create",
                "denied",
                target=target,
                detail="limit reached",
                answer=limit_reached(str(err), oldest.id, oldest.name),
            )
            return
        # The channel message first: it is where the result will be threaded, and a
        # channel the bot cannot post in is found out before anything is created.
        parent_key = f"create:{ctx.id}:msg"
        with session_scope(self.engine) as s:
            mid = self.outbox.post(
                s,
                actor.channel,
                create_message(
                    server_name=srv_name,
                    server_id=srv.id,
                    name=name,
                    requester=actor.user,
                    state="starting",
                ),
                key=parent_key,
            )
        (delivery,) = self.outbox.flush([mid]) or [None]
        if delivery is not None and not delivery.sent and delivery.permanent:
            self.record(
                actor,
                "snapshot.create",
                "error",
                target=target,
                detail=delivery.error,
                answer=error_mrkdwn(cannot_post(delivery.error, actor.channel)),
            )
            return
        ctx.save(
            create_sent=True,
            server_id=srv.id,
            server_name=srv_name,
            name=name,
            parent_key=parent_key,
        )
        try:
            snap = self.vps.create_snapshot(srv.id, name, description or None)
        except VpsError as exc:
            with session_scope(self.engine) as s:
                self.outbox.update(
                    s,
                    actor.channel,
                    create_message(
                        server_name=srv_name,
                        server_id=srv.id,
                        name=name,
                        requester=actor.user,
                        state="error",
                        detail=describe(exc),
                    ),
                    ts_from=parent_key,
                )
                self.audit(
                    s, actor, "provider.create", "error", target=target, detail=describe(exc)
                )
                mid = self.outbox.respond(
                    s,
                    response_url=actor.response_url,
                    channel=actor.channel,
                    user=actor.user,
                    message=error_message(describe(exc)),
                )
            self.outbox.flush([mid])
            self.outbox.pump()
            return
        self._watch_created(actor, snap, srv_name, parent_key)

    def _watch_created(self, actor: Actor, snap: Snapshot, srv_name: str, parent_key: str) -> None:
        detail = f"{snap.message or CREATE_ESTIMATE} {RUNNING_SERVER_ADVICE}"
        with session_scope(self.engine) as s:
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
                    started_at=self.clock(),
                    last_status=snap.status,
                ),
            )
            mid = self.outbox.update(
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
            self.audit(
                s,
                actor,
                "provider.create",
                "ok",
                target=f"server:{snap.server.id} snapshot:{snap.id}",
                detail=snap.name,
            )
        self.outbox.flush([mid])

    def _resume_create(self, actor: Actor, ctx: JobContext) -> None:
        """A create whose worker died after it may have reached the provider: find it
        by name rather than send it again."""
        p = ctx.progress
        try:
            found = [
                s for s in self.vps.list_snapshots(server_id=p["server_id"]) if s.name == p["name"]
            ]
        except VpsError as exc:
            self._provider_failed(actor, "snapshot.create", exc)
            return
        if found:
            self._watch_created(actor, found[0], p["server_name"], p["parent_key"])
        else:
            self.record(
                actor,
                "snapshot.create",
                "error",
                detail="interrupted before the provider answered",
                answer=error_message(
                    f"snapbot restarted while creating {p['name']}; the provider has no such snapshot, "
                    "so nothing was created. Run the command again."
                ),
            )

    # --- delete

    def ask_delete(self, actor: Actor, snapshot_id: int) -> None:
        if self._refused_in_dm(
            actor, "snapshot.delete", "delete snapshots", target=f"snapshot:{snapshot_id}"
        ):
            return
        if not self.may_operate(actor):
            self._refuse(
                actor,
                "snapshot.delete",
                "delete snapshots",
                self.settings.snapshot_operators,
                target=f"snapshot:{snapshot_id}",
            )
            return
        try:
            snap = self.vps.find_snapshot(snapshot_id)
        except VpsError as exc:
            self._provider_failed(actor, "snapshot.delete", exc, target=f"snapshot:{snapshot_id}")
            return
        if snap is None:
            self.record(
                actor,
                "snapshot.delete",
                "error",
                target=f"snapshot:{snapshot_id}",
                detail="not found",
                answer=error_message(describe(VpsNotFound(kind="snapshot", ident=snapshot_id))),
            )
            return
        self.record(
            actor,
            "snapshot.delete_asked",
            "ok",
            target=f"snapshot:{snapshot_id}",
            answer=delete_prompt(snap, actor.user, self.clock()),
        )

    def confirm_delete(self, actor: Actor, value: str) -> None:
        snapshot_id, _, asked_by = value.partition(":")
        target = f"snapshot:{snapshot_id}"
        if self._refused_in_dm(actor, "snapshot.delete", "delete snapshots", target=target):
            return
        if asked_by != actor.user:
            self.record(
                actor,
                "snapshot.delete",
                "denied",
                target=target,
                detail="not the user who asked",
                answer=error_message("Only the person who asked for this delete can confirm it."),
            )
            return
        if not self.may_operate(actor):
            self._refuse(
                actor,
                "snapshot.delete",
                "delete snapshots",
                self.settings.snapshot_operators,
                target=target,
            )
            return
        sid = int(snapshot_id)
        if (open_req := self._open_request(sid)) is not None:
            self.record(
                actor,
                "snapshot.delete",
                "denied",
                target=target,
                detail="restore open",
                answer=error_message(
                    f"Restore request #{open_req.id} uses this snapshot "
                    f"({open_req.state}); it cannot be deleted now."
                ),
            )
            return
        now = self.clock()
        with session_scope(self.engine) as s:
            # Two presses of Delete (a double click: two bodies, so no redelivery key
            # stops the second) race here; the stored claim lets one through.
            taken = repo.begin_deletion(
                s, snapshot_id=sid, by=actor.user, now=now, stale_before=now - DELETE_STALE
            )
            if taken is not None:
                self.audit(s, actor, "snapshot.delete", "denied", target=target, detail=taken.state)
        if taken is not None:
            self.answer(actor, text_message(delete_taken(sid, taken.state, taken.deleted_by)))
            return
        try:
            self.vps.delete_snapshot(sid)
        except VpsError as exc:
            with session_scope(self.engine) as s:
                repo.finish_deletion(
                    s, snapshot_id=sid, by=actor.user, deleted=False, now=self.clock()
                )
            self.record(actor, "provider.delete", "error", target=target, detail=describe(exc))
            self.answer(actor, error_message(describe(exc)), replace_original=True)
            return
        except BaseException:
            # Anything else (a bug, a stop): free the claim, so the next press is not
            # told "already being deleted" for minutes; the job's crash handler answers.
            with session_scope(self.engine) as s:
                repo.finish_deletion(
                    s, snapshot_id=sid, by=actor.user, deleted=False, now=self.clock()
                )
            raise
        with session_scope(self.engine) as s:
            repo.finish_deletion(s, snapshot_id=sid, by=actor.user, deleted=True, now=self.clock())
        self.record(actor, "provider.delete", "ok", target=target)
        self.answer(
            actor,
            text_message(f":wastebasket: Snapshot {sid} deleted by {mention(actor.user)}."),
            replace_original=True,
        )

    def _open_request(self, snapshot_id: int) -> RestoreRequest | None:
        with session_scope(self.engine, readonly=True) as s:
            return repo.open_request_for_snapshot(s, snapshot_id=snapshot_id)

    # --- audit, pending

    def show_audit(self, actor: Actor, limit: int) -> None:
        with session_scope(self.engine, readonly=True) as s:
            events = repo.latest_audit(s, limit=limit)
        self.record(actor, "audit.show", "ok", detail=f"last {limit}", answer=audit_list(events))

    def show_pending(self, actor: Actor) -> None:
        with session_scope(self.engine, readonly=True) as s:
            requests = repo.requests_in_state(s, states=approval.ACTIVE_STATES)
            watches = repo.active_watches(s)
        self.record(
            actor, "pending.show", "ok", answer=pending_list(requests, watches, self.clock())
        )

    # ------------------------------------------------------------------ buttons

    def run_action(self, ctx: JobContext) -> None:
        actor = Actor.from_payload(ctx.payload)
        action_id, value = ctx.payload.get("action_id", ""), ctx.payload.get("value", "")
        if action_id in (ids.RESTORE_OPEN, ids.DELETE_OPEN, ids.APPROVE, ids.REJECT) and not _is_id(
            value
        ):
            self.record(
                actor,
                f"button.{action_id}",
                "denied",
                detail="malformed value",
                answer=error_message("That button carried a value snapbot cannot read."),
            )
        elif action_id == ids.RESTORE_OPEN:
            self.request_restore(actor, int(value), "")
        elif action_id == ids.DELETE_OPEN:
            self.ask_delete(actor, int(value))
        elif action_id == ids.DELETE_CONFIRM:
            if not _is_id(value.partition(":")[0]):
                self.record(actor, "snapshot.delete", "denied", detail="malformed value")
            else:
                self.confirm_delete(actor, value)
        elif action_id == ids.DELETE_CANCEL:
            self.record(
                actor,
                "snapshot.delete_cancelled",
                "ok",
                target=f"snapshot:{value.partition(':')[0]}",
            )
            self.answer(
                actor,
                text_message("Delete cancelled; nothing was changed."),
                replace_original=True,
            )
        elif action_id == ids.APPROVE:
            self.approve(actor, int(value))
        elif action_id == ids.REJECT:
            self.reject(actor, int(value))
        else:
            self.record(
                actor,
                "button.unknown",
                "denied",
                detail=action_id[:100],
                answer=error_message("snapbot does not know that button."),
            )

    # ------------------------------------------------------------------ restores (SPEC §5)

    def request_restore(self, actor: Actor, snapshot_id: int, reason: str) -> None:
        target = f"snapshot:{snapshot_id}"
        if self._refused_in_dm(actor, "restore.request", "request restores", target=target):
            return
        if not self.may_operate(actor):
            self._refuse(
                actor,
                "restore.request",
                "request restores",
                self.settings.snapshot_operators,
                target=target,
            )
            return
        try:
            snap = self.vps.find_snapshot(snapshot_id)
        except VpsError as exc:
            self._provider_failed(actor, "restore.request", exc, target=target)
            return
        try:
            if snap is None:
                raise NotRestorable(describe(VpsNotFound(kind="snapshot", ident=snapshot_id)))
            if not snap.is_completed:
                raise NotRestorable(
                    f"Snapshot {snap.name} is {snap.status}; only a completed snapshot can be "
                    "restored."
                )
        except NotRestorable as exc:
            self.record(
                actor,
                "restore.request",
                "denied",
                target=target,
                detail=str(exc),
                answer=error_message(str(exc)),
            )
            return
        now = self.clock()
        with session_scope(self.engine) as s:
            req = repo.open_restore_request(
                s,
                RestoreRequest(
                    snapshot_id=snap.id,
                    snapshot_name=snap.name,
                    snapshot_created_at=snap.created_at,
                    server_id=snap.server.id,
                    server_name=snap.server.name or str(snap.server.id),
                    requester=actor.user,
                    team=actor.team,
                    channel=actor.channel,
                    reason=reason,
                    state=approval.State.PENDING,
                    required_approvals=self.policy.required_approvals,
                    created_at=now,
                    expires_at=now + self.policy.ttl,
                ),
            )
            if req is None:
                # The unique index refused it: another request holds this snapshot
                # (SPEC 14.2). Its row is committed by now, so this read finds it.
                held = repo.open_request_for_snapshot(s, snapshot_id=snap.id)
                self.audit(
                    s,
                    actor,
                    "restore.request",
                    "denied",
                    target=target,
                    detail=f"request #{held.id} already {held.state}" if held else "already open",
                )
                mid = self.outbox.respond(
                    s,
                    response_url=actor.response_url,
                    channel=actor.channel,
                    user=actor.user,
                    message=request_already_open(held),
                )
            else:
                key = request_key(req.id)
                mid = self.outbox.post(s, actor.channel, restore_request(req, (), now), key=key)
                self.audit(
                    s,
                    actor,
                    "restore.request",
                    "ok",
                    target=f"request:{req.id} snapshot:{snap.id} server:{snap.server.id}",
                    detail=reason,
                )
        if req is None:
            self.outbox.flush([mid])
            return
        (delivery,) = self.outbox.flush([mid])
        if not delivery.sent and not delivery.permanent:
            delivery = self._await_delivery(key, delivery)
        if not delivery.sent and delivery.permanent:
            with session_scope(self.engine) as s:
                repo.transition_request(
                    s,
                    request_id=req.id,
                    from_states=["pending"],
                    to_state="cancelled",
                    decided_at=self.clock(),
                    outcome_detail="could not post the request",
                )
                self.audit(
                    s,
                    actor,
                    "restore.request",
                    "error",
                    target=f"request:{req.id}",
                    detail=delivery.error,
                )
                mid = self.outbox.respond(
                    s,
                    response_url=actor.response_url,
                    channel=actor.channel,
                    user=actor.user,
                    message=error_mrkdwn(cannot_post(delivery.error, actor.channel)),
                )
            self.outbox.flush([mid])
            return
        ts = self.outbox.ts_of(key)
        link = self.permalink(actor.channel, ts)  # a Slack call: never inside a transaction
        with session_scope(self.engine) as s:
            if ts:
                repo.set_request_message(s, request_id=req.id, channel=actor.channel, ts=ts)
            mid = self.notify_incident(
                s,
                request_opened_notice(req, reason, link),
                key=incident_key(req.id, "opened"),
            )
        self.outbox.flush([mid])

    def cancel_unposted_request(self, req: RestoreRequest, error: str) -> None:
        """A request whose channel message Slack refused for good after its requester
        was answered (it was being retried then): nobody can see it, so it is cancelled,
        which frees its snapshot, and the requester and the incident channel are told."""
        with session_scope(self.engine) as s:
            if not repo.transition_request(
                s,
                request_id=req.id,
                from_states=[approval.State.PENDING],
                to_state=approval.State.CANCELLED,
                decided_at=self.clock(),
                outcome_detail=f"could not post the request: {error}"[:500],
            ):
                return
            mids = [
                # A direct message: the channel is where Slack refused to post.
                self.outbox.post(
                    s,
                    req.requester,
                    request_unposted(req, error),
                    key=f"req:{req.id}:unposted:dm",
                ),
                self.notify_incident(
                    s,
                    request_unposted_notice(req, error),
                    key=incident_key(req.id, "unposted"),
                ),
            ]
            system = Actor(user="", channel=req.channel, team=req.team)
            self.audit(
                s, system, "restore.request", "error", target=f"request:{req.id}", detail=error
            )
        self.outbox.flush(mids)

    def _await_delivery(
        self, key: str, first: Delivery, timeout: float = MESSAGE_WAIT_S
    ) -> Delivery:
        """Our own flush may find the message claimed by another thread or process (any
        outbox pump takes due rows) or refused for now. The request needs the outcome:
        its message's ts, or a refusal for good that cancels it. Wait for that."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with session_scope(self.engine, readonly=True) as s:
                state, ts, error = repo.message_outcome(s, key=key)
            if state == "sent":
                return Delivery(True, ts=ts)
            if state == "failed":
                return Delivery(False, error=error, permanent=True)
            time.sleep(0.05)
        return first

    def _request_view(
        self, s, request_id: int, *, lock: bool = False
    ) -> tuple[RestoreRequest | None, frozenset[str]]:
        req = repo.get_restore_request(s, request_id=request_id, lock=lock)
        return req, (repo.approvers_of(s, request_id=request_id) if req else frozenset())

    def _await_posted(self, actor: Actor, request_id: int) -> None:
        """Slack shows a message a moment before its answer (with the ts) reaches the
        bot, and a press may come in that moment: wait until the request's messages
        that the press could be on are sent (or failed), so the binding check below
        sees their ts. Returns at once once they are (the usual case)."""
        keys = [request_key(request_id)]
        if actor.channel and actor.channel == self.settings.incident_channel:
            keys.append(incident_key(request_id, "opened"))
        deadline = time.monotonic() + MESSAGE_WAIT_S
        while True:
            with session_scope(self.engine, readonly=True) as s:
                waiting = [
                    k for k in keys if repo.message_outcome(s, key=k)[0] not in SETTLED_STATES
                ]
            if not waiting or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _pressed_on_request(self, s, actor: Actor, req: RestoreRequest) -> bool:
        """SPEC 14.7: a request's buttons count only on a message snapbot posted for it:
        the request message (its ts is also in the outbox before the request row has
        it), a message in its thread, or its incident notice. A button value naming
        another request, on any other message, decides nothing."""
        if not actor.message_ts or not actor.channel:
            return False
        posted = req.message_ts or repo.message_by_key(s, key=request_key(req.id))[1]
        if (
            posted
            and actor.channel == req.channel
            and posted in (actor.message_ts, actor.thread_ts)
        ):
            return True
        notice = repo.message_by_key(s, key=incident_key(req.id, "opened"))[1]
        return (
            notice is not None
            and actor.channel == self.settings.incident_channel
            and notice in (actor.message_ts, actor.thread_ts)
        )

    def _locked_request(
        self, s, actor: Actor, request_id: int, action: str
    ) -> tuple[RestoreRequest | None, frozenset[str]]:
        """The request, locked for this decider's turn; a click on a request that does
        not exist is audited as denied."""
        req, approvals = self._request_view(s, request_id, lock=True)
        if req is None:
            self.audit(
                s, actor, action, "denied", target=f"request:{request_id}", detail="no such request"
            )
        return req, approvals

    def approve(self, actor: Actor, request_id: int) -> None:
        target = f"request:{request_id}"
        self._await_posted(actor, request_id)
        groups = self.groups.groups_of(actor.user, self.policy.approvers)
        now = self.clock()
        with session_scope(self.engine) as s:
            req, approvals = self._locked_request(s, actor, request_id, "restore.approve")
            if req is None:
                decision = None
            elif not self._pressed_on_request(s, actor, req):
                decision = None
                self.audit(
                    s, actor, "restore.approve", "denied", target=target, detail="not its message"
                )
            else:
                view = _view(req, approvals)
                # The quorum is the one the request was opened with (and shows), even if
                # RESTORE_APPROVALS changed since.
                policy = replace(self.policy, required_approvals=req.required_approvals)
                decision = approval.decide_approval(view, actor.user, policy, now, groups)
                won = False
                if decision.verdict in (approval.Verdict.RECORD, approval.Verdict.APPROVE):
                    # The unique key makes a repeated click count once, even when two
                    # of them race; the conditional update picks the single winner.
                    repo.add_approval(s, request_id=request_id, approver=actor.user, now=now)
                    approvals = repo.approvers_of(s, request_id=request_id)
                    if len(approvals) >= policy.required_approvals:
                        # The row lock means the decision above saw the request as it
                        # is; the conditional update still guarantees a single winner.
                        won = repo.transition_request(
                            s,
                            request_id=request_id,
                            from_states=[approval.State.PENDING],
                            to_state=approval.State.APPROVED,
                            decided_by=actor.user,
                            decided_at=now,
                        )
                        if not won:
                            fresh, approvals = self._request_view(s, request_id)
                            decision = approval.decide_approval(
                                _view(fresh, approvals), actor.user, policy, now, groups
                            )
                self.audit(
                    s,
                    actor,
                    "restore.approve",
                    decision.outcome,
                    target=target,
                    detail=decision.verdict.value,
                )
        if decision is None:
            self.answer(
                actor,
                click_not_on_request(request_id)
                if req is not None
                else error_message(f"Restore request #{request_id} does not exist."),
            )
            return
        if (
            decision.verdict == approval.Verdict.RECORD
            or decision.outcome == "denied"
            or decision.verdict == approval.Verdict.REPEAT
        ):
            self._answer_decision(actor, req, decision)
            if decision.verdict == approval.Verdict.RECORD:
                self._refresh_request(request_id)
            return
        if decision.verdict == approval.Verdict.APPROVE and won:
            link = self.permalink(req.channel, req.message_ts)
            with session_scope(self.engine) as s:
                req, approvals = self._request_view(s, request_id)
                mids = [
                    self._update_request_message(s, req, approvals),
                    self.notify_incident(
                        s,
                        request_approved_notice(req, approvals, link),
                        key=f"incident:req:{req.id}:approved",
                    ),
                ]
            self.outbox.flush(mids)
            self.execute_restore(request_id)

    def _answer_decision(self, actor: Actor, req, decision: approval.Decision) -> None:
        # Ephemeral: the actor alone is told, and the request message stays as it is.
        with session_scope(self.engine) as s:
            mid = self.outbox.queue(
                s,
                "chat.postEphemeral",
                {
                    "channel": req.channel or actor.channel,
                    "user": actor.user,
                    **text_message(
                        decision.message
                        + (
                            self.groups.unread_note(self.policy.approvers)
                            if decision.verdict == approval.Verdict.NOT_APPROVER
                            else ""
                        )
                    ),
                },
            )
        self.outbox.flush([mid])

    def reject(self, actor: Actor, request_id: int) -> None:
        target = f"request:{request_id}"
        self._await_posted(actor, request_id)
        groups = self.groups.groups_of(actor.user, self.policy.approvers)
        now = self.clock()
        with session_scope(self.engine) as s:
            req, approvals = self._locked_request(s, actor, request_id, "restore.reject")
            if req is None:
                decision = None
            elif not self._pressed_on_request(s, actor, req):
                decision = None
                self.audit(
                    s, actor, "restore.reject", "denied", target=target, detail="not its message"
                )
            else:
                view = _view(req, approvals)
                decision = approval.decide_rejection(view, actor.user, self.policy, now, groups)
                if decision.new_state is not None and not repo.transition_request(
                    s,
                    request_id=request_id,
                    from_states=[approval.State.PENDING],
                    to_state=decision.new_state,
                    decided_by=actor.user,
                    decided_at=now,
                ):
                    fresh = repo.get_restore_request(s, request_id=request_id)
                    decision = approval.Decision(
                        approval.Verdict.CLOSED,
                        f"This request was already {fresh.state} by {mention(fresh.decided_by)}.",
                    )
                action = (
                    "restore.cancel"
                    if decision.verdict == approval.Verdict.CANCEL
                    else "restore.reject"
                )
                self.audit(
                    s, actor, action, decision.outcome, target=target, detail=decision.verdict.value
                )
        if decision is None:
            self.answer(
                actor,
                click_not_on_request(request_id)
                if req is not None
                else error_message(f"Restore request #{request_id} does not exist."),
            )
            return
        if decision.new_state is None or decision.outcome == "denied":
            self._answer_decision(actor, req, decision)
            return
        link = self.permalink(req.channel, req.message_ts)
        with session_scope(self.engine) as s:
            req, approvals = self._request_view(s, request_id)
            word = "cancelled by the requester" if req.state == "cancelled" else "rejected"
            mids = [
                self._update_request_message(s, req, approvals),
                self.outbox.post(
                    s,
                    req.channel,
                    request_decided_note(word, actor.user),
                    thread_from=request_key(req.id),
                    key=f"req:{req.id}:thread:{req.state}",
                ),
                self.notify_incident(
                    s,
                    request_decided_notice(req, word, actor.user, link),
                    key=f"incident:req:{req.id}:{req.state}",
                ),
            ]
        self.outbox.flush(mids)

    def _update_request_message(
        self, s, req: RestoreRequest, approvals, *, ended: tuple[str, str] | None = None
    ) -> int | None:
        payload = restore_request(req, approvals, self.clock(), ended=ended)
        # Edits are chained in the order of the request's states (each waits for the one
        # before it), so an older edit that Slack delayed or refused once never lands last.
        state = RESTORE_ENDED if ended is not None else req.state
        key, after = request_edit_keys(req.id, state, len(approvals))
        if req.message_ts:
            return self.outbox.update(
                s, req.channel, payload, ts=req.message_ts, key=key, after=after
            )
        return self.outbox.update(
            s, req.channel, payload, ts_from=request_key(req.id), key=key, after=after
        )

    def show_restore_end(self, s, request_id: int, *, status: str, took: str) -> int | None:
        """The request message shows how its restore ended (SPEC 13.9): the follow-up
        (bot/watcher.py) saw the server leave ``restoring``, or gave up on it
        (``status`` still ``restoring``). Queued in the follow-up's transaction."""
        req, approvals = self._request_view(s, request_id)
        if req is None or req.state != approval.State.SUCCEEDED:
            return None
        return self._update_request_message(s, req, approvals, ended=(status, took))

    def _refresh_request(self, request_id: int) -> None:
        with session_scope(self.engine) as s:
            # Locked: an approval that completes the quorum meanwhile queues its edit
            # after this one, never before.
            req, approvals = self._request_view(s, request_id, lock=True)
            mid = self._update_request_message(s, req, approvals)
        self.outbox.flush([mid])

    def execute_restore(self, request_id: int) -> None:
        """Run an approved restore at most once: re-read the snapshot, win
        ``approved -> executing`` (committed before the provider is called), call."""
        with session_scope(self.engine, readonly=True) as s:
            req = repo.get_restore_request(s, request_id=request_id)
        if req is None or req.state != approval.State.APPROVED:
            return
        system = Actor(user="", channel=req.channel, team=req.team)
        target = f"request:{req.id} snapshot:{req.snapshot_id} server:{req.server_id}"
        try:
            snap = self.vps.find_snapshot(req.snapshot_id, server_id=req.server_id)
        except VpsError as exc:
            self._finish_restore(
                req,
                approval.State.APPROVED,
                approval.State.FAILED,
                f"could not re-read the snapshot: {describe(exc)}",
                system,
                target,
            )
            return
        if snap is None or not snap.is_completed:
            why = (
                "the snapshot is gone"
                if snap is None
                else f"the snapshot is {snap.status}, not completed"
            )
            self._finish_restore(
                req,
                approval.State.APPROVED,
                approval.State.FAILED,
                why + "; nothing was restored",
                system,
                target,
            )
            return
        with session_scope(self.engine) as s:
            won = repo.transition_request(
                s,
                request_id=req.id,
                from_states=[approval.State.APPROVED],
                to_state=approval.State.EXECUTING,
                executing_at=self.clock(),
                executor=self.owner,
            )
        if not won:
            return
        try:
            result = self.vps.restore_snapshot(req.snapshot_id)
        except VpsUnavailable as exc:
            if not exc.nothing_changed:
                self.reconcile_restore(req.id, reason=describe(exc))
                return
            self._finish_restore(
                req,
                approval.State.EXECUTING,
                approval.State.FAILED,
                describe(exc),
                system,
                target,
                provider_call=True,
            )
            return
        except VpsError as exc:
            self._finish_restore(
                req,
                approval.State.EXECUTING,
                approval.State.FAILED,
                describe(exc),
                system,
                target,
                provider_call=True,
            )
            return
        self._finish_restore(
            req,
            approval.State.EXECUTING,
            approval.State.SUCCEEDED,
            result.message or "The provider is restoring the server.",
            system,
            target,
            provider_call=True,
        )

    def _finish_restore(
        self,
        req: RestoreRequest,
        from_state: str,
        to_state: str,
        detail: str,
        actor: Actor,
        target: str,
        *,
        provider_call: bool = False,
    ) -> None:
        now = self.clock()
        link = self.permalink(req.channel, req.message_ts)
        with session_scope(self.engine) as s:
            if not repo.transition_request(
                s,
                request_id=req.id,
                from_states=[from_state],
                to_state=to_state,
                finished_at=now,
                outcome_detail=detail[:500],
            ):
                return
            req, approvals = self._request_view(s, req.id)
            ok = to_state == approval.State.SUCCEEDED
            server_state = None
            mids = [
                self._update_request_message(s, req, approvals),
                self.outbox.post(
                    s,
                    req.channel,
                    restore_outcome_note(to_state, detail),
                    thread_from=request_key(req.id),
                    key=f"req:{req.id}:thread:{to_state}",
                ),
                self.notify_incident(
                    s,
                    restore_outcome_notice(req, to_state, detail, link),
                    key=f"incident:req:{req.id}:{to_state}",
                ),
            ]
            action = "provider.restore" if provider_call else "restore.execute"
            self.audit(s, actor, action, "ok" if ok else "error", target=target, detail=detail)
        self.outbox.flush(mids)
        if ok:
            server_state = self._server_state(req.server_id)
            with session_scope(self.engine) as s:
                if server_state is None:
                    mid = self.outbox.post(
                        s,
                        req.channel,
                        restore_unfollowed_note(RESTORE_USUALLY),
                        thread_from=request_key(req.id),
                        key=f"req:{req.id}:thread:no-follow",
                    )
                else:
                    repo.add_watch(
                        s,
                        Watch(
                            kind="restore",
                            snapshot_id=req.snapshot_id,
                            snapshot_name=req.snapshot_name,
                            server_id=req.server_id,
                            server_name=req.server_name,
                            request_id=req.id,
                            channel=req.channel,
                            parent_ts=request_key(req.id),
                            requester=req.requester,
                            team=req.team,
                            started_at=now,
                            last_status=server_state,
                        ),
                    )
                    mid = None
            self.outbox.flush([mid])
        self.post_checkpoint(reason=f"after restore #{req.id}")

    def _server_state(self, server_id: int) -> str | None:
        try:
            state = self.vps.get_server(server_id)
        except VpsError:
            return "unknown"
        return state.status if state is not None else None

    def reconcile_restore(self, request_id: int, *, reason: str) -> None:
        """An execution whose outcome is unknown: ask the provider, never call again."""
        with session_scope(self.engine, readonly=True) as s:
            req = repo.get_restore_request(s, request_id=request_id)
        if req is None or req.state != approval.State.EXECUTING:
            return
        system = Actor(user="", channel=req.channel, team=req.team)
        target = f"request:{req.id} snapshot:{req.snapshot_id} server:{req.server_id}"
        state = self._server_state(req.server_id)
        if state == "restoring":
            self._finish_restore(
                req,
                approval.State.EXECUTING,
                approval.State.SUCCEEDED,
                f"the server is restoring ({reason}; confirmed from the provider)",
                system,
                target,
            )
        else:
            seen = {
                None: "the provider does not report server status",
                "unknown": "the provider could not be asked",
            }.get(state, f"the server is {state}")
            self._finish_restore(
                req,
                approval.State.EXECUTING,
                approval.State.INTERRUPTED,
                f"{reason}; {seen}, so snapbot cannot tell whether the restore started. It will not retry: "
                "check the server, and open a new request if needed",
                system,
                target,
            )

    # ------------------------------------------------------------------ audit checkpoints

    def post_checkpoint(self, *, reason: str) -> None:
        if not self.settings.incident_channel:
            return
        with session_scope(self.engine) as s:
            count, head = repo.audit_head(s)
            mid = self.notify_incident(
                s, checkpoint_notice(reason, count, head), key=f"checkpoint:{count}:{head[:16]}"
            )
        self.outbox.flush([mid])


def _view(req: RestoreRequest, approvals: frozenset[str]) -> approval.RequestView:
    """The stored request as the pure rules see it."""
    return approval.RequestView(
        state=approval.State(req.state),
        requester=req.requester,
        expires_at=req.expires_at,
        approvals=approvals,
        decided_by=req.decided_by,
    )


def request_key(request_id: int) -> str:
    """Outbox key of a restore request's channel message (threads hang from it)."""
    return f"req:{request_id}:msg"


# The last edit of a request message, after ``succeeded``: how the restore ended.
RESTORE_ENDED = "ended"


def request_edit_keys(request_id: int, state: str, approvals: int) -> tuple[str, str | None]:
    """(key, key of the edit before it) for an edit of the request message showing
    ``state`` with ``approvals`` approvals. States only move forward (core/approval.py),
    so the edit before is known: the last pending one, or the approved one."""

    def key(s: str, n: int) -> str:
        return f"{request_key(request_id)}:edit:{s}:{n}"

    if state == approval.State.PENDING:
        before = key(state, approvals - 1) if approvals > 1 else None
    elif state == approval.State.APPROVED:
        before = key(approval.State.PENDING, approvals - 1)
    elif state in (approval.State.REJECTED, approval.State.CANCELLED, approval.State.EXPIRED):
        before = key(approval.State.PENDING, approvals)
    elif state == RESTORE_ENDED:  # how the started restore ended: after "restoring"
        before = key(approval.State.SUCCEEDED, approvals)
    else:  # executing, succeeded, failed, interrupted: after the approval
        before = key(approval.State.APPROVED, approvals)
    return key(state, approvals), before


def incident_key(request_id: int, event: str) -> str:
    """The outbox key of a request's incident notice; the sent row keeps the notice's ts."""
    return f"incident:req:{request_id}:{event}"


def progress_key(parent_key: str) -> str:
    """Outbox key of the 'being created' edit of a create's channel message; the final
    edit waits for it (bot/outbox.py, ``after``)."""
    return f"{parent_key}:progress"


def _ref_text(server) -> str:
    if server is None:
        return ""
    return str(server.id) if isinstance(server, cmd.ServerId) else server.name


# What each command or button would have done: the action a refusal at the door is
# audited as, so the trail reads the same as for any other denial.
_COMMAND_ACTIONS = {
    cmd.ListSnapshots: "snapshot.list",
    cmd.CreateSnapshot: "snapshot.create",
    cmd.OpenCreateModal: "snapshot.create",
    cmd.RequestRestore: "restore.request",
    cmd.DeleteSnapshot: "snapshot.delete",
    cmd.ShowAudit: "audit.show",
    cmd.ShowPending: "pending.show",
    cmd.Help: "command.help",
    cmd.UsageError: "command.invalid",
}
_BUTTON_ACTIONS = {
    ids.APPROVE: ("restore.approve", "request"),
    ids.REJECT: ("restore.reject", "request"),
    ids.RESTORE_OPEN: ("restore.request", "snapshot"),
    ids.DELETE_OPEN: ("snapshot.delete", "snapshot"),
    ids.DELETE_CONFIRM: ("snapshot.delete", "snapshot"),
    ids.DELETE_CANCEL: ("snapshot.delete_cancelled", "snapshot"),
}


def _attempted(kind: str, payload: dict) -> tuple[str, str]:
    """(audit action, target) of what a request asked for."""
    if kind == "command":
        command = cmd.parse(_text(payload.get("text")))
        target = getattr(command, "snapshot_id", None)
        return (
            _COMMAND_ACTIONS.get(type(command), "command"),
            f"snapshot:{target}" if target is not None else "",
        )
    if kind == "action":
        action, noun = _BUTTON_ACTIONS.get(_text(payload.get("action_id")), ("button.unknown", ""))
        value = _text(payload.get("value")).partition(":")[0]
        return action, f"{noun}:{value}" if noun and _is_id(value) else ""
    return "snapshot.create", ""


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _printable(value: str, limit: int = 64) -> str:
    return (value if value.isprintable() else repr(value)[1:-1])[:limit]


def _is_id(value: str) -> bool:
    return isinstance(value, str) and value.isascii() and value.isdigit() and 0 < len(value) <= 16


__all__ = ["Actor", "Services", "age", "make_slack_client", "request_key", "timedelta"]
