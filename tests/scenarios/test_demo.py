"""`snapbot demo` (the README's first command), the README's quick start as CI runs it,
and the transcript renderer both of them print with."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from slack_sdk import WebClient

from bot.config import ENV_VARS
from snapbot_local.demo import STEPS, Story, play
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import SlackClientSim, slash_command_body
from snapbot_local.stack import SIGNING_SECRET, VPS_TOKEN, LocalStack
from snapbot_local.transcript import Names, UserAction, mark, mrkdwn_to_text, render_channel

ROOT = Path(__file__).resolve().parents[2]
QUICK_START = [
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && snapbot demo",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && pytest",
]


def clean_env() -> dict[str, str]:
    """The environment of a newcomer: no Slack or provider settings, no snapbot config."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "VPS_", "SNAPBOT_")) and k not in ENV_VARS.values()
    }
    # The package may not be installed into this virtualenv: make `-m bot` importable.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def section(out: str, heading: str) -> str:
    """The lines of the transcript under `── #ops ──…`, up to the next heading."""
    found = re.search(rf"^── {re.escape(heading)} ─+\n(.*?)(?=^── |\Z)", out, re.M | re.S)
    assert found, f"no {heading} section in:\n{out}"
    return found.group(1)


# -- the demo as a newcomer runs it ---------------------------------------------------------------


def test_demo_plays_the_whole_incident_from_a_clean_directory_and_exits_zero(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "bot", "demo"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,  # a hang guard for a loaded machine; the demo takes seconds
    )
    out = run.stdout
    assert run.returncode == 0, f"stdout:\n{out}\nstderr:\n{run.stderr}"
    assert not re.search(r"Traceback|\bERROR\b", run.stderr), run.stderr

    # Every step is reported done, none failed.
    assert len(re.findall(r"^✓ \d+\. ", out, re.M)) == len(STEPS)
    assert "✗" not in out
    assert f"demo passed: {len(STEPS)} steps behaved as expected" in out

    ops = section(out, "#ops")
    # The list, shown to alice only, newest first, with its buttons.
    assert "alice: /snapshot list" in ops
    assert ops.index("pre-migration-snapshot") < ops.index("weekly-snapshot-2025-01-08")
    assert "[Restore…] [Delete…]" in ops
    # The create, and its completion threaded under the create message.
    assert re.search(
        r"^snapbot \(edited\): ✅ Snapshot incident-0142-before-restore .* is ready\.\n"
        r"(?:    .*\n)*?    ↳ snapbot: ✅ @alice snapshot incident-0142-before-restore "
        r"\(id `802`\) completed",
        ops,
        re.M,
    ), ops
    # The self-approval refused, to alice only; bob's approval; one restore, followed.
    # The presses are shown under the request they were pressed on, in order.
    # Bob confirms by typing the server's name (a typo refused first); the safety
    # snapshot completes before the one restore starts (SPEC 9).
    assert re.search(
        r"^    • alice: \(presses \[Approve\].*\n"
        r"    • snapbot \(only alice sees this\): You cannot approve your own restore request"
        r"(?:.*\n)*?    • bob: \(presses \[Approve\].*\n"
        r"    • bob: \(types “web-server-1” into the confirmation.*\n"
        r"    • snapbot \(only bob sees this\): That is not the server's name.*\n"
        r"(?:.*\n)*?    • bob: \(types “ web-server-01 ” into the confirmation.*\n"
        r"    ↳ snapbot: 📸 Taking the safety snapshot `pre-restore-r1`.*\n"
        r"(?:.*\n)*?    ↳ snapbot: ✅ Safety snapshot `pre-restore-r1` \(ID `\d+`\) completed"
        r"(?:.*\n)*?    ↳ snapbot: 🔄 Restore started",
        ops,
        re.M,
    ), ops
    assert "Approved by @bob" in ops
    assert ops.count("Restore started") == 1
    assert "safety snapshot `pre-restore-r1` of web-server-01" in ops
    # Undo: a new two-person request for the safety snapshot, withdrawn by alice.
    assert "[Undo…]" in ops
    assert re.search(r"Restore request #2: @alice wants to restore web-server-01", ops), ops
    assert "Reason: undo restore request #1" in ops
    assert re.search(r"^    ↳ snapbot: ✅ @alice web-server-01 has left `restoring`", ops, re.M)
    assert "the provider was called exactly once" in out
    assert "still exactly one restore" in out

    incidents = section(out, "#incidents")
    for notice in ("Restore requested", "approved by @bob", "Restore #1 started", "finished"):
        assert notice in incidents, notice

    # audit verify, in the CLI's own words.
    assert re.search(r"^audit log intact: \d+ rows, head [0-9a-f]{64}$", out, re.M), out
    # Nothing left behind where it ran: the database was a temporary one.
    assert list(tmp_path.iterdir()) == []


