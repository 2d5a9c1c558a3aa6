"""Consuming: the consumer connection, its consumers and prefetch, and ``fetch``.

The consumer has a connection of its own, read by celeriac's own protocol
(``amqp_wire``: each delivery parsed where it lies in the read buffer and handed over in
the same call, which costs a fraction of aiormq's reader): one ``basic.consume`` per
queue, ``basic.qos`` prefetch set to the caller's budget (``prefetch_for``), manual acks.
Its channel is in confirm mode, for the copies ``amqp_deliveries`` republishes on it.
Each delivery is checked (``_header_problem``: an unreadable one is dead-lettered),
counted when ``redelivered``, and buffered for ``fetch``. The connection's heartbeat
follows the lease (``amqp_connection.consumer_heartbeat``), and a message delivered
before runs alone (``fetch``): see the module docstring of ``celeriac.brokers.amqp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from aiormq.exceptions import AMQPError
from pamqp import commands as spec

from celeriac.brokers.amqp_blocking import refusal
from celeriac.brokers.amqp_connection import LOST, Context
from celeriac.brokers.amqp_deliveries import Deliveries, Held, Raw, Receipt
from celeriac.brokers.amqp_topology import (
    HEADER_DELIVERIES,
    HEADER_ETA,
    HEADER_PRIORITY,
    HEADER_SENT,
    MAX_TASK_PRIORITY,
)
from celeriac.brokers.amqp_wire import Incoming, Wire
from celeriac.brokers.base import Delivery

logger = logging.getLogger("celeriac.broker.amqp")

# After a new consumer starts, RabbitMQ pushes what is ready in a burst; fetch waits this
# long at most for the burst it was told about (queue.declare's message_count), so one
# call returns everything that was ready, not just the first message to arrive.
BURST_WAIT = 0.25
# Delayed messages that come due together are dead-lettered into the queue one by one;
# a fetch that got one waits this long for its companions, so they come out by priority.
DUE_WINDOW = 0.02

# Prefetch targets served exactly; larger ones are rounded up to a power of two.
EXACT_PREFETCH = 32

_consumer_tags = itertools.count(1)


class Consuming(Deliveries):
    """A link's consumer connection, its consumers, and fetch."""

    def __init__(self, context: Context, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(context, loop)
        self.consumers: dict[str, str] = {}  # queue -> consumer tag
        self.prefetch = 0
        self._solo = False  # consuming one at a time, since a suspect came (see fetch)
        self._expect: dict[str, tuple[int, float]] = {}  # queue -> (burst left, until)
        self._due_seen: dict[str, float] = {}
        self._consume_lock = asyncio.Lock()

    # -- the consumer connection ---------------------------------------------------------

    async def _open_consumer(self) -> Wire:
        # In confirm mode: copies of its deliveries (requeues that count, moves down the
        # delay ladder, dead letters) are published on it too (publish_here).
        try:
            wire = await Wire.open(self.ctx.server, self.ctx.settings.connect_timeout,
                                   heartbeat=self.ctx.consumer_heartbeat, confirm=True)
        except Exception as exc:
            if (refused := refusal(exc)) is not None:
                raise self.refused(refused) from exc
            raise

        def on_lost(error: BaseException) -> None:
            if self.consumer is not wire:
                return  # given up already (closed, or replaced)
            if not self.closed and not isinstance(error, asyncio.CancelledError):
                # (CancelledError: the loop itself is ending, as at the end of asyncio.run)
                logger.warning("consumer connection to RabbitMQ at %s lost: %r; its unacked "
                               "deliveries go back to the queues", self.ctx.safe_url, error)
            self._drop_consumer_state()

        wire.on_lost = on_lost
        wire.on_cancel = self._on_cancel
        return wire

    def _on_cancel(self, tag: str) -> None:
        """RabbitMQ cancelled a consumer (its queue was deleted): consume it again."""
        for queue, consumer_tag in list(self.consumers.items()):
            if consumer_tag == tag:
                del self.consumers[queue]
                self.declared.discard(queue)
        self._wake()

    def _drop_consumer_state(self) -> None:
        """The consumer connection is gone, and every tag it gave with it."""
        self.generation += 1
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            consumer.abort()  # (when it was given up while still open: delete())
        self.consumers.clear()
        self.prefetch = 0
        self._solo = False
        self._held_suspects = 0
        self.buffers.clear()
        self.buffered_counts.clear()
        self.held.clear()
        self.held_counts.clear()
        self._moving.clear()
        self._moving_ids.clear()
        self._parked.clear()
        self._expect.clear()
        self._due_seen.clear()
        self._wake()

    async def _consumer_channel(self) -> Wire:
        await self.ready()  # the link's connection, its backoff and its errors first
        if self.consumer is None or self.consumer.is_closed:
            if self.consumer is not None:
                self._drop_consumer_state()
            self.consumer = await self._open_consumer()
        return self.consumer

    async def _release_buffered(self) -> None:
        """Prefetched messages nobody started go back as new copies, not as redeliveries.

        Closing the channel would requeue them flagged ``redelivered``, and the next
        consumer would count a delivery for each although none ever ran.
        """
        consumer = self.consumer
        if consumer is None:
            return
        for tag in list(self.consumers.values()):
            with contextlib.suppress(Exception):
                await consumer.cancel(tag)
        self.consumers.clear()
        raws = [entry[3] for heap in self.buffers.values() for entry in heap]
        raws += [raw for parked in self._parked.values() for raw in parked]
        self.buffers.clear()
        self.buffered_counts.clear()
        self._parked.clear()
        if raws:
            await asyncio.gather(*(self._move(self.generation, raw, raw.deliveries)
                                   for raw in raws))

    # -- consuming -----------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries from ``queues``, waiting up to ``timeout`` for one.

        A *suspect*, a message with a counted delivery before this one (its holder died
        or its lease ran out), goes out alone: consumers are cancelled, whatever else
        was prefetched goes back (uncounted, at the head of its queue), and it is handed
        out once nothing else of this link is held. Should it kill the process, no other
        message is unacked on the connection to be counted with it. After a suspect,
        consumers restart with a prefetch of one until a message that is not one comes.
        """
        deadline = self.loop.time() + timeout
        generation = await self.run(lambda: self._consume(queues, limit))
        while True:
            if self._buffered(queues):
                await self._settle(queues, limit)
                suspect = self._suspect(queues)
                if suspect is None:
                    return self._take(queues, limit)
                if await self._alone(suspect, generation):
                    return self._take(queues, 1)
                # Else it waits until what this link holds is settled (``_release`` wakes).
            until = max(deadline, self._burst_until(queues))
            now = self.loop.time()
            if now >= until:
                return []
            await self._wait(until - now)
            if self.generation != generation or not (
                    self.consumers or self._isolating(queues)):
                # The channel was lost while we waited, or a suspect was settled.
                generation = await self.run(lambda: self._consume(queues, limit))

    def _isolating(self, queues: Sequence[str]) -> bool:
        """Whether a suspect is buffered or held, so that consumers stay stopped."""
        return self._held_suspects > 0 or self._suspect(queues) is not None

    async def _alone(self, suspect: Raw, generation: int) -> bool:
        """Stop consuming and send back all but ``suspect``; whether it may go out now."""
        async with self._consume_lock:
            wire = self.consumer
            if generation != self.generation or wire is None:
                return False
            self._solo = True
            self._expect.clear()  # no burst to wait for now
            if len(self.consumers) > 1 or (self.consumers and self.prefetch > 1):
                # (One consumer with a prefetch of one gets nothing more while the
                # suspect is unacked: it may stay.)
                try:
                    for tag in self.consumers.values():
                        await wire.cancel(tag)
                except (*LOST, AMQPError):
                    return False  # the connection is gone, and the suspect with it
                self.consumers.clear()
            others = [entry[3] for heap in self.buffers.values() for entry in heap
                      if entry[3] is not suspect]
            if others:
                for queue, heap in self.buffers.items():
                    heap[:] = [entry for entry in heap if entry[3] is suspect]
                    self.buffered_counts[queue] = len(heap)
                logger.info("message %s in %s was delivered before (%d time(s)): it runs "
                            "alone; %d prefetched message(s) go back to the head of their "
                            "queues", suspect.id, suspect.queue, suspect.deliveries,
                            len(others))
                await asyncio.gather(*(self._move(generation, raw, raw.deliveries)
                                       for raw in others))
            return generation == self.generation and not self.held

    async def _consume(self, queues: Sequence[str], limit: int) -> int:
        """Consume ``queues`` with a prefetch of what is held plus ``limit``.

        The prefetch follows that target both ways (``prefetch_for``): up when the
        caller's budget grows, and down when it shrinks to a quarter, so a worker whose
        tasks became slow stops holding hundreds of messages other workers could run.
        """
        async with self._consume_lock:
            channel = await self._consumer_channel()
            if self._isolating(queues):
                return self.generation  # consumers stay stopped while a suspect is out
            await self.declare(queues)
            target = max(len(self.held) + limit, 1)
            # After a suspect, one at a time: the next may be a suspect too.
            wanted = 1 if self._solo else prefetch_for(target, self.prefetch)
            restart = wanted != self.prefetch and bool(self.consumers)
            if restart:
                # A per-consumer prefetch applies to consumers started after basic.qos, so
                # another budget means new consumers. Deliveries already buffered stay:
                # their tags belong to the channel, not to the consumer.
                for tag in self.consumers.values():
                    await channel.cancel(tag)
                queues = [*self.consumers, *(q for q in queues if q not in self.consumers)]
                self.consumers.clear()
            if wanted != self.prefetch:
                self.prefetch = wanted
                await channel.call(spec.Basic.Qos(prefetch_count=self.prefetch),
                                   spec.Basic.QosOk)
            for queue in queues:
                if queue not in self.consumers:
                    await self._start_consumer(channel, queue)
            return self.generation

    async def stop_consuming(self, queues: Sequence[str]) -> None:
        """Cancel the consumers of ``queues``; what they buffered goes back, uncounted."""
        async with self._consume_lock:
            wire, generation = self.consumer, self.generation
            for queue in queues:
                tag = self.consumers.pop(queue, None)
                if tag is not None and wire is not None:
                    await wire.cancel(tag)
                self._expect.pop(queue, None)
                heap = self.buffers.pop(queue, [])
                self.buffered_counts.pop(queue, None)
                if heap and wire is not None:
                    await asyncio.gather(*(self._move(generation, entry[3], entry[3].deliveries)
                                           for entry in heap))

    async def _start_consumer(self, channel: Wire, queue: str) -> None:
        name = self.ctx.topology.queue(queue)
        ready = await channel.call(spec.Queue.Declare(queue=name, passive=True),
                                   spec.Queue.DeclareOk)
        burst = min(ready.message_count or 0, self.prefetch)
        self._expect[queue] = (burst, self.loop.time() + BURST_WAIT)
        tag = f"celeriac.{self.id}.{next(_consumer_tags)}"
        await channel.consume(name, tag, partial(self._on_message, self.generation, queue))
        self.consumers[queue] = tag

    def _on_message(self, generation: int, queue: str, message: Incoming) -> None:
        if generation != self.generation:
            return  # from a connection already given up: its tag is dead
        left, until = self._expect.get(queue, (0, 0.0))
        if left:
            self._expect[queue] = (left - 1, until)
        headers = message.headers
        queue_spec = self.ctx.settings.spec(queue)
        problem = message.malformed or _header_problem(headers, queue_spec.quorum)
        if problem:
            # Unreadable at the broker's level: nobody could run it, and handing it back
            # would bring it here again at once. It goes to the dead letters with why.
            self._spawn(self._reject(generation, queue, message, problem))
            return
        counted = headers.get(HEADER_DELIVERIES, 0)
        if queue_spec.quorum:  # RabbitMQ counts returns of quorum queue messages itself
            counted += headers.get("x-delivery-count", 0)
        sent = headers.get(HEADER_SENT)
        priority = headers.get(HEADER_PRIORITY, min(message.priority, MAX_TASK_PRIORITY))
        raw = Raw(message.tag, queue, message.message_id, message.body, priority,
                  counted, sent if sent is not None else time.time_ns() // 1000, headers)
        eta = headers.get(HEADER_ETA)
        if eta is not None and eta > time.time() * 1000:
            # Early (a delay past the top of the ladder, or clocks apart): down again.
            self._spawn(self._move(generation, raw, raw.deliveries))
            return
        if message.redelivered and not queue_spec.quorum:
            # The channel that had it died (a worker killed, a connection lost), so that
            # delivery counts. The count is kept in a new copy, published before the
            # original is acked, so that a message that kills every worker it reaches
            # reaches the delivery limit instead of coming back forever.
            self._spawn(self._move(generation, raw, raw.deliveries + 1))
            return
        if raw.id in self._moving_ids:
            self._parked.setdefault(raw.id, []).append(raw)
            return
        self._buffer(raw)
        if eta is not None:
            self._due_seen[queue] = self.loop.time()
        self._wake()

    def _buffered(self, queues: Sequence[str]) -> int:
        return sum(self.buffered_counts.get(queue, 0) for queue in queues)

    def _burst_until(self, queues: Sequence[str]) -> float:
        pending = [until for queue in queues
                   for left, until in [self._expect.get(queue, (0, 0.0))] if left]
        return max(pending, default=0.0)

    async def _settle(self, queues: Sequence[str], limit: int) -> None:
        """Wait (briefly, bounded) for a burst or for companions due at the same time."""
        while self._buffered(queues) < limit:
            due = max((self._due_seen.get(queue, -math.inf) for queue in queues),
                      default=-math.inf)
            until = max(self._burst_until(queues), due + DUE_WINDOW)
            now = self.loop.time()
            if until <= now:
                return
            await self._wait(until - now)

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        taken: list[Delivery] = []
        until = self.loop.time() + self.ctx.lease_seconds
        for queue in queues:
            heap = self.buffers.get(queue)
            while heap and len(taken) < limit:
                raw = heapq.heappop(heap)[3]
                if raw.deliveries:
                    self._held_suspects += 1
                else:
                    self._solo = False  # no suspect at the head now: the full prefetch
                self.buffered_counts[queue] -= 1
                self.held[raw.tag] = Held(raw, until)
                self.held_counts[queue] = self.held_counts.get(queue, 0) + 1
                taken.append(Delivery(raw.id, queue, raw.body, raw.priority,
                                      raw.deliveries + 1,
                                      Receipt(self, self.id, self.generation, raw.tag)))
        if taken and (self._reaper is None or self._reaper.done()):
            self._reaper = self.loop.create_task(self._reap(), name="celeriac-amqp-leases")
        return taken


def prefetch_for(target: int, current: int) -> int:
    """The ``basic.qos`` prefetch for a consumer that wants ``target`` deliveries.

    Changing it means restarting the consumers (four round trips), so it changes only
    when the target leaves the band the current value serves: above it, or down to a
    quarter of it. Small targets are served exactly (with few slow tasks, a message more
    in one worker is a message another worker may wait for); above ``EXACT_PREFETCH``
    the prefetch is rounded up to a power of two, so a budget that grows by small steps
    (quick tasks) restarts the consumers a few times, not at every fetch.
    """
    if current and current // 4 < target <= current:
        return current
    if target <= EXACT_PREFETCH:
        return target
    return 1 << (target - 1).bit_length()


def _header_problem(headers: dict[str, Any], quorum: bool) -> str:
    """What is wrong with the headers celeriac reads from a delivery; "" when nothing."""
    for name in _QUORUM_HEADERS if quorum else _HEADERS:
        value = headers.get(name)
        if value is not None and (type(value) is not int or value < 0):  # (bool: not int)
            return f"its header {name} is {value!r}, not a whole number of at least 0"
    priority = headers.get(HEADER_PRIORITY)
    if priority is not None and priority > MAX_TASK_PRIORITY:
        return f"its header {HEADER_PRIORITY} is {priority!r}, above {MAX_TASK_PRIORITY}"
    return ""


# The headers celeriac reads from a delivery, each a whole number >= 0 when present.
_HEADERS = (HEADER_SENT, HEADER_DELIVERIES, HEADER_ETA, HEADER_PRIORITY)
_QUORUM_HEADERS = (*_HEADERS, "x-delivery-count")
