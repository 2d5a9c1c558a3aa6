"""The dashboard's reader of the events: the task history, the workers, live numbers.

``HistoryIngest`` is a thread (``monitor.cluster.EventFollower``: its own event loop,
reconnecting with a doubling pause and one log line per failure) that, for each read
of the events bus:

- writes the task events to the history store in one ``apply`` (so the store sees a
  few writes a second whatever the event rate);
- feeds every event to a ``ClusterView`` (``view``): which workers are up;
- updates the numbers the pages show live: ``version`` (bumped by every read that
  brought events: the SSE stream watches it), ``lag`` (seconds from the oldest event
  of the last batch to its write) and ``events_per_second``.

Memory stays bounded at any rate: the thread reads one bus read at a time (a bus read
is bounded) and writes it before reading on, so a store slower than the events leaves
the backlog on the bus's server, where its retention bounds it, and shows as lag.

A task declared ``@app.task(dashboard_hide_args=True)`` has its args and kwargs
removed from its events before they reach the store: the dashboard process must have
imported the task (as a worker does) for the option to be known to it.

On start it reads back from shortly before the newest record the store holds (the
bus keeps the last minutes), so that a restarted dashboard also records what happened
while it was down. A trim of the store (``HistoryStore.trim``) runs every
``TRIM_INTERVAL`` seconds, alongside the reading.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from celeriac.dashboard.history import HistoryStore, TaskQuery, is_task_event
from celeriac.errors import describe
from celeriac.monitor.cluster import ClusterView, EventFollower

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.dashboard")

TRIM_INTERVAL = 60.0  # seconds between trims of the store
RATE_WINDOW = 10.0  # seconds events_per_second is averaged over
# On start, read back from this long before the newest record the store holds.
CATCH_UP_MARGIN = 5.0


class HistoryIngest(EventFollower):
    """Follows ``app``'s events into ``store`` and a ``ClusterView`` (see the module).

    ``start()`` returns once the bus is followed; ``close()`` stops the thread (the
    store is the caller's to close)."""

    who = "dashboard"
    logger = logger

    def __init__(self, app: App, store: HistoryStore,
                 trim_interval: float = TRIM_INTERVAL) -> None:
        super().__init__(app, ClusterView())
        self.store = store
        self.trim_interval = trim_interval
        self._lock = threading.Lock()
        self._version = 0
        self._lag = 0.0
        self._applied = 0  # task events written, since start
        self._trimmed = 0  # records the trims removed, since start
        self._reads: deque[tuple[float, int]] = deque()  # (monotonic time, events)
        self._trim_at = time.monotonic() + trim_interval
        self._trimming: asyncio.Task[None] | None = None

    # -- the live numbers (read from any thread) --------------------------------------------

    @property
    def version(self) -> int:
        """Bumped by every read that brought events."""
        return self._version

    @property
    def lag(self) -> float:
        """Seconds from the oldest event of the last batch to its write (0 before one)."""
        return self._lag

    @property
    def applied(self) -> int:
        """Task events written to the store since start."""
        return self._applied

    @property
    def trimmed(self) -> int:
        """Records the periodic trims removed since start."""
        return self._trimmed

    @property
    def events_per_second(self) -> float:
        """Events read per second over the last ``RATE_WINDOW`` seconds."""
        with self._lock:
            self._forget(time.monotonic())
            return sum(count for _, count in self._reads) / RATE_WINDOW

    def _forget(self, now: float) -> None:
        while self._reads and self._reads[0][0] < now - RATE_WINDOW:
            self._reads.popleft()

    # -- the reading thread -----------------------------------------------------------------

    async def start_at(self) -> float | None:
        newest, _ = await self.store.search(TaskQuery(limit=1))
        if not newest:
            return None
        return newest[0].updated_at - CATCH_UP_MARGIN

    async def handle(self, events: list[dict[str, Any]]) -> None:
        tasks = [self._visible(event) for event in events if is_task_event(event)]
        if tasks:
            await self.store.apply(tasks)
        applied_at = time.time()
        for event in events:
            self.view.apply(event)
        oldest = min((event["timestamp"] for event in events
                      if isinstance(event.get("timestamp"), int | float)), default=None)
        with self._lock:
            if oldest is not None:
                self._lag = max(0.0, applied_at - oldest)
            self._applied += len(tasks)
            now = time.monotonic()
            self._reads.append((now, len(events)))
            self._forget(now)
            self._version += 1

    def _visible(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` as the store may keep it: without args for a hidden task."""
        task = self.app.tasks.get(str(event.get("name")))
        if task is None or not getattr(task, "dashboard_hide_args", False):
            return event
        if "args" not in event and "kwargs" not in event:
            return event
        return {key: value for key, value in event.items()
                if key not in ("args", "kwargs")}

    async def idle(self) -> None:
        if time.monotonic() < self._trim_at or (self._trimming is not None
                                                and not self._trimming.done()):
            return
        self._trim_at = time.monotonic() + self.trim_interval
        # Alongside the reading: a trim after a burst may take a while.
        self._trimming = asyncio.create_task(self._trim(), name="dashboard-trim")

    async def _trim(self) -> None:
        try:
            removed = await self.store.trim()
        except Exception as exc:  # the next trim tries again; reading goes on
            logger.error("dashboard: cannot trim the task history (next try in %.0fs): "
                         "%s", self.trim_interval, describe(exc))
            return
        with self._lock:
            self._trimmed += removed
        if removed:
            logger.debug("dashboard: trimmed %d tasks from the history", removed)
