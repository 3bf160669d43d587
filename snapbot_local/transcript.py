"""The fake Slack's state as a person would read it: who said what, threads indented,
buttons shown as `[Approve] [Reject]`, ephemeral messages marked, edits shown as they
now stand, and `<@U1>` written as `@alice`.

`snapbot demo` prints whole channels with `render_channel`; `snapbot shell` prints
what is new since its last look with a `Feed`, numbering each button so that it can
be pressed by number:

    names = Names()
    print("\\n".join(render_channel(fake, "C1", names, actions=actions)))

    feed = Feed(fake, names, channels=("C1", "CINCIDENT"))
    for line in feed.new_lines(viewer="U1"):
        print(line)
    feed.buttons[3]  # -> Button(channel, ts, action_id, value, ...)

Slash commands and button presses are not messages, so Slack keeps no trace of them;
the driver records them as `UserAction`s (with `mark()`, the position in the
conversation at the moment the person acted) and they are woven in.

Standard library only; reads FakeSlack's public accessors.
"""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_CHANNELS",
    "DEFAULT_USERS",
    "Button",
    "Feed",
    "Names",
    "UserAction",
    "buttons_of",
    "mark",
    "mrkdwn_to_text",
    "render_blocks",
    "render_channel",
    "speaker",
]

BOT_NAME = "snapbot"
DEFAULT_USERS: Mapping[str, str] = {
    "U1": "alice",
    "U2": "bob",
    "U3": "carol",
    "U4": "dave",
    "UBOT": BOT_NAME,
}
DEFAULT_CHANNELS: Mapping[str, str] = {"C1": "ops", "CINCIDENT": "incidents"}
WIDTH = 100

# The emoji snapbot uses, as characters; any other :name: stays as typed.
EMOJI: Mapping[str, str] = {
    "white_check_mark": "✅",
    "x": "❌",
    "hourglass": "⌛",
    "hourglass_flowing_sand": "⏳",
    "rotating_light": "🚨",
    "arrows_counterclockwise": "🔄",
    "arrow_forward": "▶",
    "warning": "⚠️",
    "no_entry_sign": "🚫",
    "no_entry": "⛔",
    "lock": "🔒",
    "wastebasket": "🗑",
    "grey_question": "❔",
    "shield": "🛡",
    "eyes": "👀",
    "bangbang": "‼️",
    "camera_with_flash": "📸",
    "leftwards_arrow_with_hook": "↩",
}

_ANGLE = re.compile(r"<([^<>\n]+)>")
_EMOJI = re.compile(r":([a-z0-9_+-]+):")
_BOLD = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_ITALIC = re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])")
_FENCE = re.compile(r"```\n?")


@dataclass
class Names:
    """Slack IDs -> names people recognise; unknown IDs are shown as they are."""

    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    channels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CHANNELS))

    def user(self, user_id: str | None) -> str:
        if not user_id:
            return "someone"
        return self.users.get(user_id, user_id)

    def channel(self, channel_id: str | None) -> str:
        if not channel_id:
            return "#?"
        return "#" + self.channels.get(channel_id, channel_id)

    def user_id(self, name_or_id: str) -> str | None:
        """`bob`, `@bob` or `U2` -> `U2`; a U/W ID nobody named is accepted as is."""
        wanted = name_or_id.strip().lstrip("@")
        for uid, name in self.users.items():
            if wanted in (uid, name) and name != BOT_NAME:
                return uid
        if re.fullmatch(r"[UW][A-Z0-9]{1,20}", wanted):
            return wanted
        return None


@dataclass(frozen=True)
class UserAction:
    """Something a person did that Slack shows no message for: a slash command, a
    button press. `after` is `mark()` taken just before; `ack` is what the app
    answered in the HTTP response itself (Slack shows it to that person only)."""

    after: tuple[int, int]
    channel: str
    user: str
    text: str
    ack: Mapping[str, Any] | None = None
    on: str | None = None  # ts of the message whose button was pressed


@dataclass(frozen=True)
class Button:
    """A button as it was shown; pressed again by (channel, ts) and action_id/value."""

    number: int
    channel: str
    ts: str
    ephemeral: bool
    owner: str | None  # who sees the message; None for a channel message
    action_id: str
    value: str | None
    label: str
    confirm: Mapping[str, Any] | None = None


def _ts_key(ts: str | None) -> tuple[int, int]:
    if not ts:
        return (0, 0)
    seconds, _, micros = str(ts).partition(".")
    try:
        return (int(seconds), int((micros + "000000")[:6]))
    except ValueError:
        return (0, 0)


