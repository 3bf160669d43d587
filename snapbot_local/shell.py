"""`snapbot shell`: chat with snapbot locally, in the spirit of Errbot's text backend
and Hubot's shell adapter.

The same stack as `snapbot demo` (provider simulator, loopback Slack stand-in, the
real app over HTTP, a temporary SQLite database). What you type is sent as Slack
sends it, signed, as the current user in #ops; what the app posts is read back from
the Slack stand-in and printed, buttons numbered:

    alice@#ops> /snapshot restore 801 bad deploy
    snapbot: 🚨 Restore request #1: @alice wants to restore web-server-01 …
        [5 Approve] [6 Reject]
    alice@#ops> /as bob
    bob@#ops> 5

Answers arrive after the app's acknowledgement, so each command waits (with a
deadline) until the app has finished with it; later news (a snapshot completing, a
restore finishing) is shown before the next prompt, or by `/wait`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from bot.blocks import ids
from snapbot_local.demo import ack_body, local_stack, quiet_logs
from snapbot_local.slack.signing import find_button
from snapbot_local.stack import INCIDENT_CHANNEL, LocalStack, SlackUser
from snapbot_local.transcript import BOT_NAME, Feed, Names, render_blocks, speaker

OPS = "C1"
ANSWER_TIMEOUT = 15.0
DEFAULT_WAIT = 10.0
MAX_WAIT = 120.0
MAX_CONFIRM_TRIES = 3  # wrong names typed into a confirmation before the shell closes it

HELP = """\
Type a slash command as the current user, e.g.
  /snapshot list                 /snapshot create web-server-01 before-fix
  /snapshot restore 801 reason   /snapshot pending      /snapshot audit 5
Shell commands:
  /press N  (or just N)   press button N as the current user (Approve asks you to type
                          the server's name, as Slack's confirmation does)
  /as USER                become someone else: a name or an ID ({users})
  /wait [SECONDS] [for TEXT]
                          wait for news, e.g. a snapshot completing (default {wait:g} s);
                          with "for TEXT", until news saying TEXT arrives
  /help                   this help
  /quit                   leave (so does Ctrl-D)
