"""Secrets never leak (SPEC §2, §7; issue 6): with distinctive values for the bot token,
the signing secret, the provider token and the audit key, representative flows
(commands, buttons, a restore, provider errors including 401, Slack errors, a forged
signature) leave none of them in the logs (caplog at DEBUG, and a real gunicorn
process's stderr at LOG_LEVEL=DEBUG), in any database column (audit_event, outbox, job,
…), in anything the fake Slack recorded, or in the text of the exceptions raised."""

from __future__ import annotations

import json
import logging
import traceback

import httpx
import pytest
from slack_sdk.errors import SlackApiError
from sqlalchemy import inspect, text

from bot.blocks import ids
from bot.config import Settings
from bot.logs import LineFormatter, ScrubFilter, event_line, register_secret
from bot.runtime import build_runtime, make_slack_client
from bot.user_messages import describe
from bot.vps.client import VpsClient
from bot.vps.errors import VpsError
from bot.web import WebApp
from snapbot_local.harness import HANG_GUARD_S, start_web
from snapbot_local.provider import start_simulator
from snapbot_local.slack import FakeSlack
from snapbot_local.slack.signing import SlackClientSim, slash_command_body
from snapbot_local.stack import LocalStack, serve_wsgi
from storage.db import make_engine
from tests.conftest import wait_until
from tests.e2e_helpers import request_message, restore_calls, wait_for_ephemeral

BOT_TOKEN = "xoxb-4242-SECRETBOT-q9w8e7r6t5"
SIGNING_SECRET = "sign-SECRET-7f3a9c1e5b2d4f6a"
VPS_TOKEN = "vps-SECRET-2d4f6a8c0e1b3d5f"
AUDIT_KEY = "audit-SECRET-1b3d5f7a9c2e4d6f"
SECRETS = {
    "bot token": BOT_TOKEN,
    "signing secret": SIGNING_SECRET,
    "VPS token": VPS_TOKEN,
    "audit key": AUDIT_KEY,
}
INCIDENT = "CINC"


def leaks(where: str, blob: object) -> list[str]:
    found = str(blob)
    return [f"{name} in {where}" for name, value in SECRETS.items() if value in found]


def database_leaks(url: str) -> list[str]:
    """Every column of every table, as text."""
    engine = make_engine(url)
    problems = []
    try:
        with engine.connect() as conn:
            for table in inspect(engine).get_table_names():
                rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
                problems += leaks(f"table {table}", [tuple(r) for r in rows])
    finally:
        engine.dispose()
    return problems


def fake_slack_leaks(fake: FakeSlack) -> list[str]:
    return (
        leaks("Slack calls", [(c.method, c.params, c.error) for c in fake.calls()])
        + leaks("response_url posts", [(r.url, r.payload) for r in fake.responses()])
        + leaks("channel messages", [(m.text, m.blocks, m.history) for m in fake.messages()])
        + leaks("ephemerals", [(e.text, e.blocks) for e in fake.ephemerals()])
        + leaks("modals", [v.view for v in fake.views()])
    )


@pytest.fixture
def stack(tmp_path):
    """The loopback stack with this module's secrets (LocalStack has its own fixed ones)."""
    s = LocalStack(database_url=f"sqlite:///{tmp_path / 'secrets.db'}", poll_seconds=0.2)
    s.sim = start_simulator(token=VPS_TOKEN, create_seconds=1.0, restore_seconds=1.0)
    s.slack = FakeSlack().start()
    settings = Settings(
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=s.slack.api_url,
        vps_api_url=s.sim.url,
        vps_api_token=VPS_TOKEN,
        database_url=s.database_url,
        incident_channel=INCIDENT,
        poll_seconds=0.2,
        audit_key=AUDIT_KEY,
        log_level="DEBUG",
        # The restore takes its safety snapshot (SPEC 9) on the way; Approve at once.
        restore_confirm="button",
    )
    s.runtime = build_runtime(settings, poll_interval=0.2)
    s.server, _ = serve_wsgi(WebApp(s.runtime))
    s.url = f"http://127.0.0.1:{s.server.server_address[1]}/slack/events"
    s.client = SlackClientSim(s.url, SIGNING_SECRET)
    yield s
    s.stop()


def daily_checkpoint_posted(fake: FakeSlack) -> None:
    # The duties post it on their first cycle; faults injected later must not meet it.
    fake.wait_for(
        lambda: any("daily" in (m.text or "") for m in fake.messages(INCIDENT)),
        HANG_GUARD_S,
        what="the daily checkpoint",
    )


