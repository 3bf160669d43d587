"""Who may do what (SPEC §2, §4, §5), as one table checked over the real app.

Every command and every button, pressed by each of four people, under six
configurations. The people:

* operator  (UOP)   on SNAPSHOT_OPERATORS where that is set
* approver  (UAPP)  on SNAPSHOT_APPROVERS where that is set, and on no other list
* requester (URQ)   an operator who opens the restore requests the others decide on
                    (in one configuration also on SNAPSHOT_APPROVERS)
* neither   (UNONE) on no list

What SPEC says, which is what the table below encodes:

* list, help, audit and pending are open to everyone;
* create, delete and restore requests (commands, the create form, the Restore… and
  Delete… buttons) need SNAPSHOT_OPERATORS, everyone when it is unset;
* a delete is confirmed only by the person it was asked of (and still an operator);
* Approve needs SNAPSHOT_APPROVERS (anyone when unset) and never the requester;
  Reject is open to the approvers and the requester (who cancels);
* Cancel on a delete prompt changes nothing and is open to everyone.

A cell is judged from what the app did, not from what it says: the audit row of the
attempt (a refusal is an ``audit_event`` row with outcome ``denied`` and the reason),
and the effect at the provider and in the database. Every refusal must also tell the
person who may do it instead. Buttons are pressed by people who were never shown
them (a Restore… button copied from the operator's list, a Delete button of the
operator's prompt, a forged prompt), so authorization must happen at the press.

One LocalStack per configuration; the cells of one batch run concurrently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from bot.blocks import ids
from bot.services import door
from bot.services.actors import Actor
from snapbot_local.harness import HANG_GUARD_S
from snapbot_local.slack.signing import (
    block_actions_body,
    button_press_body,
    slash_command_body,
    view_submission_body,
)
from snapbot_local.stack import LocalStack
from storage import repositories as repo
from storage.db import session_scope
from storage.tables import AuditEvent, RestoreRequest
from tests.conftest import wait_until

OP, AP, RQ, NO = "UOP", "UAPP", "URQ", "UNONE"
ROLES = {"operator": OP, "approver": AP, "requester": RQ, "neither": NO}
EVERYONE = frozenset(ROLES)
CHANNEL = "C1"
RESTORE_CALL = "POST snapshots/{id}/restore/"
# The detail of an audit row that records a refusal for want of a right (as opposed
# to a refusal on the merits: a taken name, an open request, a missing snapshot).
AUTHZ_REFUSALS = frozenset(
    {"not an operator", "not the user who asked", "self_approval", "not_approver"}
)


@dataclass(frozen=True)
class Config:
    name: str
    operators: frozenset[str] | None = None
    approvers: frozenset[str] | None = None
    usergroups: dict = field(default_factory=dict)

    def may_operate(self) -> frozenset[str]:
        return EVERYONE if self.operators is None else frozenset({"operator", "requester"})

    def may_approve(self) -> frozenset[str]:
        return EVERYONE - {"requester"} if self.approvers is None else frozenset({"approver"})

    def may_reject(self) -> frozenset[str]:
        return EVERYONE if self.approvers is None else frozenset({"approver", "requester"})

    def who_may_operate(self) -> str:
        """How a refusal names the operators (bot/core/authz.describe_allowed)."""
        if self.operators is None:
            return "everyone"
        return ", ".join(
            [f"<@{u}>" for u in sorted(i for i in self.operators if not i.startswith("S"))]
            + [f"<!subteam^{g}>" for g in sorted(i for i in self.operators if i.startswith("S"))]
        )

    def who_may_approve(self) -> str:
        if self.approvers is None:
            return "Anyone but the requester may approve"
        return ", ".join(
            [f"<@{u}>" for u in sorted(i for i in self.approvers if not i.startswith("S"))]
            + [f"<!subteam^{g}>" for g in sorted(i for i in self.approvers if i.startswith("S"))]
        )


CONFIGS = [
    Config("no lists"),
    Config("operators by user id", operators=frozenset({OP, RQ})),
    Config(
        "operators by user group",
        operators=frozenset({"S0OPS"}),
        usergroups={"S0OPS": [OP, RQ]},
    ),
    Config("approvers by user id", approvers=frozenset({AP})),
    Config(
        "approvers by user group",
        approvers=frozenset({"S0APP"}),
        usergroups={"S0APP": [AP]},
    ),
    # On the list, and still never the approver of their own request.
    Config("approvers include the requester", approvers=frozenset({AP, RQ})),
]


@dataclass(frozen=True)
class Surface:
    """One command or button: who may use it, and how the audit log shows the outcome."""

    may: Callable[[Config], frozenset[str]]
    done: tuple[str, ...]  # audit actions that show the attempt went through
    refusal: str | None  # the audit action of its refusal
    who_may: Callable[[Config], str] | None = None  # what a refusal must name


def _operators(c: Config) -> str:
    return "Who may: " + c.who_may_operate()


MATRIX: dict[str, Surface] = {
    "/snapshot list": Surface(lambda c: EVERYONE, ("snapshot.list",), None),
    "/snapshot help": Surface(lambda c: EVERYONE, ("command.help",), None),
    "/snapshot audit": Surface(lambda c: EVERYONE, ("audit.show",), None),
    "/snapshot pending": Surface(lambda c: EVERYONE, ("pending.show",), None),
    "/snapshot create": Surface(
        Config.may_operate, ("provider.create",), "snapshot.create", _operators
    ),
    "/snapshot create (form)": Surface(
        Config.may_operate, ("snapshot.create_modal",), "snapshot.create", _operators
    ),
    "create form submitted": Surface(
        Config.may_operate, ("snapshot.create",), "snapshot.create", _operators
    ),
    "/snapshot delete": Surface(
        Config.may_operate, ("snapshot.delete_asked",), "snapshot.delete", _operators
    ),
    "/snapshot restore": Surface(
        Config.may_operate, ("restore.request",), "restore.request", _operators
    ),
    "Restore… on the operator's list": Surface(
        Config.may_operate, ("restore.request",), "restore.request", _operators
    ),
    "Delete… on the operator's list": Surface(
        Config.may_operate, ("snapshot.delete_asked",), "snapshot.delete", _operators
    ),
    "Delete on the operator's prompt": Surface(
        lambda c: frozenset({"operator"}),
        ("provider.delete",),
        "snapshot.delete",
        lambda c: "Only the person who asked",
    ),
    "Delete on a prompt of one's own": Surface(
        Config.may_operate, ("provider.delete",), "snapshot.delete", _operators
    ),
    "Cancel on the operator's prompt": Surface(
        lambda c: EVERYONE, ("snapshot.delete_cancelled",), None
    ),
    "Approve": Surface(
        Config.may_approve, ("restore.approve",), "restore.approve", Config.who_may_approve
    ),
    "Reject": Surface(
        Config.may_reject,
        ("restore.reject", "restore.cancel"),
        "restore.reject",
        Config.who_may_approve,
    ),
}


# --- driving the app ------------------------------------------------------------------


class Run:
    """One configuration's stack, and what was observed in it."""

    def __init__(self, stack: LocalStack, config: Config) -> None:
        self.stack = stack
        self.config = config
        self.observed: dict[tuple[str, str], str] = {}
        self.problems: list[str] = []
        self.mark = 0

    # sending -----------------------------------------------------------------------

    def _url(self, tag: str, user: str, message_ts: str | None = None) -> str:
        return self.stack.slack.response_url(tag, channel=CHANNEL, user=user, message_ts=message_ts)

    def command(self, role: str, text: str, tag: str):
        user = ROLES[role]
        body = slash_command_body(
            text,
            user_id=user,
            channel_id=CHANNEL,
            response_url=self._url(f"{tag}|{role}", user),
            trigger_id=self.stack.slack.new_trigger_id(),
        )
        response = self.stack.client.post(body)
        assert response.status_code == 200, (tag, role, response.status_code, response.text)
        return response

    def press(self, role: str, message, action_id: str, tag: str, *, value: str | None = None):
        user = ROLES[role]
        ts = getattr(message, "ts", None) or message.message_ts
        body = button_press_body(
            message,
            action_id,
            value=value,
            user_id=user,
            response_url=self._url(f"{tag}|{role}", user, ts),
            trigger_id=self.stack.slack.new_trigger_id(),
        )
        response = self.stack.client.post(body)
        assert response.status_code == 200, (tag, role, response.status_code, response.text)

    def forge(self, role: str, action_id: str, value: str, tag: str, message_ts: str) -> None:
        """A button the person was never shown (say, a copied payload), pressed anyway."""
        user = ROLES[role]
        body = block_actions_body(
            action_id,
            value,
            user_id=user,
            channel_id=CHANNEL,
            message_ts=message_ts,
            response_url=self._url(f"{tag}|{role}", user, message_ts),
        )
        assert self.stack.client.post(body).status_code == 200

    # observing ---------------------------------------------------------------------

    def settled(self) -> bool:
        with session_scope(self.stack.runtime.engine, readonly=True) as s:
            busy = repo.count_jobs(s, states=("queued", "running"))
            unsent = repo.count_messages(s, state="pending")
        return busy == 0 and unsent == 0

    def wait_settled(self) -> None:
        self.stack.slack.wait_for(self.settled, HANG_GUARD_S, what="the app to finish the batch")

    def audit_since_mark(self) -> list[AuditEvent]:
        with session_scope(self.stack.runtime.engine, readonly=True) as s:
            return list(
                s.execute(
                    select(AuditEvent).where(AuditEvent.id > self.mark).order_by(AuditEvent.id)
                ).scalars()
            )

    def begin_batch(self) -> None:
        with session_scope(self.stack.runtime.engine, readonly=True) as s:
            self.mark = repo.audit_head(s)[0]

    def expect(self, condition: bool, problem: str) -> None:
        """An effect that does not match the verdicts; reported with the whole table."""
        if not condition:
            self.problems.append(problem)

    def answer(self, tag: str, role: str) -> str:
        posts = [p for p in self.stack.slack.responses(f"{tag}|{role}") if p.status == 200]
        return " ".join(str(p.payload.get("text") or "") for p in posts)

    def ephemeral_answers(self, role: str, containing: str) -> str:
        return " ".join(
            e.text or ""
            for e in self.stack.slack.ephemerals(user=ROLES[role])
            if e.source == "chat.postEphemeral" and containing in (e.text or "")
        )

    def judge(self, surface_name: str, role: str, *, answer: str | None = None) -> str:
        """Record the verdict for one cell from this batch's audit rows."""
        surface = MATRIX[surface_name]
        user = ROLES[role]
        rows = [r for r in self.audit_since_mark() if r.actor == user]
        refused = [
            r
            for r in rows
            if r.action == surface.refusal and r.outcome == "denied" and r.detail in AUTHZ_REFUSALS
        ]
        went_through = [
            r
            for r in rows
            if r.action in surface.done
            and not (r.outcome == "denied" and r.detail in AUTHZ_REFUSALS)
        ]
        if refused and not went_through:
            verdict = "denied"
            who = surface.who_may(self.config) if surface.who_may else ""
            if not answer or who not in answer:
                self.problems.append(
                    f"{surface_name} by {role}: refused, but the answer {answer!r} does not "
                    f"say who may ({who!r})"
                )
        elif went_through and not refused:
            verdict = "allowed"
        else:
            verdict = f"unclear: {[(r.action, r.outcome, r.detail) for r in rows]}"
        self.observed[(surface_name, role)] = verdict
        return verdict

    # the provider and the database ----------------------------------------------------

    def snapshot_names(self) -> set[str]:
        return {s["name"] for s in self.stack.sim.state.list_snapshots()["results"]}

    def snapshot_ids(self) -> set[int]:
        return {s["id"] for s in self.stack.sim.state.list_snapshots()["results"]}

    def requests(self) -> list[RestoreRequest]:
        with session_scope(self.stack.runtime.engine, readonly=True) as s:
            return list(s.execute(select(RestoreRequest).order_by(RestoreRequest.id)).scalars())

    def restore_calls(self) -> int:
        return self.stack.sim.state.calls[RESTORE_CALL]


