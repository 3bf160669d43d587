"""Who acted and where (``Actor``, from what Slack sent), and who is in a Slack user
group (``GroupCache``): what every permission check starts from."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.blocks.refusals import GROUP_GONE, groups_note
from bot.core import authz

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted and where, taken from what Slack sent (never from a button's value)."""

    user: str
    channel: str = ""
    team: str = ""
    response_url: str | None = None
    trigger_id: str | None = None
    message_ts: str | None = None  # the message a button sat on (channel: ``channel``)
    thread_ts: str | None = None  # the thread that message is in, if any
    # Whose organisation the user is of (SPEC 13.5): their own team and Grid org, and
    # the installing team as the request names it (a Slack Connect partner's
    # ``user.team_id`` differs from it).
    user_team: str = ""
    enterprise: str = ""
    home_team: str = ""
    channel_name: str = ""  # Slack's name for it: tells a DM (bot/core/conversations.py)

    @classmethod
    def from_payload(cls, p: dict) -> Actor:
        # A signed request may still carry nulls (or numbers) where Slack sends ids:
        # the audit chain hashes strings, so "" stands in for a missing id. Jobs stored
        # before the user's own team was carried fall back to the request's team.
        team = text(p.get("team"))
        return cls(
            user=text(p.get("user")),
            channel=text(p.get("channel")),
            team=team,
            response_url=p.get("response_url"),
            trigger_id=p.get("trigger_id"),
            message_ts=p.get("message_ts"),
            user_team=text(p.get("user_team", team)),
            enterprise=text(p.get("enterprise")),
            home_team=text(p.get("home_team", team)),
            channel_name=text(p.get("channel_name")),
            thread_ts=p.get("thread_ts"),
        )


class GroupCache:
    """Members of Slack user groups (usergroups.users.list), cached briefly."""

    def __init__(self, slack: WebClient, ttl: float = GROUP_CACHE_SECONDS) -> None:
        self.slack = slack
        self.ttl = ttl
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._unread: set[str] = set()  # groups Slack did not list on the last try
        self._gone: dict[str, str] = {}  # group -> Slack's GROUP_GONE error on the last try
        self._lock = threading.Lock()

    def groups_of(self, user: str, allowed: authz.Allowed) -> frozenset[str]:
        return frozenset(g for g in authz.groups_of(allowed) if user in self.members(g))

    def cached_groups_of(self, user: str, allowed: authz.Allowed) -> frozenset[str] | None:
        """``groups_of`` from the cache alone, without asking Slack; None when a group's
        members are not cached (fresh). For the request path before an ack, which
        cannot wait on Slack."""
        now = time.monotonic()
        with self._lock:
            hits = {g: self._cache.get(g) for g in authz.groups_of(allowed)}
        if any(hit is None or now - hit[0] >= self.ttl for hit in hits.values()):
            return None
        return frozenset(g for g, hit in hits.items() if user in hit[1])

    def unread_note(self, allowed: authz.Allowed) -> str:
        """What a refusal should add when it may be due to Slack, not to the person."""
        groups = sorted(authz.groups_of(allowed))
        with self._lock:
            gone = {g: self._gone[g] for g in groups if g in self._gone}
            unread = [g for g in groups if g in self._unread and g not in gone]
        return groups_note(gone, unread)

    def unusable(self, groups: Iterable[str]) -> dict[str, str]:
        """Of ``groups``, those Slack answers a GROUP_GONE error for: {group: error}.
        Asks Slack (through the cache); for the warning at start-up."""
        for group in groups:
            self.members(group)
        with self._lock:
            return {g: self._gone[g] for g in groups if g in self._gone}

    def members(self, group: str) -> frozenset[str]:
        with self._lock:
            hit = self._cache.get(group)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        try:
            users = frozenset(self.slack.usergroups_users_list(usergroup=group).get("users") or [])
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "") if exc.response is not None else ""
            if error in GROUP_GONE:
                # Fail closed, and remember why: refusals say so (not "try again").
                with self._lock:
                    self._gone[group] = error
                    self._unread.discard(group)
                    self._cache[group] = (time.monotonic(), frozenset())
                return frozenset()
            return self._unreadable(group, hit, exc)
        except (SlackClientError, OSError) as exc:
            return self._unreadable(group, hit, exc)
        with self._lock:
            self._cache[group] = (time.monotonic(), users)
            self._unread.discard(group)
            self._gone.pop(group, None)
        return users

    def _unreadable(self, group: str, hit, exc: Exception) -> frozenset[str]:
        # Fail closed: an unknown membership grants nothing.
        log.warning("could not read user group %s: %s", group, exc)
        if hit:
            return hit[1]
        with self._lock:
            self._unread.add(group)
        return frozenset()


def text(value: object) -> str:
    """A payload field as text: "" for a null (or a number) where Slack sends ids."""
    return value if isinstance(value, str) else ""
