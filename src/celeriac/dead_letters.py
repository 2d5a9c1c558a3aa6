"""Choosing dead letters, sending them back to their queues, and deleting them.

``celeriac queues --dead --requeue/--purge`` and the dashboard's dead-letter page do the
same things, so they share these helpers. The broker interface lists the newest dead
letters (``Broker.dead_letters``) and removes them by message id
(``Broker.remove_dead_letters``); what a letter was for (its task name, its priority) is
read from its body, which is often undecodable: that is why many letters died, and the
helpers then answer with a stand-in rather than fail.

Requeueing publishes each body again first, then removes the letter: a failure in
between leaves it in both places (at least once), never in neither. Letters are removed
by message id, which a copy dead-lettered again would share, so the copies are published
``REQUEUE_DELAY`` seconds in the future (on brokers that can delay): no worker can take
one, fail it and dead-letter it again before the old letters are gone.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celeriac.brokers.base import DeadLetter, Outgoing

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.brokers.base import Broker

# The broker lists dead letters newest first and does not count them; choosing "every
# letter of task X" scans at most this many.
DEAD_LETTER_SCAN = 10_000
UNDECODABLE = "(undecodable)"
REQUEUE_DELAY = 1.0  # seconds before requeued copies come due (see the module)


@dataclass(frozen=True, slots=True)
class Choice:
    """Which dead letters to act on: these ids, or every letter of a task, or all."""

    ids: frozenset[str] = frozenset()
    task: str | None = None
    every: bool = False

    def __post_init__(self) -> None:
        if (bool(self.ids) + (self.task is not None) + self.every) != 1:
            raise ValueError("choose the dead letters by ids, by task name, or all of them")

    def matches(self, app: App, letter: DeadLetter) -> bool:
        if self.every:
            return True
        if self.ids:
            return letter.id in self.ids
        return task_name(app, letter) == self.task


async def choose(app: App, broker: Broker, choice: Choice,
                 scan: int = DEAD_LETTER_SCAN) -> list[DeadLetter]:
    """The dead letters ``choice`` picks among the newest ``scan``."""
    return [letter for letter in await broker.dead_letters(scan)
            if choice.matches(app, letter)]


async def requeue(app: App, broker: Broker, letters: Sequence[DeadLetter]) -> int:
    """Publish each body again to its queue, then remove the letters; how many went back."""
    if not letters:
        return 0
    due = time.time() + REQUEUE_DELAY if broker.supports_delay else None
    await broker.publish([Outgoing(letter.id, letter.queue, letter.body,
                                   priority(app, letter), due) for letter in letters])
    await broker.remove_dead_letters([letter.id for letter in letters])
    return len(letters)


async def remove(broker: Broker, ids: Collection[str]) -> int:
    """Delete the dead letters of these message ids; how many were deleted."""
    if not ids:
        return 0
    return await broker.remove_dead_letters(list(ids))


def task_name(app: App, letter: DeadLetter) -> str:
    """The task a dead letter was for; many were dead-lettered for not decoding."""
    try:
        return app.decode_message(letter.body).task
    except Exception:  # any failure to read it is itself the answer
        return UNDECODABLE


def priority(app: App, letter: DeadLetter) -> int:
    """The letter's priority level as sent; an undecodable body goes back at 0."""
    try:
        return app.decode_message(letter.body).priority
    except Exception:
        return 0