def test_keep_running_leaves_a_working_stack_up_until_interrupted(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "demo", "--keep-running"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
    )
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert up.wait(60), "".join(lines)
        urls = dict(re.findall(r"^  (\w[\w ]*?)\s{2,}(\S+)", "".join(lines), re.M))
        events, sim, db = urls["Slack events URL"], urls["provider simulator"], urls["database"]
        assert httpx.get(urls["health check"]).json()["ok"] is True
        listed = httpx.get(sim + "snapshots/", headers={"Authorization": f"Bearer {VPS_TOKEN}"})
        # the two seeded, the demo's own and the safety snapshot of its restore
        assert listed.json()["count"] == 4
        with SlackClientSim(events, SIGNING_SECRET) as slack:
            answer = slack.command("help", user_id="U1")  # answered in the ack itself
            assert answer.status_code == 200 and "/snapshot list" in answer.json()["text"]
            unsigned = slack.post(slash_command_body("help"), bad_signature=True)
            assert unsigned.status_code == 401
        assert db.startswith("sqlite:///") and Path(db.removeprefix("sqlite:///")).exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    out = "".join(lines)
    assert "demo passed" in out and "\nstopped.\n" in out
    assert not re.search(r"Traceback|\bERROR\b", out), out
    assert not Path(db.removeprefix("sqlite:///")).exists()  # the temporary database went too


def test_a_story_that_does_not_behave_is_reported_as_failed_at_its_step(tmp_path):
    # Only carol may create snapshots here, so alice's create is refused and never posted.
    stack = LocalStack(
        database_url=f"sqlite:///{tmp_path / 'demo.db'}",
        create_seconds=1.0,
        restore_seconds=1.0,
        poll_seconds=0.2,
        settings_overrides={"snapshot_operators": frozenset({"UCAROL"})},
    ).start()
    lines: list[str] = []
    try:
        # The demo's own deadlines: the step that must pass (alice's list) gets the time
        # a loaded machine may need, and the failing step waits that long for nothing.
        ok, _ = play(Story(stack, out=lines.append))
    finally:
        stack.stop()
    assert ok is False
    assert lines[0].startswith("✓ 1. alice lists the snapshots")
    assert lines[1] == f"✗ 2. {STEPS[1][0]}: FAILED"
    assert "no message in #ops saying “incident-0142-before-restore”" in lines[2]
    assert not any(line.startswith("✓ 3.") for line in lines)


# -- the README's quick start, as .ci/run reads it ------------------------------------------------


def readme_quick_start() -> list[str]:
    """The first fenced block after '## Quick start', the way .ci/run's awk reads it."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("## Quick start")
    fences = [i for i in range(start, len(lines)) if lines[i].startswith("```")]
    return lines[fences[0] + 1 : fences[1]]


def test_readme_quick_start_is_the_two_commands_ci_runs():
    assert readme_quick_start() == QUICK_START


def test_ci_reads_the_same_quick_start_from_the_readme():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    awk = re.search(r"awk '([^']*)' README\.md", ci)
    assert awk, "the quick start extraction moved in .ci/run"
    run = subprocess.run(
        ["awk", awk.group(1), "README.md"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert run.stdout.splitlines() == QUICK_START


def test_readme_and_env_example_name_every_setting_and_every_command():
    from bot.core.commands import SUBCOMMAND_USAGE

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    for var in [*ENV_VARS.values(), "WEB_CONCURRENCY", "WEB_THREADS"]:
        assert re.search(rf"^\| `{var}` \| ", readme, re.M), f"{var} is not in the README's table"
        assert re.search(rf"^(# )?{var}=", example, re.M), f"{var} is not in .env.example"
    for sub in SUBCOMMAND_USAGE:
        assert f"`/snapshot {sub}" in readme, f"/snapshot {sub} is not in the README"


# -- the transcript renderer ----------------------------------------------------------------------


def test_mrkdwn_is_shown_with_names_links_emoji_and_no_markup():
    names = Names()
    assert mrkdwn_to_text("<@U1> asked <@U2>", names) == "@alice asked @bob"
    assert mrkdwn_to_text("see <#CINCIDENT> and <#C9|war-room>", names) == (
        "see #incidents and #war-room"
    )
    assert mrkdwn_to_text("<https://x.test/p1|View the request>", names) == "View the request ↗"
    assert mrkdwn_to_text(":white_check_mark: *done* _now_ :unknown_emoji:", names) == (
        "✅ done now :unknown_emoji:"
    )
    assert mrkdwn_to_text("a &lt;server&gt; &amp; weekly_snapshot_2", names) == (
        "a <server> & weekly_snapshot_2"
    )
    assert mrkdwn_to_text("<@U77>", names) == "@U77"


def test_channel_transcript_shows_threads_edits_buttons_and_ephemerals_in_order():
    with FakeSlack() as fake:
        client = WebClient(token="xoxb-test", base_url=fake.api_url)
        actions = [UserAction(mark(fake), "C1", "U1", "/snapshot restore 801", {"text": "ok…"})]
        parent = client.chat_postMessage(
            channel="C1",
            text="Restore request #1",
            blocks=[
                {"type": "section", "text": {"type": "mrkdwn", "text": "*Restore* for <@U1>"}},
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": "a",
                            "value": "1",
                            "text": {"type": "plain_text", "text": "Approve"},
                        },
                        {
                            "type": "button",
                            "action_id": "r",
                            "value": "1",
                            "text": {"type": "plain_text", "text": "Reject"},
                        },
                    ],
                },
            ],
        )
        client.chat_postEphemeral(channel="C1", user="U2", text="not for alice")
        actions.append(UserAction(mark(fake), "C1", "U1", "(presses [Approve])", on=parent["ts"]))
        client.chat_postEphemeral(channel="C1", user="U1", text="You cannot approve your own")
        client.chat_postMessage(channel="C1", thread_ts=parent["ts"], text="Restore started")
        client.chat_update(channel="C1", ts=parent["ts"], text="Approved by <@U2>")
        actions.append(UserAction(mark(fake), "C1", "U1", "/snapshot list"))
        client.chat_postEphemeral(channel="C1", user="U1", text="2 snapshot(s)")
        client.chat_postMessage(channel="C1", text="later")

        everyone = render_channel(fake, "C1", actions=actions)
        alone = render_channel(fake, "C1", actions=actions, viewer="U2")
        alice_view = render_channel(fake, "C1", actions=actions, viewer="U1")
        bare = render_channel(fake, "C1")

    # The edit kept the blocks (chat.update without blocks leaves them), the press and
    # the answer only its presser saw sit under the message pressed, the thread reply
    # after them; the rest follows in order.
    assert everyone == [
        "alice: /snapshot restore 801",
        "snapbot (only alice sees this): ok…",
        "snapbot (edited): Restore for @alice",
        "    [Approve] [Reject]",
        "    • alice: (presses [Approve])",
        "    • snapbot (only alice sees this): You cannot approve your own",
        "    ↳ snapbot: Restore started",
        "snapbot (only bob sees this): not for alice",
        "alice: /snapshot list",
        "snapbot (only alice sees this): 2 snapshot(s)",
        "snapbot: later",
    ]
    assert "snapbot (only you): not for alice" in alone
    assert not any("alice sees" in line or "only you): You" in line for line in alone)
    assert "    • snapbot (only you): You cannot approve your own" in alice_view
    assert not any("not for alice" in line for line in alice_view)
    # Without the actions recorded, an answer cannot be tied to a press: it stays in order.
    assert "snapbot (only alice sees this): You cannot approve your own" in bare
