"""Identical provider reads share calls, and never answer with something older than
the caller asked for (bot/vps/coalesce.py). Calls are held open with events, so the
interleavings are forced, not hoped for."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.vps.coalesce import KEEP_S, Coalescer
from snapbot_local.harness import HANG_GUARD_S
from tests.conftest import wait_until


class Gate:
    """A call that blocks until released, numbering each real call."""

    def __init__(self) -> None:
        self.started = 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.started += 1
            number = self.started
        assert self.release.wait(HANG_GUARD_S)
        return number


def gathered(co: Coalescer, key, n: int) -> bool:
    """n callers wait for the key's next call (the one not begun yet)."""
    slot = co._slots.get(key)
    return slot is not None and slot.gathering is not None and slot.gathering.callers == n


def test_callers_during_a_call_share_the_next_one_and_get_a_fresher_answer():
    co, gate = Coalescer(spacing=60), Gate()  # the next call waits for call 1 to end
    with ThreadPoolExecutor(21) as pool:
        first = pool.submit(co.run, "k", gate)
        wait_until(lambda: gate.started == 1, what="the first call to start")
        later = [pool.submit(co.run, "k", gate) for _ in range(20)]
        wait_until(lambda: gathered(co, "k", 20), what="the callers to gather")
        gate.release.set()
        assert first.result(HANG_GUARD_S) == 1
        # Everyone who arrived while call 1 ran gets call 2, begun after they asked.
        assert [f.result(HANG_GUARD_S) for f in later] == [2] * 20
    assert co.calls == 2 == gate.started


def test_the_next_call_begins_while_one_is_in_flight_once_that_is_spacing_old():
    now = [1000.0]
    co = Coalescer(clock=lambda: now[0], spacing=0.5)
    gate = Gate()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(co.run, "k", gate)
        wait_until(lambda: gate.started == 1, what="the first call to start")
        now[0] = 1000.1  # asked after call 1 began: call 1 is too old for it
        second = pool.submit(co.run, "k", gate)
        wait_until(lambda: gathered(co, "k", 1), what="the caller to wait for a next call")
        now[0] = 1000.6  # call 1 is now spacing old (the waiting leader wakes within it)
        wait_until(lambda: gate.started == 2, what="call 2 to begin while call 1 is held")
        assert not first.done()
        gate.release.set()
        assert (first.result(HANG_GUARD_S), second.result(HANG_GUARD_S)) == (1, 2)


def test_no_more_than_max_in_flight_calls_run_and_the_next_begins_when_one_ends():
    now = [1000.0]
    co = Coalescer(clock=lambda: now[0], spacing=0, max_in_flight=2)
    gate = Gate()
    with ThreadPoolExecutor(3) as pool:
        held = [pool.submit(co.run, "k", gate)]
        wait_until(lambda: gate.started == 1, what="call 1")
        now[0] = 1001.0  # each caller asks after the calls in flight began
        held.append(pool.submit(co.run, "k", gate))
        wait_until(lambda: gate.started == 2, what="call 2, beside call 1")
        now[0] = 1002.0
        third = pool.submit(co.run, "k", gate)
        wait_until(lambda: gathered(co, "k", 1), what="a third caller")
        assert gate.started == 2  # two in flight: the third waits
        gate.release.set()
        assert sorted(f.result(HANG_GUARD_S) for f in held) == [1, 2]
        assert third.result(HANG_GUARD_S) == 3
    assert co.calls == 3


def test_a_caller_may_take_the_last_answer_when_it_began_after_its_not_before():
    now = [1000.0]
    co = Coalescer(clock=lambda: now[0])
    calls = []
    assert co.run("k", lambda: calls.append(1) or "fresh") == "fresh"
    now[0] = 1005.0
    # Asked at 999 (a command acknowledged before that call began): the answer serves.
    assert co.run("k", lambda: calls.append(2) or "new", not_before=999.0) == "fresh"
    # Asked for something newer than that call: a call of its own.
    assert co.run("k", lambda: calls.append(3) or "newer", not_before=1001.0) == "newer"
    # By default a caller wants an answer begun no earlier than its own call.
    now[0] = 1006.0
    assert co.run("k", lambda: calls.append(4) or "own") == "own"
    # An answer older than KEEP_S is not served, whatever the caller accepts.
    now[0] += KEEP_S + 1
    assert co.run("k", lambda: calls.append(5) or "late", not_before=0.0) == "late"
    assert calls == [1, 3, 4, 5]


def test_keys_do_not_share():
    co = Coalescer()
    assert co.run(("snapshots/", None), lambda: "all") == "all"
    assert co.run(("snapshots/", 7), lambda: "seven") == "seven"
    assert co.calls == 2


def test_a_failed_call_fails_every_caller_that_shared_it_and_is_not_kept():
    co = Coalescer(spacing=60)
    release, started = threading.Event(), threading.Event()

    def failing():
        started.set()
        assert release.wait(HANG_GUARD_S)
        raise RuntimeError("provider down")

    with ThreadPoolExecutor(6) as pool:
        leader = pool.submit(co.run, "k", failing)
        assert started.wait(HANG_GUARD_S)
        # These gather behind the failing call, for the one after it, which fails too.
        started.clear()
        followers = [pool.submit(co.run, "k", failing) for _ in range(5)]
        wait_until(lambda: gathered(co, "k", 5), what="the followers")
        release.set()
        for future in [leader, *followers]:
            with pytest.raises(RuntimeError, match="provider down"):
                future.result(HANG_GUARD_S)
    assert co.calls == 2
    # Nothing failed is served later: the next caller calls again.
    assert co.run("k", lambda: "back", not_before=0.0) == "back"
