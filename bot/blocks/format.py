"""Small text helpers for messages: ages, sizes, durations, safe mrkdwn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def escape(text: str | None) -> str:
    """Slack mrkdwn needs &, < and > escaped; anything else from users is shown as typed."""
    if not text:
        return ""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def when(at: datetime | None) -> str:
    if at is None:
        return "unknown time"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def span(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min" if hours < 10 and minutes % 60 else f"{hours} h"
    days = hours // 24
    return f"{days} days"


def age(at: datetime | None, now: datetime) -> str:
    return "unknown age" if at is None else span(now - at)


def size(size_mb: int | None) -> str:
    if size_mb is None:
        return "size pending"
    if size_mb >= 1024:
        return f"{size_mb / 1024:.1f} GB"
    return f"{size_mb} MB"


def mention(user: str | None) -> str:
    return f"<@{user}>" if user else "someone"
