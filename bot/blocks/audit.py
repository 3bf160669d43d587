"""The audit log as a user sees it in Slack (`/snapshot audit`); the full export is
the command line's (`snapbot audit export`)."""

from __future__ import annotations

from collections.abc import Sequence

from slack_sdk.models.blocks import Block, HeaderBlock, PlainTextObject, SectionBlock

from bot.blocks.answers import text_message
from bot.blocks.format import clip, escape, mention, when
from bot.blocks.kit import MAX_BLOCKS, SECTION_LIMIT, context, payload, section

# The whole list's text: well inside what Slack accepts in one message's blocks.
AUDIT_TEXT_BUDGET = 11_000


def audit_list(events: Sequence) -> dict:
    if not events:
        return text_message("The audit log is empty.")
    icon = {"ok": ":white_check_mark:", "denied": ":no_entry:", "error": ":x:"}
    lines = []
    for e in events:
        actor = mention(e.actor) if e.actor else "snapbot"
        target = f" `{escape(e.target)}`" if e.target else ""
        detail = f" — {escape(clip(e.detail, 120))}" if e.detail else ""
        lines.append(
            f"{icon.get(e.outcome, '')} #{e.id} {when(e.at)} {actor} *{escape(e.action)}*{target}{detail}"
        )
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"Audit log — last {len(events)} event(s)"))
    ]
    chunk: list[str] = []
    total = 0
    for line in lines:  # pack lines into sections of at most 3000 characters
        line = clip(line, SECTION_LIMIT - 10)  # one huge line still fits a section alone
        total += len(line) + 1
        if total > AUDIT_TEXT_BUDGET:  # Slack refuses a message whose blocks are too long
            break
        if chunk and (
            sum(len(x) + 1 for x in chunk) + len(line) > SECTION_LIMIT - 10 or len(chunk) >= 40
        ):
            blocks.append(section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
        if len(blocks) >= MAX_BLOCKS - 2:
            break
    if chunk and len(blocks) < MAX_BLOCKS - 1:
        blocks.append(section("\n".join(chunk)))
    shown = sum(b.text.text.count("\n") + 1 for b in blocks if isinstance(b, SectionBlock))
    if shown < len(lines):
        blocks.append(
            context(f"{len(lines) - shown} older event(s) not shown; use `snapbot audit export`.")
        )
    return payload(f"Audit log: last {len(events)} event(s)", blocks)
