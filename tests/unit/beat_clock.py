"""An injected clock for beat's unit tests, and a scheduler driven by it.

``Clock`` is both the Unix time and the monotonic time the scheduler reads. ``drive``
runs the real loop's logic (``tick``, then wait what it asked for) by moving the clock
instead of sleeping, so days of schedule pass in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from celeriac import App
from celeriac.beat.entry import Entry
from celeriac.beat.leader import Leadership
from celeriac.beat.scheduler import Scheduler
from celeriac.beat.store import MemoryStore


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Sent:
    entry: str
    due: float
    task_id: str
    at: float  # the clock when it was sent


@dataclass
class Sends:
    clock: Clock
    items: list[Sent] = field(default_factory=list)
    crash_on: set[float] = field(default_factory=set)  # due times whose send "crashes"

    def __call__(self, entry: Entry, due: float, task_id: str) -> None:
        if due in self.crash_on:
            self.crash_on.discard(due)
            raise Crash(f"process died sending {entry.name} due {due}")
        self.items.append(Sent(entry.name, due, task_id, self.clock.now))

    def dues(self, entry: str | None = None) -> list[float]:
        return [s.due for s in self.items if entry is None or s.entry == entry]


class Crash(BaseException):
    """A process dying mid-call: nothing after it in that process runs."""


def make_scheduler(app: App, clock: Clock, store: MemoryStore, sends: Sends,
                   ttl: float = 3.0, holder: str = "a") -> Scheduler:
    leadership = Leadership(store, holder=holder, ttl=ttl, monotonic=clock)
    return Scheduler(app, store, clock=clock, monotonic=clock, send=sends,
                     leadership=leadership, max_interval=3600.0)


def drive(scheduler: Scheduler, clock: Clock, until: float, step_cap: float = 3600.0,
          ) -> None:
    """Tick as the real loop does, moving the clock by each pause, until ``until``."""
    while clock.now < until:
        pause = scheduler.tick()
        clock.now = min(until, clock.now + max(min(pause, step_cap), 0.001))
    scheduler.tick()


def at(zone: tzinfo, *parts: Any) -> float:
    return datetime(*parts, tzinfo=zone).timestamp()