def test_no_secret_reaches_logs_database_slack_or_exceptions(stack, caplog):
    caplog.set_level(logging.DEBUG)
    daily_checkpoint_posted(stack.slack)
    alice, bob = stack.user("UALICE"), stack.user("UBOB")

    # Commands and buttons that succeed, including a restore and a delete.
    alice.command("list")
    wait_for_ephemeral(stack, "UALICE", "snapshot(s)")
    alice.command("create 12346 secrets-check")
    alice.command("restore 801 checking secrets")
    request = request_message(stack)
    alice.press(request, ids.APPROVE)  # refused: own request
    bob.press(request, ids.APPROVE)
    wait_until(lambda: restore_calls(stack) == 1, what="the restore call")
    alice.command("delete 798")
    prompt = wait_until(
        lambda: next(
            (
                e
                for e in stack.slack.ephemerals(user="UALICE")
                if ids.DELETE_CONFIRM in str(e.blocks)
            ),
            None,
        ),
        what="the delete prompt",
    )
    alice.press(prompt, ids.DELETE_CONFIRM)
    wait_until(lambda: stack.sim.state.calls["DELETE snapshots/{id}/"] == 1, what="the delete")
    alice.command("no-such-subcommand")
    alice.command("audit 50")
    wait_for_ephemeral(stack, "UALICE", "Audit log")

    # The provider refuses the token (401), fails (503), refuses a request (400).
    for status, needle in ((401, "VPS_API_TOKEN"), (503, "unreachable"), (400, "refused")):
        stack.sim.state.fail_next(10, status)
        bob.command("list")
        wait_for_ephemeral(stack, "UBOB", needle)
        stack.sim.state.apply_faults({"fail_next": 0})

    # Slack errors: the bot is not in the channel; Slack fails; Slack rate-limits.
    stack.slack.error_next("chat.postMessage", error="not_in_channel")
    stack.user("UCAROL", "CNOTIN").command("restore 801 again")
    wait_for_ephemeral(stack, "UCAROL", "invite")
    stack.slack.fail_next("chat.postEphemeral", status=500)
    stack.slack.fail_next("response_url", n=2, status=500)
    stack.user("UDAVE").command("help")
    stack.slack.fail_next("*", status=429, retry_after=1)
    stack.user("UERIN").command("pending")
    wait_for_ephemeral(stack, "UERIN", "")

    # A forged request: signed with the wrong secret.
    forged = SlackClientSim(stack.url, "not-the-signing-secret")
    try:
        assert forged.post(slash_command_body("list", user_id="UMALLORY")).status_code == 401
    finally:
        forged.close()
    wait_until(lambda: stack.settled(), what="the app to finish its work")

    records = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    problems = (
        leaks("log records", records)
        + leaks("caplog text", caplog.text)
        + database_leaks(stack.database_url)
        + fake_slack_leaks(stack.slack)
    )
    assert problems == []
    # The flows above really ran, and were logged at DEBUG.
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert "event=provider.restore" in caplog.text and "event=snapshot.list" in caplog.text


def exception_texts(exc: BaseException) -> str:
    return "\n".join(
        [str(exc), repr(exc), describe(exc), *traceback.format_exception(exc), str(exc.__dict__)]
    )


@pytest.mark.parametrize("status", [401, 403, 400, 404, 500, 503])
def test_provider_errors_carry_no_token_in_their_text(status):
    with start_simulator(token=VPS_TOKEN) as sim:
        client = VpsClient(sim.url, VPS_TOKEN, timeout=5, retries=0)
        try:
            sim.state.fail_next(5, status)
            with pytest.raises(VpsError) as raised:
                client.list_snapshots()
        finally:
            client.close()
    assert leaks(f"a provider {status} error", exception_texts(raised.value)) == []


def test_a_wrong_provider_token_is_not_echoed_either():
    wrong = "vps-SECRET-wrong-9e8d7c6b5a"
    with start_simulator(token=VPS_TOKEN) as sim:
        client = VpsClient(sim.url, wrong, timeout=5, retries=0)
        try:
            with pytest.raises(VpsError) as raised:
                client.list_snapshots()
        finally:
            client.close()
    assert wrong not in exception_texts(raised.value) and "VPS_API_TOKEN" in describe(raised.value)


