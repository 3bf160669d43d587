"""How to use a command: the usage text (from bot/core/commands.py) and what was
wrong with what was typed."""

from __future__ import annotations

from slack_sdk.models.blocks import Block

from bot.blocks.format import escape
from bot.blocks.kit import payload, section


def usage_message(usage: str, problem: str | None = None) -> dict:
    blocks: list[Block] = []
    if problem:
        blocks.append(section(f":warning: {escape(problem)}"))
    # Slack reads <...> as a link even inside a code block: `<server>` must be escaped.
    blocks.append(section("```" + escape(usage) + "```"))
    return payload((escape(problem) + "\n" if problem else "") + escape(usage), blocks)