def _request_message(run: Run, request_id: int):
    needle = f"Restore request #{request_id}"
    return run.stack.slack.wait_for(
        lambda: next(
            (
                m
                for m in run.stack.slack.messages(CHANNEL)
                if not m.is_reply and needle in (m.text or "")
            ),
            None,
        ),
        HANG_GUARD_S,
        what=f"the message of {needle}",
    )


def _open_request(run: Run, snapshot_id: int) -> tuple[RestoreRequest, object]:
    """The requester asks for a restore; returns the request and its channel message."""
    before = {r.id for r in run.requests()}
    run.command("requester", f"restore {snapshot_id} matrix", "open")
    req = wait_until(
        lambda: next((r for r in run.requests() if r.id not in before), None),
        10,
        what="the new restore request",
    )
    return req, _request_message(run, req.id)


def _state(run: Run, request_id: int) -> str:
    return next(r.state for r in run.requests() if r.id == request_id)


def _wait_closed(run: Run, request_id: int) -> str:
    """Wait until the request is out of pending/approved/executing (terminal)."""
    return wait_until(
        lambda: (s := _state(run, request_id)) not in ("pending", "approved", "executing") and s,
        10,
        what=f"request #{request_id} to end",
    )


# --- the batches ----------------------------------------------------------------------


