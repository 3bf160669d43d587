"""bot/core/commands.py: the /snapshot grammar, by example and by property."""

from __future__ import annotations

import string
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.commands import (
    MAX_ID,
    USAGE,
    CreateSnapshot,
    DeleteSnapshot,
    Help,
    ListSnapshots,
    OpenCreateModal,
    RequestRestore,
    ServerId,
    ServerName,
    ShowAudit,
    ShowPending,
    UsageError,
    format_command,
    is_valid_server_name,
    is_valid_snapshot_name,
    parse,
    parse_server,
    snapshot_name_problem,
)

# --- every subcommand -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Help()),
        ("   ", Help()),
        ("help", Help()),
        ("HELP", Help()),
        ("help list", Help()),
        ("--help", Help()),
        ("list", ListSnapshots(None)),
        ("  LIST  ", ListSnapshots(None)),
        ("list web-server-01", ListSnapshots(ServerName("web-server-01"))),
        ("list db.internal_2", ListSnapshots(ServerName("db.internal_2"))),
        ("list 42", ListSnapshots(ServerId(42))),
        ("list 042", ListSnapshots(ServerId(42))),
        ("create", OpenCreateModal()),
        ("Create", OpenCreateModal()),
        (
            "create web-server-01 pre-fix",
            CreateSnapshot(ServerName("web-server-01"), "pre-fix", ""),
        ),
        (
            'create web-server-01 pre-fix "before the fix"',
            CreateSnapshot(ServerName("web-server-01"), "pre-fix", "before the fix"),
        ),
        (
            "create 7 nightly_2025-01-15 before   the\tfix",
            CreateSnapshot(ServerId(7), "nightly_2025-01-15", "before the fix"),
        ),
        (
            "create 7 n 'it''s' \"quoted  spaces\"",
            CreateSnapshot(ServerId(7), "n", "its quoted  spaces"),
        ),
        (
            "create 7 n “smart quotes” too",
            CreateSnapshot(ServerId(7), "n", "smart quotes too"),
        ),
        ("create 7 n fix #123", CreateSnapshot(ServerId(7), "n", "fix #123")),
        ("create 7 n a &amp; b", CreateSnapshot(ServerId(7), "n", "a &amp; b")),
        ("create 7 n 🚀 déjà vu", CreateSnapshot(ServerId(7), "n", "🚀 déjà vu")),
        ("restore 801", RequestRestore(801, "")),
        ("restore 801 bad deploy", RequestRestore(801, "bad deploy")),
        ('restore 801 "it\'s broken"', RequestRestore(801, "it's broken")),
        ("restore 801 it\\'s broken", RequestRestore(801, "it's broken")),
        ("restore 801 <@U123|bob> said so", RequestRestore(801, "<@U123|bob> said so")),
        (f"restore {MAX_ID}", RequestRestore(MAX_ID, "")),
        ("restore 0801", RequestRestore(801, "")),
        ("delete 801", DeleteSnapshot(801)),
        ("DELETE 801", DeleteSnapshot(801)),
        ("audit", ShowAudit(20)),
        ("audit 5", ShowAudit(5)),
        ("audit 1000", ShowAudit(1000)),
        ("audit 1", ShowAudit(1)),
        ("pending", ShowPending()),
        ("list\u00a0web", ListSnapshots(ServerName("web"))),  # a no-break space separates
        ("restore 801\nbecause", RequestRestore(801, "because")),
    ],
)
def test_parses(text: str, expected: object) -> None:
    assert parse(text) == expected


