"""`snapbot demo`: an incident, played end to end on the real code paths, offline.

It starts the provider simulator, the loopback Slack stand-in and the real app over
HTTP with a temporary SQLite database (snapbot_local/stack.py), then plays a story
through requests signed exactly as Slack signs them. Every step checks what a person
would see; the first that does not behave stops the demo with exit status 1, so CI
runs it as a smoke test. Then it prints #ops and #incidents as a transcript.

Logs are quiet (warnings only); set SNAPBOT_DEMO_VERBOSE=1 for the app's own logs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from bot.blocks import ids
from bot.config import secret_value
from snapbot_local.slack.signing import button_press_body
from snapbot_local.stack import INCIDENT_CHANNEL, SIGNING_SECRET, LocalStack, settings_from_env
from snapbot_local.transcript import (
    Names,
    UserAction,
    buttons_of,
    mark,
    render_blocks,
    render_channel,
)

# Fast enough for a demo, slow enough to be watched: the provider "takes" 3 s per
# snapshot and per restore, and snapbot polls it twice a second.
CREATE_SECONDS = 3.0
RESTORE_SECONDS = 3.0
POLL_SECONDS = 0.5
ANSWER_TIMEOUT = 15.0  # SPEC §8 promises an answer within 30 s; the simulator is instant
FINISH_TIMEOUT = 20.0  # a create or restore (3 s) plus a few polls

OPS = "C1"
ALICE, BOB = "U1", "U2"
EXTRA_APPROVERS = [f"U{n}" for n in range(3, 3 + 10)]  # carol, dave, then nameless ones
SNAPSHOT_ID = 801
SERVER = "web-server-01"


class StepFailed(Exception):
    """A step did not behave as expected; the message says what was seen instead."""


def local_stack() -> LocalStack:
    """The stack the demo and `snapbot shell` run: free loopback ports, a temporary
    SQLite database, incidents reported to #incidents; RESTORE_APPROVALS and
    APPROVAL_TTL_MINUTES as configured (environment, then .env)."""
    return LocalStack(
        create_seconds=CREATE_SECONDS,
        restore_seconds=RESTORE_SECONDS,
        poll_seconds=POLL_SECONDS,
        safer_restores=True,  # SPEC 9, as in production: a safety snapshot, typed confirmation
        settings_overrides=settings_from_env(),
    )


def quiet_logs() -> None:
    from bot.logs import configure_logging

    verbose = os.environ.get("SNAPBOT_DEMO_VERBOSE", "").strip().lower()
    configure_logging("INFO" if verbose not in ("", "0", "false", "no") else "WARNING")


def ack_body(response) -> dict[str, Any] | None:
    """What the app put in its HTTP answer: Slack shows it to the sender only."""
    if not response.content:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return {"text": response.text}
    return body if isinstance(body, dict) and (body.get("text") or body.get("blocks")) else None


@dataclass
class Story:
    stack: LocalStack
    names: Names = field(default_factory=Names)
    actions: list[UserAction] = field(default_factory=list)
    out: Callable[[str], None] = print
    patience: float = 1.0  # scales every deadline (tests of failing stories shorten them)
    trigger: str = ""  # the trigger_id of the last press (a modal it opens carries it)

    @property
    def fake(self):
        return self.stack.slack

    # --- what people do

    def command(self, user: str, text: str) -> None:
        before = mark(self.fake)
        response = self.stack.user(user, OPS).command(text)
        self._acked(response, f"/snapshot {text}")
        self.actions.append(UserAction(before, OPS, user, f"/snapshot {text}", ack_body(response)))

    def press(self, user: str, message, action_id: str, *, again: bool = False) -> None:
        """Press a button (confirming its dialog, if it has one). ``again``: the second
        click of a double click, a press of its own on the same message."""
        element = next(
            (b for b in buttons_of(message.blocks) if b.get("action_id") == action_id), None
        )
        if element is None:
            raise StepFailed(f"the message has no {action_id} button any more")
        label = element["text"]["text"]
        fake = self.fake
        self.trigger = fake.new_trigger_id()
        body = button_press_body(
            message,
            action_id,
            user_id=user,
            response_url=fake.response_url(
                "button", channel=message.channel, user=user, message_ts=message.ts
            ),
            trigger_id=self.trigger,
        )
        before = mark(fake)
        response = self.stack.client.post(body)
        self._acked(response, f"the {label} button")
        confirm = element.get("confirm")
        said = f"presses [{label}]"
        if confirm:
            said += f" and confirms “{confirm['title']['text']}”"
        if again:
            said += " again: a double click"
        self.actions.append(UserAction(before, message.channel, user, f"({said})", on=message.ts))

    def confirmation(self, user: str):
        """The typed confirmation the last press opened (SPEC 9.3)."""

        def opened():
            return next((v for v in self.fake.views() if v.trigger_id == self.trigger), None)

        return self.wait(opened, f"confirmation opened for {self.names.user(user)}")

    def type_confirmation(self, user: str, view, typed: str, on=None) -> dict:
        """Type ``typed`` into the confirmation and submit it: the ack's answer. ``on``:
        the message whose button opened it (the transcript shows the typing there)."""
        before = mark(self.fake)
        response = self.stack.user(user, OPS).submit(
            ids.RESTORE_CONFIRM_MODAL,
            {ids.RESTORE_CONFIRM_BLOCK: {ids.RESTORE_CONFIRM_ACTION: typed}},
            private_metadata=view.view["private_metadata"],
        )
        self._acked(response, "the confirmation")
        said = f"(types “{typed}” into the confirmation and presses [Approve])"
        answer = response.json() if response.content else {}
        # A refused name stays in the modal, under its input: shown as the ack.
        errors = answer.get("errors") if answer.get("response_action") == "errors" else None
        shown = {"text": " ".join(errors.values())} if errors else None
        self.actions.append(UserAction(before, OPS, user, said, shown, on=getattr(on, "ts", None)))
        return answer

    def approvers(self, request_id: int) -> frozenset[str]:
        from storage import repositories as repo
        from storage.db import session_scope

        with session_scope(self.stack.deps.engine, readonly=True) as s:
            return repo.approvers_of(s, request_id=request_id)

    def _acked(self, response, what: str) -> None:
        if response.status_code != 200:
            raise StepFailed(f"the app answered {what} with HTTP {response.status_code}")

    # --- what people see

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = ANSWER_TIMEOUT):
        timeout *= self.patience
        try:
            return self.fake.wait_for(predicate, timeout, what=what)
        except AssertionError:
            raise StepFailed(f"no {what} within {timeout:g} s") from None

    def settle(self) -> None:
        try:
            self.stack.wait_settled(ANSWER_TIMEOUT * self.patience)
        except AssertionError:
            raise StepFailed(
                f"the app was still busy after {ANSWER_TIMEOUT * self.patience:g} s"
            ) from None

    def text(self, message) -> str:
        return "\n".join(render_blocks(message.blocks, message.text, self.names))

    def ephemeral(self, user: str, needle: str):
        def find():
            return next(
                (e for e in self.fake.ephemerals(user=user) if needle in self.text(e)), None
            )

        return self.wait(find, f"answer to {self.names.user(user)} saying “{needle}”")

    def message(self, needle: str, channel: str = OPS):
        def find():
            return next(
                (
                    m
                    for m in self.fake.messages(channel)
                    if not m.is_reply and needle in self.text(m)
                ),
                None,
            )

        return self.wait(find, f"message in {self.names.channel(channel)} saying “{needle}”")

    def reply(self, parent, needle: str, timeout: float = ANSWER_TIMEOUT):
        def find():
            return next(
                (r for r in self.fake.thread(parent.channel, parent.ts) if needle in self.text(r)),
                None,
            )

        return self.wait(find, f"reply in the thread saying “{needle}”", timeout)

    def now(self, message):
        return self.fake.message(message.channel, message.ts)

    def incidents(self) -> list[str]:
        return [self.text(m) for m in self.fake.messages(INCIDENT_CHANNEL)]

    def transcript(self, channel: str) -> list[str]:
        return render_channel(self.fake, channel, self.names, actions=self.actions)


def expect(condition: object, problem: str) -> None:
    if not condition:
        raise StepFailed(problem)


# --- the story -------------------------------------------------------------------------------


@dataclass
class Memo:
    """What later steps need from earlier ones."""

    request: Any = None
    pressed: Any = None  # the request message as bob saw it when he pressed Approve
    checkpoint: tuple[int, str] | None = None
    audit_line: str = ""


def step_list(story: Story, memo: Memo) -> str:
    story.command(ALICE, "list")
    answer = story.ephemeral(ALICE, "snapshot(s)")
    text = story.text(answer)
    newer, older = text.find("pre-migration-snapshot"), text.find("weekly-snapshot-2025-01-08")
    expect(0 <= newer < older, f"the list is not newest first:\n{text}")
    labels = [b["text"]["text"] for b in buttons_of(answer.blocks)]
    expect(labels.count("Restore…") == 2, f"expected a Restore… button per snapshot, got {labels}")
    return "2 snapshots, newest first, each with [Restore…] [Delete…], shown to alice only"


def step_create(story: Story, memo: Memo) -> str:
    name = "incident-0142-before-restore"
    story.command(ALICE, f"create {SERVER} {name} state of the incident, for the post-mortem")
    parent = story.message(name)
    reply = story.reply(parent, "completed", timeout=FINISH_TIMEOUT)
    expect("<@U1>" in (reply.text or ""), f"the completion does not mention alice: {reply.text}")
    story.wait(lambda: "is ready" in story.text(story.now(parent)), "update of the create message")
    creates = story.stack.sim.state.calls["POST snapshots/"]
    expect(creates == 1, f"the provider was asked to create {creates} times, not once")
    return f"{name} created once; its completion arrived in the thread, mentioning alice"


def step_request(story: Story, memo: Memo) -> str:
    story.command(ALICE, f"restore {SNAPSHOT_ID} deploy 4711 corrupted the orders table")
    request = story.message("Restore request #")
    text = story.text(request)
    labels = [b["text"]["text"] for b in buttons_of(request.blocks)]
    expect(labels == ["Approve", "Reject"], f"expected [Approve] [Reject], got {labels}")
    expect("overwritten" in text, f"the request does not warn that data is overwritten:\n{text}")
    expect(
        "safety snapshot `pre-restore-r1`" in text,
        f"the request does not announce its safety snapshot:\n{text}",
    )
    story.wait(
        lambda: any("Restore requested" in t for t in story.incidents()),
        "notice in #incidents that a restore was requested",
    )
    expect(story.stack.restore_calls == 0, "a restore reached the provider before any approval")
    memo.request = request
    return "the request is in #ops with [Approve] [Reject]; #incidents was told"


def step_self_approval(story: Story, memo: Memo) -> str:
    story.press(ALICE, memo.request, ids.APPROVE)
    story.ephemeral(ALICE, "cannot approve your own")
    story.settle()
    expect(story.stack.restore_calls == 0, "alice's own approval started a restore")
    still = story.now(memo.request)
    labels = [b["text"]["text"] for b in buttons_of(still.blocks)]
    expect(labels == ["Approve", "Reject"], f"the request changed after the refusal: {labels}")
    return "refused, to alice only; nothing restored, the request still waits"


def step_approve(story: Story, memo: Memo) -> str:
    # With RESTORE_APPROVALS above 1, carol (and dave …) approve before bob.
    for user in EXTRA_APPROVERS[: story.stack.settings.restore_approvals - 1]:
        story.press(user, story.now(memo.request), ids.APPROVE)
        story.type_confirmation(user, story.confirmation(user), SERVER, memo.request)
        story.ephemeral(user, "more approval(s) needed")
        expect(story.stack.restore_calls == 0, "a restore started before the last approval")
    memo.pressed = story.now(memo.request)
    story.press(BOB, memo.pressed, ids.APPROVE)
    view = story.confirmation(BOB)
    preview = story.text(SimpleNamespace(blocks=view.view["blocks"], text=""))
    expect(SERVER in preview and "will be overwritten" in preview, f"no preview:\n{preview}")
    answer = story.type_confirmation(BOB, view, "web-server-1", memo.request)  # a typo
    expect(answer.get("response_action") == "errors", f"a wrong name was not refused: {answer}")
    expect(BOB not in story.approvers(1), "the wrong name counted as bob's approval")
    story.type_confirmation(BOB, view, f" {SERVER} ", memo.request)
    story.reply(memo.request, "Taking the safety snapshot `pre-restore-r1`")
    story.reply(memo.request, "Restore started", timeout=FINISH_TIMEOUT)
    thread = [story.text(r) for r in story.fake.thread(memo.request.channel, memo.request.ts)]
    completed = next((i for i, r in enumerate(thread) if "Safety snapshot" in r), None)
    started = next(i for i, r in enumerate(thread) if "Restore started" in r)
    expect(
        completed is not None and completed < started,
        "the restore started before its safety snapshot completed:\n" + "\n".join(thread),
    )
    story.wait(
        lambda: "Approved by @bob" in story.text(story.now(memo.request)),
        "update of the request saying “Approved by @bob”",
    )
    story.settle()
    calls = story.stack.restore_calls
    creates = story.stack.sim.state.calls["POST snapshots/"]
    expect(calls == 1, f"the provider was asked to restore {calls} times, not once")
    expect(creates == 2, f"{creates} creates: the post-mortem one and one safety snapshot")
    return (
        "bob typed a wrong name (refused), then web-server-01; the safety snapshot "
        "pre-restore-r1 completed first; the provider was called exactly once"
    )


def step_double_click(story: Story, memo: Memo) -> str:
    # Slack redelivers only Events API deliveries; what reaches a bot twice from a
    # button is a person's double click: a second press, a body of its own, on the
    # message as it was when they clicked.
    story.press(BOB, memo.pressed, ids.APPROVE, again=True)
    story.ephemeral(BOB, "already approved")
    story.settle()
    calls = story.stack.restore_calls
    expect(calls == 1, f"the second click restored again ({calls} calls)")
    return "told it is already approved; still exactly one restore"


def step_follow(story: Story, memo: Memo) -> str:
    story.reply(memo.request, "has left `restoring`", timeout=FINISH_TIMEOUT)
    calls = story.stack.restore_calls
    expect(calls == 1, f"{calls} restore calls")
    return f"{SERVER} left `restoring`; the thread says the restore is finished"


def step_undo(story: Story, memo: Memo) -> str:
    finished = story.wait(
        lambda: (m := story.now(memo.request)) is not None and "Undo…" in story.text(m) and m,
        "an Undo… button on the finished restore",
    )
    expect("pre-restore-r1" in story.text(finished), "the finished restore does not name it")
    story.press(ALICE, finished, ids.UNDO)
    undo = story.message("Restore request #2")
    expect("undo restore request #1" in story.text(undo), f"not an undo:\n{story.text(undo)}")
    labels = [b["text"]["text"] for b in buttons_of(undo.blocks)]
    expect(labels == ["Approve", "Reject"], f"expected [Approve] [Reject], got {labels}")
    story.press(ALICE, undo, ids.REJECT)  # the server is fine: alice withdraws it
    story.wait(
        lambda: "Cancelled by the requester" in story.text(story.now(undo)),
        "update of request #2 saying it was cancelled",
    )
    story.settle()
    calls = story.stack.restore_calls
    expect(calls == 1, f"{calls} restore calls: the undo request restored without approval")
    return "a new two-person request #2 for pre-restore-r1; alice withdrew it, nothing restored"


def step_incidents(story: Story, memo: Memo) -> str:
    wanted = ["Restore requested", "approved by @bob", "Restore #1 started", "finished"]

    def all_there():
        texts = story.incidents()
        return all(any(w in t for t in texts) for w in wanted) and any(
            "Audit checkpoint" in t for t in texts
        )

    story.wait(all_there, "notices in #incidents: " + ", ".join(wanted) + ", a checkpoint")
    text = next(t for t in story.incidents() if "Audit checkpoint" in t)
    found = re.search(r"(\d+):([0-9a-f]{64})", text)
    expect(found, f"the checkpoint carries no COUNT:HASH: {text}")
    memo.checkpoint = (int(found.group(1)), found.group(2))
    return "requested, approved, started, finished, and an audit checkpoint"


def step_audit(story: Story, memo: Memo) -> str:
    from bot.audit_tools import verify

    story.settle()
    key = secret_value(story.stack.settings.audit_key)
    engine = story.stack.runtime.engine
    result = verify(engine, key.encode() if key else None)
    expect(result.ok, f"audit verify: broken at row {getattr(result.broken, 'row_id', '?')}")
    memo.audit_line = f"audit log intact: {result.rows} rows, head {result.head_hash}"
    extends = verify(engine, key.encode() if key else None, checkpoint=memo.checkpoint)
    expect(extends.ok, "audit verify --checkpoint: the log does not extend the posted checkpoint")
    return f"{result.rows} rows chained; the log extends the checkpoint posted to #incidents"


def step_block_kit(story: Story, memo: Memo) -> str:
    bad = story.fake.invalid_payloads
    expect(not bad, f"Slack would have refused {len(bad)} payload(s): {bad[:1]}")
    return f"all {len(story.fake.calls())} Slack API calls carried valid Block Kit"


STEPS: list[tuple[str, Callable[[Story, Memo], str]]] = [
    ("alice lists the snapshots", step_list),
    ("alice snapshots the broken server first, for the post-mortem", step_create),
    ("alice asks to restore web-server-01 from snapshot 801", step_request),
    ("alice tries to approve her own request", step_self_approval),
    ("bob approves, typing the server's name", step_approve),
    ("bob's click arrives twice (a double click)", step_double_click),
    ("snapbot follows the restore in its thread", step_follow),
    ("alice tries Undo… on the finished restore", step_undo),
    ("#incidents heard about every turn", step_incidents),
    ("audit verify", step_audit),
    ("Slack would accept every message", step_block_kit),
]


# --- running it ------------------------------------------------------------------------------


def play(story: Story) -> tuple[bool, Memo]:
    memo = Memo()
    out = story.out
    for number, (name, run) in enumerate(STEPS, 1):
        try:
            seen = run(story, memo)
        except StepFailed as exc:
            out(f"✗ {number}. {name}: FAILED")
            for line in str(exc).splitlines():
                out(f"     {line}")
            return False, memo
        out(f"✓ {number}. {name}: {seen}")
    return True, memo


def print_transcript(story: Story) -> None:
    out = story.out
    for channel in (OPS, INCIDENT_CHANNEL):
        out("")
        out(f"── {story.names.channel(channel)} " + "─" * 60)
        for line in story.transcript(channel):
            out(line)


def run_demo(keep_running: bool = False) -> int:
    _utf8_stdout()
    quiet_logs()
    started = time.monotonic()
    out = _printer()
    out("snapbot demo: an incident, played on the real app against a provider simulator and")
    out(
        "a local Slack stand-in. Requests are signed as Slack signs them; nothing leaves this machine."
    )
    out("")
    try:
        stack = local_stack().start()
    except Exception as exc:  # e.g. no free port: say so plainly
        out(f"✗ could not start the local stack: {type(exc).__name__}: {exc}")
        return 1
    story = Story(stack, out=out)
    ok = False
    try:
        ok, memo = play(story)
        print_transcript(story)
        out("")
        if ok:
            out(memo.audit_line)
            out(
                f"demo passed: {len(STEPS)} steps behaved as expected in "
                f"{time.monotonic() - started:.1f} s"
            )
        else:
            out("demo FAILED: a step did not behave as expected (see ✗ above)")
            if os.environ.get("SNAPBOT_DEMO_VERBOSE"):
                out(story.fake.dump())
        if keep_running:
            _keep_running(stack, out)
    except KeyboardInterrupt:
        out("\ninterrupted.")
        return 130
    finally:
        stack.stop()
    return 0 if ok else 1


def _keep_running(stack: LocalStack, out: Callable[[str], None]) -> None:
    base = stack.url.rsplit("/slack/events", 1)[0]
    rows = [
        ("Slack events URL", f"{stack.url}   (signing secret {SIGNING_SECRET})"),
        ("health check", f"{base}/healthz"),
        (
            "provider simulator",
            f"{stack.sim.url}   (token {secret_value(stack.settings.vps_api_token)})",
        ),
        ("fake Slack Web API", stack.slack.api_url),
        ("database", stack.database_url),
        (
            "audit",
            f"DATABASE_URL={stack.database_url} AUDIT_KEY={secret_value(stack.settings.audit_key)} "
            "snapbot audit verify",
        ),
    ]
    out("")
    out("The stack stays up:")
    for label, value in rows:
        out(f"  {label:<20}{value}")
    out(
        "Send it signed requests with snapbot_local.slack.signing.SlackClientSim(URL, secret); "
        "the transcript above is the fake Slack's state."
    )
    out("Ctrl-C (or SIGTERM) stops it and deletes the database.")
    stop = threading.Event()
    # Ctrl-C and SIGTERM both end it, even where SIGINT was ignored (a `cmd &` of a script).
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out("stopped.")


def _printer() -> Callable[[str], None]:
    def out(line: str) -> None:
        print(line, flush=True)

    return out


def _utf8_stdout() -> None:
    # The transcript has emoji and box lines: never die on a narrow terminal encoding.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")


__all__ = ["STEPS", "Story", "local_stack", "run_demo"]
