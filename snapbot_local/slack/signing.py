"""Requests exactly as Slack sends them to an app: bodies, signatures, a sender.

Slack POSTs slash commands as a form and interactivity (buttons, modal submissions)
as a form with one field, `payload=<JSON>`, each signed with the app's signing
secret: `X-Slack-Signature: v0=hex(HMAC-SHA256(secret, "v0:{timestamp}:{raw body}"))`.
Bolt refuses (401) anything whose signature or timestamp (±5 min) is off.

    body = slash_command_body("restore 801 bad deploy", user_id="U2",
                              response_url=fake.response_url("cmd", channel="C1", user="U2"))
    SlackClientSim(app_url, secret).post(body)

`button_press_body(message, action_id, ...)` presses a button on a message the fake
Slack API recorded, so a test drives the app the way a person would.

Standard library, plus httpx for SlackClientSim.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import httpx

__all__ = [
    "DEFAULT_API_APP_ID",
    "UNSET_RESPONSE_URL",
    "SlackClientSim",
    "block_actions_body",
    "button_press_body",
    "find_button",
    "new_trigger_id",
    "sign",
    "slash_command_body",
    "view_submission_body",
]

DEFAULT_API_APP_ID = "AFAKEAPP"
DEFAULT_TEAM_DOMAIN = "fake-workspace"
DEFAULT_CHANNEL_NAME = "general"
# Deliberately unroutable (the discard port on loopback): an app that answers a
# request built without a response_url fails fast instead of calling the internet.
UNSET_RESPONSE_URL = "http://127.0.0.1:9/response/unset"
_VERIFICATION_TOKEN = "fake-verification-token"  # deprecated field Slack still sends
_counter = itertools.count(1)


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends with `body`: timestamp, v0 signature, content type."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    basestring = b"v0:" + str(ts).encode() + b":" + body
    digest = hmac.new(secret.encode(), basestring, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": f"v0={digest}",
    }


def new_trigger_id() -> str:
    """A unique trigger_id shaped like Slack's (`digits.digits.hex`)."""
    return f"{next(_counter)}.{int(time.time())}.{secrets.token_hex(10)}"


def _username(user_id: str, user_name: str | None) -> str:
    return user_name if user_name is not None else f"user-{user_id.lower()}"


def slash_command_body(
    text: str,
    *,
    user_id: str = "U1",
    user_name: str | None = None,
    channel_id: str = "C1",
    channel_name: str = DEFAULT_CHANNEL_NAME,
    team_id: str = "T1",
    team_domain: str = DEFAULT_TEAM_DOMAIN,
    enterprise_id: str | None = None,
    api_app_id: str = DEFAULT_API_APP_ID,
    response_url: str = UNSET_RESPONSE_URL,
    trigger_id: str | None = None,
    command: str = "/snapshot",
) -> bytes:
    """A slash command's form body with every field Slack sends (enterprise_id only on
    Enterprise Grid, i.e. when given)."""
    fields: list[tuple[str, str]] = [
        ("token", _VERIFICATION_TOKEN),
        ("team_id", team_id),
        ("team_domain", team_domain),
    ]
    if enterprise_id is not None:
        fields += [("enterprise_id", enterprise_id), ("enterprise_name", "Fake Grid")]
    fields += [
        ("channel_id", channel_id),
        ("channel_name", channel_name),
        ("user_id", user_id),
        ("user_name", _username(user_id, user_name)),
        ("command", command),
        ("text", text),
        ("api_app_id", api_app_id),
        ("is_enterprise_install", "false"),
        ("response_url", response_url),
        ("trigger_id", trigger_id or new_trigger_id()),
    ]
    return urlencode(fields).encode()


