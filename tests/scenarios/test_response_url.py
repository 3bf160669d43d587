"""`response_url` is trusted only where Slack puts it (SPEC 14.6).

A signed payload's response_url used to be posted to wherever it pointed (a loopback
service, the database port) and a 302 from it was followed. Now only `https` on
hooks.slack.com / hooks.slack-gov.com, or the origin of SLACK_API_URL (the local
stand-in), is posted to; redirects are never followed; anything else is refused,
logged once without the URL's secret path, and the user is answered through the Web
API (chat.postEphemeral) instead.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from slack_sdk import WebClient

from bot.outbox import Outbox, trusted_response_url
from snapbot_local.slack.signing import slash_command_body
from snapbot_local.stack import BOT_TOKEN, LocalStack
from storage.db import session_scope
from tests.conftest import wait_until

API = "http://127.0.0.1:4010/api/"
SECRET_PATH = "T1/B2/s3cr3tpathpart"


@pytest.mark.parametrize(
    ("url", "trusted"),
    [
        (f"https://hooks.slack.com/commands/{SECRET_PATH}", True),
        (f"https://HOOKS.slack.com:443/actions/{SECRET_PATH}", True),
        (f"https://hooks.slack-gov.com/commands/{SECRET_PATH}", True),
        ("http://127.0.0.1:4010/response/abc", True),  # SLACK_API_URL's origin
        (f"http://hooks.slack.com/commands/{SECRET_PATH}", False),  # not https
        (f"https://hooks.slack.com:8443/commands/{SECRET_PATH}", False),
        (f"https://hooks.slack.com.evil.example/commands/{SECRET_PATH}", False),
        (f"https://evil.example/hooks.slack.com/{SECRET_PATH}", False),
        (f"https://user@hooks.slack.com/commands/{SECRET_PATH}", False),
        ("http://127.0.0.1:5432/", False),  # the database port
        ("http://127.0.0.1:4011/response/abc", False),  # loopback, another port
        ("https://127.0.0.1:4010/response/abc", False),  # another scheme
        ("http://localhost:4010/response/abc", False),  # another host name
        ("http://127.0.0.1:99999/x", False),  # not a port
        ("hooks.slack.com/commands/x", False),
        ("", False),
        # urlsplit drops these; an HTTP client would refuse the URL (or read it otherwise)
        (f"https://hooks.sla\tck.com/commands/{SECRET_PATH}", False),
        (f"https://hooks.slack.com/commands/{SECRET_PATH}\n", False),
        (f"https://hooks.slack.com/commands/{SECRET_PATH} x", False),
        (f"https://hooks.slack.com/commands/\x7f{SECRET_PATH}", False),
    ],
)
def test_only_slacks_hooks_hosts_or_the_slack_api_origin_are_trusted(url, trusted):
    assert trusted_response_url(url, API) is trusted


class Counting:
    """A loopback HTTP server that counts every request; optionally redirects those to
    /response/…, and answers the rest as the Web API does when it accepts a call."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.hits: list[tuple[str, str]] = []
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                counter.hits.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if redirect_to and self.path.startswith("/response/"):
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                else:
                    self.send_response(200)  # and Web API calls: {"ok": true}
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "11")
                self.end_headers()
                self.wfile.write(b'{"ok":true}')

            do_GET = do_POST = _any

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting():
    made: list[Counting] = []

    def make(**kw) -> Counting:
        made.append(Counting(**kw))
        return made[-1]

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def stack(sqlite_url):
    stack = LocalStack(database_url=sqlite_url).start()
    yield stack
    stack.stop()


def test_a_response_url_on_another_loopback_port_gets_nothing_and_the_user_is_answered(
    stack, counting, caplog
):
    target = counting()
    url = f"{target.url}response/{SECRET_PATH}"
    body = slash_command_body("list", user_id="UALICE", channel_id="C1", response_url=url)
    with caplog.at_level(logging.WARNING, logger="bot.outbox"):
        assert stack.client.post(body).status_code == 200
        answer = wait_until(
            lambda: next(iter(stack.slack.ephemerals(user="UALICE", channel="C1")), None),
            10,
            what="the answer through the Web API",
        )
        stack.wait_settled(15)
    assert answer.source == "chat.postEphemeral"
    assert "web-server-01" in str(answer.blocks)
    assert target.hits == []
    refused = [r.getMessage() for r in caplog.records if "response_url refused" in r.getMessage()]
    assert len(refused) == 1, refused
    assert target.url.rstrip("/").split("//")[1] in refused[0]
    assert SECRET_PATH not in refused[0] and "response/" not in refused[0]


def test_a_slack_response_url_is_still_used(stack):
    url = stack.slack.response_url("good", channel="C1", user="UALICE")
    body = slash_command_body("list", user_id="UALICE", channel_id="C1", response_url=url)
    assert stack.client.post(body).status_code == 200
    wait_until(lambda: stack.slack.responses("good"), 10, what="the response_url post")
    stack.wait_settled(15)
    (post,) = stack.slack.responses("good")
    assert post.status == 200
    assert [e.source for e in stack.slack.ephemerals(user="UALICE")] == ["response_url"]


def test_a_redirecting_response_url_is_not_followed(sqlite_engine, counting):
    third = counting()
    # The redirector stands where SLACK_API_URL points, so its response_url is trusted
    # and posted to; its 302 must not carry the answer anywhere else.
    redirector = counting(redirect_to=f"{third.url}steal")
    slack = WebClient(token=BOT_TOKEN, base_url=redirector.url + "api/")
    outbox = Outbox(sqlite_engine, slack, owner="test", clock=lambda: datetime.now(UTC))
    with session_scope(sqlite_engine) as s:
        mid = outbox.respond(
            s,
            response_url=f"{redirector.url}response/{SECRET_PATH}",
            channel="C1",
            user="UALICE",
            message={"text": "hello"},
        )
    (delivery,) = outbox.flush([mid])
    assert third.hits == []
    # The 302 is a refusal: the user is answered through the Web API instead.
    assert redirector.hits == [
        ("POST", f"/response/{SECRET_PATH}"),
        ("POST", "/api/chat.postEphemeral"),
    ]
    assert delivery.sent
