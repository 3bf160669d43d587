"""Who may do what (SPEC §2: SNAPSHOT_OPERATORS, SNAPSHOT_APPROVERS).

An allow-list is a set of Slack user IDs (``U…``/``W…``) and user-group IDs (``S…``);
``None`` means nobody is excluded. Group membership is resolved by the shell and
handed in, so these stay pure.
"""

from __future__ import annotations

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