def block_actions_body(
    action_id: str,
    value: str | None,
    *,
    user_id: str = "U1",
    user_name: str | None = None,
    channel_id: str = "C1",
    channel_name: str = DEFAULT_CHANNEL_NAME,
    message_ts: str,
    block_id: str = "b",
    response_url: str = UNSET_RESPONSE_URL,
    trigger_id: str | None = None,
    message_blocks: Sequence[Mapping[str, Any]] | None = None,
    message_text: str = "",
    is_ephemeral: bool = False,
    team_id: str = "T1",
    team_domain: str = DEFAULT_TEAM_DOMAIN,
    user_team_id: str | None = None,
    enterprise_id: str | None = None,
    api_app_id: str = DEFAULT_API_APP_ID,
    button_text: str = "Button",
    action_type: str = "button",
) -> bytes:
    """A `block_actions` delivery (a button press) as Slack posts it.

    `message` is absent for an ephemeral message, as in Slack: the app must rely on
    `container.message_ts`. The actor is `user.id`, never anything in `value`.
    `user_team_id`: the presser's own team when it is not `team_id` (a Slack Connect
    partner in a shared channel); `enterprise_id`: the Enterprise Grid org, if any."""
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "type": action_type,
        "text": {"type": "plain_text", "text": button_text, "emoji": True},
        "action_ts": f"{time.time():.6f}",
    }
    if value is not None:
        action["value"] = value
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {
            "id": user_id,
            "username": _username(user_id, user_name),
            "name": _username(user_id, user_name),
            "team_id": user_team_id or team_id,
        },
        "api_app_id": api_app_id,
        "token": _VERIFICATION_TOKEN,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": is_ephemeral,
        },
        "trigger_id": trigger_id or new_trigger_id(),
        "team": _team(team_id, team_domain, enterprise_id),
        "enterprise": _enterprise(enterprise_id),
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action],
    }
    if not is_ephemeral:
        payload["message"] = {
            "type": "message",
            "subtype": "bot_message",
            "user": "UBOT",
            "bot_id": "BBOT",
            "ts": message_ts,
            "text": message_text,
            "blocks": list(message_blocks or []),
        }
    return _payload_form(payload)


def find_button(
    blocks: Sequence[Mapping[str, Any]] | None,
    action_id: str,
    *,
    value: str | None = None,
    block_id: str | None = None,
) -> tuple[str | None, dict[str, Any]]:
    """(block_id, element) of the button `action_id` in `blocks` (sections' accessories
    and actions blocks); `value` / `block_id` pick one of several. LookupError lists
    the buttons there are when none matches."""
    seen: list[str] = []
    for block in blocks or []:
        elements = list(block.get("elements") or [])
        if block.get("accessory"):
            elements.append(block["accessory"])
        for element in elements:
            if not isinstance(element, Mapping) or "action_id" not in element:
                continue
            seen.append(f"{element['action_id']}={element.get('value')!r}@{block.get('block_id')}")
            if element["action_id"] != action_id:
                continue
            if value is not None and element.get("value") != value:
                continue
            if block_id is not None and block.get("block_id") != block_id:
                continue
            return block.get("block_id"), dict(element)
    raise LookupError(
        f"no button {action_id!r} (value={value!r}) among: {', '.join(seen) or 'none'}"
    )


def button_press_body(
    message: Any,
    action_id: str,
    *,
    value: str | None = None,
    block_id: str | None = None,
    user_id: str = "U1",
    response_url: str = UNSET_RESPONSE_URL,
    trigger_id: str | None = None,
    **kwargs: Any,
) -> bytes:
    """Press the button `action_id` on `message`: a FakeSlack `Message` or `Ephemeral`,
    or a dict with `ts`/`message_ts`, `channel` and `blocks`. The body carries the
    button's own block_id, value and text, and the message as it now stands."""

    def attr(name: str) -> Any:
        if isinstance(message, Mapping):
            return message.get(name)
        return getattr(message, name, None)

    blocks = attr("blocks") or []
    found_block_id, element = find_button(blocks, action_id, value=value, block_id=block_id)
    ephemeral = attr("message_ts") is not None and attr("ts") is None
    ts = attr("ts") or attr("message_ts")
    if ts is None:
        raise ValueError("the message has neither `ts` nor `message_ts`")
    channel = attr("channel") or kwargs.pop("channel_id", "C1")
    text = element.get("text") or {}
    return block_actions_body(
        action_id,
        element.get("value"),
        user_id=user_id,
        channel_id=channel,
        message_ts=ts,
        block_id=found_block_id or "b",
        response_url=response_url,
        trigger_id=trigger_id,
        message_blocks=blocks,
        message_text=attr("text") or "",
        is_ephemeral=ephemeral,
        button_text=text.get("text", "Button") if isinstance(text, Mapping) else "Button",
        action_type=element.get("type", "button"),
        **kwargs,
    )


