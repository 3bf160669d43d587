"""Block Kit payload checks: the limits Slack enforces with `invalid_blocks`.

Two passes over every payload:

1. slack_sdk's own model classes (`Block.parse(...).to_dict()`, `View(...).to_dict()`),
   which run the per-element validators slack_sdk knows about;
2. a walk over the raw dicts for what slack_sdk does not check: the 50-block cap
   (100 in a modal), empty texts, plain_text where Slack demands it, confirm
   dialogs, unique `block_id`s per message and unique `action_id`s per block.

Every function returns a list of human-readable problems (empty means valid), so a
test can print all of them at once. Standard library and slack_sdk only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

__all__ = [
    "MAX_BLOCKS_MESSAGE",
    "MAX_BLOCKS_MODAL",
    "assert_valid_message_blocks",
    "assert_valid_view",
    "message_warnings",
    "validate_blocks",
    "validate_message_blocks",
    "validate_view",
]

MAX_BLOCKS_MESSAGE = 50
MAX_BLOCKS_MODAL = 100
MAX_SECTION_TEXT = 3000
MAX_SECTION_FIELD = 2000
MAX_SECTION_FIELDS = 10
MAX_HEADER_TEXT = 150
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
MAX_URL = 3000
MAX_ID = 255
MAX_CONFIRM_TITLE = 100
MAX_CONFIRM_TEXT = 300
MAX_CONFIRM_BUTTON = 30
MAX_ACTIONS_ELEMENTS = 25
MAX_CONTEXT_ELEMENTS = 10
MAX_OPTIONS = 100
MAX_OPTION_TEXT = 75
MAX_OPTION_VALUE = 150
MAX_PLACEHOLDER = 150
MAX_INPUT_LABEL = 2000
MAX_INPUT_HINT = 2000
MAX_MODAL_TITLE = 24
MAX_MODAL_BUTTON = 24
MAX_PRIVATE_METADATA = 3000
MAX_MESSAGE_TEXT = 40000

_TEXT_TYPES = {"plain_text", "mrkdwn"}
_BUTTON_STYLES = {"primary", "danger"}
_SELECT_TYPES = {
    "static_select",
    "multi_static_select",
    "overflow",
    "radio_buttons",
    "checkboxes",
}

# slack_sdk logs a warning for every unknown block or key it meets; our own
# problem list already says so, and the noise would drown real log output.
_SDK_LOGGERS = ("slack_sdk.models.blocks.blocks", "slack_sdk.models.views", "slack_sdk.models")


def validate_message_blocks(blocks: Any) -> list[str]:
    """Problems Slack would answer `invalid_blocks` for, in a message's `blocks`."""
    return validate_blocks(blocks, max_blocks=MAX_BLOCKS_MESSAGE)


def validate_blocks(blocks: Any, *, max_blocks: int = MAX_BLOCKS_MESSAGE) -> list[str]:
    """Problems in a list of blocks (a message's, or a view's with max_blocks=100)."""
    blocks = _loads_if_json(blocks)
    if not isinstance(blocks, list):
        return [f"blocks must be a JSON array, got {type(blocks).__name__}"]
    problems: list[str] = []
    if len(blocks) > max_blocks:
        problems.append(f"{len(blocks)} blocks; Slack allows at most {max_blocks}")
    seen_block_ids: dict[str, int] = {}
    for index, raw in enumerate(blocks):
        where = f"blocks[{index}]"
        block, problem = _as_dict(raw)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if block_id in seen_block_ids:
                first = seen_block_ids[block_id]
                problems.append(f"{where}: block_id {block_id!r} already used by blocks[{first}]")
            else:
                seen_block_ids[block_id] = index
        problems.extend(_check_block(block, where))
        problems.extend(_sdk_block_problems(block, where))
    return problems