def mark(fake) -> tuple[int, int]:
    """The newest position in the conversation: an action taken now goes after it."""
    keys = [_ts_key(m.ts) for m in fake.messages()]
    keys += [_ts_key(e.message_ts) for e in fake.ephemerals()]
    return max(keys, default=(0, 0))


# --- text ----------------------------------------------------------------------------------


def mrkdwn_to_text(text: str | None, names: Names) -> str:
    """Slack mrkdwn as plain text: mentions and channels by name, links by their label
    (and ↗),
    emoji as characters, *bold* and _italic_ markers dropped, entities unescaped."""
    if not text:
        return ""

    def angle(m: re.Match[str]) -> str:
        inner = m.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            return "@" + (label or names.user(target[1:]))
        if target.startswith("#"):
            return "#" + label if label else names.channel(target[1:])
        if target.startswith("!subteam^"):
            return "@" + (label.lstrip("@") or target.removeprefix("!subteam^"))
        if target.startswith("!date^"):  # a time in the reader's zone: its fallback here
            return label or target
        if target.startswith("!"):
            return "@" + (label or target[1:])
        return f"{label} ↗" if label else target

    text = _ANGLE.sub(angle, text)
    text = _EMOJI.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), text)
    text = _BOLD.sub(r"\1", text)
    text = _ITALIC.sub(r"\1", text)
    text = _FENCE.sub("", text)
    return html.unescape(text)


def _plain(obj: Any, names: Names) -> str:
    """A text object (plain_text or mrkdwn) as plain text."""
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, Mapping):
        return ""
    if obj.get("type") == "mrkdwn":
        return mrkdwn_to_text(obj.get("text"), names)
    return html.unescape(str(obj.get("text") or ""))


# --- blocks --------------------------------------------------------------------------------

ButtonLabel = Callable[[Mapping[str, Any]], str]


def _button_text(element: Mapping[str, Any], names: Names, label: ButtonLabel | None) -> str:
    text = _plain(element.get("text"), names)
    prefix = label(element) if label else ""
    return f"[{prefix}{text}]"


def _interactive(elements: Iterable[Any]) -> list[Mapping[str, Any]]:
    return [e for e in elements if isinstance(e, Mapping) and "action_id" in e]


