"""What is pending (`/snapshot pending`): open restore requests and watched work."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from slack_sdk.models.blocks import Block, HeaderBlock, PlainTextObject

from bot.blocks.format import clip, escape, mention, span, when
from bot.blocks.kit import SECTION_LIMIT, payload, section


def pending_list(requests: Sequence, watches: Sequence, now: datetime) -> dict:
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text="Pending work"))]
    if not requests and not watches:
        blocks.append(
            section("Nothing is pending: no open restore requests, no snapshots being watched.")
        )
    req_lines = [
        f"#{r.id} {r.state}: restore *{escape(r.server_name)}* from *{escape(r.snapshot_name)}* "
        f"(id `{r.snapshot_id}`), asked by {mention(r.requester)}"
        + (f", expires {when(r.expires_at)}" if r.state == "pending" else "")
        for r in requests
    ]
    watch_lines = [
        f"{'snapshot' if w.kind == 'snapshot' else 'restore of'} *{escape(w.snapshot_name)}* on "
        f"*{escape(w.server_name)}*: {escape(w.last_status)} for {span(now - w.started_at)}"
        for w in watches
    ]
    if req_lines:
        blocks.append(section(clip("*Restore requests*\n" + "\n".join(req_lines), SECTION_LIMIT)))
    if watch_lines:
        blocks.append(section(clip("*Watched*\n" + "\n".join(watch_lines), SECTION_LIMIT)))
    return payload(f"{len(requests)} open request(s), {len(watches)} watched", blocks)
