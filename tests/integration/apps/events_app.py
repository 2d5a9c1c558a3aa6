"""Tasks for the event tests (tests/integration/test_events_workers.py).

A worker started with ``celeriac -A events_app worker`` uses ``app``, whose broker and
backend come from the ``CELERIAC_*`` environment variables; the tests register the same
tasks on their own producer-side App with ``register``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celeriac import App, Task
from celeriac.errors import Reject


def add(x: int, y: int) -> int:
    return x + y


def boom(message: str) -> None:
    raise ValueError(message)


def flaky(self: Task[..., Any]) -> str:
    """Asks for one retry (countdown 0.1 s), then succeeds."""
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("first attempt"), countdown=0.1)
    return "second attempt"


def refuse() -> None:
    raise Reject("not for this worker", requeue=False)


@dataclass(frozen=True)
class EventTasks:
    add: Task[..., int]
    boom: Task[..., None]
    flaky: Task[..., str]
    refuse: Task[..., None]


def register(target: App) -> EventTasks:
    return EventTasks(
        add=target.task(name="events.add")(add),
        boom=target.task(name="events.boom")(boom),
        flaky=target.task(name="events.flaky", bind=True, max_retries=2)(flaky),
        refuse=target.task(name="events.refuse")(refuse),
    )


app = App("events-tests")
tasks = register(app)
