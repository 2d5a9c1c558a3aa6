"""Topics in this process, for the memory:// broker: one list per topic.

Shared by every thread that uses the same broker object (a producer and a
``ThreadedWorker`` on their own loops): one lock guards the lists, and a reader waiting
for records is woken with ``call_soon_threadsafe`` on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence

from celeriac.bus.base import RETENTION, Bus, Record, RecordSizes, Subscription, check_topic


class _Topic:
    def __init__(self, name: str) -> None:
        self.retention = RETENTION[name]
        self.records: list[tuple[int, Record]] = []  # (sequence number, record)
        self.next_seq = 0
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.sizes = RecordSizes()


class MemoryBus(Bus):
    scheme = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics = {name: _Topic(name) for name in RETENTION}

    async def close(self) -> None:
        pass  # the lists live as long as the broker object; readers just stop reading

    async def publish(self, topic: str, payloads: Sequence[bytes]) -> None:
        check_topic(topic)
        now = time.time()
        with self._lock:
            log = self._topics[topic]
            for payload in payloads:
                log.records.append((log.next_seq, Record(now, bytes(payload))))
                log.next_seq += 1
            horizon = now - log.retention.max_age
            limit = log.sizes.limit(topic, payloads)  # within max_records and max_bytes
            drop = max(len(log.records) - limit, 0)
            while drop < len(log.records) and log.records[drop][1].at < horizon:
                drop += 1
            del log.records[:drop]
            waiters, log.waiters = log.waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_wake, future)

    async def subscribe(self, topic: str, since: float | None = None) -> Subscription:
        check_topic(topic)
        with self._lock:
            log = self._topics[topic]
            if since is None:
                start = log.next_seq
            else:
                start = next((seq for seq, record in log.records if record.at >= since),
                             log.next_seq)
        return _MemorySubscription(self, log, start)

    def _after(self, log: _Topic, seq: int,
               future: asyncio.Future[None] | None) -> list[tuple[int, Record]]:
        with self._lock:
            found = [(s, r) for s, r in log.records[-(log.next_seq - seq):]
                     if s >= seq] if log.next_seq > seq else []
            if not found and future is not None:
                log.waiters.append((asyncio.get_running_loop(), future))
            return found


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, log: _Topic, start: int) -> None:
        self._bus = bus
        self._log = log
        self._next = start

    async def read(self, timeout: float) -> list[Record]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        found = self._bus._after(self._log, self._next, future)
        if not found:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout)
            found = self._bus._after(self._log, self._next, None)
        if found:
            self._next = found[-1][0] + 1
        return [record for _, record in found]

    async def close(self) -> None:
        pass
