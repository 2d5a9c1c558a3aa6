"""Deliveries a link holds: their buffers, leases, and how each is settled.

Every delivery tag is valid only on the consumer connection that received it. When that
is lost, the link's *generation* moves on, so every ``Receipt`` of the old one is stale:
acking it is a no-op, extending it says False. RabbitMQ has already put those messages
back (flagged ``redelivered``).

``Deliveries`` keeps what ``amqp_consume`` received: a per-queue heap (priority, then age;
a *suspect*, delivered before, first) and the deliveries handed out (``held``), each with
a lease. AMQP has no lease of its own, so the contract's is kept here: a reaper hands on
those nobody extended, and ``extend`` renews a lease only while a recent round trip shows
the consumer connection open on the server. Settling: ``ack`` (several tags in one
``multiple`` ack where that covers nothing still outstanding), ``requeue`` and every move
(a counted redelivery, a step down the delay ladder) as a new copy published on the same
connection before the original is acked (``basic.nack`` would flag it ``redelivered``, the
only sign of a delivery lost with a dead worker), ``dead_letter``, and ``_reject`` for a
delivery that cannot be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import operator
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiormq.exceptions import AMQPError
from pamqp import commands as spec

from celeriac.brokers.amqp_connection import LOST, Context, Envelope, lost
from celeriac.brokers.amqp_publish import Publishing
from celeriac.brokers.amqp_topology import (
    HEADER_DEAD_AT,
    HEADER_DELIVERIES,
    HEADER_ETA,
    HEADER_QUEUE,
    HEADER_REASON,
    MAX_TASK_PRIORITY,
    RETURN_PRIORITY,
)
from celeriac.brokers.amqp_wire import Incoming, WireLost
from celeriac.errors import BrokerError

logger = logging.getLogger("celeriac.broker.amqp")

# The buffer rank of a suspect: before every priority (see amqp_consume's fetch).
SUSPECT_RANK = -RETURN_PRIORITY - 1

_entry_tag = operator.itemgetter(2)  # the delivery tag of a buffer heap entry


@dataclass(frozen=True, slots=True)
class Receipt:
    """The broker's handle on one delivery: a tag on one generation of one link."""

    link: Deliveries = field(compare=False, repr=False)
    link_id: int
    generation: int
    tag: int


@dataclass(slots=True)
class Raw:
    """A message delivered on a link's consumer channel, not yet settled."""

    tag: int
    queue: str
    id: str
    body: bytes
    priority: int
    deliveries: int  # deliveries counted before this one
    sent: int  # first publish, microseconds: the age order within one priority
    headers: dict[str, Any]


@dataclass(slots=True)
class Held:
    raw: Raw
    until: float  # loop time the lease ends unless extended
    busy: bool = False  # being dead-lettered: the reaper leaves it alone