def validate_view(view: Any) -> list[str]:
    """Problems in a `views.open` / `views.update` view (modal or home tab)."""
    view = _loads_if_json(view)
    if isinstance(view, View):
        try:
            view = view.to_dict()
        except Exception as exc:  # slack_sdk raises SlackObjectFormationError and others
            return [f"view: {exc}"]
    if not isinstance(view, Mapping):
        return [f"view must be a JSON object, got {type(view).__name__}"]
    problems: list[str] = []
    kind = view.get("type")
    if kind not in ("modal", "home"):
        problems.append(f"view.type must be 'modal' or 'home', got {kind!r}")
    if kind == "modal":
        if "title" not in view:
            problems.append("view.title is required for a modal")
        problems.extend(
            _check_text(view.get("title"), "view.title", plain=True, limit=MAX_MODAL_TITLE)
        )
        for key in ("submit", "close"):
            if key in view:
                problems.extend(
                    _check_text(view[key], f"view.{key}", plain=True, limit=MAX_MODAL_BUTTON)
                )
        blocks = view.get("blocks")
        has_input = isinstance(blocks, list) and any(
            isinstance(b, Mapping) and b.get("type") == "input" for b in blocks
        )
        if has_input and "submit" not in view:
            problems.append("view.submit is required when a modal has input blocks")
    for key, limit in (("callback_id", MAX_ID), ("external_id", MAX_ID)):
        problems.extend(_check_str(view.get(key), f"view.{key}", limit))
    problems.extend(
        _check_str(view.get("private_metadata"), "view.private_metadata", MAX_PRIVATE_METADATA)
    )
    if "blocks" not in view:
        problems.append("view.blocks is required")
    else:
        problems.extend(
            f"view.{p}" for p in validate_blocks(view["blocks"], max_blocks=MAX_BLOCKS_MODAL)
        )
    if not problems:
        try:
            with _quiet_sdk():
                View(**dict(view)).to_dict()
        except Exception as exc:  # whatever slack_sdk objects to, Slack would too
            problems.append(f"view (slack_sdk): {exc}")
    return problems


def message_warnings(params: Mapping[str, Any]) -> list[str]:
    """Things Slack accepts but a careful app avoids (no fallback `text` with blocks)."""
    warnings: list[str] = []
    blocks = params.get("blocks")
    attachments = params.get("attachments")
    text = params.get("text")
    if (blocks or attachments) and not (isinstance(text, str) and text.strip()):
        warnings.append(
            "blocks sent without a top-level `text` fallback "
            "(notifications and screen readers show nothing)"
        )
    if isinstance(text, str) and len(text) > MAX_MESSAGE_TEXT:
        warnings.append(f"text has {len(text)} characters; Slack truncates at {MAX_MESSAGE_TEXT}")
    return warnings


def assert_valid_message_blocks(blocks: Any) -> None:
    """For builder unit tests: raise AssertionError listing every problem."""
    problems = validate_message_blocks(blocks)
    if problems:
        raise AssertionError("invalid message blocks:\n  " + "\n  ".join(problems))


def assert_valid_view(view: Any) -> None:
    """For builder unit tests: raise AssertionError listing every problem."""
    problems = validate_view(view)
    if problems:
        raise AssertionError("invalid view:\n  " + "\n  ".join(problems))


# -- the raw walk ---------------------------------------------------------------------


def _check_block(block: Mapping[str, Any], where: str) -> list[str]:
    problems = _check_str(block.get("block_id"), f"{where}.block_id", MAX_ID)
    kind = block.get("type")
    if kind == "section":
        if "text" not in block and "fields" not in block:
            problems.append(f"{where}: a section needs `text` or `fields`")
        if "text" in block:
            problems += _check_text(block["text"], f"{where}.text", limit=MAX_SECTION_TEXT)
        fields = block.get("fields")
        if fields is not None:
            if not isinstance(fields, list) or not fields:
                problems.append(f"{where}.fields must be a non-empty array")
            else:
                if len(fields) > MAX_SECTION_FIELDS:
                    problems.append(
                        f"{where}.fields has {len(fields)} items; at most {MAX_SECTION_FIELDS}"
                    )
                for i, field in enumerate(fields):
                    problems += _check_text(field, f"{where}.fields[{i}]", limit=MAX_SECTION_FIELD)
        if "accessory" in block:
            problems += _check_elements([block["accessory"]], f"{where}.accessory", single=True)
    elif kind == "header":
        problems += _check_text(
            block.get("text"), f"{where}.text", plain=True, limit=MAX_HEADER_TEXT
        )
    elif kind == "actions":
        elements = block.get("elements")
        if not isinstance(elements, list) or not elements:
            problems.append(f"{where}.elements must be a non-empty array")
        else:
            if len(elements) > MAX_ACTIONS_ELEMENTS:
                problems.append(
                    f"{where}.elements has {len(elements)} items; at most {MAX_ACTIONS_ELEMENTS}"
                )
            problems += _check_elements(elements, f"{where}.elements")
    elif kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not elements:
            problems.append(f"{where}.elements must be a non-empty array")
        else:
            if len(elements) > MAX_CONTEXT_ELEMENTS:
                problems.append(
                    f"{where}.elements has {len(elements)} items; at most {MAX_CONTEXT_ELEMENTS}"
                )
            for i, element in enumerate(elements):
                if isinstance(element, Mapping) and element.get("type") in _TEXT_TYPES:
                    problems += _check_text(element, f"{where}.elements[{i}]")
    elif kind == "input":
        problems += _check_text(
            block.get("label"), f"{where}.label", plain=True, limit=MAX_INPUT_LABEL
        )
        if "hint" in block:
            problems += _check_text(
                block["hint"], f"{where}.hint", plain=True, limit=MAX_INPUT_HINT
            )
        if "element" not in block:
            problems.append(f"{where}: an input block needs an `element`")
        else:
            problems += _check_elements([block["element"]], f"{where}.element", single=True)
    return problems


def _check_elements(elements: Sequence[Any], where: str, *, single: bool = False) -> list[str]:
    problems: list[str] = []
    seen_action_ids: dict[str, int] = {}
    for i, raw in enumerate(elements):
        at = where if single else f"{where}[{i}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{at}: an element must be an object")
            continue
        action_id = raw.get("action_id")
        problems += _check_str(action_id, f"{at}.action_id", MAX_ID)
        if isinstance(action_id, str):
            if action_id in seen_action_ids:
                problems.append(
                    f"{at}: action_id {action_id!r} repeats {where}[{seen_action_ids[action_id]}] "
                    "(action_ids must be unique within a block)"
                )
            else:
                seen_action_ids[action_id] = i
        problems += _check_element(raw, at)
    return problems


def _check_element(element: Mapping[str, Any], at: str) -> list[str]:
    kind = element.get("type")
    problems: list[str] = []
    if kind == "button":
        problems += _check_text(
            element.get("text"), f"{at}.text", plain=True, limit=MAX_BUTTON_TEXT
        )
        problems += _check_str(element.get("value"), f"{at}.value", MAX_BUTTON_VALUE)
        problems += _check_str(element.get("url"), f"{at}.url", MAX_URL)
        style = element.get("style")
        if style is not None and style not in _BUTTON_STYLES:
            problems.append(f"{at}.style must be 'primary' or 'danger', got {style!r}")
    elif kind in _SELECT_TYPES or kind == "external_select":
        options = element.get("options")
        if options is not None:
            if not isinstance(options, list) or not options:
                problems.append(f"{at}.options must be a non-empty array")
            else:
                if len(options) > MAX_OPTIONS:
                    problems.append(f"{at}.options has {len(options)} items; at most {MAX_OPTIONS}")
                for j, option in enumerate(options):
                    problems += _check_option(option, f"{at}.options[{j}]", kind)
    if "placeholder" in element:
        problems += _check_text(
            element["placeholder"], f"{at}.placeholder", plain=True, limit=MAX_PLACEHOLDER
        )
    if "confirm" in element:
        problems += _check_confirm(element["confirm"], f"{at}.confirm")
    return problems


