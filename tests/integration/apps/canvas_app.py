"""Tasks for the canvas integration tests, each writing what it does to the ledger.

A worker started with ``celeriac -A canvas_app worker`` uses this module's ``app``
(broker, backend and limits from ``CELERIAC_*`` environment variables); the tests call
``register`` on their producer-side App so both sides agree on the names
("canvas.<name>"). The ledger is the one of ``ledger_app``: one JSON line per event,
so the tests count every execution of every task, in every process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ledger_app import write

from celeriac import App, Task


def add(self: Task[..., Any], x: int, y: int) -> int:
    write("start", self, ["add", x, y])
    return x + y


def mul(self: Task[..., Any], x: int, y: int) -> int:
    write("start", self, ["mul", x, y])
    return x * y


def slow_add(self: Task[..., Any], x: int, y: int, seconds: float) -> int:
    """Takes ``seconds``: long enough for a test to kill the process running it."""
    write("start", self, ["slow_add", x, y])
    time.sleep(seconds)
    write("done", self, ["slow_add", x, y])
    return x + y


def tsum(self: Task[..., Any], numbers: list[int]) -> int:
    write("start", self, "tsum")
    return sum(numbers)


def fail(self: Task[..., Any], x: Any = None) -> None:
    write("start", self, ["fail", x])
    raise ValueError(f"member {x} failed")


@dataclass(frozen=True)
class CanvasTasks:
    add: Task[..., int]
    mul: Task[..., int]
    slow_add: Task[..., int]
    tsum: Task[..., int]
    fail: Task[..., None]


def register(target: App) -> CanvasTasks:
    """Register the canvas tasks on ``target`` under fixed names ("canvas.<name>")."""

    def bound(fn: Any) -> Any:
        return target.task(bind=True, name=f"canvas.{fn.__name__}")(fn)

    return CanvasTasks(add=bound(add), mul=bound(mul), slow_add=bound(slow_add),
                       tsum=bound(tsum), fail=bound(fail))


app = App("canvas")
tasks = register(app)
