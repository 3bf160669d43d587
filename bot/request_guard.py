"""What a body must look like before Bolt sees it (SPEC §8: the bot never crashes
on bad input).

Bolt parses a request body and reads ids out of it before any listener (or our
error handler) runs, trusting it to have Slack's shape: a JSON ``payload`` that is
a list, a ``user`` that is a number, an empty ``actions`` list or bytes that are not
UTF-8 escape as a 500. ``problem()`` reads the body the way Bolt will and names the
first thing Slack would never send; the web app answers such a request 400 (401
when it is not signed) and Bolt never sees it.

Standard library only.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

# Slack sends these four as objects at the top of an interactivity payload (the
# listeners read ids out of them); deeper down (a message, an event) they may be ids.
_PARTIES = ("user", "team", "channel", "enterprise")
_OBJECTS = (
    "container",
    "view",
    "message",
    "previous_message",
    "event",
    "item",
    "assistant_thread",
    "function_data",
    "state",
)
_STRINGS = (
    "type",
    "id",
    "callback_id",
    "action_id",
    "block_id",
    "value",
    "response_url",
    "trigger_id",
    "user_id",
    "channel_id",
    "team_id",
    "enterprise_id",
    "message_ts",
    "ts",
    "thread_ts",
    "private_metadata",
    "function_execution_id",
)
_LISTS = ("actions", "authorizations", "response_urls")
_MAX_DEPTH = 6


def problem(body: bytes, content_type: str | None) -> str | None:
    """Why Bolt must not see ``body``, or None when it has Slack's shape."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not text:
        return None
    try:
        if ctype == "application/json" or text.startswith("{"):  # as Bolt decides
            data = json.loads(text)
        elif "payload" in text:
            payload = dict(parse_qsl(text, keep_blank_values=True)).get("payload")
            if payload is None:
                return None
            data = json.loads(payload)
        else:
            return None  # a form (slash command): every value is a string
    except (ValueError, RecursionError):  # (nesting deeper than the parser's stack)
        return "the JSON in the body does not parse"
    if not isinstance(data, dict):
        return "the payload is not a JSON object"
    found = _shape_problem(data, "payload", 0)
    if found:
        return found
    kind = data.get("type")
    if kind == "block_actions" and not (
        data.get("actions") and all(isinstance(a.get("action_id"), str) for a in data["actions"])
    ):
        return "a block_actions payload without actions, or an action without an action_id"
    view = data.get("view")
    if kind in ("view_submission", "view_closed") and not (
        isinstance(view, dict)
        # (Bolt reads view.type of every view_submission, for workflow steps)
        and all(isinstance(view.get(key), str) for key in ("callback_id", "type"))
    ):
        return f"a {kind} payload without a view type and callback_id"
    url = data.get("response_url")
    if url and not url.startswith(("https://", "http://")):
        return "payload.response_url is not a URL"
    if data.get("is_ext_shared_channel") is True and not isinstance(data.get("event"), dict):
        return "a shared-channel payload without an event object"
    if isinstance(view, dict):
        values = (view.get("state") or {}).get("values")
        if values is not None and not _is_state_values(values):
            return "view.state.values is not an object of input states"
    return None


def _is_state_values(values) -> bool:
    """{block_id: {action_id: {"value": str} or {"selected_option": {"value": str}}}}"""
    if not isinstance(values, dict):
        return False
    for block in values.values():
        if not isinstance(block, dict):
            return False
        for field in block.values():
            if not isinstance(field, dict):
                return False
            option = field.get("selected_option")
            if option is not None and not isinstance(option, dict):
                return False
    return True


def _shape_problem(obj: dict, path: str, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return None  # nothing Bolt or a listener reads lies this deep
    for key in _STRINGS:
        value = obj.get(key)
        if (value is not None or (key == "id" and key in obj)) and not isinstance(value, str):
            return f"{path}.{key} is not a string"
    for key in _PARTIES + _OBJECTS:
        value = obj.get(key)
        if value is None or (depth > 0 and key in _PARTIES and isinstance(value, str)):
            continue
        if not isinstance(value, dict):
            return f"{path}.{key} is not an object"
        found = _shape_problem(value, f"{path}.{key}", depth + 1)
        if found:
            return found
    for key in _LISTS:
        value = obj.get(key)
        if value is None and (key != "response_urls" or key not in obj):
            continue  # (Bolt takes the length of response_urls whenever it is there)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            return f"{path}.{key} is not a list of objects"
        for i, item in enumerate(value):
            found = _shape_problem(item, f"{path}.{key}[{i}]", depth + 1)
            if found:
                return found
    return None