def view_submission_body(
    callback_id: str,
    values: Mapping[str, Mapping[str, Any]],
    *,
    user_id: str = "U1",
    user_name: str | None = None,
    private_metadata: str = "",
    team_id: str = "T1",
    team_domain: str = DEFAULT_TEAM_DOMAIN,
    user_team_id: str | None = None,
    enterprise_id: str | None = None,
    installed_team_id: str | None = None,
    view_id: str | None = None,
    api_app_id: str = DEFAULT_API_APP_ID,
    trigger_id: str | None = None,
    view_blocks: Sequence[Mapping[str, Any]] | None = None,
    title: str = "snapbot",
) -> bytes:
    """A modal submission. `values[block_id][action_id]` is a string (a text input),
    None (an empty optional input), a dict `{"value": ..., "text": ...}` (the
    selected option of a static select), or a full state dict with a `type`.
    A modal opened from a Slack Connect channel by the other side names that side's
    team in `team` and `view.team_id`, and ours only in `view.app_installed_team_id`
    (`installed_team_id`), as in bolt-python's tests/scenario_tests/test_view_submission.py."""
    state: dict[str, dict[str, Any]] = {}
    for block_id, actions in values.items():
        state[block_id] = {}
        for action_id, raw in actions.items():
            state[block_id][action_id] = _state_value(raw)
    vid = view_id or f"V{next(_counter):08d}"
    payload = {
        "type": "view_submission",
        "team": _team(team_id, team_domain, enterprise_id),
        "user": {
            "id": user_id,
            "username": _username(user_id, user_name),
            "name": _username(user_id, user_name),
            "team_id": user_team_id or team_id,
        },
        "api_app_id": api_app_id,
        "token": _VERIFICATION_TOKEN,
        "trigger_id": trigger_id or new_trigger_id(),
        "view": {
            "id": vid,
            "team_id": team_id,
            "type": "modal",
            "blocks": list(view_blocks or []),
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": state},
            "hash": f"{time.time():.6f}.{secrets.token_hex(4)}",
            "title": {"type": "plain_text", "text": title, "emoji": True},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": {"type": "plain_text", "text": "Cancel", "emoji": True},
            "submit": {"type": "plain_text", "text": "Submit", "emoji": True},
            "previous_view_id": None,
            "root_view_id": vid,
            "app_id": api_app_id,
            "external_id": "",
            "app_installed_team_id": installed_team_id or team_id,
            "bot_id": "BBOT",
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": _enterprise(enterprise_id),
    }
    return _payload_form(payload)


def _team(team_id: str, domain: str, enterprise_id: str | None) -> dict[str, Any]:
    team: dict[str, Any] = {"id": team_id, "domain": domain}
    if enterprise_id is not None:
        team.update(enterprise_id=enterprise_id, enterprise_name="Fake Grid")
    return team


def _enterprise(enterprise_id: str | None) -> dict[str, Any] | None:
    return {"id": enterprise_id, "name": "Fake Grid"} if enterprise_id is not None else None


def _state_value(raw: Any) -> dict[str, Any]:
    if raw is None or isinstance(raw, str):
        return {"type": "plain_text_input", "value": raw}
    if isinstance(raw, Mapping) and "type" in raw:
        return dict(raw)
    if isinstance(raw, Mapping) and "value" in raw:
        text = raw.get("text", raw["value"])
        if isinstance(text, str):
            text = {"type": "plain_text", "text": text, "emoji": True}
        option = {"text": text, "value": raw["value"]}
        return {"type": "static_select", "selected_option": option}
    raise TypeError(f"cannot express {raw!r} as a view state value")


def _payload_form(payload: Mapping[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode()


class SlackClientSim:
    """Posts signed bodies to an app's request URL the way Slack's servers do.

    with SlackClientSim("http://127.0.0.1:3000/slack/events", secret) as slack:
        assert slack.post(slash_command_body("list")).status_code == 200
    """

    def __init__(
        self,
        url: str,
        signing_secret: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.signing_secret = signing_secret
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def post(
        self,
        body: bytes,
        *,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
        timestamp: int | None = None,
        bad_signature: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST `body` signed now (or at `timestamp`). `retry_num` adds Slack's
        redelivery headers; `bad_signature` signs with the wrong secret."""
        secret = self.signing_secret + ("-wrong" if bad_signature else "")
        all_headers = sign(secret, body, timestamp)
        if retry_num is not None:
            all_headers["X-Slack-Retry-Num"] = str(retry_num)
            all_headers["X-Slack-Retry-Reason"] = retry_reason
        all_headers.update(headers or {})
        return self._client.post(self.url, content=body, headers=all_headers)

    def command(self, text: str, **kwargs: Any) -> httpx.Response:
        return self.post(slash_command_body(text, **kwargs))

    def press(self, message: Any, action_id: str, **kwargs: Any) -> httpx.Response:
        return self.post(button_press_body(message, action_id, **kwargs))

    def submit(
        self, callback_id: str, values: Mapping[str, Mapping[str, Any]], **kwargs: Any
    ) -> httpx.Response:
        return self.post(view_submission_body(callback_id, values, **kwargs))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SlackClientSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