def approve_and_reject(run: Run) -> None:
    """Approve and Reject, on requests URQ opens for snapshot 801. Refusals first, all
    on one request; then each permitted press on a request of its own."""
    config = run.config
    first, message = _open_request(run, 801)
    run.begin_batch()
    calls = run.restore_calls()
    refused = [("Approve", r) for r in sorted(EVERYONE - config.may_approve())] + [
        ("Reject", r) for r in sorted(EVERYONE - config.may_reject())
    ]
    for surface, role in refused:
        action = ids.APPROVE if surface == "Approve" else ids.REJECT
        run.press(role, message, action, surface)
    run.wait_settled()
    for surface, role in refused:
        # Refusals of a decision come as chat.postEphemeral, one per press.
        needle = (
            "approve your own"
            if surface == "Approve" and role == "requester"
            else ("You may not approve" if surface == "Approve" else "You may not reject")
        )
        run.judge(surface, role, answer=run.ephemeral_answers(role, needle))
    run.expect(_state(run, first.id) == "pending", "a refused press changed the request")
    run.expect(run.restore_calls() == calls, "a refused press reached the provider")

    pending: tuple | None = (first, message)
    for surface, roles in (("Approve", config.may_approve()), ("Reject", config.may_reject())):
        for role in sorted(roles):
            req, msg = pending or _open_request(run, 801)
            pending = None
            run.begin_batch()
            calls = run.restore_calls()
            run.press(role, msg, ids.APPROVE if surface == "Approve" else ids.REJECT, surface)
            run.wait_settled()
            run.judge(surface, role)
            end = _wait_closed(run, req.id)
            if surface == "Approve":
                run.expect(end in ("succeeded", "failed"), f"approved by {role}, ended {end}")
                run.expect(run.restore_calls() == calls + 1, f"approved by {role}: not 1 call")
            else:
                word = "cancelled" if role == "requester" else "rejected"
                run.expect(end == word, f"rejected by {role}, ended {end}")
                run.expect(run.restore_calls() == calls, f"rejected by {role}: a restore call")


