"""Who may do what (SPEC §2: SNAPSHOT_OPERATORS, SNAPSHOT_APPROVERS), and who may act
at all (SPEC 13.5, 14.3: a well-formed Slack user of the installing organisation).

An allow-list is a set of Slack user IDs (``U…``/``W…``) and user-group IDs (``S…``);
``None`` means nobody is excluded. Group membership is resolved by the shell and
handed in, so these stay pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

Allowed = frozenset[str] | None


def groups_of(allowed: Allowed) -> frozenset[str]:
    return frozenset(i for i in allowed or () if i.startswith("S"))


def is_allowed(actor: str, actor_groups: Iterable[str], allowed: Allowed) -> bool:
    if allowed is None:
        return True
    return actor in allowed or any(g in allowed for g in actor_groups)


def describe_allowed(allowed: Allowed) -> str:
    if allowed is None:
        return "everyone"
    if not allowed:
        return "nobody (the list is empty)"
    users = sorted(i for i in allowed if not i.startswith("S"))
    groups = sorted(groups_of(allowed))
    parts = [f"<@{u}>" for u in users] + [f"<!subteam^{g}>" for g in groups]
    return ", ".join(parts)


# --- who may act at all (SPEC 13.5, 14.3): checked at the door, before any use case

# A Slack user ID: U (or W, Enterprise Grid) and one or more upper-case letters or digits.
_USER_ID = re.compile(r"[UW][A-Z0-9]+")


def is_user_id(value: object) -> bool:
    """Whether ``value`` has the shape of a Slack user ID; "", " ", "u2" or "../U2"
    do not, whatever the rest of a (signed) request says."""
    return isinstance(value, str) and _USER_ID.fullmatch(value) is not None


def outsider(
    *,
    user_team: str,
    user_enterprise: str,
    home_team: str,
    home_enterprise: str,
    allowed_teams: frozenset[str],
) -> str | None:
    """Why this user is not of the organisation that installed the bot, or None.

    ``user_team`` is the user's own team (``user.team_id``; a Slack Connect partner's
    differs from ours); ``home_team``/``home_enterprise`` are the installing workspace
    and its Enterprise Grid org ("" when it has none or it is unknown). Teams listed in
    ``allowed_teams`` (SLACK_ALLOWED_TEAMS) are let in as if they were ours."""
    if user_team in allowed_teams:
        return None
    if not user_team:
        return "no team given"
    # An org-wide Grid install sees org-level users whose team is the enterprise itself.
    if user_team not in (home_team, home_enterprise):
        return f"user of team {user_team}"
    if home_enterprise and user_enterprise and user_enterprise != home_enterprise:
        return f"user of enterprise {user_enterprise}"
    return None
