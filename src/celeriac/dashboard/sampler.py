"""The queues as the dashboard shows them: read every few seconds, with their recent past.

``QueueSampler`` reads every queue the broker knows (and the app declares, and the
alerts name) every ``SAMPLE_SECONDS`` on the app's loop, and keeps:

- the latest reading, which the pages, the API and ``/metrics`` show (so a page refresh
  costs no broker round trip, however many pages are open);
- a ring of ``(time, ready)`` per queue, ``RING`` readings long: the sparklines. A queue
  the broker no longer lists loses its ring, so memory is bounded by the queues there are;
- the queue alerts' state (``monitor.alerts.AlertChecker.evaluate`` with announce off:
  the dashboard shows the alerts firing, ``celeriac monitor`` or the exporter post them,
  so running a dashboard beside them posts nothing twice).

Dead letters that the broker does not count per queue (Redis, RabbitMQ) are counted
from a bounded scan every ``DEAD_LETTER_EVERY`` seconds, as the metrics probe does. A
broker that cannot be read is logged once per outage; the last readings stay.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any

from celeriac.errors import describe
from celeriac.monitor.alerts import AlertChecker
from celeriac.monitor.probe import QueueReading
from celeriac.monitor.queues import read_queues
from celeriac.routing import default_queues

if TYPE_CHECKING:
    from celeriac.brokers.base import QueueStats
    from celeriac.dashboard.service import DashboardService

logger = logging.getLogger("celeriac.dashboard")

SAMPLE_SECONDS = 3.0  # between two readings of the queues
RING = 200  # readings kept per queue: 10 minutes at SAMPLE_SECONDS
DEAD_LETTER_EVERY = 10.0  # seconds between two scans counting dead letters per queue


class QueueSampler:
    """Reads the queues every ``SAMPLE_SECONDS`` into a ring per queue; the alerts' state."""

    def __init__(self, service: DashboardService) -> None:
        self.service = service
        app = service.app
        self.declared = list(default_queues(app.conf.task_queues, app.conf.task_default_queue))
        self.checker = AlertChecker(app) if app.conf.queue_alerts else None
        self._rings: dict[str, collections.deque[tuple[float, int]]] = {}
        self._latest: list[QueueReading] | None = None
        self._dead: dict[str, int] = {}
        self._dead_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.broker_up = False
        self._failing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(SAMPLE_SECONDS)

    async def latest(self) -> list[QueueReading]:
        if self._latest is None:
            await self.sample()
        return list(self._latest or [])

    def history(self, queue: str) -> list[tuple[float, int]]:
        return list(self._rings.get(queue, ()))

    def alerts(self) -> list[dict[str, Any]]:
        if self.checker is None:
            return []
        return [{"queue": a.queue, "metric": a.metric, "value": a.value,
                 "threshold": a.threshold, "since": a.since}
                for a in sorted(self.checker.firing.values(),
                                key=lambda a: (a.queue, a.metric))]

    async def sample(self) -> None:
        """One reading of every queue (failures logged once per outage)."""
        async with self._lock:
            now, clock = time.time(), time.monotonic()
            scan = clock - self._dead_at > DEAD_LETTER_EVERY
            try:
                broker = await self.service.broker()
                stats = await self.service.on_app(read_queues(
                    broker, self._watched(), every=True, dead_letters=scan))
            except Exception as exc:
                if not self._failing:
                    logger.warning("dashboard: cannot read the queues: %s", describe(exc))
                self._failing, self.broker_up = True, False
                if self._latest is None:
                    self._latest = []
                return
            self._failing, self.broker_up = False, True
            if scan:
                self._dead = {s.queue: s.dead_letters or 0 for s in stats}
                self._dead_at = clock
            self._latest = [self._reading(s) for s in stats]
            for reading in self._latest:
                ring = self._rings.setdefault(reading.queue, collections.deque(maxlen=RING))
                ring.append((round(now, 3), reading.ready))
            for gone in set(self._rings) - {r.queue for r in self._latest}:
                del self._rings[gone]  # bounded: queues the broker forgot go too
            if self.checker is not None:
                self.checker.evaluate(stats, now, announce=False)

    def _watched(self) -> list[str]:
        if self.checker is not None:
            return self.checker.watched_queues()
        return self.declared

    def _reading(self, stats: QueueStats) -> QueueReading:
        dead = stats.dead_letters if stats.dead_letters is not None \
            else self._dead.get(stats.queue, 0)
        return QueueReading(stats.queue, stats.ready, stats.scheduled, stats.in_flight,
                            dead, stats.oldest_age)