def buttons_of(blocks: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """Every interactive element of a message, in the order a person reads them."""
    found: list[Mapping[str, Any]] = []
    for block in blocks or []:
        if block.get("type") == "actions":
            found += _interactive(block.get("elements") or [])
        elif block.get("accessory"):
            found += _interactive([block["accessory"]])
    return found


def render_blocks(
    blocks: Sequence[Mapping[str, Any]] | None,
    text: str | None,
    names: Names,
    *,
    label: ButtonLabel | None = None,
) -> list[str]:
    """The lines a person reads in a message (without wrapping)."""
    if not blocks:
        return mrkdwn_to_text(text, names).splitlines() or [""]
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(_plain(block.get("text"), names).upper())
        elif kind == "section":
            body = _plain(block.get("text"), names)
            fields = [_plain(f, names) for f in block.get("fields") or []]
            if fields:
                body = "\n".join([body, *fields]) if body else "\n".join(fields)
            accessory = block.get("accessory")
            section_lines = body.splitlines() or [""]
            if isinstance(accessory, Mapping) and "action_id" in accessory:
                section_lines[-1] += "  " + _button_text(accessory, names, label)
            lines += section_lines
        elif kind == "context":
            parts = [_plain(e, names) for e in block.get("elements") or []]
            lines += " · ".join(p for p in parts if p).splitlines()
        elif kind == "actions":
            elements = _interactive(block.get("elements") or [])
            if elements:
                lines.append(" ".join(_button_text(e, names, label) for e in elements))
        elif kind == "divider":
            lines.append("─" * 20)
        else:
            lines.append(f"[{kind}]")
    return lines


def _wrap(lines: Iterable[str], first: str, rest: str, width: int) -> list[str]:
    """`first` before the first line, `rest` before the others; long lines wrapped."""
    out: list[str] = []
    for i, line in enumerate(lines):
        lead = first if i == 0 else rest
        if not line.strip():
            out.append(lead.rstrip())
            continue
        out += textwrap.wrap(
            line,
            width=max(width, len(lead) + 20),
            initial_indent=lead,
            subsequent_indent=rest,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [lead.rstrip()]
    return out


def speaker(lines: list[str], who: str, indent: str = "", width: int = WIDTH) -> list[str]:
    """`who: first line`, the other lines indented under it, long lines wrapped."""
    head = f"{indent}{who}: "
    return _wrap(lines, head, indent + " " * 4, width)


def _ephemeral_who(user: str | None, viewer: str | None, names: Names) -> str:
    if viewer is not None and user == viewer:
        return f"{BOT_NAME} (only you)"
    return f"{BOT_NAME} (only {names.user(user)} sees this)"


# --- whole channels ----------------------------------------------------------------------------


def render_channel(
    fake,
    channel: str,
    names: Names | None = None,
    *,
    actions: Sequence[UserAction] = (),
    viewer: str | None = None,
    width: int = WIDTH,
    label: ButtonLabel | None = None,
) -> list[str]:
    """`channel` as it now stands: messages in order (edits in their final state),
    thread replies indented under their parent, the ephemerals (of `viewer` only, when
    given) where they appeared, and the people's own actions woven in. A button press
    is shown under the message it was pressed on, with the answer only its presser saw."""
    names = names or Names()
    Item = tuple[tuple[int, int], int, int, list[str]]
    top: list[tuple[tuple[int, int], int, int, list[str], str | None]] = []  # + message ts
    under: dict[str, list[Item]] = {}
    seq = iter(range(1 << 30))
    messages = fake.messages(channel)
    parents = {_ts_key(m.ts): m.ts for m in messages if not m.is_reply}
    mine = [a for a in actions if a.channel == channel]

    def pressed_on(user: str | None, at: tuple[int, int]) -> str | None:
        """The message whose button `user` pressed last before `at`, if their last
        action was a press: its answer belongs there."""
        before = [a for a in mine if a.user == user and a.after < at]
        last = max(before, key=lambda a: a.after, default=None)
        return last.on if last is not None and _ts_key(last.on) in parents else None

    for m in messages:
        body = render_blocks(m.blocks, m.text, names, label=label)
        if m.is_reply:
            lines = speaker(body, "↳ " + BOT_NAME, "    ", width)
            under.setdefault(m.thread_ts, []).append((_ts_key(m.ts), 0, next(seq), lines))
            continue
        who = BOT_NAME if m.user in ("bot", fake.bot_user_id) else names.user(m.user)
        lines = speaker(body, who + (" (edited)" if m.edited else ""), "", width)
        top.append((_ts_key(m.ts), 0, next(seq), lines, m.ts))
    for e in fake.ephemerals(channel=channel):
        if viewer is not None and e.user != viewer:
            continue
        at = _ts_key(e.message_ts)
        body = render_blocks(e.blocks, e.text, names, label=label)
        who = _ephemeral_who(e.user, viewer, names)
        parent = pressed_on(e.user, at)
        if parent is None:
            top.append((at, 0, next(seq), speaker(body, who, "", width), None))
        else:
            under.setdefault(parent, []).append(
                (at, 0, next(seq), speaker(body, "• " + who, "    ", width))
            )
    for action in mine:
        nested = action.on is not None and _ts_key(action.on) in parents
        indent, bullet = ("    ", "• ") if nested else ("", "")
        lines = speaker([action.text], bullet + names.user(action.user), indent, width)
        if action.ack and (viewer is None or action.user == viewer):
            body = render_blocks(action.ack.get("blocks"), action.ack.get("text"), names)
            who = bullet + _ephemeral_who(action.user, viewer, names)
            lines += speaker(body, who, indent, width)
        if nested:
            under.setdefault(action.on, []).append((action.after, 1, next(seq), lines))
        else:
            top.append((action.after, 1, next(seq), lines, None))
    out: list[str] = []
    for *_, lines, ts in sorted(top, key=lambda i: i[:3]):
        out += lines
        for child in sorted(under.get(ts, []) if ts else [], key=lambda i: i[:3]):
            out += child[3]
    return out


# --- what is new (the shell) ---------------------------------------------------------------


class Feed:
    """Remembers what a viewer has been shown and renders only what is new or changed
    since: new messages, edited ones (shown again as they now stand), thread replies,
    ephemerals to the viewer, modals opened. Buttons get numbers that stay valid."""

    def __init__(
        self,
        fake,
        names: Names | None = None,
        *,
        channels: Sequence[str] = ("C1",),
        home: str = "C1",
        width: int = WIDTH,
    ) -> None:
        self.fake = fake
        self.names = names or Names()
        self.channels = tuple(channels)
        self.home = home
        self.width = width
        self.buttons: dict[int, Button] = {}
        self._numbers: dict[tuple[str, str, str, str | None], int] = {}
        self._seen_messages: dict[tuple[str, str], int] = {}  # (channel, ts) -> versions seen
        self._seen_ephemerals: dict[str, int] = {}  # message_ts -> versions seen
        self._seen_views: dict[str, int] = {}

    def handled_view(self, view) -> None:
        """A modal the caller shows itself (the shell's typed confirmation): not news."""
        self._seen_views[view.id] = len(view.history) + 1

    def pending(self, viewer: str) -> bool:
        """Is there anything this viewer has not been shown yet?"""
        return bool(self._changes(viewer))

    def new_lines(self, viewer: str) -> list[str]:
        out: list[str] = []
        for _, kind, obj, channel in sorted(self._changes(viewer), key=lambda c: c[0]):
            out += self._render(kind, obj, channel, viewer)
        return out

    # --- internals

    def _changes(self, viewer: str) -> list[tuple[tuple[int, int], str, Any, str]]:
        changes = []
        for channel in self.channels:
            for m in self.fake.messages(channel):
                if self._seen_messages.get((channel, m.ts), 0) < len(m.history) + 1:
                    changes.append((_ts_key(m.ts), "message", m, channel))
        for e in self.fake.ephemerals(user=viewer):
            if self._seen_ephemerals.get(e.message_ts, 0) < len(e.history) + 1:
                changes.append((_ts_key(e.message_ts), "ephemeral", e, e.channel or self.home))
        for v in self.fake.views():
            if self._seen_views.get(v.id, 0) < len(v.history) + 1:
                changes.append(((1 << 62, 0), "view", v, self.home))
        return changes

    def _label_for(self, channel: str, ts: str, ephemeral: bool, owner: str | None) -> ButtonLabel:
        def label(element: Mapping[str, Any]) -> str:
            key = (channel, ts, str(element.get("action_id")), element.get("value"))
            number = self._numbers.get(key)
            if number is None:
                number = len(self._numbers) + 1
                self._numbers[key] = number
            self.buttons[number] = Button(
                number=number,
                channel=channel,
                ts=ts,
                ephemeral=ephemeral,
                owner=owner,
                action_id=str(element.get("action_id")),
                value=element.get("value"),
                label=_plain(element.get("text"), self.names),
                confirm=element.get("confirm"),
            )
            return f"{number} "

        return label

    def _where(self, channel: str) -> str:
        return "" if channel == self.home else f"[{self.names.channel(channel)}] "

    def _render(self, kind: str, obj: Any, channel: str, viewer: str) -> list[str]:
        names, width = self.names, self.width
        if kind == "view":
            self._seen_views[obj.id] = len(obj.history) + 1
            title = _plain((obj.view or {}).get("title"), names)
            note = (
                f"opened a form, “{title}” (forms cannot be filled in here: give the "
                "command its arguments instead, see /snapshot help)"
            )
            return speaker([note], BOT_NAME, "", width)
        if kind == "ephemeral":
            self._seen_ephemerals[obj.message_ts] = len(obj.history) + 1
            label = self._label_for(obj.channel or self.home, obj.message_ts, True, obj.user)
            body = render_blocks(obj.blocks, obj.text, names, label=label)
            who = _ephemeral_who(obj.user, viewer, names)
            if obj.history:
                who += " (updated)"
            return speaker(body, self._where(channel) + who, "", width)
        m = obj
        seen = self._seen_messages.get((channel, m.ts), 0)
        self._seen_messages[(channel, m.ts)] = len(m.history) + 1
        label = self._label_for(channel, m.ts, False, None)
        body = render_blocks(m.blocks, m.text, names, label=label)
        who = self._where(channel) + BOT_NAME
        if m.is_reply:
            parent = self.fake.message(channel, m.thread_ts)
            about = _first_line(parent, names) if parent else m.thread_ts
            return speaker(body, f"↳ {who} in the thread of “{about}”", "    ", width)
        if seen:
            who += " edited its message"
        return speaker(body, who, "", width)


def _first_line(message, names: Names, limit: int = 40) -> str:
    lines = render_blocks(message.blocks, message.text, names)
    text = next((line for line in lines if line.strip()), "")
    return text if len(text) <= limit else text[: limit - 1] + "…"