The provider simulator takes 3 s per snapshot and per restore."""


class Shell:
    def __init__(
        self,
        stack: LocalStack,
        user: str,
        *,
        names: Names | None = None,
        read: Callable[[str], str | None],
        out: Callable[[str], None],
        width: int = 100,
    ) -> None:
        self.stack = stack
        self.names = names or Names()
        self.user = user
        self.read = read
        self.out = out
        self.feed = Feed(
            stack.slack, self.names, channels=(OPS, INCIDENT_CHANNEL), home=OPS, width=width
        )

    @property
    def prompt(self) -> str:
        return f"{self.names.user(self.user)}@{self.names.channel(OPS)}> "

    def loop(self) -> int:
        while True:
            self.show_news()
            line = self.read(self.prompt)
            if line is None:
                self.out("")
                return 0
            if not self.handle(line.strip()):
                return 0

    # --- one line

    def handle(self, line: str) -> bool:
        """Act on one line; False when the shell should end."""
        if not line:
            return True
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "/snapshot":
            self.command(rest)
        elif word.isdigit():
            self.press(word)
        elif word == "/press":
            self.press(rest)
        elif word == "/as":
            self.become(rest)
        elif word == "/wait":
            self.wait(rest)
        elif word in ("/help", "/?"):
            users = ", ".join(f"{n} ({u})" for u, n in self.names.users.items() if n != BOT_NAME)
            self.out(HELP.format(users=users, wait=DEFAULT_WAIT))
        elif word in ("/quit", "/exit"):
            return False
        elif word.startswith("/"):
            self.out(f"Unknown command {word}: snapbot answers /snapshot; /help lists the rest.")
        else:
            self.out(
                "(snapbot only listens to /snapshot commands; /help lists what the shell knows)"
            )
        return True

    def command(self, text: str) -> None:
        response = SlackUser(self.stack, self.user, OPS).command(text)
        if response.status_code != 200:
            self.out(f"(the app answered HTTP {response.status_code})")
            return
        ack = ack_body(response)
        if ack:
            body = render_blocks(ack.get("blocks"), ack.get("text"), self.names)
            self.say(body, f"{BOT_NAME} (only you)")
        self.settle()

    def press(self, number: str) -> None:
        if not number.isdigit():
            self.out("Usage: /press N, where N is a button's number, e.g. [5 Approve] -> /press 5")
            return
        button = self.feed.buttons.get(int(number))
        if button is None:
            self.out(f"There is no button {number}.")
            return
        if button.ephemeral and button.owner != self.user:
            owner = self.names.user(button.owner)
            self.out(f"Button {number} is on a message only {owner} sees; /as {owner} first.")
            return
        message = self._message_of(button)
        if message is None:
            self.out(f"The message with button {number} is gone.")
            return
        try:
            find_button(message.blocks, button.action_id, value=button.value)
        except LookupError:
            self.out(f"Button {number} ([{button.label}]) is no longer on that message.")
            return
        if button.confirm and not self.confirmed(button.confirm):
            self.out("Not pressed.")
            return
        seen = {v.id for v in self.stack.slack.views()}
        response = SlackUser(self.stack, self.user, button.channel).press(
            message, button.action_id, value=button.value
        )
        if response.status_code != 200:
            self.out(f"(the app answered HTTP {response.status_code})")
            return
        opened = [
            v
            for v in self.stack.slack.views()
            if v.id not in seen and v.view.get("callback_id") == ids.RESTORE_CONFIRM_MODAL
        ]
        if opened:
            self.feed.handled_view(opened[-1])
            self.confirm(opened[-1].view)
        self.settle()

    def confirm(self, view: dict) -> None:
        """The typed confirmation (SPEC 9.3): shown as a box; what is typed is submitted
        as the modal's text input, until snapbot accepts it or nothing is typed."""
        title = (view.get("title") or {}).get("text", "")
        self.out(f"  ┏ {title}")
        for line in render_blocks(view.get("blocks"), None, self.names):
            self.out(f"  ┃ {line}")
        for _ in range(MAX_CONFIRM_TRIES):
            typed = self.read("  ┗ type the server's name to approve (empty: close): ")
            if not (typed or "").strip():
                self.out("Closed; nothing approved.")
                return
            response = SlackUser(self.stack, self.user, OPS).submit(
                ids.RESTORE_CONFIRM_MODAL,
                {ids.RESTORE_CONFIRM_BLOCK: {ids.RESTORE_CONFIRM_ACTION: typed.rstrip("\n")}},
                private_metadata=view.get("private_metadata", ""),
            )
            answer = response.json() if response.content else {}
            if answer.get("response_action") == "errors":
                for error in answer.get("errors", {}).values():
                    self.out(f"  ┃ ⚠ {error}")
                continue
            if answer.get("response_action") == "update":
                for line in render_blocks(answer["view"].get("blocks"), None, self.names):
                    self.out(f"  ┃ {line}")
            return
        self.out("Closed; nothing approved.")

    def confirmed(self, confirm) -> bool:
        """Slack asks before sending a button that carries a confirm dialog; so do we."""

        def text(key: str) -> str:
            return "\n".join(render_blocks(None, (confirm.get(key) or {}).get("text"), self.names))

        self.out(f"  ┌ {text('title')}")
        for line in text("text").splitlines():
            self.out(f"  │ {line}")
        answer = self.read(f"  └ [{text('confirm')}] or [{text('deny')}]? (y/N) ")
        return (answer or "").strip().lower() in ("y", "yes")

    def become(self, who: str) -> None:
        user = self.names.user_id(who) if who else None
        if user is None:
            known = ", ".join(n for n in self.names.users.values() if n != BOT_NAME)
            self.out(f"Who is {who or '?'}? Try one of {known}, or a Slack user ID like U7.")
            return
        self.user = user
        self.out(f"You are now {self.names.user(user)} ({user}).")

    def wait(self, args: str) -> None:
        """``/wait [SECONDS] [for TEXT]``: until there is news (or, with ``for``, until
        news saying TEXT has been shown), at most SECONDS."""
        seconds, _, needle = args.partition("for ")
        needle = needle.strip()
        try:
            limit = min(float(seconds), MAX_WAIT) if seconds.strip() else DEFAULT_WAIT
        except ValueError:
            self.out("Usage: /wait [SECONDS] [for TEXT]")
            return
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            try:
                self.stack.slack.wait_for(lambda: self.feed.pending(self.user), max(left, 0.01))
            except AssertionError:
                said = f"nothing saying “{needle}”" if needle else "nothing new"
                self.out(f"({said} in {limit:g} s)")
                return
            shown = self.settle()
            if not needle or any(needle in line for line in shown):
                return

    # --- output

    def settle(self) -> list[str]:
        """Wait until the app has done what it was asked (answers come after the ack);
        the news shown."""
        try:
            self.stack.wait_settled(ANSWER_TIMEOUT)
        except AssertionError:
            self.out(f"(the app is still working after {ANSWER_TIMEOUT:g} s; /wait for more)")
        return self.show_news()

    def show_news(self) -> list[str]:
        lines = self.feed.new_lines(self.user)
        for line in lines:
            self.out(line)
        return lines

    def say(self, lines: list[str], who: str) -> None:
        for line in speaker(lines, who, width=self.feed.width):
            self.out(line)

    def _message_of(self, button):
        fake = self.stack.slack
        if button.ephemeral:
            return next(
                (e for e in fake.ephemerals(user=button.owner) if e.message_ts == button.ts), None
            )
        return fake.message(button.channel, button.ts)


def _reader(stdin: TextIO, out: Callable[[str], None]) -> Callable[[str], str | None]:
    """input() with line editing on a terminal; on a pipe, the line is echoed after the
    prompt so that the output reads as a conversation."""
    if stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()

        def read_tty(prompt: str) -> str | None:
            try:
                return input(prompt)
            except EOFError:
                return None

        return read_tty

    def read_pipe(prompt: str) -> str | None:
        line = stdin.readline()
        if not line:
            return None
        out(prompt + line.rstrip("\n"))
        return line

    return read_pipe


def run_shell(user: str = "U1") -> int:
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")
    names = Names()
    user_id = names.user_id(user)
    if user_id is None:
        print(f"snapbot shell: --user must be a Slack user ID like U1 or a name ({user!r})")
        return 2

    def out(line: str) -> None:
        print(line, flush=True)

    quiet_logs()
    try:
        stack = local_stack().start()
    except Exception as exc:
        out(f"snapbot shell: could not start the local stack: {type(exc).__name__}: {exc}")
        return 1
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    shell = Shell(stack, user_id, names=names, read=_reader(sys.stdin, out), out=out, width=width)
    out(
        f"snapbot shell: you are {names.user(user_id)} ({user_id}) in #ops, talking to the real app "
        "over a local Slack stand-in and a provider simulator."
    )
    out("Try /snapshot list; /help for the shell's commands, /quit to leave.")
    try:
        return shell.loop()
    except KeyboardInterrupt:
        out("")
        return 0
    finally:
        stack.stop()


__all__ = ["HELP", "Shell", "run_shell"]
