"""One event loop's link to RabbitMQ: the layers assembled, closing, and queue admin.

A ``Link`` belongs to one event loop (aiormq objects are bound to the loop that made
them) and is only ever touched from that loop; ``AMQPBroker`` keeps one per loop and
sends work for another loop's deliveries over with ``run_coroutine_threadsafe``.

A link is built in layers, one module each, every one on the one below:

- ``amqp_connection.Connected``: aiormq's connection (a *publisher* channel in confirm
  mode, an *admin* channel), reconnecting with backoff, and what failed (lost or refused);
- ``amqp_publish.Publishing``: declares, and publishes awaited until RabbitMQ confirms;
- ``amqp_deliveries.Deliveries``: the deliveries buffered and held, their leases, and
  settling them (ack, requeue and moves as confirmed copies, dead letters);
- ``amqp_consume.Consuming``: the consumer's own connection (``amqp_wire``), its
  consumers and prefetch, and ``fetch``;
- ``Link`` here: ``close`` (what was prefetched goes back uncounted), and counting,
  purging, scanning and deleting queues, on the admin channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from aiormq.abc import AbstractChannel, DeliveredMessage
from aiormq.exceptions import AMQPError
from pamqp import commands as spec

from celeriac.brokers.amqp_connection import CLOSE_TIMEOUT, LOST, quietly
from celeriac.brokers.amqp_consume import Consuming
from celeriac.brokers.amqp_topology import DELAY_LEVELS


class Link(Consuming):
    """One loop's connection, channels, consumers, buffered and leased deliveries."""

    async def close(self) -> None:
        """Stop consuming, hand back what was prefetched (uncounted), and disconnect."""
        if self.closed:
            return
        connection = self.connection
        consumer = self.consumer
        if connection is not None and not connection.is_closed and consumer is not None \
                and not consumer.is_closed:
            await quietly(asyncio.wait_for(self._release_buffered(), CLOSE_TIMEOUT))
        self.closed = True
        for task in [*self._tasks, *([self._reaper] if self._reaper else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._reaper] if self._reaper else []),
                             return_exceptions=True)
        if consumer is not None:
            await quietly(consumer.close(CLOSE_TIMEOUT))
        if connection is not None:
            await quietly(asyncio.wait_for(connection.close(), CLOSE_TIMEOUT))
        self.connection = self.publisher = self.consumer = self.admin = None

    # -- counting, purging and scanning --------------------------------------------------

    async def counts(self, queue: str) -> tuple[int, int] | None:
        """(ready, scheduled) on the server, or None when the queue does not exist."""
        top = self.ctx.topology
        if await self.exists(top.queue(queue)) is None:
            return None
        # Read in the direction messages move (down the ladder, then into the queue): one
        # that moves while we read is counted twice at worst, never missed.
        scheduled = 0
        for name in reversed(await self._ladder(queue)):
            delayed = await self.exists(name)
            scheduled += (delayed.message_count or 0) if delayed is not None else 0
        ready = await self.exists(top.queue(queue))
        return (ready.message_count or 0) if ready is not None else 0, scheduled

    async def _ladder(self, queue: str) -> list[str]:
        """The delay queues of ``queue``, or none when it never had a delayed message."""
        top = self.ctx.topology
        if queue not in self.ladders and await self.exists(top.delay_queue(queue, 0)) is None:
            return []
        return [top.delay_queue(queue, level) for level in range(DELAY_LEVELS)]

    async def purge(self, queue: str) -> int:
        top = self.ctx.topology
        if await self.exists(top.queue(queue)) is None:
            return 0
        count = 0
        for name in [top.queue(queue), *await self._ladder(queue)]:
            if await self.exists(name) is None:
                continue
            channel = await self._admin_channel()
            purged = await channel.queue_purge(name)
            count += purged.message_count or 0
        # What this link prefetched is waiting too: ack it away.
        heap = self.buffers.pop(queue, [])
        self.buffered_counts.pop(queue, None)
        await self._ack_tags(self.generation, [entry[3].tag for entry in heap])
        return count + len(heap)

    async def scan(self, name: str, keep: Callable[[DeliveredMessage], bool] | None = None,
                   limit: int | None = None) -> list[DeliveredMessage]:
        """Read a queue without consuming it: ``basic.get`` each, then requeue them all.

        Messages ``keep`` refuses are acked (removed) instead.
        """
        channel = await self._admin_channel()
        declared = await channel.queue_declare(name, passive=True)
        total = declared.message_count or 0
        if limit is not None:
            total = min(total, limit)
        found: list[DeliveredMessage] = []
        # The newest tag still unacked: a multiple nack up to it hands back every kept
        # message, and must not name a tag that was acked (RabbitMQ closes the channel
        # for an unknown delivery tag).
        last_kept = 0
        try:
            while len(found) < total:
                message = await channel.basic_get(name)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                tag = message.delivery.delivery_tag or 0
                if keep is not None and not keep(message):
                    await channel.basic_ack(tag)
                    continue
                last_kept = tag or last_kept
                found.append(message)
        finally:
            if last_kept:
                await channel.basic_nack(last_kept, multiple=True, requeue=True)
        if found:
            await self._await_requeue(channel, name, len(found))
        return found

    async def _await_requeue(self, channel: AbstractChannel, name: str, count: int) -> None:
        """Wait (bounded) until the messages nacked back show in the queue again.

        RabbitMQ carries a requeue to the queue asynchronously, so a scan right after
        another could find the queue empty. Only another reader taking them keeps the
        count down, and then the wait gives up after a second.
        """
        deadline = self.loop.time() + 1.0
        pause = 0.001
        while self.loop.time() < deadline:
            declared = await channel.queue_declare(name, passive=True)
            if (declared.message_count or 0) >= count:
                return
            await asyncio.sleep(pause)
            pause = min(0.05, pause * 2)

    async def purge_queue(self, name: str) -> int:
        channel = await self._admin_channel()
        purged = await channel.queue_purge(name)
        return purged.message_count or 0

    async def delete(self, exchanges: Sequence[str], queues: Sequence[str]) -> None:
        if self.consumer is not None:
            for tag in list(self.consumers.values()):
                with contextlib.suppress(*LOST, AMQPError):
                    await self.consumer.cancel(tag)
            self._drop_consumer_state()
        channel = await self._admin_channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
        self.declared.clear()
        self.ladders.clear()
        self.shared_declared = False
