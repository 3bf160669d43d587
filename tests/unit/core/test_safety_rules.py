"""The pure rules of safer restores (SPEC 9): naming, eviction, staleness, typed confirmation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.safety import (
    SLOTS_PER_SERVER,
    Eviction,
    NoRoom,
    confirmation_matches,
    eviction_at_execution,
    eviction_candidate,
    find_safety_snapshot,
    newer_snapshot,
    safety_description,
    safety_name,
    safety_request_of,
)

T0 = datetime(2025, 1, 15, 18, 30, tzinfo=UTC)


@dataclass(frozen=True)
class Snap:
    id: int
    name: str = "snap"
    status: str = "completed"
    created_at: datetime | None = T0


def snaps(*specs) -> list[Snap]:
    return [Snap(i, f"s{i}", status, T0 + timedelta(hours=h)) for i, status, h in specs]


def test_safety_snapshot_name_and_back() -> None:
    assert safety_name(12) == "pre-restore-r12"
    assert safety_request_of("pre-restore-r12") == 12
    for other in ("pre-restore-r", "pre-restore-r12x", "xpre-restore-r12", "weekly", ""):
        assert safety_request_of(other) is None
    assert "request #12" in safety_description(12, "before-fix", 801)
    assert "801" in safety_description(12, "before-fix", 801)


@given(st.integers(min_value=1, max_value=10**15))
def test_every_request_id_names_its_own_safety_snapshot(request_id: int) -> None:
    assert safety_request_of(safety_name(request_id)) == request_id


def test_a_server_with_a_free_slot_needs_no_eviction() -> None:
    four = snaps(*[(i, "completed", i) for i in range(1, 5)])
    assert eviction_candidate(four, target_id=1) is None


def test_a_full_server_evicts_its_oldest_completed_snapshot_other_than_the_target() -> None:
    full = snaps(
        (1, "completed", 0), (2, "completed", 1), (3, "failed", -5), (4, "in_progress", -9)
    )
    full.append(Snap(5, "s5", "completed", T0 + timedelta(hours=3)))
    assert eviction_candidate(full, target_id=2).id == 1
    assert eviction_candidate(full, target_id=1).id == 2  # never the target
    assert eviction_candidate(full, target_id=1, pinned=[2]).id == 5  # never a pinned one


def test_a_full_server_with_nothing_to_evict_is_refused() -> None:
    full = snaps((1, "completed", 0), (2, "failed", 1), (3, "failed", 2), (4, "in_progress", 3))
    full.append(Snap(5, "s5", "in_progress", T0))
    with pytest.raises(NoRoom):
        eviction_candidate(full, target_id=1)


snapshot_lists = st.lists(
    st.builds(
        Snap,
        id=st.integers(1, 30),
        status=st.sampled_from(["completed", "in_progress", "failed"]),
        created_at=st.one_of(
            st.none(), st.integers(0, 1000).map(lambda h: T0 + timedelta(hours=h))
        ),
    ),
    max_size=SLOTS_PER_SERVER + 2,
    unique_by=lambda s: s.id,
)


@given(snapshot_lists, st.integers(1, 30), st.sets(st.integers(1, 30)))
def test_the_candidate_is_never_the_target_pinned_or_unfinished(listed, target, pinned) -> None:
    try:
        victim = eviction_candidate(listed, target, pinned)
    except NoRoom:
        assert len(listed) >= SLOTS_PER_SERVER
        assert not [s for s in listed if s.status == "completed" and s.id not in pinned | {target}]
        return
    if len(listed) < SLOTS_PER_SERVER:
        assert victim is None
        return
    assert victim.id != target and victim.id not in pinned and victim.status == "completed"
    dated = [s.created_at for s in listed if s.status == "completed" and s.created_at]
    if victim.created_at is not None:
        assert victim.created_at == min(
            c
            for s, c in ((s, s.created_at) for s in listed)
            if c and s.status == "completed" and s.id not in pinned | {target}
        )
    else:
        assert (
            not [
                s
                for s in listed
                if s.created_at and s.status == "completed" and s.id not in pinned | {target}
            ]
            or not dated
        )


@given(snapshot_lists, st.one_of(st.none(), st.integers(1, 30)))
def test_execution_deletes_only_the_named_snapshot_and_only_when_full(listed, named) -> None:
    action = eviction_at_execution(listed, named)
    if len(listed) < SLOTS_PER_SERVER:
        assert action == Eviction.NONE
    elif named is not None and named in {s.id for s in listed}:
        assert action == Eviction.DELETE
    else:
        assert action == Eviction.CHANGED


def test_a_safety_snapshot_is_found_by_its_name_after_a_restart() -> None:
    listed = [
        Snap(7, "weekly"),
        Snap(9, "pre-restore-r12", "in_progress"),
        Snap(10, "pre-restore-r1"),
    ]
    assert find_safety_snapshot(listed, 12).id == 9
    assert find_safety_snapshot(listed, 13) is None


def test_a_much_newer_completed_snapshot_is_named() -> None:
    target = Snap(1, "old", "completed", T0)
    near = Snap(2, "near", "completed", T0 + timedelta(minutes=30))
    newest = Snap(3, "before-fix", "completed", T0 + timedelta(days=3))
    unfinished = Snap(4, "later", "in_progress", T0 + timedelta(days=4))
    assert newer_snapshot([target, near, newest, unfinished], target).name == "before-fix"
    assert newer_snapshot([target, near, unfinished], target) is None
    assert newer_snapshot([target, newest], Snap(1, "old", "completed", None)) is None


@pytest.mark.parametrize(
    ("typed", "matches"),
    [
        ("web-server-01", True),
        ("  web-server-01 \n", True),
        ("web-server-1", False),
        ("WEB-SERVER-01", False),
        ("", False),
        (None, False),
        ("web-server-01 x", False),
    ],
)
def test_typed_confirmation_is_the_server_name_with_spaces_around_ignored(typed, matches) -> None:
    assert confirmation_matches(typed, "web-server-01") is matches


def test_no_name_can_confirm_a_server_without_one() -> None:
    assert not confirmation_matches("", "")