def commands(run: Run, spare: dict[str, int]) -> dict[str, object]:
    """Every command, by everyone at once. Returns the operator's list and prompt."""
    config = run.config
    servers = {"operator": 12345, "approver": 12345, "requester": 12346, "neither": 12347}
    run.begin_batch()
    requests_before = {r.id for r in run.requests()}
    for role in ROLES:
        help_ack = run.command(role, "help", "/snapshot help")
        assert "Usage" in help_ack.text
        run.command(role, "list", "/snapshot list")
        run.command(role, "audit 5", "/snapshot audit")
        run.command(role, "pending", "/snapshot pending")
        run.command(role, f"create {servers[role]} authz-{role} matrix", "/snapshot create")
        run.command(role, "delete 798", "/snapshot delete")
        run.command(role, f"restore {spare[role]} matrix", "/snapshot restore")
    run.wait_settled()
    for surface in (
        "/snapshot list",
        "/snapshot help",
        "/snapshot audit",
        "/snapshot pending",
        "/snapshot create",
        "/snapshot delete",
        "/snapshot restore",
    ):
        for role in ROLES:
            run.judge(surface, role, answer=run.answer(surface, role))
    # The effects match the verdicts: a snapshot per permitted create, a request per
    # permitted restore, nothing for a refused one; a delete is only asked.
    created = {n for n in run.snapshot_names() if n.startswith("authz-")}
    run.expect(created == {f"authz-{r}" for r in config.may_operate()}, f"created {created}")
    opened = {r.requester for r in run.requests() if r.id not in requests_before}
    run.expect(opened == {ROLES[r] for r in config.may_operate()}, f"requests by {opened}")
    run.expect(798 in run.snapshot_ids(), "a delete was only to be asked")
    operator_list = next(
        e
        for e in run.stack.slack.ephemerals(user=OP)
        if e.source == "response_url" and "snapshot(s)" in (e.text or "")
    )
    prompt = next(
        e
        for e in run.stack.slack.ephemerals(user=OP)
        if e.source == "response_url" and (e.text or "").startswith("Delete snapshot")
    )
    return {"list": operator_list, "prompt": prompt}