@pytest.mark.parametrize("error", ["not_in_channel", "invalid_auth", "ratelimited"])
def test_slack_errors_carry_no_token_in_their_text(error):
    with FakeSlack() as fake:
        settings = Settings(
            slack_bot_token=BOT_TOKEN, vps_api_token=VPS_TOKEN, slack_api_url=fake.api_url
        )
        client = make_slack_client(settings)
        client.retry_handlers = []
        fake.error_next("chat.postMessage", error=error)
        with pytest.raises(SlackApiError) as raised:
            client.chat_postMessage(channel="C1", text="hi")
    texts = exception_texts(raised.value)
    assert error in texts
    assert leaks(f"a Slack {error} error", texts) == []


def test_a_gunicorn_process_at_debug_logs_structured_lines_and_no_secret(tmp_path):
    sim = start_simulator(token=VPS_TOKEN)
    fake = FakeSlack().start()
    db_url = f"sqlite:///{tmp_path / 'web.db'}"
    web = None
    try:
        web = start_web(
            {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_API_URL": fake.api_url,
                "VPS_API_URL": sim.url,
                "VPS_API_TOKEN": VPS_TOKEN,
                "AUDIT_KEY": AUDIT_KEY,
                "DATABASE_URL": db_url,
                "INCIDENT_CHANNEL": INCIDENT,
                "SNAPSHOT_POLL_SECONDS": "0.2",
                "LOG_LEVEL": "DEBUG",
            },
            tmp_path,
        )
        events = web.url + "/slack/events"
        with SlackClientSim(events, SIGNING_SECRET) as slack:

            def command(user: str, text_: str) -> None:
                body = slash_command_body(
                    text_,
                    user_id=user,
                    channel_id="C1",
                    response_url=fake.response_url("cmd", channel="C1", user=user),
                )
                assert slack.post(body).status_code == 200

            def told(user: str, needle: str):
                return fake.wait_for(
                    lambda: any(needle in (e.text or "") for e in fake.ephemerals(user=user)),
                    HANG_GUARD_S,
                    what=f"{user} told {needle!r}",
                )

            daily_checkpoint_posted(fake)
            command("U1", "list")
            told("U1", "snapshot(s)")
            sim.state.fail_next(5, 401)
            command("U2", "list")
            told("U2", "VPS_API_TOKEN")
            sim.state.apply_faults({"fail_next": 0})
            fake.error_next("chat.postMessage", error="not_in_channel")
            command("U3", "restore 801 from gunicorn")
            told("U3", "invite")
            command("U4", "restore 801 second try")
            message = fake.wait_for(
                lambda: next(
                    (m for m in fake.messages("C1") if "Restore request #" in (m.text or "")), None
                ),
                HANG_GUARD_S,
                what="the request message",
            )
            slack.press(message, ids.APPROVE, user_id="U5", response_url=fake.response_url("b"))
            fake.wait_for(
                lambda: sim.state.calls["POST snapshots/{id}/restore/"] == 1,
                HANG_GUARD_S,
                what="the restore",
            )
        with SlackClientSim(events, "not-the-signing-secret") as forged:
            assert forged.post(slash_command_body("list", user_id="U6")).status_code == 401
        httpx.get(web.url + "/healthz", timeout=5)
        fake.wait_for(
            lambda: any("after restore" in (m.text or "") for m in fake.messages(INCIDENT)),
            HANG_GUARD_S,
            what="the checkpoint after the restore",
        )
        wait_until(lambda: "event=provider.restore" in web.log(), 15, what="the restore logged")
    finally:
        if web is not None:
            web.terminate()
        fake.stop()
        sim.stop()
    log = web.log()
    assert leaks("gunicorn stderr", log) == []
    assert database_leaks(db_url) == []
    assert fake_slack_leaks(fake) == []
    # Structured: each audited event is one key=value line with its ids.
    assert " level=DEBUG " in log
    assert any(
        "event=snapshot.list" in line and "actor=U2" in line and "outcome=error" in line
        for line in log.splitlines()
    )
    assert any(
        "event=restore.approve" in line
        and "request=" in line
        and "actor=U5" in line
        and "outcome=ok" in line
        for line in log.splitlines()
    )
    app_lines = [line for line in log.splitlines() if " logger=bot." in line]
    assert app_lines and all(line.startswith("ts=") for line in app_lines)


