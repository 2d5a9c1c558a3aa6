"""What waits in the queues, read from the broker for a scrape, and cached.

``/metrics`` on a worker node and the cluster-wide exporter both show each queue's ready,
scheduled, in-flight and dead-lettered messages and the age of its oldest ready one.
They are read from the broker when Prometheus scrapes (not pushed by workers: a queue
nobody consumes is exactly the one to watch), at most once per ``QUEUE_CACHE_SECONDS``
however many scrapers ask. The broker has no count of dead letters, so they are counted
by listing at most ``DEAD_LETTER_SCAN`` of them, less often (``DEAD_LETTER_CACHE_SECONDS``).

The probe has a broker of its own on an event loop thread of its own (a ``Bridge``): the
HTTP server's threads are not the worker's event loop, and a solo worker's broker
belongs to its consumer's loop. A broker that is down makes a scrape show
``celeriac_broker_up 0`` and no queue numbers, after ``READ_TIMEOUT`` at most; it never
blocks the health checks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celeriac.bridge import Bridge
from celeriac.errors import describe

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.brokers.base import Broker

logger = logging.getLogger("celeriac.monitor")

QUEUE_CACHE_SECONDS = 1.5
DEAD_LETTER_CACHE_SECONDS = 10.0
DEAD_LETTER_SCAN = 10_000
READ_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class QueueReading:
    queue: str
    ready: int
    scheduled: int
    in_flight: int
    dead_letters: int
    oldest_age: float | None  # seconds the oldest ready message has waited; None: unknown


@dataclass(frozen=True, slots=True)
class QueuesSnapshot:
    queues: tuple[QueueReading, ...]
    broker_up: bool  # the last read succeeded
    read_at: float  # time.monotonic()


class QueueProbe:
    """Reads the queues of ``queues`` (None: every queue the broker knows, plus ``known``)."""

    def __init__(self, app: App, queues: Sequence[str] | None,
                 known: Sequence[str] = ()) -> None:
        self._app = app
        self._queues = list(queues) if queues is not None else None
        self._known = list(known)
        self._bridge = Bridge("celeriac-metrics")
        self._broker: Broker | None = None
        self._lock = threading.Lock()
        self._snapshot: QueuesSnapshot | None = None
        self._dead: Counter[str] = Counter()
        self._dead_at = float("-inf")
        self._failing = False

    def read(self) -> QueuesSnapshot:
        with self._lock:  # concurrent scrapes share one broker read
            now = time.monotonic()
            if self._snapshot is None or now - self._snapshot.read_at > QUEUE_CACHE_SECONDS:
                self._snapshot = self._read(now)
            return self._snapshot

    def close(self) -> None:
        broker = self._broker
        if broker is not None:
            try:
                self._bridge.run(asyncio.wait_for(broker.close(), READ_TIMEOUT))
            except Exception as exc:
                logger.debug("closing the metrics' broker connection: %s", describe(exc))
        self._bridge.close()

    def _read(self, now: float) -> QueuesSnapshot:
        try:
            readings = self._bridge.run(asyncio.wait_for(self._read_async(now), READ_TIMEOUT))
        except Exception as exc:
            if not self._failing:  # once per outage, not once per scrape
                logger.warning("metrics: cannot read the queues from the broker: %s",
                               describe(exc) or type(exc).__name__)
            self._failing = True
            return QueuesSnapshot((), False, now)
        if self._failing:
            logger.info("metrics: the broker answers again")
        self._failing = False
        return QueuesSnapshot(readings, True, now)

    async def _read_async(self, now: float) -> tuple[QueueReading, ...]:
        if self._broker is None:
            broker = self._app.new_broker()
            try:
                await broker.connect()
            except BaseException:
                await broker.close()
                raise
            self._broker = broker
        broker = self._broker
        stats = {s.queue: s for s in await broker.queue_stats(self._queues)}
        if now - self._dead_at > DEAD_LETTER_CACHE_SECONDS:
            letters = await broker.dead_letters(DEAD_LETTER_SCAN)
            self._dead = Counter(letter.queue for letter in letters)
            self._dead_at = now
        names = set(stats) | set(self._known)
        if self._queues is None:
            names |= set(self._dead)  # a queue may be known only from its dead letters
        else:
            names = set(self._queues)
        readings = []
        for name in sorted(names):
            s = stats.get(name)
            readings.append(QueueReading(
                name, s.ready if s else 0, s.scheduled if s else 0, s.in_flight if s else 0,
                self._dead[name],
                # Brokers that know it say so (QueueStats.oldest_age); others: unknown.
                getattr(s, "oldest_age", None) if s else None))
        return tuple(readings)
