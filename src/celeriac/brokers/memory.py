"""An in-process broker: the real thing for tests, with every semantic of the interface.

State lives in the broker object, guarded by one lock, so producers and a worker on
different threads (each with its own event loop) share it. Waiters are woken with
``call_soon_threadsafe`` on their own loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celeriac.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
    check_outgoing,
)
from celeriac.brokers.buckets import MemoryBuckets
from celeriac.bus.base import Bus
from celeriac.bus.memory import MemoryBus


@dataclass(slots=True)
class _Stored:
    id: str
    queue: str
    body: bytes
    priority: int
    seq: int
    deliveries: int = 0
    ready_at: float = 0.0  # when it was published or came due: its age in queue_stats


class MemoryBroker(Broker):
    scheme = "memory"
    supports_delay = True
    supports_priority = True
    supports_rate_limit = True

    def __init__(self, url: str = "memory://", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self._buckets = MemoryBuckets()  # every user of this broker object shares them
        self._bus = MemoryBus()  # the same: topics live as long as this object
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._ready: dict[str, list[tuple[int, int, _Stored]]] = {}  # heap of (-priority, seq)
        self._scheduled: list[tuple[float, int, _Stored]] = []  # heap of (eta, seq)
        # receipt (seq, delivery number) -> (message, lease end)
        self._leased: dict[tuple[int, int], tuple[_Stored, float]] = {}
        self._dead: list[DeadLetter] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        check_outgoing(messages)  # all or nothing: a bad field stores none of them
        now = time.time()
        with self._lock:
            for out in messages:
                stored = _Stored(out.id, out.queue, out.body, out.priority, next(self._seq),
                                 ready_at=max(now, out.eta or now))
                if out.eta is not None and out.eta > now:
                    heapq.heappush(self._scheduled, (out.eta, stored.seq, stored))
                    self._ready.setdefault(out.queue, [])  # the queue is known from now on
                else:
                    self._push_ready(stored)
            self._wake_all()

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            with self._lock:
                found = self._take(queues, limit)
                if found:
                    return found
                self._waiters.append((loop, future))
                next_due = self._next_due()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._forget_waiter(future)
                return []
            wait = remaining if next_due is None else min(remaining, max(0.0, next_due))
            try:
                await asyncio.wait_for(future, wait)
            except TimeoutError:
                pass
            finally:
                self._forget_waiter(future)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            for delivery in deliveries:
                self._leased.pop(delivery.receipt, None)

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            for delivery in deliveries:
                entry = self._leased.pop(delivery.receipt, None)
                if entry is not None:
                    stored = entry[0]
                    stored.deliveries -= 1
                    self._push_ready(stored)
            self._wake_all()

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        until = time.time() + self.lease_seconds
        held = []
        with self._lock:
            self._reclaim_expired(time.time())
            for delivery in deliveries:
                entry = self._leased.get(delivery.receipt)
                if entry is not None:
                    self._leased[delivery.receipt] = (entry[0], until)
                held.append(entry is not None)
        return held

    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        now = time.time()
        with self._lock:
            for delivery, reason in deliveries:
                entry = self._leased.pop(delivery.receipt, None)
                if entry is not None:
                    stored = entry[0]
                    self._dead.append(DeadLetter(stored.id, stored.queue, stored.body, reason, now))

    async def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        with self._lock:
            names = list(queues) if queues is not None else sorted(self._ready)
            scheduled = [entry[2].queue for entry in self._scheduled]
            leased = [stored.queue for stored, _ in self._leased.values()]
            dead = [letter.queue for letter in self._dead]
            now = time.time()
            return [QueueStats(name, len(self._ready.get(name, ())), scheduled.count(name),
                               leased.count(name), self._oldest_age(name, now),
                               dead.count(name)) for name in names]

    def _oldest_age(self, queue: str, now: float) -> float | None:
        heap = self._ready.get(queue)
        if not heap:
            return None
        return max(0.0, now - min(entry[2].ready_at for entry in heap))

    async def purge(self, queues: Sequence[str]) -> int:
        with self._lock:
            count = 0
            for name in queues:
                count += len(self._ready.get(name, ()))
                self._ready[name] = []
            kept = [entry for entry in self._scheduled if entry[2].queue not in queues]
            count += len(self._scheduled) - len(kept)
            self._scheduled = kept
            heapq.heapify(self._scheduled)
            return count

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            return list(reversed(self._dead[-limit:]))

    async def purge_dead_letters(self) -> int:
        with self._lock:
            count = len(self._dead)
            self._dead.clear()
            return count

    async def remove_dead_letters(self, ids: Collection[str]) -> int:
        wanted = set(ids)
        with self._lock:
            kept = [letter for letter in self._dead if letter.id not in wanted]
            removed = len(self._dead) - len(kept)
            self._dead[:] = kept
            return removed

    def bus(self) -> Bus:
        return self._bus  # shared by every thread using this broker object

    def token_buckets(self) -> MemoryBuckets:
        return self._buckets

    # -- internals, called with the lock held -------------------------------------------

    def _push_ready(self, stored: _Stored) -> None:
        heapq.heappush(self._ready.setdefault(stored.queue, []),
                       (-stored.priority, stored.seq, stored))

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        now = time.time()
        self._promote_due(now)
        self._reclaim_expired(now)
        taken: list[Delivery] = []
        for name in queues:
            heap = self._ready.get(name)
            while heap and len(taken) < limit:
                stored = heapq.heappop(heap)[2]
                stored.deliveries += 1
                receipt = (stored.seq, stored.deliveries)
                self._leased[receipt] = (stored, now + self.lease_seconds)
                taken.append(Delivery(stored.id, stored.queue, stored.body, stored.priority,
                                      stored.deliveries, receipt))
        return taken

    def _promote_due(self, now: float) -> None:
        while self._scheduled and self._scheduled[0][0] <= now:
            self._push_ready(heapq.heappop(self._scheduled)[2])

    def _reclaim_expired(self, now: float) -> None:
        expired = [receipt for receipt, (_, until) in self._leased.items() if until <= now]
        for receipt in expired:
            self._push_ready(self._leased.pop(receipt)[0])

    def _next_due(self) -> float | None:
        """Seconds until the next scheduled message or lease comes due, if any."""
        moments = [entry[0] for entry in self._scheduled[:1]]
        moments += [until for _, until in self._leased.values()]
        return min(moments) - time.time() if moments else None

    def _wake_all(self) -> None:
        for loop, future in self._waiters:
            if not future.done():
                loop.call_soon_threadsafe(_resolve, future)
        self._waiters.clear()

    def _forget_waiter(self, future: asyncio.Future[None]) -> None:
        with self._lock:
            self._waiters = [(lp, fut) for lp, fut in self._waiters if fut is not future]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
