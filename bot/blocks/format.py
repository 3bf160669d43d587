"""Small text helpers for messages: ages, sizes, durations, safe mrkdwn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def escape(text: object) -> str:
    """The one escaping of user- and provider-supplied text for mrkdwn (SPEC §14.4).

    Slack reads ``<...>`` as a mention, a broadcast or a link and ``&`` as the start of
    an entity; with these three escaped, ``<!channel>`` or ``<http://x|y>`` shows as
    typed and pings or links nothing. Text must arrive unescaped (``unescape`` at the
    boundary), so it is escaped exactly once."""
    if text is None:
        return ""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    """Undo Slack's own escaping of typed text (``&lt;`` ``&gt;`` ``&amp;``), once, on
    the way in: what the user typed is then stored and escaped again only when shown."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def when(at: datetime | None) -> str:
    if at is None:
        return "unknown time"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def local_time(at: datetime | None, fmt: str = "{date_short_pretty} {time}") -> str:
    """``at`` as Slack shows it to each reader, in their own time zone ("Yesterday
    18:30"); clients that cannot render it show the UTC time (``when``)."""
    if at is None:
        return "unknown time"
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return f"<!date^{int(at.timestamp())}^{fmt}|{when(at)}>"


def from_now(at: datetime, now: datetime) -> str:
    """How far off ``at`` is: "in 42 min", or "now" once it has passed."""
    return f"in {span(at - now)}" if at > now else "now"


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
    return f"<@{escape(user)}>" if user else "someone"
