"""snapbot's command line: serve | worker | demo | shell | audit verify|export | vps-sim.

Parsing only; each command calls into the package."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from datetime import UTC, datetime

from bot.config import exit_on_config_error, load_or_exit, secret_value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapbot", description="Slack chat-ops bot for VPS snapshots."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "serve",
        help="run the bot: HTTP (gunicorn) or Socket Mode when SLACK_APP_TOKEN is set",
        description="Run the bot: the HTTP server on $HOST:$PORT, or Socket Mode when SLACK_APP_TOKEN "
        "is set. Also runs the snapshot watcher.",
    )
    demo = sub.add_parser(
        "demo",
        help="play an incident end to end, offline, and print the transcript",
        description="Start the provider simulator, a local Slack stand-in and the real app, "
        "play an incident and print the channel. Exit 0 only if every step worked.",
    )
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the stack up and print its URLs"
    )
    shell = sub.add_parser(
        "shell",
        help="chat with snapbot locally: type /snapshot commands, press buttons",
        description="An interactive local chat against the same stack as the demo.",
    )
    shell.add_argument(
        "--user", default="U1", help="the Slack user you start as (switch with /as U2)"
    )
    audit = sub.add_parser(
        "audit",
        help="verify or export the audit log",
        description="Verify the audit log's hash chain, or export it.",
    )
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify",
        help="check the hash chain; exit 1 naming the first broken row",
        description="Check the audit log's hash chain (and a checkpoint).",
    )
    verify.add_argument(
        "--checkpoint", metavar="COUNT:HASH", help="prove the log still extends this checkpoint"
    )
    export = audit_sub.add_parser(
        "export",
        help="write the audit log to stdout as JSON lines or CSV",
        description="Write the audit log to stdout, streaming.",
    )
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--since", metavar="ISO", help="only rows at or after this UTC time")
    export.add_argument("--actor", metavar="U…", help="only rows of this Slack user")
    worker = sub.add_parser(
        "worker",
        help="run a job worker alone (the web process starts its own)",
        description="Run the jobs that HTTP workers queue, and the background duties. "
        "`snapbot serve` and the Procfile's web process start one by themselves; run more "
        "for extra capacity (they share the database's queue).",
    )
    worker.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    sub.add_parser(
        "vps-sim",
        help="serve the provider simulator (vps-api.md) on 127.0.0.1:$PORT",
        description="Serve the provider simulator. See `snapbot vps-sim --help`.",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "vps-sim":
        return vps_sim(argv[1:])
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve":
        return serve()
    if command == "demo":
        return demo(keep_running=args.keep_running)
    if command == "shell":
        return shell(user=args.user)
    if command == "audit":
        return audit(args)
    if command == "worker":
        return work(parent_pid=args.parent)
    return 2


# The offline stack (snapbot_local, installed beside bot/) is loaded here and nowhere
# else in production code: only these three subcommands need it
# (tests/contracts/test_contracts.py keeps it so).
def demo(*, keep_running: bool) -> int:
    from snapbot_local.demo import run_demo

    return run_demo(keep_running=keep_running)


def shell(*, user: str) -> int:
    from snapbot_local.shell import run_shell

    return run_shell(user=user)


def vps_sim(argv: list[str]) -> int:
    from snapbot_local.provider import main as sim_main

    return sim_main(argv)


# A start-up problem (settings, DATABASE_URL, SLACK_BOT_TOKEN) is a ConfigError: one
# line on stderr, exit 2, no traceback (SPEC 13.7).
@exit_on_config_error
def work(*, parent_pid: int | None) -> int:
    settings = load_or_exit()
    from bot.logs import configure_logging
    from bot.runtime import check_startup
    from bot.worker import run_worker

    configure_logging(settings.log_level, secrets=settings.secrets())
    install = check_startup(settings)
    return run_worker(settings, parent_pid=parent_pid, install=install)


@exit_on_config_error
def serve() -> int:
    settings = load_or_exit()
    from bot.logs import configure_logging
    from bot.runtime import check_startup

    configure_logging(settings.log_level, secrets=settings.secrets())
    # Once, before gunicorn forks its workers (they inherit what was found).
    install = check_startup(settings)
    if settings.socket_mode:
        runtime, handler = socket_mode_handler(settings, install=install)

        def stop(*_):
            runtime.stop()
            handler.close()
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        from slack_sdk.errors import SlackApiError

        try:
            handler.start()
        except SlackApiError as exc:
            # e.g. invalid_auth for a wrong or revoked app token: one line, no traceback.
            runtime.stop()
            handler.close()
            print(
                f"snapbot serve: Slack refused the Socket Mode connection "
                f"({exc.response.get('error', 'error')}); check SLACK_APP_TOKEN "
                "(an app-level token with connections:write).",
                file=sys.stderr,
            )
            return 1
        return 0
    from bot.server import run_gunicorn

    return run_gunicorn(settings)


SOCKET_PING_INTERVAL_S = 3.0


def socket_mode_handler(settings, *, start_duties: bool = True, install=None):
    """(runtime, handler) for Socket Mode: the same app as over HTTP, but with request
    verification off (Slack's WebSocket carries no signature) and a slack_bolt
    SocketModeHandler on the app's own WebClient (so SLACK_API_URL applies). Nothing
    is connected until ``handler.start()`` / ``connect()``."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    from bot.runtime import build_runtime

    runtime = build_runtime(settings, start_duties=start_duties, install=install)
    # slack_sdk notices a connection that died silently only after several unanswered
    # pings: at Bolt's default 10 s interval that is close to a minute of deafness
    # during an incident; 3 s pings cut it to seconds for a few bytes each.
    handler = SocketModeHandler(
        runtime.app, secret_value(settings.slack_app_token), ping_interval=SOCKET_PING_INTERVAL_S
    )
    return runtime, handler


def audit(args) -> int:
    from bot.config import ConfigError

    try:
        return _audit(args)
    except ConfigError as exc:  # settings, or a DATABASE_URL that holds no audit log
        print(str(exc), file=sys.stderr)
        return 2


def _audit(args) -> int:
    from bot.audit_tools import HEAD_ROW, export, open_audit_log, verify
    from bot.config import load_settings
    from bot.core.audit_chain import parse_checkpoint

    settings = load_settings(require_slack=False)
    # Read only: a wrong directory or URL is an error, never a new, empty log.
    engine = open_audit_log(settings)
    key = secret_value(settings.audit_key).encode() or None
    if args.audit_command == "verify":
        checkpoint = None
        if args.checkpoint:
            try:
                checkpoint = parse_checkpoint(args.checkpoint)
            except ValueError as exc:
                print(f"snapbot audit verify: {exc}", file=sys.stderr)
                return 2
        result = verify(engine, key, checkpoint=checkpoint)
        if result.ok:
            print(f"audit log intact: {result.rows} rows, head {result.head_hash}")
            return 0
        where = (
            "the chain head (audit_head)"
            if result.broken.row_id == HEAD_ROW
            else f"row {result.broken.row_id}"
        )
        print(
            f"audit log BROKEN at {where}: {result.broken.why} "
            f"({result.rows} rows verified before it)",
            file=sys.stderr,
        )
        return 1
    if args.audit_command == "export":
        since = None
        if args.since:
            try:
                since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
            except ValueError:
                print(
                    "snapbot audit export: --since must be an ISO time, e.g. 2025-01-15T00:00:00Z",
                    file=sys.stderr,
                )
                return 2
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
        try:
            export(engine, sys.stdout, fmt=args.format, since=since, actor=args.actor)
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader stopped early (`… | head`): no traceback. Python's own recipe:
            # point stdout at /dev/null so the interpreter's final flush stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        return 0
    print("usage: snapbot audit {verify,export} …", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
