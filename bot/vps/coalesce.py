"""Identical reads share provider calls, and no caller gets an answer older than it
asked for.

A burst of `/snapshot list` during an incident is a thousand identical GETs: a slow or
failing provider then gets a thousand calls, and each command waits its turn. Here a
caller says how fresh its answer must be (``not_before``, a Unix time: by default the
moment of the call; a job passes the moment its command was acknowledged). It gets
the last answer if that call began at or after ``not_before``, joins the call in
flight if that began late enough, and otherwise waits for the next call, which begins
after every caller waiting for it arrived. So an answer is always as fresh as a call
of the caller's own would have been (a snapshot created before the list command is in
the list), and the provider sees at most two calls per key at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

KEEP_S = 60.0  # an answer older than this is dropped rather than kept for nobody


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
        self.running: _Flight | None = None
        self.gathering: _Flight | None = None  # not started: anyone may join
        self.last: _Flight | None = None  # the latest call that succeeded


class Coalescer:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[Hashable, _Slot] = {}
        self.calls = 0  # how many times a ``call`` really ran

    def run(self, key: Hashable, call: Callable[[], T], *, not_before: float | None = None) -> T:
        with self._lock:
            now = self._clock()
            fresh = now if not_before is None else min(not_before, now)
            slot = self._slots.setdefault(key, _Slot())  # keys are few: one per server
            last, running = slot.last, slot.running
            if last is not None and fresh <= last.started and last.started >= now - KEEP_S:
                return last.result  # type: ignore[return-value]
            if running is not None and running.started >= fresh:
                follow: _Flight | None = running
            else:
                flight = slot.gathering
                if flight is None:
                    flight = slot.gathering = _Flight()
                follow = flight if flight.has_leader else None
                flight.has_leader = True
            (follow or flight).callers += 1
        if follow is not None:
            return follow.outcome()
        # This caller leads the gathered flight: it starts once the one ahead is done.
        if running is not None:
            running.done.wait()
        with self._lock:
            slot.gathering = None  # newcomers now gather for the call after this one
            slot.running = flight
            flight.started = self._clock()
        try:
            self.calls += 1
            flight.result = call()
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                if slot.running is flight:
                    slot.running = None
                if flight.error is None and (
                    slot.last is None or slot.last.started < flight.started
                ):
                    slot.last = flight
            flight.done.set()
