"""Contracts between the parts that must agree: manifest.yml and the listeners the
code registers, the builders' action_ids and bot/blocks/ids.py, the Procfile and the
WSGI app, the CLI and its help, and the direction of the imports."""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from slack_bolt import App, BoltRequest, BoltResponse

from bot import gunicorn_conf
from bot.blocks import ids
from bot.blocks.answers import error_message, text_message
from bot.blocks.audit import audit_list
from bot.blocks.help import usage_message
from bot.blocks.notices import incident_notice
from bot.blocks.pending import pending_list
from bot.blocks.restore import restore_request, thread_note
from bot.blocks.snapshots import (
    create_message,
    create_modal,
    create_thread_reply,
    delete_prompt,
    limit_reached,
    snapshot_list,
)
from bot.config import Settings
from bot.core import commands as cmd
from bot.listeners.commands import COMMAND
from bot.runtime import Runtime, build_runtime
from bot.services import dispatch
from bot.vps.models import Server, Snapshot
from bot.web import WebApp
from snapbot_local.harness import HANG_GUARD_S
from snapbot_local.slack.signing import (
    block_actions_body,
    slash_command_body,
    view_submission_body,
)
from snapbot_local.stack import LocalStack, serve_wsgi
from storage.tables import AuditEvent, RestoreRequest
from tests.conftest import wait_until
from tests.e2e_helpers import wait_for_ephemeral

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = yaml.safe_load((ROOT / "manifest.yml").read_text(encoding="utf-8"))
EVENTS_PATH = "/slack/events"
NOW = datetime(2025, 1, 27, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Iterator[Runtime]:
    """The production app, assembled as gunicorn assembles it (nothing is contacted)."""
    db = tmp_path_factory.mktemp("contracts") / "snapbot.db"
    settings = Settings(
        slack_bot_token="xoxb-contract",
        slack_signing_secret="contract-secret",
        vps_api_token="contract-token",
        slack_api_url="http://127.0.0.1:9/api/",
        vps_api_url="http://127.0.0.1:9/api/v1/",
        database_url=f"sqlite:///{db}",
    )
    rt = build_runtime(settings, start_duties=False)
    yield rt
    rt.stop()


def listeners_for(app: App, body: bytes) -> list:
    request = BoltRequest(body=body.decode(), headers={})
    return [
        listener
        for listener in app._listeners
        if listener.matches(req=request, resp=BoltResponse(status=404))
    ]


def press(action_id: str) -> bytes:
    return block_actions_body(action_id, "801", message_ts="1700000000.000100")


# -- manifest.yml <-> registered listeners --------------------------------------------------


def test_the_manifests_slash_command_is_the_one_the_listeners_register(runtime):
    (command,) = MANIFEST["features"]["slash_commands"]
    assert command["command"] == COMMAND == "/snapshot"
    app = runtime.app
    assert len(listeners_for(app, slash_command_body("list", command=COMMAND))) == 1
    assert listeners_for(app, slash_command_body("list", command="/other")) == []


def test_the_usage_hint_names_every_subcommand_the_parser_knows():
    hint = MANIFEST["features"]["slash_commands"][0]["usage_hint"]
    for sub in cmd.SUBCOMMAND_USAGE:
        if sub != "help":
            assert sub in hint, f"the manifest's usage hint does not mention {sub!r}"
            assert not isinstance(cmd.parse(sub + " 801 x"), cmd.Help)  # a real subcommand


def test_every_action_id_has_a_listener_of_its_own(runtime):
    app = runtime.app
    catch_all = listeners_for(app, press("no-such-snapbot-action"))
    for action_id in ids.ACTION_IDS:
        own = [
            listener
            for listener in listeners_for(app, press(action_id))
            if listener not in catch_all
        ]
        assert own, f"no listener is registered for action_id {action_id!r}"


def test_every_modal_callback_id_has_a_listener(runtime):
    app = runtime.app
    for callback_id in ids.VIEW_CALLBACK_IDS:
        assert listeners_for(app, view_submission_body(callback_id, {})), callback_id
    assert listeners_for(app, view_submission_body("not-a-snapbot-view", {})) == []


def builder_outputs() -> list[dict]:
    snap = Snapshot(
        id=801,
        server=Server(id=12345, name="web-server-01"),
        name="pre-migration",
        status="completed",
        size_mb=5120,
        created_at=NOW - timedelta(days=12),
        description="d",
    )
    requests = [
        RestoreRequest(
            id=7,
            snapshot_id=801,
            snapshot_name="pre-migration",
            server_id=12345,
            server_name="web-server-01",
            requester="U1",
            channel="C1",
            state=state,
            created_at=NOW,
            expires_at=NOW + timedelta(hours=1),
        )
        for state in ("pending", "approved", "succeeded", "rejected", "expired")
    ]
    # A finished restore that took a safety snapshot offers Undo (SPEC 9.6).
    requests.append(
        RestoreRequest(
            **{
                **requests[2].model_dump(),
                "id": 8,
                "safety_plan": "on",
                "safety_step": "ready",
                "safety_snapshot_id": 905,
            }
        )
    )
    event = AuditEvent(
        id=1, at=NOW, action="a", outcome="ok", prev_hash="0" * 64, hash="1" * 64, actor="U1"
    )
    return [
        text_message("t"),
        error_message("t"),
        usage_message(cmd.USAGE, "p"),
        snapshot_list([snap] * 1, NOW, scope="all servers"),
        snapshot_list([], NOW, scope="all servers"),
        create_message(server_name="w", server_id=1, name="n", requester="U1", state="in_progress"),
        create_thread_reply(
            status="completed",
            name="n",
            requester="U1",
            size_mb=1,
            duration=timedelta(1),
            snapshot_id=1,
        ),
        limit_reached("t", 798, "oldest"),
        create_modal(metadata="C1", servers=[(12345, "web-server-01")]),
        create_modal(metadata="C1", servers=None),
        delete_prompt(snap, "U1", NOW),
        *(restore_request(r, ["U2"], NOW) for r in requests),
        thread_note("t"),
        incident_notice("t", "https://x"),
        audit_list([event]),
        pending_list(requests, [], NOW),
    ]


def test_every_button_the_builders_emit_uses_an_id_from_the_registry():
    emitted = set()
    for payload in builder_outputs():
        for block in payload["blocks"]:
            if block["type"] == "input":
                continue  # modal inputs are read from the submission, not sent as actions
            for element in [*(block.get("elements") or []), block.get("accessory") or {}]:
                if "action_id" in element:
                    emitted.add(element["action_id"])
    assert emitted, "the builders emitted no buttons at all"
    assert emitted <= set(ids.ACTION_IDS), emitted - set(ids.ACTION_IDS)
    # ... and every id registered is one a builder emits: none waits for a press that
    # can never come.
    assert set(ids.ACTION_IDS) <= emitted, set(ids.ACTION_IDS) - emitted
    # the modal's callback id too
    modal = create_modal(metadata="C1", servers=None)
    assert modal["callback_id"] in ids.VIEW_CALLBACK_IDS


def test_interactivity_is_on_and_every_request_url_is_the_route_the_app_serves(runtime):
    settings = MANIFEST["settings"]
    assert settings["interactivity"]["is_enabled"] is True
    urls = [c["url"] for c in MANIFEST["features"]["slash_commands"]]
    urls.append(settings["interactivity"]["request_url"])
    server, _ = serve_wsgi(WebApp(runtime))
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for url in urls:
            path = urlsplit(url).path
            assert path == EVENTS_PATH, url
            # The route exists and verifies: unsigned, it is refused (not "not found").
            assert httpx.post(base + path, content=b"command=%2Fsnapshot").status_code == 401
    finally:
        server.shutdown()
        server.server_close()


def test_the_manifests_bot_scopes_cover_every_slack_call_the_app_makes(tmp_path):
    scopes = MANIFEST["oauth_config"]["scopes"]["bot"]
    stack = LocalStack(
        database_url=f"sqlite:///{tmp_path / 'scopes.db'}",
        create_seconds=0.5,
        poll_seconds=0.2,
        settings_overrides={"snapshot_operators": frozenset({"UOPS", "SOPS"})},
    ).start()
    try:
        stack.slack.scopes = set(scopes)
        stack.slack.usergroups["SOPS"] = ["UMEMBER"]
        operator, member = stack.user("UOPS"), stack.user("UMEMBER")
        operator.command("create web-server-01 scoped")
        operator.command("create")  # the modal
        member.command("delete 798")  # allowed through the user group
        operator.command("list")
        wait_for_ephemeral(stack, "UMEMBER", "Delete snapshot")
        wait_for_ephemeral(stack, "UOPS", "snapshot(s)")
        stack.slack.wait_for_call("views.update", timeout=HANG_GUARD_S)
        wait_until(
            lambda: any("completed" in (m.text or "") for m in stack.slack.messages("C1")),
            what="the threaded completion",
        )
        missing = [c for c in stack.slack.calls() if c.error == "missing_scope"]
        assert missing == []
        assert stack.slack.calls("usergroups.users.list")  # the group scope was exercised
    finally:
        invalid = stack.slack.invalid_payloads
        stack.stop()
    assert invalid == []


# -- CLI help ---------------------------------------------------------------------------------

HELP_COMMANDS = [
    [],
    ["serve"],
    ["demo"],
    ["shell"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "export"],
    ["vps-sim"],
]


def test_every_cli_command_has_help(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "VPS_", "DATABASE"))}
    env["PYTHONPATH"] = str(ROOT)
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["snapbot"]
    module, func = script.split(":")
    # `snapbot ...` exactly as the console script runs it, and `python -m bot ...`.
    console = f"import sys; from {module} import {func} as main; sys.argv[0] = 'snapbot'; "
    console += "sys.exit(main())"
    runs = [[sys.executable, "-c", console, "--help"]]
    runs += [[sys.executable, "-m", "bot", *words, "--help"] for words in HELP_COMMANDS]
    procs = [
        subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for argv in runs
    ]
    for argv, proc in zip(runs, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        words = " ".join(argv[3:] if argv[1] == "-m" else ["snapbot"])
        assert proc.returncode == 0, f"{words} --help exited {proc.returncode}: {err}"
        assert out.lower().startswith("usage:"), f"{words} --help printed {out[:200]!r}"
        assert len(out.splitlines()) >= 3 and "Traceback" not in err, words


# -- Procfile <-> gunicorn config <-> WSGI app ----------------------------------------------------


def test_the_procfile_web_line_runs_gunicorn_with_the_config_and_the_app_factory(monkeypatch):
    lines = dict(
        line.split(":", 1)
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    argv = shlex.split(lines["web"])
    assert argv[0] == "gunicorn"
    config = argv[argv.index("--config") + 1]
    assert config == "python:bot.gunicorn_conf"
    (app_spec,) = [a for a in argv[1:] if not a.startswith("-") and a != config]
    module, _, factory = app_spec.partition(":")
    assert (module, factory) == ("bot.web", "create_app()")
    import bot.web

    assert callable(bot.web.create_app)
    # The config binds to $HOST:$PORT and serves event loops that buffer each request
    # before a thread runs it (bot/server.py; not Bolt's development server).
    monkeypatch.setenv("PORT", "4321")
    monkeypatch.setenv("HOST", "127.0.0.1")
    import importlib

    conf = importlib.reload(gunicorn_conf)
    try:
        assert conf.bind == "127.0.0.1:4321"
        assert conf.worker_class == "bot.server.Worker"
        assert conf.preload_app is False  # each worker builds its own runtime and watcher
    finally:
        monkeypatch.undo()
        importlib.reload(gunicorn_conf)


# -- layering ----------------------------------------------------------------------------------


def imports_in(source: str, package: str) -> set[str]:
    """Every module some source imports (relative imports resolved against ``package``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


def imports_of(path: Path) -> set[str]:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return imports_in(path.read_text(encoding="utf-8"), package)


def offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    problems = {}
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no modules under {folder}"
    for path in files:
        bad = sorted(
            name
            for name in imports_of(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if bad:
            problems[str(path.relative_to(ROOT))] = bad
    return problems


def test_the_core_imports_nothing_from_slack_http_or_sql():
    forbidden = ("slack_sdk", "slack_bolt", "httpx", "sqlalchemy", "sqlmodel", "storage")
    assert offending("bot/core", forbidden) == {}


def test_listeners_reach_storage_and_the_provider_only_through_services():
    assert offending("bot/listeners", ("storage", "httpx", "sqlalchemy", "sqlmodel")) == {}


def test_block_builders_do_no_io():
    forbidden = ("storage", "httpx", "sqlalchemy", "sqlmodel", "slack_bolt", "bot.services")
    assert offending("bot/blocks", forbidden) == {}
    assert offending("bot/blocks", ("slack_sdk.web", "slack_sdk.socket_mode")) == {}


def test_the_layering_walk_sees_absolute_relative_and_nested_imports():
    probe = (
        "import httpx\n"
        "from ..vps import client\n"
        "from . import errors\n"
        "def f():\n"
        "    from storage.db import session_scope\n"
    )
    found = imports_in(probe, "bot.core")
    assert {"httpx", "bot.vps.client", "bot.core.errors", "storage.db"} <= found


# -- the offline stack stays out of production -------------------------------------------------

OFFLINE = "snapbot_local"
# The CLI's functions that may load the offline stack: `snapbot demo`, `shell`, `vps-sim`.
OFFLINE_LOADERS = {"bot/__main__.py": {"demo", "shell", "vps_sim"}}


def offline_imports(source: str, package: str, allowed: set[str] = frozenset()) -> list[str]:
    """Where a module imports the offline stack (or names it to importlib/__import__),
    as "function: module", except inside the top-level functions named in ``allowed``."""
    tree = ast.parse(source)
    exempt: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in allowed:
            exempt.update(id(inner) for inner in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        names: set[str] = set()
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = imports_in(ast.unparse(node), package)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = {node.value} if node.value.split(".")[0] == OFFLINE else set()
        found += [
            f"line {node.lineno}: {name}"
            for name in sorted(names)
            if name == OFFLINE or name.startswith(OFFLINE + ".")
        ]
    return found


def test_no_production_module_imports_the_offline_stack():
    problems = {}
    for folder in ("bot", "storage"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
            found = offline_imports(
                path.read_text(encoding="utf-8"), package, OFFLINE_LOADERS.get(relative, set())
            )
            if found:
                problems[relative] = found
    assert problems == {}


def test_the_cli_loads_the_offline_stack_in_its_three_subcommands():
    source = (ROOT / "bot" / "__main__.py").read_text(encoding="utf-8")
    assert offline_imports(source, "bot") != []  # the walk sees them ...
    assert offline_imports(source, "bot", OFFLINE_LOADERS["bot/__main__.py"]) == []  # ... there


def test_the_offline_walk_sees_every_way_of_loading_it():
    probe = (
        "import snapbot_local\n"
        "from snapbot_local.slack import FakeSlack\n"
        "def demo():\n"
        "    from snapbot_local import demo\n"
        "def helper():\n"
        "    import snapbot_local.provider as p\n"
        "    importlib.import_module('snapbot_local.stack')\n"
        "class C:\n"
        "    def demo(self):\n"
        "        from snapbot_local import shell\n"
    )
    found = offline_imports(probe, "bot", {"demo"})
    lines = {f.split(":")[0] for f in found}
    assert lines == {"line 1", "line 2", "line 6", "line 7", "line 10"}, found
    assert not any(f.startswith("line 4") for f in found)


def test_the_offline_stack_is_installed_as_its_own_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "snapbot_local*" in include
    assert pyproject["project"]["scripts"]["snapbot"] == "bot.__main__:main"
    assert not (ROOT / "bot" / "devtools").exists()


def test_the_action_ids_with_a_listener_of_their_own_are_exactly_the_emitted_ones(runtime):
    """Walk every id-like constant (and the list's former 'more' button): the ones with
    a listener of their own are exactly the registry's, which the builders emit."""
    app = runtime.app
    catch_all = listeners_for(app, press("no-such-snapbot-action"))
    candidates = {v for k, v in vars(ids).items() if k.isupper() and isinstance(v, str)}
    candidates.add("snapshot_list_more")
    registered = {
        action_id
        for action_id in candidates
        if any(listener not in catch_all for listener in listeners_for(app, press(action_id)))
    }
    assert registered == set(ids.ACTION_IDS)


def test_every_button_and_command_names_a_job_kind_with_a_use_case():
    for action_id in ids.ACTION_IDS:
        kind = dispatch.button_job(action_id, "801:U1")
        assert kind in dispatch.JOB_HANDLERS and kind != "button.unknown", action_id
    assert dispatch.button_job("snapshot_list_more", "1") == "button.unknown"
    for text in (
        "list",
        "create 1 n",
        "create",
        "restore 801 r",
        "delete 801",
        "audit",
        "pending",
        "help",
        "frobnicate",
    ):
        kind, _ = dispatch.command_job(cmd.parse(text))
        assert kind in dispatch.JOB_HANDLERS, text
