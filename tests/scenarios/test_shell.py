"""`snapbot shell`, driven as a person would through its stdin, in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys

from snapbot_local.shell import run_shell
from tests.scenarios.test_demo import clean_env


def shell(
    tmp_path, *lines: str, user: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "bot", "shell"] + (["--user", user] if user else [])
    return subprocess.run(
        argv,
        input="".join(line + "\n" for line in lines),
        cwd=tmp_path,
        env={**clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,  # a hang guard: each /wait returns as soon as its answer is in
    )


def after(out: str, prompt_line: str) -> str:
    """What the shell printed after `prompt_line` (a prompt with its echoed input),
    up to the next prompt."""
    start = out.index(prompt_line + "\n") + len(prompt_line) + 1
    following = re.search(r"^\w+@#ops> ", out[start:], re.M)
    return out[start : start + following.start()] if following else out[start:]


def flat(text: str) -> str:
    """Lines joined, so that a phrase the shell wrapped is found whole."""
    return " ".join(text.split())


def test_restore_requested_refused_to_the_requester_then_approved_by_bob_in_the_shell(tmp_path):
    run = shell(
        tmp_path,
        "/snapshot list",
        "/snapshot restore 801 bad deploy",
        "5",
        "/as bob",
        "/press 5",
        "web-server-1",
        " web-server-01 ",
        "/wait 60 for has left `restoring`",
        "/snapshot audit 30",
        "/quit",
    )
    out = run.stdout
    assert run.returncode == 0, f"stdout:\n{out}\nstderr:\n{run.stderr}"
    assert not re.search(r"Traceback|\bERROR\b", run.stderr), run.stderr

    listed = after(out, "alice@#ops> /snapshot list")
    assert "[1 Restore…] [2 Delete…]" in listed and "[3 Restore…] [4 Delete…]" in listed
    assert listed.index("pre-migration-snapshot") < listed.index("weekly-snapshot-2025-01-08")
    assert "snapbot (only you):" in listed

    requested = after(out, "alice@#ops> /snapshot restore 801 bad deploy")
    assert "Restore request #1: @alice wants to restore web-server-01" in requested
    assert "[5 Approve] [6 Reject]" in requested
    assert "[#incidents] snapbot: 🚨 Restore requested" in requested

    refused = after(out, "alice@#ops> 5")
    assert "┏" not in refused  # the requester gets no confirmation to type into
    assert "snapbot (only you): You cannot approve your own restore request" in refused
    assert "Restore started" not in refused

    assert "You are now bob (U2)." in after(out, "alice@#ops> /as bob")
    approved = after(out, "bob@#ops> /press 5")
    # The typed confirmation (SPEC 9.3): a typo is refused, the name with spaces accepted.
    assert "┏ Approve restore #1" in approved and "will be overwritten" in approved
    assert "type the server's name to approve (empty: close): web-server-1\n" in approved
    assert "┃ ⚠ That is not the server's name" in approved
    assert "snapbot edited its message:" in approved
    assert "Approved by @bob" in approved
    assert "[5 Approve]" not in approved  # the decided request has no buttons any more
    assert "Taking the safety snapshot `pre-restore-r1`" in flat(approved)
    assert "[#incidents] snapbot: ✅ Restore #1 of web-server-01 approved by @bob" in approved

    later = flat(out[out.index("bob@#ops> /press 5") :])
    assert later.index("Safety snapshot `pre-restore-r1`") < later.index("Restore started")
    assert "[#incidents] snapbot: 🔄 Restore #1 started" in later
    assert "@alice web-server-01 has left `restoring`" in later

    audit = after(out, "bob@#ops> /snapshot audit 30")
    assert audit.count("provider.restore") == 1  # the provider was asked once
    assert re.search(r"@alice restore\.approve `request:1` — self_approval", audit), audit
    assert out.count("Restore started") == 1


def test_buttons_not_yours_gone_or_declined_are_not_pressed_and_eof_leaves_cleanly(tmp_path):
    run = shell(
        tmp_path,
        "/snapshot list",
        "/as alice",
        "1",
        "/as bob",
        "1",
        "/press 99",
        "/snapshot restore 801",
        "/as alice",
        "5",
        "",
        "/snapshot pending",
        "/snapshot frobnicate",
        "/as nobody",
        "hello",
        "/help",
        user="U2",
    )  # no /quit: the end of input leaves the shell
    out = run.stdout
    assert run.returncode == 0, f"stdout:\n{out}\nstderr:\n{run.stderr}"
    assert out.startswith("snapbot shell: you are bob (U2) in #ops")

    # bob's list is his alone: alice cannot press its buttons; bob can.
    assert "[1 Restore…] [2 Delete…]" in after(out, "bob@#ops> /snapshot list")
    assert "Button 1 is on a message only bob sees" in after(out, "alice@#ops> 1")
    assert "Restore request #1: @bob wants to restore" in flat(after(out, "bob@#ops> 1"))
    assert "There is no button 99." in after(out, "bob@#ops> /press 99")
    assert "Restore request #1 for this snapshot is already pending" in flat(
        after(out, "bob@#ops> /snapshot restore 801")
    )

    # alice closes the typed confirmation of Approve without typing: nothing approved.
    declined = after(out, "alice@#ops> 5")
    assert "┏ Approve restore #1" in declined and "Closed; nothing approved." in declined
    pending = after(out, "alice@#ops> /snapshot pending")
    assert "#1 pending: restore web-server-01 from pre-migration-snapshot" in flat(pending)

    usage = after(out, "alice@#ops> /snapshot frobnicate")
    assert "snapbot (only you):" in usage and "/snapshot list [server]" in usage
    assert "/snapshot restore <snapshot_id> [reason…]" in usage
    assert "Who is nobody?" in after(out, "alice@#ops> /as nobody")
    assert "only listens to /snapshot commands" in after(out, "alice@#ops> hello")
    assert "/press N  (or just N)" in after(out, "alice@#ops> /help")


def test_an_unknown_starting_user_is_refused_before_anything_starts(capsys):
    assert run_shell("not a user") == 2
    assert "--user must be a Slack user ID" in capsys.readouterr().out


def test_restore_approvals_from_the_environment_needs_two_approvers_in_the_shell(tmp_path):
    run = shell(
        tmp_path,
        "/snapshot restore 801 bad deploy",
        "/as bob",
        "/press 1",
        "web-server-01",
        "/snapshot pending",
        "/as carol",
        "/press 1",
        "web-server-01",
        "/wait 60 for Restore started",
        "/snapshot audit 30",
        "/quit",
        env={"RESTORE_APPROVALS": "2"},
    )
    out = run.stdout
    assert run.returncode == 0, f"stdout:\n{out}\nstderr:\n{run.stderr}"
    assert not re.search(r"Traceback|\bERROR\b", run.stderr), run.stderr

    requested = flat(after(out, "alice@#ops> /snapshot restore 801 bad deploy"))
    assert "Needs 2 approval(s)" in requested and "[1 Approve] [2 Reject]" in requested

    first = flat(after(out, "bob@#ops> /press 1"))
    assert "1 more approval(s) needed" in first
    assert "Restore started" not in first
    assert "#1 pending" in flat(after(out, "bob@#ops> /snapshot pending"))

    second = flat(after(out, "carol@#ops> /press 1"))
    assert "Approved by @bob, @carol" in second
    assert "Restore started" in flat(out[out.index("carol@#ops> /press 1") :])
    audit = after(out, "carol@#ops> /snapshot audit 30")
    assert audit.count("provider.restore") == 1
    assert re.search(r"@bob restore\.approve `request:1` — record", audit), audit
    assert re.search(r"@carol restore\.approve `request:1` — approve", audit), audit


def test_approval_ttl_minutes_from_dot_env_lets_a_request_expire_in_the_shell(tmp_path):
    (tmp_path / ".env").write_text("APPROVAL_TTL_MINUTES=0.05\n", encoding="utf-8")  # 3 s
    run = shell(
        tmp_path,
        "/snapshot restore 801 bad deploy",
        "/wait 60",
        "/as bob",
        "/press 1",
        "/snapshot audit 10",
        "/quit",
    )
    out = run.stdout
    assert run.returncode == 0, f"stdout:\n{out}\nstderr:\n{run.stderr}"
    assert "Expired: nobody decided" in flat(after(out, "alice@#ops> /wait 60"))
    # The expired request has no buttons left to press.
    assert "is no longer on that message" in after(out, "bob@#ops> /press 1")
    audit = after(out, "bob@#ops> /snapshot audit 10")
    assert "restore.expire" in audit and "provider.restore" not in audit


def test_a_bad_restore_approvals_stops_the_shell_with_one_line_naming_it(tmp_path):
    run = shell(tmp_path, "/quit", env={"RESTORE_APPROVALS": "two"})
    assert run.returncode == 1
    assert "RESTORE_APPROVALS must be a whole number" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr
