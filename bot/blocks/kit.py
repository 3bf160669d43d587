"""The pieces every builder in bot/blocks/ is made of; no sentences live here.

Each builder returns ``{"text": fallback, "blocks": [...]}`` built with
``slack_sdk.models`` (whose ``to_dict()`` checks Slack's per-element limits); the
50-blocks cap, which slack_sdk does not check, is kept by ``payload``.

Every text a user typed or the provider wrote (names, reasons, statuses, the
provider's messages, error sentences) goes through ``format.escape`` in the builder,
once, wherever it is shown: mrkdwn sections, contexts and the fallback ``text``
(which notifications render). Arguments are plain text unless named ``mrkdwn``.
"""

from __future__ import annotations

from collections.abc import Sequence

from slack_sdk.models.blocks import Block, ContextBlock, MarkdownTextObject, SectionBlock

from bot.blocks.format import clip

MAX_BLOCKS = 50
SECTION_LIMIT = 3000


def payload(text: str, blocks: Sequence[Block]) -> dict:
    assert len(blocks) <= MAX_BLOCKS, "a message may carry at most 50 blocks"
    return {"text": clip(text, 3000), "blocks": [b.to_dict() for b in blocks]}


def md(text: str) -> MarkdownTextObject:
    return MarkdownTextObject(text=clip(text, SECTION_LIMIT))


def section(text: str) -> SectionBlock:
    return SectionBlock(text=md(text))


def context(text: str) -> ContextBlock:
    return ContextBlock(elements=[md(clip(text, 2000))])


def thread_note(mrkdwn: str) -> dict:
    """A reply in a thread: one section of mrkdwn."""
    return payload(mrkdwn, [section(mrkdwn)])