# --- every kind of error ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # unknown subcommands
        ("xyz", "unknown subcommand 'xyz'"),
        ("snapshot list", "unknown subcommand 'snapshot'"),
        ("801", "unknown subcommand '801'"),
        ("x" * 300, "unknown subcommand 'xxxxxxxxxxxx"),
        # quoting
        ('create 7 n "before the fix', "unbalanced quotes"),
        ("restore 801 it's broken", "unbalanced quotes"),
        ("restore 801 oops\\", "backslash"),
        # control characters and other unsafe input
        ("list\x00", "control characters"),
        ("restore 801 \x1b[31mred", "control characters"),
        ("restore 801 \u202eevil", "control characters"),
        ("x" * 4001, "too long"),
        # IDs: ASCII digits only, within 1..2**53
        ("restore ١٢", "not '١٢'"),
        ("restore \uff11\uff12", "snapshot ID"),  # fullwidth digits
        ("restore +5", "not '+5'"),
        ("restore -5", "not '-5'"),
        ("restore 5.0", "not '5.0'"),
        ("restore 0x10", "not '0x10'"),
        ("restore 1e3", "not '1e3'"),
        ("restore 1_000", "not '1_000'"),
        ("restore abc", "not 'abc'"),
        ("restore 0", "out of range"),
        (f"restore {MAX_ID + 1}", "out of range"),
        ("restore " + "9" * 5000, "too long"),
        ("restore " + "9" * 3000, "out of range"),
        ("delete ١٢", "snapshot ID"),
        ("delete 0x10", "snapshot ID"),
        ("delete 0", "out of range"),
        # argument counts
        ("restore", "restore needs a snapshot ID"),
        ("delete", "delete needs a snapshot ID"),
        ("delete 1 2", "exactly one"),
        ("list a b", "at most one server"),
        ("create web-server-01", "create needs a server and a snapshot name"),
        ("pending now", "pending takes no arguments"),
        ("audit 5 6", "audit takes"),
        # servers
        ("list web/server", "not a server ID or name"),
        ("list <@U123|bob>", "not a server ID or name"),
        ("list <http://example.com>", "not a server ID or name"),
        ("list " + "a" * 64, "not a server ID or name"),
        ("list ''", "not a server ID or name"),
        ("list 0", "out of range"),
        ("create web_ü n", "not a server ID or name"),
        ("create 0 n", "out of range"),
        # snapshot names
        ("create 7 pre.fix", "may only use letters, digits, '-' and '_'"),
        ("create 7 'pre fix'", "may only use letters, digits"),
        ("create 7 naïve", "may only use letters, digits"),
        ("create 7 ''", "snapshot name is empty"),
        ("create 7 " + "n" * 101, "too long"),
        # descriptions, reasons and audit sizes
        ("create 7 n " + "d" * 501, "description is too long"),
        ("restore 801 " + "r" * 501, "reason is too long"),
        ("audit 0", "from 1 to 1000"),
        ("audit 1001", "from 1 to 1000"),
        ("audit ten", "from 1 to 1000"),
        ("audit \u0665", "from 1 to 1000"),  # Arabic-Indic five
    ],
)
def test_rejects(text: str, fragment: str) -> None:
    result = parse(text)
    assert isinstance(result, UsageError), result
    assert fragment in result.message
    assert_is_short_line(result.message)


def test_unknown_subcommand_message_is_exact() -> None:
    assert parse("xyz") == UsageError("unknown subcommand 'xyz'")


def test_echoed_input_is_truncated() -> None:
    message = parse("restore " + "z" * 1000).message
    assert len(message) < 100


def test_usage_error_carries_the_usage_of_its_subcommand() -> None:
    error = parse("create web-server-01")
    assert isinstance(error, UsageError)
    assert "/snapshot create <server> <name> [description…]" in error.usage
    assert error.text.startswith("create needs a server and a snapshot name\n")
    unknown = parse("frobnicate")
    assert unknown.usage == USAGE


def test_usage_lists_every_subcommand_as_the_spec_gives_it() -> None:
    for line in (
        "/snapshot list [server]",
        "/snapshot create <server> <name> [description…]",
        "/snapshot restore <snapshot_id> [reason…]",
        "/snapshot delete <snapshot_id>",
        "/snapshot audit [n]",
        "/snapshot pending",
        "/snapshot help",
    ):
        assert line in USAGE


def test_name_and_server_helpers() -> None:
    assert is_valid_snapshot_name("pre-fix_2")
    assert not is_valid_snapshot_name("pre-fix\n")
    assert not is_valid_snapshot_name("a" * 101)
    assert is_valid_snapshot_name("a" * 100)
    assert snapshot_name_problem("ok") is None
    assert is_valid_server_name("web-server-01.example")
    assert not is_valid_server_name("web server")
    assert parse_server("12") == ServerId(12)
    assert parse_server("web") == ServerName("web")
    assert isinstance(parse_server("١٢"), UsageError)


def test_huge_input_is_rejected_fast() -> None:
    # CPU time, not wall time: a loaded machine stretches the latter, never the former.
    started = time.process_time()
    for text in ("list " + "a" * 100_000, '"' * 4000, "restore " + "1" * 3990, "a " * 1999):
        assert isinstance(parse(text), UsageError)
    assert time.process_time() - started < 1.0


# --- properties -------------------------------------------------------------------------

NOT_SHOWN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def assert_is_short_line(message: str) -> None:
    assert len(message) < 200
    assert not any(unicodedata.category(ch) in NOT_SHOWN for ch in message), repr(message)


