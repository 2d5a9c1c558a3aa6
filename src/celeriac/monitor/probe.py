"""What waits in the queues, read from the broker for a scrape, and cached.

``/metrics`` on a worker node and the cluster-wide exporter both show each queue's ready,
scheduled, in-flight and dead-lettered messages and the age of its oldest ready one.
They are read from the broker when Prometheus scrapes (not pushed by workers: a queue
nobody consumes is exactly the one to watch), at most once per ``QUEUE_CACHE_SECONDS``
however many scrapers ask. The reading itself is ``monitor.queues``'s, as for the queue
alerts; dead letters that the broker does not count itself (Redis, RabbitMQ) are counted
from a bounded scan, less often (``DEAD_LETTER_CACHE_SECONDS``).

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
from celeriac.monitor.queues import read_queues

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.brokers.base import Broker

logger = logging.getLogger("celeriac.monitor")

QUEUE_CACHE_SECONDS = 1.5
DEAD_LETTER_CACHE_SECONDS = 10.0
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
    """Reads ``queues`` (None: every queue the broker knows), and ``known`` ones always."""

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
        # Dead letters: counted by the broker where it can (SQLite); elsewhere by a scan,
        # done only every DEAD_LETTER_CACHE_SECONDS and remembered in between.
        scan = now - self._dead_at > DEAD_LETTER_CACHE_SECONDS
        stats = await read_queues(self._broker, [*self._known, *(self._queues or ())],
                                  every=self._queues is None, dead_letters=scan)
        if scan:
            self._dead = Counter({s.queue: s.dead_letters or 0 for s in stats})
            self._dead_at = now
        return tuple(
            QueueReading(s.queue, s.ready, s.scheduled, s.in_flight,
                         s.dead_letters if s.dead_letters is not None else self._dead[s.queue],
                         s.oldest_age)
            for s in stats)