def _cancel_open_requests(run: Run) -> None:
    """Each requester withdraws what is still open, so its snapshot is free again."""
    for req in run.requests():
        if req.state == "pending":
            role = next(r for r, u in ROLES.items() if u == req.requester)
            run.press(role, _request_message(run, req.id), ids.REJECT, "cleanup")
    run.wait_settled()
    assert all(r.state not in ("pending", "approved", "executing") for r in run.requests())


def buttons(run: Run, seen: dict, spare: dict[str, int]) -> None:
    """The buttons of the operator's list and prompt, pressed by everyone; the create
    form opened and submitted by everyone."""
    config = run.config
    _cancel_open_requests(run)
    run.begin_batch()
    requests_before = {r.id for r in run.requests()}
    for role in ROLES:
        run.press(
            role,
            seen["list"],
            ids.RESTORE_OPEN,
            "Restore… on the operator's list",
            value=str(spare[role]),
        )
        run.press(
            role, seen["list"], ids.DELETE_OPEN, "Delete… on the operator's list", value="798"
        )
        run.press(role, seen["prompt"], ids.DELETE_CANCEL, "Cancel on the operator's prompt")
        run.command(role, "create", "/snapshot create (form)")
    run.wait_settled()
    for surface in (
        "Restore… on the operator's list",
        "Delete… on the operator's list",
        "Cancel on the operator's prompt",
        "/snapshot create (form)",
    ):
        for role in ROLES:
            run.judge(surface, role, answer=run.answer(surface, role))
    opened = {r.requester for r in run.requests() if r.id not in requests_before}
    run.expect(opened == {ROLES[r] for r in config.may_operate()}, f"requests by {opened}")
    forms = [v.view.get("callback_id") for v in run.stack.slack.views()]
    run.expect(forms == [ids.CREATE_MODAL] * len(config.may_operate()), f"forms {forms}")

    # A submitted create form: the name is taken, so a permitted submission is refused
    # on the merits (after the authorization) and nothing is created either way.
    run.begin_batch()
    for role in ROLES:
        run.stack.client.post(
            _view_body(run, ROLES[role], "web-server-01", "pre-migration-snapshot")
        )
    run.wait_settled()
    for role in ROLES:
        answer = run.ephemeral_answers(role, "snapshot")  # no response_url in a form
        verdict = run.judge("create form submitted", role, answer=answer)
        if verdict == "allowed":
            run.expect("already has a snapshot named" in answer, f"form by {role}: {answer}")


def _view_body(run: Run, user: str, server: str, name: str) -> bytes:
    """The form as snapbot opened it for ``user`` in the channel (its sealed metadata)."""
    opener = door.seal_opener(run.stack.deps, Actor(user=user, channel=CHANNEL))
    return view_submission_body(
        ids.CREATE_MODAL,
        {
            ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: server},
            ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: name},
            ids.CREATE_DESCRIPTION_BLOCK: {ids.CREATE_DESCRIPTION_ACTION: None},
        },
        user_id=user,
        private_metadata=opener,
    )


