"""The slot loops of one consumer, and changing how many there are while it runs.

A slot is a loop that takes the next delivery and runs it (``Consumer._slot_loop``); a
consumer has as many as tasks it may run at once. ``pool_grow``/``pool_shrink`` and
autoscaling change that number for the threads and async pools. Growing starts new
loops at once. Shrinking must never cut a task short, so it ends idle loops first
(they wait on the ready queue: cancelling one loses nothing), and marks the rest to end
when their task is done: a busy loop asks ``retire_now`` between two tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Set
from typing import Any


class SlotLoops:
    """The slot loops of a consumer; used on its event loop only."""

    def __init__(self, make_loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._make_loop = make_loop
        self.tasks: set[asyncio.Task[None]] = set()
        self.retiring = 0  # busy loops that end once their task is done
        self._started = 0

    def start(self, count: int) -> None:
        for _ in range(count):
            self._started += 1
            self.tasks.add(asyncio.create_task(self._make_loop(),
                                               name=f"slot-{self._started}"))

    def grow(self, count: int) -> None:
        """``count`` more: busy loops about to retire stay first, then new ones start."""
        kept = min(self.retiring, count)
        self.retiring -= kept
        if self.tasks:  # running; before that the consumer starts them all at once
            self.start(count - kept)

    def shrink(self, count: int, busy: Set[asyncio.Task[None]]) -> None:
        """``count`` fewer: idle loops end now, busy ones after their task."""
        idle = [task for task in self.tasks if task not in busy][:count]
        for task in idle:
            task.cancel()
            self.tasks.discard(task)
        self.retiring += count - len(idle)

    def retire_now(self, slot: asyncio.Task[None]) -> bool:
        """Asked by a loop between two tasks: True if it should end (the pool shrank)."""
        if not self.retiring:
            return False
        self.retiring -= 1
        self.tasks.discard(slot)
        return True
