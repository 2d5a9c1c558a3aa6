"""A process's outgoing events: a buffer, and one loop that publishes it in batches.

Emitting an event appends a compact tuple (``event.Compact``) to a list: no dict, no I/O,
no lock (everything that emits runs on the emitter's event loop; a producer thread goes
through ``emit_threadsafe``). A publisher task on the same loop wakes when the buffer
stops being empty, lingers ``LINGER`` seconds so the batch fills, and publishes the whole
buffer as ONE bus record (``event.encode``), one publish in flight at a time. At the
worker's fastest (tens of thousands of tasks a second) that is a few hundred records a
second, whatever the task rate.

Events must never block or fail a task. The buffer is bounded (``BUFFER_MAX`` events):
while the bus is unreachable the publisher retries with a backoff, and when the buffer
overflows the oldest events are dropped and counted in a WARNING line. A broker that
carries no bus at all switches the emitter off with one line in the log.

One emitter serves one hostname on one event loop (``acquire``/``release``): a solo
worker's consumer and its node service (heartbeats) share it, so their events are
numbered in one sequence and published in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from typing import TYPE_CHECKING

from celeriac.bus.base import EVENTS, Bus
from celeriac.errors import describe
from celeriac.events.event import Compact, encode, reserve

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.events")

LINGER = 0.02  # seconds the publisher waits for a batch to fill (a publish costs ~0.1 ms)
BUFFER_MAX = 50_000  # events kept while the bus cannot take them; older ones are dropped
BATCH_MAX = 20_000  # events in one record at most
RETRY_MAX = 5.0  # seconds between attempts to reach an unreachable bus, at most
DROP_REPORT_INTERVAL = 10.0  # seconds between two WARNING lines about dropped events
CLOSE_TIMEOUT = 3.0  # seconds the last batch gets to be published when the emitter ends
# ... and when the last attempt already failed: a stop is not held up by a bus that is
# down (a worker stopped during a broker outage), it gets one short try.
CLOSE_TIMEOUT_UNREACHABLE = 0.5


class EventEmitter:
    """The events of one hostname from this process, published on ``app``'s bus."""

    def __init__(self, app: App, hostname: str, bus: Bus | None = None) -> None:
        """``bus``: a connected bus to publish on (the node's), else it opens its own."""
        self.app = app
        self.hostname = hostname
        self.pid = os.getpid()
        self.buffer: list[Compact] = []
        self.off = False  # the broker carries no bus: emitting does nothing
        self.dropped = 0  # events dropped since the last report
        self.published = 0
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._bus: Bus | None = bus
        self._owns_bus = bus is None  # a bus it was given is closed by its owner
        self._users = 0
        self._closing = False
        self._unreachable = False  # the last publish attempt failed
        self._dropped_reported_at = 0.0
        self._task = self._loop.create_task(self._publish_loop(), name="events")

    def emit(self, event: Compact) -> None:
        """Buffer one event (on the emitter's loop). Cheap; never raises, never blocks."""
        buffer = self.buffer
        if not buffer:
            if self.off:
                return
            self._wake.set()
        buffer.append(event)
        if len(buffer) > BUFFER_MAX:
            self._drop(len(buffer) - BUFFER_MAX)

    def emit_threadsafe(self, events: list[Compact]) -> None:
        """Buffer events from another thread (a producer's task-sent)."""
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody publishes
            self._loop.call_soon_threadsafe(self._extend, events)

    def _extend(self, events: list[Compact]) -> None:
        for event in events:
            self.emit(event)

    def _drop(self, count: int) -> None:
        del self.buffer[:count]
        self.dropped += count
        now = time.monotonic()
        if now - self._dropped_reported_at >= DROP_REPORT_INTERVAL:
            self._dropped_reported_at = now
            logger.warning("events: dropped the %d oldest event(s) of %s: the bus cannot take "
                           "them and at most %d wait (tasks are not affected)",
                           self.dropped, self.hostname, BUFFER_MAX)
            self.dropped = 0

    async def _publish_loop(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            if not self._closing:
                await asyncio.sleep(LINGER)
            self._wake.clear()
            try:
                await self._publish_buffer()
                delay = 0.1
                self._unreachable = False
            except Exception as exc:
                self._unreachable = True
                logger.warning("events: cannot publish on the broker's bus (retrying in "
                               "%.1fs; %d event(s) wait): %s", delay, len(self.buffer),
                               describe(exc))
                await self._reset_bus()
                self._wake.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._closing and (self.off or not self.buffer):
                return

    async def _publish_buffer(self) -> None:
        """Publish what is buffered now, in records of at most ``BATCH_MAX`` events."""
        while self.buffer and not self.off:
            batch = self.buffer[:BATCH_MAX]
            bus = await self._connected_bus()
            if bus is None:
                return
            seq = reserve(self.hostname, len(batch))
            record = encode(self.hostname, self.pid, seq, batch)
            # A failed publish raises here and the batch is retried with new numbers
            # (never reused, so no two events share one; the retried batch leaves a gap).
            await bus.publish(EVENTS, [record])
            # Only now: what was appended meanwhile stays, in order, for the next batch.
            del self.buffer[:len(batch)]
            self.published += len(batch)

    async def _connected_bus(self) -> Bus | None:
        if self._bus is None:
            try:
                bus = self.app.bus()
            except NotImplementedError as exc:
                logger.warning("events are off: %s", exc)
                self.off = True
                self.buffer.clear()
                return None
            await bus.connect()
            self._bus = bus
        return self._bus

    async def _reset_bus(self) -> None:
        bus, self._bus = self._bus, None
        owned, self._owns_bus = self._owns_bus, True  # from now on it opens its own
        if bus is not None and owned:
            with contextlib.suppress(Exception):
                await bus.close()

    async def close(self) -> None:
        """Publish what is left (within ``CLOSE_TIMEOUT``), then stop.

        The publisher loop is asked to finish, never cancelled in the middle of a publish
        (a publish the server took but whose answer was cut off would be sent again)."""
        self._closing = True
        self._wake.set()
        timeout = CLOSE_TIMEOUT_UNREACHABLE if self._unreachable else CLOSE_TIMEOUT
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        except TimeoutError:
            logger.warning("events: %d event(s) of %s not published at exit: the bus did "
                           "not take them within %.1fs", len(self.buffer), self.hostname,
                           timeout)
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            await self._reset_bus()


# One emitter per (event loop, hostname), shared by whoever emits for that hostname there.
_emitters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, EventEmitter]] = \
    weakref.WeakKeyDictionary()


def acquire(app: App, hostname: str, bus: Bus | None = None) -> EventEmitter:
    """The emitter of ``hostname`` on the running loop (made if need be, on ``bus`` if
    given); ``release`` it."""
    loop = asyncio.get_running_loop()
    here = _emitters.setdefault(loop, {})
    emitter = here.get(hostname)
    if emitter is None:
        emitter = here[hostname] = EventEmitter(app, hostname, bus)
    emitter._users += 1
    return emitter


async def release(emitter: EventEmitter) -> None:
    """One user is done; the last one publishes what is left and closes the emitter."""
    emitter._users -= 1
    if emitter._users > 0:
        return
    here = _emitters.get(emitter._loop, {})
    if here.get(emitter.hostname) is emitter:
        del here[emitter.hostname]
    await emitter.close()
