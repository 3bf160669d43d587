"""The `/snapshot` grammar (SPEC section 4): text in, a command value out.

`parse(text)` never raises: it returns one of the command dataclasses below, or a
`UsageError` value whose short one-line `message` is safe to show back to the user
(user input is echoed truncated and without control characters) and whose `usage`
is the usage text for that subcommand. `format_command()` is its inverse:
`parse(format_command(cmd)) == cmd` for every command `parse` can return.

Arguments are split like a shell (`"quoted words"` stay together). Slack delivers the
text HTML-escaped (`&amp;`, `&lt;`, `&gt;`) and may wrap mentions and links in `<...>`;
both pass through untouched: mentions and links fail the ID and name rules, and the
escaped form is what Slack's mrkdwn shows correctly.

Standard library only.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "AUDIT_DEFAULT",
    "AUDIT_MAX",
    "MAX_DESCRIPTION",
    "MAX_ID",
    "MAX_NAME",
    "MAX_TEXT",
    "NAME_RE",
    "SERVER_NAME_RE",
    "SUBCOMMAND_USAGE",
    "USAGE",
    "Command",
    "CreateSnapshot",
    "DeleteSnapshot",
    "Help",
    "ListSnapshots",
    "OpenCreateModal",
    "RequestRestore",
    "ServerId",
    "ServerName",
    "ServerRef",
    "ShowAudit",
    "ShowPending",
    "UsageError",
    "format_command",
    "is_valid_server_name",
    "is_valid_snapshot_name",
    "parse",
    "parse_server",
    "snapshot_name_problem",
]

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # snapshot names (SPEC section 1); use fullmatch
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,63}$")  # use fullmatch
MAX_NAME = 100
MAX_DESCRIPTION = 500  # also the limit for a restore reason
MAX_ID = 2**53  # the largest integer every JSON consumer reads exactly
MAX_TEXT = 4000  # checked before splitting, so huge input costs nothing
AUDIT_DEFAULT = 20
AUDIT_MAX = 1000

SUBCOMMAND_USAGE: Mapping[str, str] = {
    "list": "/snapshot list [server] — snapshots of all servers, or of one",
    "create": (
        "/snapshot create <server> <name> [description…] — take a snapshot "
        "(no arguments: open a form)"
    ),
    "restore": (
        "/snapshot restore <snapshot_id> [reason…] — ask a second person to approve "
        "(--no-safety-snapshot right after the ID: no safety snapshot first)"
    ),
    "delete": "/snapshot delete <snapshot_id> — delete a snapshot, after you confirm",
    "audit": f"/snapshot audit [n] — the last n audit events (default {AUDIT_DEFAULT})",
    "pending": "/snapshot pending — open restore requests and watched snapshots",
    "help": "/snapshot help — this help",
}
USAGE = "\n".join(
    [
        "Usage:",
        *SUBCOMMAND_USAGE.values(),
        "A server is a numeric ID or a name like web-server-01. "
        "Snapshot names use letters, digits, - and _. "
        'Put text with spaces or apostrophes in "double quotes".',
    ]
)


# --- values -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerId:
    id: int


@dataclass(frozen=True, slots=True)
class ServerName:
    """A server given by name; resolved through the `server` objects of `GET snapshots/`."""

    name: str


ServerRef = ServerId | ServerName


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class ListSnapshots:
    server: ServerRef | None = None


@dataclass(frozen=True, slots=True)
class CreateSnapshot:
    server: ServerRef
    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class OpenCreateModal:
    pass


@dataclass(frozen=True, slots=True)
class RequestRestore:
    snapshot_id: int
    reason: str = ""
    # --no-safety-snapshot (SPEC 9.2): restore without taking a safety snapshot first.
    no_safety_snapshot: bool = False


@dataclass(frozen=True, slots=True)
class DeleteSnapshot:
    snapshot_id: int


@dataclass(frozen=True, slots=True)
class ShowAudit:
    limit: int = AUDIT_DEFAULT


@dataclass(frozen=True, slots=True)
class ShowPending:
    pass


@dataclass(frozen=True, slots=True)
class UsageError:
    """Malformed input: a value, not an exception. Equal when the messages are equal."""

    message: str
    usage: str = field(default=USAGE, compare=False)

    @property
    def text(self) -> str:
        """What the user is shown: the problem, then the usage."""
        return f"{self.message}\n{self.usage}"


Command = (
    Help
    | ListSnapshots
    | CreateSnapshot
    | OpenCreateModal
    | RequestRestore
    | DeleteSnapshot
    | ShowAudit
    | ShowPending
)


# --- parsing ------------------------------------------------------------------------

_DIGITS_RE = re.compile(r"[0-9]+")  # [0-9], not \d: "١٢" must not count as 12
# Tabs, line breaks and Unicode spaces (a no-break space typed on a Mac) separate words
# like a plain space; the separators \x1c-\x1f are control characters like the rest.
_SPACE_RE = re.compile(r"[^\S\x1c-\x1f]")
# Directional overrides and isolates can make a reason read differently to the approver.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# macOS and phones turn "…" into “…”; read them as the quotes the user meant. (Single
# curly quotes stay literal: U+2019 is far more often an apostrophe.)
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"'})
_HELP_WORDS = frozenset({"help", "-h", "--help", "?"})


def parse(text: str) -> Command | UsageError:
    """Parse the text after `/snapshot`. Never raises."""
    if not isinstance(text, str):
        return UsageError("the command text is missing")
    if len(text) > MAX_TEXT:
        return UsageError(f"the command is too long (at most {MAX_TEXT} characters)")
    text = _SPACE_RE.sub(" ", text)
    if any(_is_unsafe(ch) for ch in text):
        return UsageError("control characters are not allowed in a command")
    try:
        words = shlex.split(text.translate(_SMART_QUOTES))
    except ValueError as exc:
        if "quotation" in str(exc):
            return UsageError(
                'unbalanced quotes: close every quote, and put an apostrophe in "double quotes"'
            )
        return UsageError("a backslash at the end escapes nothing")
    if not words:
        return Help()

    sub, args = words[0].lower(), words[1:]
    handler = _HANDLERS.get(sub)
    if handler is None:
        if sub in _HELP_WORDS:
            return Help()
        return UsageError(f"unknown subcommand {_echo(words[0])}")
    result = handler(args)
    if isinstance(result, UsageError) and result.usage is USAGE:
        return UsageError(result.message, usage=f"Usage: {SUBCOMMAND_USAGE[sub]}")
    return result


def parse_server(word: str) -> ServerRef | UsageError:
    """A server argument: all ASCII digits -> ServerId, else a valid name -> ServerName."""
    if _DIGITS_RE.fullmatch(word):
        number = _to_id(word)
        if number is None:
            return UsageError(f"server ID {_echo(word)} is out of range")
        return ServerId(number)
    if is_valid_server_name(word):
        return ServerName(word)
    return UsageError(
        f"{_echo(word)} is not a server ID or name "
        "(letters, digits, '.', '-', '_'; at most 63 characters)"
    )


def is_valid_server_name(name: str) -> bool:
    return isinstance(name, str) and SERVER_NAME_RE.fullmatch(name) is not None


def is_valid_snapshot_name(name: str) -> bool:
    return snapshot_name_problem(name) is None


def snapshot_name_problem(name: str) -> str | None:
    """Why `name` is not a valid snapshot name (one short line), or None when it is."""
    if not isinstance(name, str) or not name:
        return "the snapshot name is empty"
    if len(name) > MAX_NAME:
        return f"the snapshot name is too long (at most {MAX_NAME} characters)"
    if not NAME_RE.fullmatch(name):
        return f"snapshot name {_echo(name)} may only use letters, digits, '-' and '_'"
    return None


def _list(args: list[str]) -> Command | UsageError:
    if not args:
        return ListSnapshots()
    if len(args) > 1:
        return UsageError("list takes at most one server")
    server = parse_server(args[0])
    return server if isinstance(server, UsageError) else ListSnapshots(server)


def _create(args: list[str]) -> Command | UsageError:
    if not args:
        return OpenCreateModal()
    if len(args) == 1:
        return UsageError("create needs a server and a snapshot name")
    server = parse_server(args[0])
    if isinstance(server, UsageError):
        return server
    problem = snapshot_name_problem(args[1])
    if problem:
        return UsageError(problem)
    description = _rest(args[2:])
    if len(description) > MAX_DESCRIPTION:
        return UsageError(f"the description is too long (at most {MAX_DESCRIPTION} characters)")
    return CreateSnapshot(server, args[1], description)


def _restore(args: list[str]) -> Command | UsageError:
    if not args:
        return UsageError("restore needs a snapshot ID")
    snapshot_id = _snapshot_id(args[0])
    if isinstance(snapshot_id, UsageError):
        return snapshot_id
    flags = _restore_flags(args[1:])
    if isinstance(flags, UsageError):
        return flags
    no_safety, rest = flags
    reason = _rest(rest)
    if len(reason) > MAX_DESCRIPTION:
        return UsageError(f"the reason is too long (at most {MAX_DESCRIPTION} characters)")
    return RequestRestore(snapshot_id, reason, no_safety)


NO_SAFETY_FLAG = "--no-safety-snapshot"


def _restore_flags(args: list[str]) -> tuple[bool, list[str]] | UsageError:
    """Flags come right after the snapshot ID (SPEC 4); ``--`` ends them, so a reason
    may itself start with ``--``. An unknown flag is refused rather than read as the
    reason: a mistyped ``--no-safety-snapshot`` must not pass unnoticed."""
    no_safety = False
    while args and args[0].startswith("--"):
        flag, args = args[0], args[1:]
        if flag == "--":
            break
        if flag == NO_SAFETY_FLAG:
            no_safety = True
        elif flag == "--break-glass":
            return UsageError("--break-glass is not available in this version")
        else:
            return UsageError(f"unknown option {_echo(flag)}; restore takes {NO_SAFETY_FLAG}")
    return no_safety, args


def _delete(args: list[str]) -> Command | UsageError:
    if len(args) != 1:
        return UsageError(
            "delete needs a snapshot ID" if not args else "delete takes exactly one snapshot ID"
        )
    snapshot_id = _snapshot_id(args[0])
    return snapshot_id if isinstance(snapshot_id, UsageError) else DeleteSnapshot(snapshot_id)


def _audit(args: list[str]) -> Command | UsageError:
    if not args:
        return ShowAudit()
    rule = f"audit takes a number of events from 1 to {AUDIT_MAX}"
    if len(args) > 1:
        return UsageError(rule)
    if not _DIGITS_RE.fullmatch(args[0]):
        return UsageError(f"{rule}, not {_echo(args[0])}")
    limit = _to_id(args[0])
    if limit is None or limit > AUDIT_MAX:
        return UsageError(f"{rule}, not {_echo(args[0])}")
    return ShowAudit(limit)


def _pending(args: list[str]) -> Command | UsageError:
    return UsageError("pending takes no arguments") if args else ShowPending()


def _help(args: list[str]) -> Command | UsageError:
    return Help()


_HANDLERS = {
    "list": _list,
    "create": _create,
    "restore": _restore,
    "delete": _delete,
    "audit": _audit,
    "pending": _pending,
    "help": _help,
}


def _snapshot_id(word: str) -> int | UsageError:
    if not _DIGITS_RE.fullmatch(word):
        return UsageError(f"a snapshot ID is a number like 801, not {_echo(word)}")
    number = _to_id(word)
    if number is None:
        return UsageError(f"snapshot ID {_echo(word)} is out of range")
    return number


def _to_id(digits: str) -> int | None:
    """ASCII digits -> 1..MAX_ID, else None. Cheap however long `digits` is."""
    significant = digits.lstrip("0")
    if not significant or len(significant) > len(str(MAX_ID)):
        return None
    number = int(significant)
    return number if number <= MAX_ID else None


def _rest(words: list[str]) -> str:
    return " ".join(words).strip()


def _is_unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI


def _echo(word: str, limit: int = 40) -> str:
    """User input quoted for a message: printable, one line, at most `limit` characters."""
    cleaned = "".join(ch for ch in word if unicodedata.category(ch) not in _NOT_SHOWN)
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return f"'{cleaned}'"


_NOT_SHOWN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


# --- formatting ---------------------------------------------------------------------


def format_command(command: Command) -> str:
    """The canonical text (after `/snapshot`) that parses back to `command`."""
    match command:
        case Help():
            return "help"
        case ListSnapshots(server=None):
            return "list"
        case ListSnapshots(server=server):
            return f"list {_format_server(server)}"
        case OpenCreateModal():
            return "create"
        case CreateSnapshot(server=server, name=name, description=description):
            text = f"create {_format_server(server)} {shlex.quote(name)}"
            return f"{text} {shlex.quote(description)}" if description else text
        case RequestRestore(snapshot_id=snapshot_id, reason=reason, no_safety_snapshot=no_safety):
            text = f"restore {snapshot_id}" + (f" {NO_SAFETY_FLAG}" if no_safety else "")
            if reason.startswith("--"):
                text += " --"
            return f"{text} {shlex.quote(reason)}" if reason else text
        case DeleteSnapshot(snapshot_id=snapshot_id):
            return f"delete {snapshot_id}"
        case ShowAudit(limit=limit):
            return f"audit {limit}"
        case ShowPending():
            return "pending"
    raise TypeError(f"not a command: {command!r}")


def _format_server(server: ServerRef) -> str:
    return str(server.id) if isinstance(server, ServerId) else shlex.quote(server.name)