COMMAND_TYPES = (
    Help,
    ListSnapshots,
    CreateSnapshot,
    OpenCreateModal,
    RequestRestore,
    DeleteSnapshot,
    ShowAudit,
    ShowPending,
)

shell_noise = st.sampled_from(["'", '"', "\\", " ", "\t", "\n", "\x00", "“", "\u202e", "#"])
words = st.sampled_from(["list", "create", "restore", "delete", "audit", "pending", "help"])
any_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10_000),
    st.lists(st.one_of(words, shell_noise, st.text(max_size=8)), max_size=40).map("".join),
    st.tuples(words, st.text(max_size=100)).map(" ".join),
)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_parse_never_raises_and_errors_are_short_lines(text: str) -> None:
    result = parse(text)
    assert isinstance(result, (*COMMAND_TYPES, UsageError))
    if isinstance(result, UsageError):
        assert_is_short_line(result.message)


ids = st.integers(min_value=1, max_value=MAX_ID)
server_names = st.text(
    alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=63
).filter(lambda s: not s.isdigit())
servers = st.one_of(ids.map(ServerId), server_names.map(ServerName))
snapshot_names = st.text(
    alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=100
)
# Free text as parse() leaves it: single spaces between words, nothing unsafe, and no
# “ ” (which parse() reads as quotes).
free_word = st.text(
    alphabet=st.characters(categories=("L", "M", "N", "P", "S"), exclude_characters="\u201c\u201d"),
    min_size=1,
    max_size=12,
)
free_text = st.lists(free_word, max_size=12).map(" ".join).filter(lambda s: len(s) <= 500)

valid_commands = st.one_of(
    st.just(Help()),
    st.builds(ListSnapshots, st.none() | servers),
    st.builds(CreateSnapshot, servers, snapshot_names, free_text),
    st.just(OpenCreateModal()),
    st.builds(RequestRestore, ids, free_text),
    st.builds(DeleteSnapshot, ids),
    st.builds(ShowAudit, st.integers(min_value=1, max_value=1000)),
    st.just(ShowPending()),
)


@settings(max_examples=300, deadline=None)
@given(valid_commands)
def test_every_valid_command_round_trips_through_text(command: object) -> None:
    assert parse(format_command(command)) == command


@settings(max_examples=100, deadline=None)
@given(ids, free_text)
def test_unquoted_reason_is_the_words_joined(snapshot_id: int, reason: str) -> None:
    unquoted = " ".join(word for word in reason.split(" ") if not set(word) & set("'\"\\"))
    assert parse(f"restore {snapshot_id}   {unquoted}  ") == RequestRestore(snapshot_id, unquoted)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_only_ascii_digits_make_an_id(word: str) -> None:
    result = parse_server(word)
    if isinstance(result, ServerId):
        assert word.isascii() and word.isdigit()


@pytest.mark.parametrize("text", ["list \ud800", "restore 801 \udfff", "\ud83d"])
def test_lone_surrogates_from_json_are_rejected(text: str) -> None:
    assert isinstance(parse(text), UsageError)


# --- --no-safety-snapshot (SPEC 4, 9.2) ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("restore 801 --no-safety-snapshot", RequestRestore(801, "", True)),
        ("restore 801 --no-safety-snapshot disk full", RequestRestore(801, "disk full", True)),
        ("restore 801 -- --no-safety-snapshot", RequestRestore(801, "--no-safety-snapshot")),
        (
            "restore 801 bad deploy --no-safety-snapshot",
            RequestRestore(801, "bad deploy --no-safety-snapshot"),
        ),
    ],
)
def test_no_safety_snapshot_flag_comes_right_after_the_id(text, expected) -> None:
    assert parse(text) == expected
    assert parse(format_command(expected)) == expected


@pytest.mark.parametrize("flag", ["--no-safety-snaphot", "--force", "--break-glass"])
def test_an_unknown_or_unavailable_flag_is_refused_not_read_as_the_reason(flag) -> None:
    result = parse(f"restore 801 {flag} because")
    assert isinstance(result, UsageError)
    assert "--" in result.message


@given(
    st.text(st.characters(categories=("L", "N", "P", "S"), include_characters=" "), max_size=60),
    st.booleans(),
)
def test_restore_with_any_reason_and_flag_round_trips(reason, no_safety) -> None:
    expected = RequestRestore(801, reason.strip(), no_safety)
    assert parse(format_command(expected)) == expected