def deletes(run: Run, seen: dict) -> None:
    """The Delete button of the operator's prompt, pressed by everyone; then each person
    confirms a delete of their own (asked for where they may ask, forged where not)."""
    config = run.config
    run.begin_batch()
    for role in ROLES:
        run.press(role, seen["prompt"], ids.DELETE_CONFIRM, "Delete on the operator's prompt")
    run.wait_settled()
    for role in ROLES:
        surface = "Delete on the operator's prompt"
        run.judge(surface, role, answer=run.answer(surface, role))
    run.expect(798 not in run.snapshot_ids(), "the operator's own delete did not happen")

    # Their own snapshots (made by their own create above), where they may operate.
    mine = {
        s["name"].removeprefix("authz-"): s["id"]
        for s in run.stack.sim.state.list_snapshots()["results"]
        if s["name"].startswith("authz-")
    }
    for role in sorted(config.may_operate()):
        run.command(role, f"delete {mine[role]}", "ask")
    run.wait_settled()
    run.begin_batch()
    for role in sorted(config.may_operate()):
        prompt = next(
            e
            for e in run.stack.slack.ephemerals(user=ROLES[role])
            if (e.text or "").startswith("Delete snapshot authz-")
        )
        run.press(role, prompt, ids.DELETE_CONFIRM, "Delete on a prompt of one's own")
    for role in sorted(EVERYONE - config.may_operate()):
        run.forge(
            role,
            ids.DELETE_CONFIRM,
            f"801:{ROLES[role]}",
            "Delete on a prompt of one's own",
            message_ts=f"{time.time():.6f}",
        )
    run.wait_settled()
    for role in ROLES:
        run.judge(
            "Delete on a prompt of one's own",
            role,
            answer=run.answer("Delete on a prompt of one's own", role),
        )
    remaining = run.snapshot_ids()
    run.expect(801 in remaining, "a refused, forged delete reached the provider")
    run.expect(not any(mine[r] in remaining for r in config.may_operate()), "a delete missing")


@pytest.fixture(params=CONFIGS, ids=[c.name for c in CONFIGS])
def run(request, tmp_path):
    config: Config = request.param
    overrides = {}
    if config.operators is not None:
        overrides["snapshot_operators"] = config.operators
    if config.approvers is not None:
        overrides["snapshot_approvers"] = config.approvers
    stack = LocalStack(
        database_url=f"sqlite:///{tmp_path / 'authz.db'}",
        create_seconds=0.3,
        restore_seconds=0.2,
        poll_seconds=0.5,
        settings_overrides=overrides,
    )
    stack.start()
    stack.slack.usergroups = {k: list(v) for k, v in config.usergroups.items()}
    try:
        yield Run(stack, config)
        assert stack.slack.invalid_payloads == []
    finally:
        stack.stop()


def test_every_command_and_button_is_allowed_or_refused_as_spec_says(run):
    config = run.config
    # Completed snapshots for the restore requests, two on each of the other servers.
    state = run.stack.sim.state
    spare = {}
    for role, server in zip(ROLES, (12346, 12346, 12347, 12347), strict=True):
        spare[role] = state.create_snapshot({"server_id": server, "name": f"spare-{role}"})["id"]
    state.advance(1)

    approve_and_reject(run)
    seen = commands(run, spare)
    buttons(run, seen, spare)
    deletes(run, seen)

    expected = {
        (surface, role): "allowed" if role in spec.may(config) else "denied"
        for surface, spec in MATRIX.items()
        for role in ROLES
    }
    assert run.observed == expected
    assert run.problems == []
    # Every refusal left a 'denied' row naming its reason (judge() found one for each).
    with session_scope(run.stack.runtime.engine, readonly=True) as s:
        denied = s.execute(
            select(AuditEvent.actor, AuditEvent.action).where(
                AuditEvent.outcome == "denied", AuditEvent.detail.in_(AUTHZ_REFUSALS)
            )
        ).all()
    refusals = sum(1 for v in expected.values() if v == "denied")
    assert len(denied) >= refusals