def _check_option(option: Any, at: str, element_type: str | None) -> list[str]:
    if not isinstance(option, Mapping):
        return [f"{at}: an option must be an object"]
    # checkboxes and radio buttons may use mrkdwn; selects and overflow need plain_text
    plain = element_type not in ("checkboxes", "radio_buttons")
    problems = _check_text(option.get("text"), f"{at}.text", plain=plain, limit=MAX_OPTION_TEXT)
    value = option.get("value")
    if value is None:
        problems.append(f"{at}.value is required")
    problems += _check_str(value, f"{at}.value", MAX_OPTION_VALUE)
    return problems


def _check_confirm(confirm: Any, at: str) -> list[str]:
    if not isinstance(confirm, Mapping):
        return [f"{at}: a confirm dialog must be an object"]
    problems = _check_text(confirm.get("title"), f"{at}.title", plain=True, limit=MAX_CONFIRM_TITLE)
    problems += _check_text(confirm.get("text"), f"{at}.text", limit=MAX_CONFIRM_TEXT)
    for key in ("confirm", "deny"):
        problems += _check_text(
            confirm.get(key), f"{at}.{key}", plain=True, limit=MAX_CONFIRM_BUTTON
        )
    style = confirm.get("style")
    if style is not None and style not in _BUTTON_STYLES:
        problems.append(f"{at}.style must be 'primary' or 'danger', got {style!r}")
    return problems


def _check_text(obj: Any, at: str, *, plain: bool = False, limit: int | None = None) -> list[str]:
    if obj is None:
        return [f"{at} is required"]
    if not isinstance(obj, Mapping):
        return [f"{at} must be a text object {{type, text}}, got {type(obj).__name__}"]
    kind = obj.get("type")
    if kind not in _TEXT_TYPES:
        return [f"{at}.type must be plain_text or mrkdwn, got {kind!r}"]
    if plain and kind != "plain_text":
        return [f"{at} must be plain_text, got mrkdwn"]
    text = obj.get("text")
    if not isinstance(text, str):
        return [f"{at}.text must be a string"]
    if not text:
        return [f"{at}.text is empty (Slack requires at least 1 character)"]
    if limit is not None and len(text) > limit:
        return [f"{at}.text has {len(text)} characters; Slack allows at most {limit}"]
    return []


def _check_str(value: Any, at: str, limit: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, str):
        return [f"{at} must be a string, got {type(value).__name__}"]
    if len(value) > limit:
        return [f"{at} has {len(value)} characters; Slack allows at most {limit}"]
    return []


# -- the slack_sdk pass ---------------------------------------------------------------


def _sdk_block_problems(block: Mapping[str, Any], where: str) -> list[str]:
    try:
        with _quiet_sdk():
            parsed = Block.parse(dict(block))
            if parsed is None:
                return [f"{where}: unknown block type {block.get('type')!r}"]
            parsed.to_dict()
    except Exception as exc:  # whatever slack_sdk objects to, Slack would too
        return [f"{where} (slack_sdk): {exc}"]
    unknown = sorted(set(block) - set(parsed.attributes) - {"type"})
    if unknown:
        return [f"{where}: unknown field(s) {', '.join(unknown)} for a {block.get('type')} block"]
    return []


def _as_dict(raw: Any) -> tuple[dict[str, Any], str | None]:
    if isinstance(raw, Block):
        try:
            return raw.to_dict(), None
        except Exception as exc:  # slack_sdk validation failure
            return {}, f"(slack_sdk): {exc}"
    if not isinstance(raw, Mapping):
        return {}, f"a block must be an object, got {type(raw).__name__}"
    if "type" not in raw:
        return {}, "a block needs a `type`"
    return dict(raw), None


def _loads_if_json(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, tuple):
        return list(value)
    return value


class _DropWhileChecking(logging.Filter):
    """Drops slack_sdk's own warnings raised inside our checks, in this thread only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_checking, "active", False)


_checking = threading.local()
_FILTER = _DropWhileChecking()
for _name in _SDK_LOGGERS:
    if _FILTER not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_FILTER)


@contextlib.contextmanager
def _quiet_sdk() -> Iterator[None]:
    _checking.active = True
    try:
        yield
    finally:
        _checking.active = False