# --- the last line of defence ----------------------------------------------------------------


def scrubbed_line(message: str, *args, exc: BaseException | None = None) -> str:
    """One record through the handler that `configure_logging` installs."""
    record = logging.LogRecord("bot.test", logging.ERROR, __file__, 1, message, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    handler = logging.StreamHandler()
    handler.setFormatter(LineFormatter())
    handler.addFilter(ScrubFilter())
    for f in handler.filters:
        f.filter(record)
    return handler.format(record)


def test_the_log_filter_masks_registered_secrets_tokens_headers_and_request_bodies():
    for value in SECRETS.values():
        register_secret(value)
    line = scrubbed_line(
        "sent %s with %s, key %s; body: token=legacy123&response_url=https%%3A%%2F%%2Fhooks&text=list",
        {"Authorization": f"Bearer {VPS_TOKEN}"},
        "xoxb-1111-other-bot-token",
        AUDIT_KEY,
    )
    assert leaks("a scrubbed line", line) == []
    for gone in ("xoxb-1111", "legacy123", "hooks", VPS_TOKEN):
        assert gone not in line
    assert "text=list" in line and "[secret]" in line


def test_an_exception_is_logged_on_the_same_line_without_its_secrets():
    register_secret(SIGNING_SECRET)
    try:
        raise RuntimeError(f"signature {SIGNING_SECRET} rejected\nsecond line")
    except RuntimeError as exc:
        line = scrubbed_line("listener failed: %s", "RuntimeError", exc=exc)
    assert "\n" not in line and line.startswith("ts=")
    assert "level=ERROR" in line and 'msg="listener failed: RuntimeError"' in line
    assert 'exc="Traceback' in line and "second line" in line
    assert SIGNING_SECRET not in line


def test_event_lines_are_key_value_pairs_with_the_ids_spelled_out():
    line = event_line(
        "restore.approve",
        target="request:12 snapshot:801 server:12345",
        actor="U2",
        outcome="ok",
        detail='said "yes"\nthen left',
    )
    assert line == (
        "event=restore.approve request=12 snapshot=801 server=12345 actor=U2 outcome=ok "
        'detail="said \\"yes\\"\\nthen left"'
    )
    assert event_line("snapshot.list", target="web-server-01", actor="", outcome="ok") == (
        "event=snapshot.list target=web-server-01 outcome=ok"
    )


def test_a_response_url_never_appears_in_debug_logs_of_the_post_to_it():
    """slack_sdk's WebhookClient logs "Sending a request - url: <response_url>" at DEBUG."""
    from io import StringIO

    from slack_sdk.webhook import WebhookClient

    stream = StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter())
    handler.addFilter(ScrubFilter())
    webhook_log = logging.getLogger("slack_sdk.webhook.client")
    old_level = webhook_log.level
    webhook_log.addHandler(handler)
    webhook_log.setLevel(logging.DEBUG)
    fake = FakeSlack().start()
    try:
        url = fake.response_url("cmd", channel="C1", user="U1")
        assert WebhookClient(url, timeout=5).send(text="hi").status_code == 200
    finally:
        webhook_log.removeHandler(handler)
        webhook_log.setLevel(old_level)
        fake.stop()
    logged = stream.getvalue()
    assert "Sending a request" in logged
    assert url not in logged and url.rsplit("/", 1)[-1] not in logged
    hooks = "https://hooks.slack.com/commands/T1/123/abcDEF"
    assert hooks.rsplit("/", 1)[-1] not in scrubbed_line("answering %s", hooks)


def test_a_form_encoded_body_in_a_log_line_loses_its_token_response_url_and_secrets():
    """Bolt logs a body it refuses as it came: `payload=` and URL-encoded JSON."""
    from urllib.parse import urlencode

    from bot.logs import register_secret, scrub

    register_secret("form/secret+value-1")
    body = urlencode(
        {
            "payload": json.dumps(
                {
                    "token": "legacyVerificationTok",
                    "response_url": "https://hooks.slack.com/actions/T1/123/abcDEF",
                    "note": "form/secret+value-1",
                }
            )
        }
    )
    cleaned = scrub(f"refused a request: {body}")
    for secret in ("legacyVerificationTok", "abcDEF", "hooks.slack.com%2Factions", "value-1"):
        assert secret not in cleaned, cleaned
    assert cleaned.startswith("refused a request: payload=")
