"""Identical reads share provider calls, and no caller gets an answer older than it
asked for.

A burst of `/snapshot list` during an incident is a thousand identical GETs: a slow or
failing provider then gets a thousand calls, and each command waits its turn. Here a
caller says how fresh its answer must be (``not_before``, a Unix time: by default the
moment of the call; a job passes the moment its command was acknowledged). It gets
the last answer if that call began at or after ``not_before``, joins the newest call in
flight if that began late enough, and otherwise waits for the next call, which everyone
arriving meanwhile shares. So an answer is always as fresh as a call of the caller's
own would have been (a snapshot created before the list command is in the list).

The next call does not wait for the one in flight to end (a burst spread over half a
second would then wait two provider latencies): it begins once the newest call in
flight is ``spacing`` seconds old. So a key sees at most one new call per ``spacing``,
and at most ``max_in_flight`` at a time (beyond that the next waits for one to end):
a slow or failing provider is not hammered by a burst.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

KEEP_S = 60.0  # an answer older than this is dropped rather than kept for nobody
# A burst of commands is acknowledged over about half a second: a call begun that long
# after the one in flight takes in the rest of it.
SPACING_S = 0.5
MAX_IN_FLIGHT = 4


class _Flight(Generic[T]):
    __slots__ = ("callers", "done", "error", "has_leader", "result", "started")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.has_leader = False
        self.callers = 0  # how many share it (its leader included)
        self.started = float("inf")  # not yet
        self.result: T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class _Slot:
    __slots__ = ("gathering", "last", "running")

    def __init__(self) -> None:
        self.running: list[_Flight] = []  # in flight, oldest first
        self.gathering: _Flight | None = None  # not started: anyone may join
        self.last: _Flight | None = None  # the latest call that succeeded


class Coalescer:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        spacing: float = SPACING_S,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._clock = clock
        self._spacing = spacing
        self._max_in_flight = max_in_flight
        self._lock = threading.Condition()  # notified whenever a call ends
        self._slots: dict[Hashable, _Slot] = {}
        self.calls = 0  # how many times a ``call`` really ran

    def run(self, key: Hashable, call: Callable[[], T], *, not_before: float | None = None) -> T:
        with self._lock:
            now = self._clock()
            fresh = now if not_before is None else min(not_before, now)
            slot = self._slots.setdefault(key, _Slot())  # keys are few: one per server
            last = slot.last
            if last is not None and fresh <= last.started and last.started >= now - KEEP_S:
                return last.result  # type: ignore[return-value]
            newest = slot.running[-1] if slot.running else None
            if newest is not None and newest.started >= fresh:
                follow: _Flight | None = newest
            else:
                flight = slot.gathering
                if flight is None:
                    flight = slot.gathering = _Flight()
                follow = flight if flight.has_leader else None
                flight.has_leader = True
            (follow or flight).callers += 1
            if follow is None:
                # This caller leads the gathered flight: it begins when the calls in
                # flight leave room (as many callers as possible share it meanwhile).
                while (wait := self._wait_before_starting(slot)) > 0:
                    self._lock.wait(wait)
                slot.gathering = None  # newcomers now gather for the call after this one
                flight.started = self._clock()
                slot.running.append(flight)
        if follow is not None:
            return follow.outcome()
        try:
            self.calls += 1
            flight.result = call()
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                slot.running.remove(flight)
                if flight.error is None and (
                    slot.last is None or slot.last.started < flight.started
                ):
                    slot.last = flight
                self._lock.notify_all()
            flight.done.set()

    def _wait_before_starting(self, slot: _Slot) -> float:
        """Seconds until the next call may begin (0: now); a call's end also wakes."""
        if not slot.running:
            return 0.0
        if len(slot.running) >= self._max_in_flight:
            return KEEP_S  # until one ends
        return slot.running[-1].started + self._spacing - self._clock()