class Deliveries(Publishing):
    """A link's buffered and leased deliveries, and their settling."""

    def __init__(self, context: Context, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(context, loop)
        self.generation = 0
        self._held_suspects = 0  # suspects handed out and not settled
        self.buffers: dict[str, list[tuple[int, int, int, Raw]]] = {}
        self.buffered_counts: dict[str, int] = {}  # read by other threads for stats
        self.held: dict[int, Held] = {}
        self._moving: set[int] = set()  # tags whose copy is being published
        # Copies that arrived here before their original's ack was settled, by id: they
        # wait, so that running one cannot kill this process while the original is
        # still unacked (which would bring it back, and the copy with it, twice).
        self._parked: dict[str, list[Raw]] = {}
        self._moving_ids: dict[str, int] = {}
        self.held_counts: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._reaper: asyncio.Task[None] | None = None

    # -- buffering -----------------------------------------------------------------------

    def _buffer(self, raw: Raw) -> None:
        # Quorum queues have no priorities; their buffer keeps to age order as well.
        # Suspects (counted deliveries: see fetch) come first: they go out alone.
        rank = SUSPECT_RANK if raw.deliveries else \
            0 if self.ctx.settings.spec(raw.queue).quorum else -raw.priority
        heapq.heappush(self.buffers.setdefault(raw.queue, []), (rank, raw.sent, raw.tag, raw))
        self.buffered_counts[raw.queue] = self.buffered_counts.get(raw.queue, 0) + 1

    def _suspect(self, queues: Sequence[str]) -> Raw | None:
        """The buffered suspect of ``queues`` to hand out next, if any (they rank first)."""
        for queue in queues:
            heap = self.buffers.get(queue)
            if heap and heap[0][0] == SUSPECT_RANK:
                return heap[0][3]
        return None

    async def _wait(self, timeout: float) -> None:
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(future)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    # -- leases --------------------------------------------------------------------------

    async def _reap(self) -> None:
        """End the leases nobody extended: the message goes back, and that delivery counts.

        AMQP has no lease of its own (a delivery is owned while its channel lives), so
        the contract's lease is kept here, on the loop that runs the worker: a worker
        too busy or paused to extend is also too busy to reap, and a dead one's channel
        dies with it.
        """
        while self.held:
            now = self.loop.time()
            soonest = min((held.until for held in self.held.values() if not held.busy),
                          default=now + self.ctx.lease_seconds)
            if soonest > now:
                await asyncio.sleep(soonest - now)
                continue
            generation = self.generation
            for tag, held in list(self.held.items()):
                if held.until <= now and not held.busy:
                    self._release(tag)
                    logger.warning("lease on message %s in %s ran out (%.3gs without being "
                                   "extended): handing it to another delivery", held.raw.id,
                                   held.raw.queue, self.ctx.lease_seconds)
                    self._spawn(self._move(generation, held.raw, held.raw.deliveries + 1))

    def _release(self, tag: int) -> Held | None:
        held = self.held.pop(tag, None)
        if held is not None:
            self.held_counts[held.raw.queue] -= 1
            if held.raw.deliveries:
                self._held_suspects -= 1
                self._wake()  # consumers may start again
            elif not self.held and self._suspect(list(self.buffers)) is not None:
                self._wake()  # a fetch waits to hand out a suspect alone
        return held

    def _live(self, receipt: Receipt) -> Held | None:
        if receipt.generation != self.generation:
            return None
        return self.held.get(receipt.tag)

    def holds(self, receipt: Receipt) -> bool:
        """Whether the receipt's delivery is held, its connection alive and lease unexpired.

        Read from another thread at worst (a plain look-up): no I/O, no await.
        """
        held = self._live(receipt)
        return held is not None and held.until > self.loop.time() \
            and self.consumer is not None and not self.consumer.is_closed

    async def extend(self, receipts: Sequence[Receipt]) -> list[bool]:
        """Renew the leases still held; for each receipt, whether it is still this one's.

        Fencing: a lease that ran out is lost (the reaper hands its message on); and
        a lease is renewed only while the consumer connection is known to be open on
        the server: a round trip on it within the last half lease, or one made now.
        A paused process's socket may look open for a while after RabbitMQ closed it
        and gave its deliveries to others; this check is what refuses its late results.
        """
        now = self.loop.time()
        if not any(held is not None and held.until > now
                   for held in map(self._live, receipts)):
            return [False] * len(receipts)
        if not await self._alive():
            return [False] * len(receipts)
        until = self.loop.time() + self.ctx.lease_seconds
        owned = []
        for receipt in receipts:
            held = self._live(receipt)  # (again: the check may have lost the connection)
            if held is not None and held.until > now:
                held.until = until
                owned.append(True)
            else:
                owned.append(False)
        return owned

    async def _alive(self) -> bool:
        """Whether the consumer connection is open on the server, by a recent round trip.

        One older than half a lease is made again (a passive declare of ``amq.direct``,
        which every vhost has); without an answer within the timeout the connection is
        given up, since RabbitMQ may have given its deliveries to another consumer.
        """
        wire = self.consumer
        if wire is None or wire.is_closed:
            return False
        lease = self.ctx.lease_seconds
        if self.loop.time() - wire.round_trip_at < lease / 2:
            return True
        timeout = max(1.0, min(5.0, lease / 2))
        try:
            async with asyncio.timeout(timeout):
                await wire.call(spec.Exchange.Declare(exchange="amq.direct", passive=True),
                                spec.Exchange.DeclareOk)
        except TimeoutError:
            wire.abort(WireLost(f"RabbitMQ did not answer a liveness check within "
                                f"{timeout:g}s; the connection's leases are given up"))
            return False
        except BaseException as exc:
            if not isinstance(exc, Exception) and not lost(exc):
                raise
            return False
        return not wire.is_closed

    # -- settling ------------------------------------------------------------------------

    async def ack(self, receipts: Sequence[Receipt]) -> None:
        tags = [receipt.tag for receipt in receipts
                if self._live(receipt) is not None and self._release(receipt.tag)]
        await self._ack_tags(self.generation, tags)

    async def _ack_tags(self, generation: int, tags: Sequence[int]) -> None:
        channel = self.consumer
        if not tags or generation != self.generation or channel is None:
            return
        batch = sorted(tags)
        # One ack with ``multiple`` settles every unacked tag up to it, so it may cover
        # the tags of this batch below the lowest tag still outstanding. Deliveries whose
        # callback has not run yet always have higher tags than any seen.
        outstanding = min(min(self.held, default=math.inf),
                          min((min(map(_entry_tag, heap)) for heap in self.buffers.values()
                               if heap), default=math.inf),
                          min((tag for tag in self._moving if tag not in tags),
                              default=math.inf),
                          min((raw.tag for raws in self._parked.values() for raw in raws),
                              default=math.inf))
        covered = [tag for tag in batch if tag < outstanding]
        try:
            if len(covered) > 1:
                channel.ack(covered[-1], multiple=True)
                batch = batch[len(covered):]
            for tag in batch:
                channel.ack(tag)
        except (*LOST, AMQPError):
            pass  # the channel is gone: RabbitMQ gives the messages back itself

    async def requeue(self, receipts: Sequence[Receipt]) -> None:
        """Back to the queue uncounted, as new copies.

        ``basic.nack`` would flag them ``redelivered``, which is also the only sign of a
        delivery lost with a dead worker; a copy keeps that sign meaningful. The copy
        keeps the message's first publish time, by which consumers order what they hold.
        """
        generation = self.generation
        raws = [held.raw for receipt in receipts
                if (held := self._live(receipt)) is not None and self._release(receipt.tag)]
        # A copy that cannot be made falls back to a nack, or RabbitMQ requeues the
        # original with its channel: either way the message is back in the queue.
        await asyncio.gather(*(self._move(generation, raw, raw.deliveries) for raw in raws))

    async def _move(self, generation: int, raw: Raw, deliveries: int) -> bool:
        """Publish a copy of a delivered message, then ack the original.

        The copy goes where the message would go now (down the delay ladder if its eta
        is still ahead). If the original's channel is gone, nothing is published:
        RabbitMQ has requeued the original already.
        """
        if generation != self.generation or self.consumer is None:
            return False
        self._moving.add(raw.tag)
        self._moving_ids[raw.id] = self._moving_ids.get(raw.id, 0) + 1
        try:
            return await self._copy_then_ack(generation, raw, deliveries)
        finally:
            self._moving.discard(raw.tag)
            left = self._moving_ids.pop(raw.id, 1) - 1
            if left:
                self._moving_ids[raw.id] = left
            elif generation == self.generation:
                for parked in self._parked.pop(raw.id, []):
                    self._buffer(parked)
                self._wake()

    async def _copy_then_ack(self, generation: int, raw: Raw, deliveries: int) -> bool:
        eta = raw.headers.get(HEADER_ETA)
        envelope = self.ctx.envelope(raw.queue, raw.id, raw.body, raw.priority,
                                     eta_ms=eta if isinstance(eta, int) else None,
                                     deliveries=deliveries, sent=raw.sent, returning=True)
        try:
            if envelope.eta_ms is not None:
                await self.declare([], [raw.queue])
            await self.publish_here([envelope], self.ctx.settings.publish_timeout)
        except BaseException as exc:
            if not isinstance(exc, Exception) and not lost(exc):
                raise
            logger.warning("could not republish message %s to %s (%r); handing the "
                           "original back instead", raw.id, raw.queue, exc)
            await self._nack(generation, raw.tag)
            return False
        await self._ack_tags(generation, [raw.tag])
        # A synchronous call after the ack on the same channel: once it returns, RabbitMQ
        # has settled the original, and this process dying cannot bring it back.
        channel = self.consumer
        if generation == self.generation and channel is not None:
            with contextlib.suppress(Exception):
                await channel.call(spec.Queue.Declare(queue=self.ctx.topology.queue(raw.queue),
                                                      passive=True), spec.Queue.DeclareOk)
        return True

    async def _nack(self, generation: int, tag: int) -> None:
        """The fallback when a copy cannot be made: requeue, flagged ``redelivered``."""
        channel = self.consumer
        if generation == self.generation and channel is not None:
            with contextlib.suppress(*LOST, AMQPError):
                channel.nack(tag, requeue=True)

    async def dead_letter(self, pairs: Sequence[tuple[Receipt, str]]) -> None:
        live = [(receipt, held, reason) for receipt, reason in pairs
                if (held := self._live(receipt)) is not None and not held.busy]
        if not live:
            return
        generation = self.generation
        top = self.ctx.topology
        now_ms = int(time.time() * 1000)
        envelopes = []
        for _, held, reason in live:
            held.busy = True
            raw = held.raw
            headers = {key: value for key, value in raw.headers.items()
                       if key not in (HEADER_ETA, "x-death")}
            headers.update({HEADER_REASON: reason, HEADER_QUEUE: raw.queue,
                            HEADER_DEAD_AT: now_ms, HEADER_DELIVERIES: raw.deliveries + 1})
            properties = spec.Basic.Properties(message_id=raw.id, priority=raw.priority,
                                               delivery_mode=2, headers=headers)
            envelopes.append(Envelope(raw.queue, raw.body, properties,
                                      exchange=top.dead_exchange, routing_key=raw.queue))
        try:
            await self.run(lambda: self.declare([]))
            await self.publish_here(envelopes, self.ctx.settings.publish_timeout)
        finally:
            for _, held, _ in live:
                held.busy = False
        tags = [receipt.tag for receipt, _, _ in live if self._release(receipt.tag)]
        await self._ack_tags(generation, tags)

    async def _reject(self, generation: int, queue: str, message: Incoming, reason: str
                      ) -> None:
        """Dead-letter a delivery that cannot be read, then ack it; the connection stays."""
        name = message.message_id or "(no message id)"
        logger.error("message %s in %s dead-lettered: %s", name, queue, reason)
        top = self.ctx.topology
        headers = {key: value for key, value in message.headers.items()
                   if key not in (HEADER_ETA, "x-death")}
        headers.update({HEADER_REASON: reason, HEADER_QUEUE: queue,
                        HEADER_DEAD_AT: int(time.time() * 1000)})
        self._moving.add(message.tag)  # no ack with ``multiple`` may settle it meanwhile
        try:
            for kept in (headers, {k: headers[k] for k in (HEADER_REASON, HEADER_QUEUE,
                                                            HEADER_DEAD_AT)}):
                properties = spec.Basic.Properties(
                    message_id=message.message_id or None, delivery_mode=2, headers=kept,
                    priority=min(message.priority, MAX_TASK_PRIORITY))
                envelope = Envelope(queue, message.body, properties,
                                    exchange=top.dead_exchange, routing_key=queue)
                try:
                    await self.run(lambda: self.declare([]))
                    await self.publish_here([envelope], self.ctx.settings.publish_timeout)
                    break
                except (ValueError, TypeError, struct.error) as exc:
                    # Its own headers cannot be written back out: keep only ours.
                    logger.warning("the headers of message %s cannot be copied into its "
                                   "dead letter (%r); keeping only the reason", name, exc)
                    continue
            else:
                raise BrokerError(f"could not dead-letter message {name}")
        except Exception as exc:
            logger.warning("could not dead-letter unreadable message %s (%r); RabbitMQ gets "
                           "it back and it comes here again", name, exc)
            self._moving.discard(message.tag)
            await self._nack(generation, message.tag)
            return
        self._moving.discard(message.tag)
        await self._ack_tags(generation, [message.tag])
