"""One event loop's connection to RabbitMQ, and everything that lives on it.

A ``Link`` belongs to one event loop (aiormq objects are bound to the loop that made
them) and is only ever touched from that loop; ``AMQPBroker`` keeps one per loop and
sends work for another loop's deliveries over with ``run_coroutine_threadsafe``.

A link has two connections. aiormq's carries two channels:

- *publisher*, in confirm mode: every publish is awaited until RabbitMQ confirms it
  (published ``mandatory``, so an unroutable message is an error, not a silent drop); a
  batch goes out under one lock in a few writes (``amqp_confirm.publish_confirmed``),
  each message's confirm still awaited;
- *admin*: passive declares for counts, ``basic.get`` scans of the dead letters and the
  registry. A passive declare of a missing queue closes a channel; only this one.

The *consumer* has a connection of its own, read by celeriac's own protocol
(``amqp_wire``: each delivery parsed where it lies in the read buffer and handed over in
the same call, which costs a fraction of aiormq's reader): one ``basic.consume`` per
queue, ``basic.qos`` prefetch set to the caller's budget, manual acks. Deliveries land in
a per-queue heap (priority, then age) that ``fetch`` takes from. Its channel is in confirm
mode too: every copy the link republishes of a delivery (a counted requeue, a move down
the delay ladder, a dead letter) goes out confirmed on this same connection before the
original is acked (``publish_here``), so a copy never outlives the connection its
original came on.

Every delivery tag is valid only on the consumer connection that received it. When that
is lost, the link's *generation* moves on, so every receipt of the old one is stale:
acking it is a no-op, extending it says False. RabbitMQ has already put those messages
back (flagged ``redelivered``). The consumer connection's heartbeat follows the lease
(``consumer_heartbeat``), ``extend`` confirms a lease with a round trip when the last one
is older than half a lease, and a message delivered before runs alone (``fetch``): see
the module docstring of ``celeriac.brokers.amqp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import operator
import os
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from aiormq.exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelAccessRefused,
    ChannelClosed,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    InvalidFrameError,
    PublishError,
)
from pamqp import commands as spec

from celeriac.brokers.amqp_blocking import Refused, Server, last_cause, refusal
from celeriac.brokers.amqp_confirm import Outbound, publish_confirmed
from celeriac.brokers.amqp_topology import (
    DELAY_LEVELS,
    HEADER_DEAD_AT,
    HEADER_DELIVERIES,
    HEADER_ETA,
    HEADER_PRIORITY,
    HEADER_QUEUE,
    HEADER_REASON,
    HEADER_SENT,
    MAX_TASK_PRIORITY,
    RETURN_PRIORITY,
    AMQPOptions,
    Topology,
)
from celeriac.brokers.amqp_wire import Incoming, Wire, WireLost
from celeriac.brokers.base import Delivery
from celeriac.errors import BrokerError, BrokerRefused, BrokerUnavailable

logger = logging.getLogger("celeriac.broker.amqp")

# After a new consumer starts, RabbitMQ pushes what is ready in a burst; fetch waits this
# long at most for the burst it was told about (queue.declare's message_count), so one
# call returns everything that was ready, not just the first message to arrive.
BURST_WAIT = 0.25
# Delayed messages that come due together are dead-lettered into the queue one by one;
# a fetch that got one waits this long for its companions, so they come out by priority.
DUE_WINDOW = 0.02
RECONNECT_BACKOFF_FIRST = 0.1
RECONNECT_BACKOFF_MAX = 5.0
CLOSE_TIMEOUT = 5.0
# How long a call that found its channel closing waits for the channel's reason.
CHANNEL_CLOSE_WAIT = 0.5

# Prefetch targets served exactly; larger ones are rounded up to a power of two.
EXACT_PREFETCH = 32

# A channel or connection that is gone: the operation may succeed on a new one.
LOST = (AMQPConnectionError, ChannelInvalidStateError, ConnectionError)

# The buffer rank of a suspect: before every priority (see fetch).
SUSPECT_RANK = -RETURN_PRIORITY - 1

_link_ids = itertools.count(1)
_entry_tag = operator.itemgetter(2)  # the delivery tag of a buffer heap entry
_consumer_tags = itertools.count(1)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Receipt:
    """The broker's handle on one delivery: a tag on one generation of one link."""

    link: Link = field(compare=False, repr=False)
    link_id: int
    generation: int
    tag: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message ready for ``basic.publish``.

    Its route is worked out at the moment it is sent, so that a delay counts from then:
    to ``exchange``/``routing_key`` when given (dead letters), down the delay ladder
    while ``eta_ms`` is ahead, else straight into the queue.
    """

    queue: str  # the celeriac queue it is for (declared before publishing)
    body: bytes
    properties: spec.Basic.Properties
    eta_ms: int | None = None
    exchange: str | None = None
    routing_key: str = ""

    def delayed(self, now_ms: float) -> bool:
        return self.exchange is None and self.eta_ms is not None and self.eta_ms > now_ms


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


class Context:
    """What every link of one broker shares: settings, names, and the clock for ages."""

    def __init__(self, url: str, safe_url: str, settings: AMQPOptions, topology: Topology,
                 lease_seconds: float) -> None:
        self.url = url
        self.safe_url = safe_url
        self.settings = settings
        self.topology = topology
        self.lease_seconds = lease_seconds
        self.known: set[str] = set()  # celeriac queues declared through this broker
        # (AMQPBroker puts the heartbeat into the URL when it names none.)
        self.server = Server.from_url(url, f"celeriac pid {os.getpid()} consumer")
        self.consumer_heartbeat = consumer_heartbeat(self.server.heartbeat, lease_seconds)
        self._stamp_lock = threading.Lock()
        self._last_stamp = 0

    def stamp(self) -> int:
        """A publish time in microseconds, strictly increasing within this process."""
        with self._stamp_lock:
            self._last_stamp = max(time.time_ns() // 1000, self._last_stamp + 1)
            return self._last_stamp

    def envelope(self, queue: str, id: str, body: bytes, priority: int, *,
                 eta_ms: int | None = None, deliveries: int = 0, sent: int | None = None,
                 now_ms: float | None = None, returning: bool = False) -> Envelope:
        """A message for ``queue``, to wait in the broker until ``eta_ms`` if that is ahead.

        ``returning``: a copy of a delivered message going back to its queue; unless it
        waits for an eta, it goes at ``RETURN_PRIORITY``, ahead of the waiting messages.
        """
        queue_spec = self.settings.spec(queue)
        headers: dict[str, Any] = {HEADER_SENT: self.stamp() if sent is None else sent}
        if deliveries:
            headers[HEADER_DELIVERIES] = deliveries
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        if eta_ms is not None and eta_ms > now_ms:
            headers[HEADER_ETA] = eta_ms
        else:
            eta_ms = None
        if returning and eta_ms is None:
            headers[HEADER_PRIORITY] = priority
            priority = RETURN_PRIORITY
        properties = spec.Basic.Properties(
            message_id=id, priority=priority, headers=headers,
            delivery_mode=queue_spec.delivery_mode)
        return Envelope(queue, body, properties, eta_ms)

    def route(self, envelope: Envelope) -> tuple[str, str]:
        """The exchange and routing key to publish ``envelope`` with, now."""
        if envelope.exchange is not None:
            return envelope.exchange, envelope.routing_key
        now_ms = time.time() * 1000
        if envelope.eta_ms is not None and envelope.eta_ms > now_ms:
            return self.topology.delay_route(envelope.queue, envelope.eta_ms - now_ms)
        return "", self.topology.queue(envelope.queue)


class Link:
    """One loop's connection, channels, consumers, buffered and leased deliveries."""

    def __init__(self, context: Context, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = context
        self.loop = loop
        self.id = next(_link_ids)
        self.connection: AbstractConnection | None = None
        self.publisher: AbstractChannel | None = None
        self.consumer: Wire | None = None
        self.admin: AbstractChannel | None = None
        self.generation = 0
        self.declared: set[str] = set()  # queues declared on this connection
        self.shared_declared = False  # the exchanges every queue uses
        self.ladders: set[str] = set()  # queues whose delay queues are declared
        self.consumers: dict[str, str] = {}  # queue -> consumer tag
        self.prefetch = 0
        self._solo = False  # consuming one at a time, since a suspect came (see fetch)
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
        self._expect: dict[str, tuple[int, float]] = {}  # queue -> (burst left, until)
        self._due_seen: dict[str, float] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._consume_lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: BaseException | None = None
        self.closed = False

    # -- connection -----------------------------------------------------------------------

    async def ready(self, timeout: float | None = None) -> AbstractConnection:
        """The open connection, connecting (with capped backoff) if there is none."""
        connection = self.connection
        if connection is not None and not connection.is_closed:
            return connection
        async with self._connect_lock:
            connection = self.connection
            if connection is not None and not connection.is_closed:
                return connection
            return await self._connect(self.ctx.settings.connect_timeout
                                       if timeout is None else timeout)

    async def _connect(self, timeout: float) -> AbstractConnection:
        wait = self._retry_at - self.loop.time()
        if wait > 0:
            if wait > timeout:
                raise self._unavailable(f"next attempt in {wait:.1f}s")
            await asyncio.sleep(wait)
            timeout -= wait
        connection = _Connection(self.ctx.url, client_properties={
            "connection_name": f"celeriac pid {os.getpid()} {threading.current_thread().name}"})
        attempt = max(0.05, min(timeout, self.ctx.settings.connect_timeout))
        try:
            await asyncio.wait_for(connection.connect(), attempt)
            self.publisher = await connection.channel(publisher_confirms=True)
            self.connection = connection
        except BaseException as exc:
            refused = refusal(exc)
            if refused is None and isinstance(exc, InvalidFrameError) \
                    and "Connection.Close" in str(exc):
                refused = await self._diagnose(attempt)
            if refused is not None:
                # Wrong credentials, an untrusted certificate, an unknown vhost: another
                # attempt gets the same answer, so say it now rather than after a timeout.
                await _quietly(connection.close())
                self.connection = self.publisher = None
                raise self.refused(refused) from exc
            if not isinstance(exc, TimeoutError | OSError | AMQPError) and not lost(exc):
                raise
            if isinstance(exc, TimeoutError) and not str(exc):  # asyncio's says nothing
                exc = TimeoutError(f"no answer from RabbitMQ within {attempt:.3g}s "
                                   "while connecting")
            self._failures += 1
            backoff = min(RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_FIRST * 2 ** self._failures)
            self._retry_at = self.loop.time() + backoff
            self._last_error = exc
            await _quietly(connection.close())
            self.connection = self.publisher = None
            raise self._unavailable() from last_cause(exc)  # the socket's own error
        if self._failures:
            logger.warning("reconnected to RabbitMQ at %s", self.ctx.safe_url)
        self._failures = 0
        self._retry_at = 0.0
        self.shared_declared = False
        connection.closing.add_done_callback(
            lambda closing: self._on_connection_closed(connection, closing))
        return connection

    async def _diagnose(self, timeout: float) -> Refused | None:
        """Why RabbitMQ closed a handshake aiormq reported without the reason.

        aiormq turns a ``connection.close`` answering ``connection.open`` (an unknown
        vhost: 530 NOT_ALLOWED) into "expected OpenOk, got Close", its code and words
        lost; one handshake of celeriac's own reads them. Only on this failure path.
        """
        try:
            wire = await Wire.open(self.ctx.server, timeout, heartbeat=0, confirm=False)
        except Exception as exc:
            return refusal(exc)
        await _quietly(wire.close(CLOSE_TIMEOUT))
        return None

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; if the connection turns out to be dead, once more on a new one.

        A connection the server closed while this loop was not running (a producer
        between two calls) looks open until its reader runs; the first operation on it
        fails, and is retried on a fresh connection.
        """
        for attempt in (1, 2):
            try:
                return await operation()
            except BaseException as exc:
                if (denied := await self._access_refused(exc)) is not None:
                    raise self.refused(denied, "access") from exc
                if not lost(exc):
                    raise
                if attempt == 2:
                    self._last_error = exc
                    raise self._unavailable() from exc
                await self._forget_dead_connection(exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _forget_dead_connection(self, error: BaseException) -> None:
        if isinstance(error, WireLost):
            return  # the consumer's own connection: it has dropped its state already
        connection = self.connection
        if connection is not None and (connection.is_closed or isinstance(
                error, AMQPConnectionError | OSError | asyncio.CancelledError)):
            self._on_connection_closed(connection, None, error)
            await _quietly(asyncio.wait_for(connection.close(), CLOSE_TIMEOUT))

    def _unavailable(self, detail: str = "") -> BrokerUnavailable:
        error = last_cause(self._last_error)  # the socket's own words, not a wrapper's
        reason = f"{type(error).__name__}: {error}" if error is not None else "not connected"
        return BrokerUnavailable(f"cannot reach RabbitMQ at {self.ctx.safe_url} ({reason})"
                                 + (f"; {detail}" if detail else ""))

    @property
    def last_error(self) -> BaseException | None:
        """Why the last connection attempt failed, or the last connection was lost."""
        return self._last_error

    async def _access_refused(self, error: BaseException) -> ChannelAccessRefused | None:
        """The ACCESS_REFUSED behind ``error``: its own, or the one that closed a channel.

        When RabbitMQ closes a channel with several calls under way on it (declares run
        together), aiormq fails the later ones with ``ChannelInvalidStateError`` (which
        looks like a lost channel, and was retried) before the channel itself has ended
        with the reason; that is awaited briefly, then read.
        """
        if (denied := access_refused(error)) is not None:
            return denied
        channel = self.publisher  # (declares and publishes run on it)
        if not isinstance(error, ChannelInvalidStateError) or channel is None:
            return None
        closing = channel.closing
        if not closing.done():
            await asyncio.wait({closing}, timeout=CHANNEL_CLOSE_WAIT)
        if closing.done() and not closing.cancelled():
            reason = closing.exception()
            if reason is not None:
                return access_refused(reason)
        return None

    def refused(self, refused: Exception, what: str = "the connection") -> BrokerRefused:
        """A refusal (login, vhost, certificate, permission) as the error to raise."""
        return BrokerRefused(f"RabbitMQ at {self.ctx.safe_url} refused {what}: {refused}")

    def _on_connection_closed(self, connection: AbstractConnection,
                              closing: asyncio.Future[Any] | None,
                              error: BaseException | None = None) -> None:
        if closing is not None:
            error = None if closing.cancelled() else closing.exception()
        if self.connection is not connection:
            return  # an older connection, already replaced
        if not self.closed and not isinstance(error, asyncio.CancelledError | None):
            # (CancelledError: the loop itself is ending, as at the end of asyncio.run)
            logger.warning("connection to RabbitMQ at %s lost: %r; its unacked deliveries go "
                           "back to the queues", self.ctx.safe_url, error)
            self._last_error = error
        self.connection = self.publisher = self.admin = None
        self.declared.clear()
        self.ladders.clear()
        # (The consumer's connection is another: it notices its own loss.)

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

    async def _publisher_channel(self, timeout: float | None = None) -> AbstractChannel:
        connection = await self.ready(timeout)
        if self.publisher is None or self.publisher.is_closed:
            self.publisher = await connection.channel(publisher_confirms=True)
        return self.publisher

    async def _admin_channel(self) -> AbstractChannel:
        connection = await self.ready()
        if self.admin is None or self.admin.is_closed:
            self.admin = await connection.channel(publisher_confirms=False)
        return self.admin

    async def close(self) -> None:
        """Stop consuming, hand back what was prefetched (uncounted), and disconnect."""
        if self.closed:
            return
        connection = self.connection
        consumer = self.consumer
        if connection is not None and not connection.is_closed and consumer is not None \
                and not consumer.is_closed:
            await _quietly(asyncio.wait_for(self._release_buffered(), CLOSE_TIMEOUT))
        self.closed = True
        for task in [*self._tasks, *([self._reaper] if self._reaper else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._reaper] if self._reaper else []),
                             return_exceptions=True)
        if consumer is not None:
            await _quietly(consumer.close(CLOSE_TIMEOUT))
        if connection is not None:
            await _quietly(asyncio.wait_for(connection.close(), CLOSE_TIMEOUT))
        self.connection = self.publisher = self.consumer = self.admin = None

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

    # -- declaring ------------------------------------------------------------------------

    async def _declare_shared(self) -> None:
        """The exchanges every queue uses: the delay ladder, delivery, dead letters."""
        channel = await self._publisher_channel()
        top = self.ctx.topology
        await channel.exchange_declare(top.dead_exchange, exchange_type="fanout",
                                       durable=True, nowait=True)
        await channel.queue_declare(top.dead_queue, durable=True, nowait=True)
        await channel.queue_bind(top.dead_queue, top.dead_exchange, nowait=True)
        await channel.queue_declare(top.registry_queue, durable=True, nowait=True)
        await channel.exchange_declare(top.delivery_exchange, exchange_type="topic",
                                       durable=True, nowait=True)
        for level in range(DELAY_LEVELS):
            await channel.exchange_declare(top.delay_exchange(level), exchange_type="topic",
                                           durable=True, nowait=True)
        for level in range(DELAY_LEVELS):
            await channel.exchange_bind(top.delay_exchange(level - 1), top.delay_exchange(level),
                                        top.pass_binding(level), nowait=True)
        # A synchronous call after the no-wait ones: any failure above has closed the
        # channel by the time its answer would come, and surfaces here.
        await channel.queue_declare(top.dead_queue, passive=True)
        self.shared_declared = True

    async def declare(self, queues: Iterable[str], ladders: Iterable[str] = ()) -> None:
        """Declare each queue, and the delay ladder of ``ladders``, once per connection.

        A queue's ladder is declared when its first delayed message is sent: apps that
        never delay anything get no delay queues. (Creating a durable queue takes
        RabbitMQ some milliseconds, so the first delayed message of a new queue waits
        a moment; its delay counts from when it is sent, after that.)
        """
        if not self.shared_declared:
            await self._declare_shared()
        for queue in [*queues, *ladders]:
            if queue in self.declared:
                continue
            try:
                await self._declare_queue(queue)
            except ChannelPreconditionFailed as exc:
                spec_ = self.ctx.settings.spec(queue)
                raise BrokerError(
                    f"queue {self.ctx.topology.queue(queue)!r} exists on RabbitMQ with other "
                    f"arguments than celeriac declares for it (durable={spec_.durable}, "
                    f"quorum={spec_.quorum}): {exc}. Delete it, or change its settings in "
                    "broker_transport_options") from exc
        for queue in ladders:
            if queue not in self.ladders:
                await self._declare_ladder(queue)

    async def _declare_ladder(self, queue: str) -> None:
        top = self.ctx.topology
        queue_spec = self.ctx.settings.spec(queue)
        channel = await self._publisher_channel()
        for level in range(DELAY_LEVELS):
            name = top.delay_queue(queue, level)
            await channel.queue_declare(name, durable=queue_spec.durable, nowait=True,
                                        arguments=top.delay_queue_arguments(level))
            await channel.queue_bind(name, top.delay_exchange(level),
                                     top.delay_binding(queue, level), nowait=True)
        await channel.queue_declare(top.delay_queue(queue, 0), passive=True)  # the barrier
        self.ladders.add(queue)

    async def _declare_queue(self, queue: str) -> None:
        top = self.ctx.topology
        queue_spec = self.ctx.settings.spec(queue)
        is_new = not await self.exists(top.queue(queue))
        channel = await self._publisher_channel()
        await channel.queue_declare(top.queue(queue), durable=queue_spec.durable,
                                    arguments=top.work_queue_arguments(queue_spec))
        await channel.queue_bind(top.queue(queue), top.delivery_exchange,
                                 top.delivery_binding(queue))
        if is_new:
            # The registry lets any process list the queues (AMQP cannot); a queue is
            # written once, when a declare finds it missing.
            properties = spec.Basic.Properties(delivery_mode=2)
            await channel.basic_publish(queue.encode(), routing_key=top.registry_queue,
                                        properties=properties, mandatory=True)
        self.declared.add(queue)
        self.ctx.known.add(queue)

    def forget_declared(self) -> None:
        """Declare everything again when next used (something was deleted under us)."""
        self.declared.clear()
        self.ladders.clear()
        self.shared_declared = False

    async def exists(self, name: str) -> spec.Queue.DeclareOk | None:
        """The queue's passive declare, or None when it does not exist."""
        channel = await self._admin_channel()
        try:
            return await channel.queue_declare(name, passive=True)
        except ChannelNotFoundEntity:
            self.admin = None  # RabbitMQ closed the channel with the 404
            return None

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, envelopes: Sequence[Envelope], timeout: float) -> None:
        """Publish and wait for RabbitMQ's confirms, reconnecting until ``timeout``.

        A message whose confirm did not come is sent again on the next connection (it
        may then be stored twice: at least once, never silently lost). When the time is
        up, ``BrokerUnavailable`` says how many were not confirmed.
        """
        deadline = self.loop.time() + timeout
        pending = list(envelopes)
        error: BaseException | None = None
        while pending:
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                cause = last_cause(error)
                raise BrokerUnavailable(
                    f"RabbitMQ at {self.ctx.safe_url} did not confirm {len(pending)} "
                    f"message(s) within {timeout:g}s (last error: {type(cause).__name__}: "
                    f"{cause}); they may not have been stored") from cause
            try:
                channel = await self._publisher_channel(remaining)
                now_ms = time.time() * 1000
                await self.declare({envelope.queue for envelope in pending},
                                   {e.queue for e in pending if e.delayed(now_ms)})
                results = await publish_confirmed(channel, self._outbound(pending), remaining)
            except BrokerUnavailable as exc:
                if self._retry_at >= deadline:  # no attempt left in our time
                    raise
                error = exc
                continue
            except BaseException as exc:
                if (denied := await self._access_refused(exc)) is not None:  # no permission
                    raise self.refused(denied, "access") from exc
                if not lost(exc):
                    raise
                error = exc
                await self._forget_dead_connection(exc)
                await asyncio.sleep(min(RECONNECT_BACKOFF_FIRST, max(0.0, remaining / 2)))
                continue
            failed = []
            for envelope, result in zip(pending, results, strict=True):
                if result is not None:
                    error = self._publish_failure(envelope, result)
                    failed.append(envelope)
            pending = failed

    def _outbound(self, envelopes: Sequence[Envelope]) -> list[Outbound]:
        """(body, exchange, routing key, properties) of each envelope, routed now."""
        route = self.ctx.route
        return [(envelope.body, *route(envelope), envelope.properties)
                for envelope in envelopes]

    async def publish_here(self, envelopes: Sequence[Envelope], timeout: float) -> None:
        """Publish on the consumer's connection, confirmed, or raise: copies of deliveries.

        A copy must not outlive the connection its original was delivered on (RabbitMQ
        requeues the original when that connection dies), so it goes out on that very
        connection, the consumer's Wire, and is never retried on another one.
        """
        wire = self.consumer
        if wire is None or wire.is_closed:
            raise self._unavailable("the connection the deliveries came on is gone")
        results = await wire.publish(self._outbound(envelopes), timeout)
        errors = [result for result in results if result is not None]
        if errors:
            raise BrokerUnavailable(f"RabbitMQ did not confirm {len(errors)} message(s): "
                                    f"{errors[0]!r}") from errors[0]

    def _publish_failure(self, envelope: Envelope, error: BaseException) -> BaseException:
        """Return a failed publish's error when a retry may help; raise when it may not."""
        if isinstance(error, ChannelPreconditionFailed):
            raise BrokerError(f"RabbitMQ refused a message for queue {envelope.queue!r}: "
                              f"{error}") from error
        if isinstance(error, ChannelAccessRefused):  # no permission: a retry cannot help
            raise BrokerRefused(f"RabbitMQ refused access for queue {envelope.queue!r}: "
                                f"{error}") from error
        if isinstance(error, PublishError | ChannelNotFoundEntity):
            # Unroutable, or an exchange missing: deleted under us. Declare it all again.
            self.forget_declared()
            return error
        if isinstance(error, AMQPError | TimeoutError) or lost(error):
            return error
        raise error

    # -- consuming ------------------------------------------------------------------------

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

    def _suspect(self, queues: Sequence[str]) -> Raw | None:
        """The buffered suspect of ``queues`` to hand out next, if any (they rank first)."""
        for queue in queues:
            heap = self.buffers.get(queue)
            if heap and heap[0][0] == SUSPECT_RANK:
                return heap[0][3]
        return None

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

    def _buffer(self, raw: Raw) -> None:
        # Quorum queues have no priorities; their buffer keeps to age order as well.
        # Suspects (counted deliveries: see fetch) come first: they go out alone.
        rank = SUSPECT_RANK if raw.deliveries else \
            0 if self.ctx.settings.spec(raw.queue).quorum else -raw.priority
        heapq.heappush(self.buffers.setdefault(raw.queue, []), (rank, raw.sent, raw.tag, raw))
        self.buffered_counts[raw.queue] = self.buffered_counts.get(raw.queue, 0) + 1

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

    # -- leases ---------------------------------------------------------------------------

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

    # -- settling -------------------------------------------------------------------------

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

    # -- counting, purging and scanning ---------------------------------------------------

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

    # -- background work ------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background work on RabbitMQ failed", exc_info=task.exception())


class _Connection(aiormq.Connection):
    """aiormq's connection, giving up on a silent peer within two heartbeats.

    aiormq waits ``(heartbeat + 1) * 3`` seconds without a frame (33 s for the default
    10 s) before it drops a connection, and checks every half heartbeat: a producer on
    a half-open link would wait that long to notice. RabbitMQ sends a heartbeat every
    half interval, so ``heartbeat + 1`` seconds of silence is two of them missed, and
    with the check's period a dead link is noticed within twice the heartbeat, as by
    celeriac's own connections (``amqp_wire``).
    """

    HEARTBEAT_GRACE_MULTIPLIER = 1


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


def lost(error: BaseException) -> bool:
    """Whether ``error`` means the connection or channel is gone, so a new one may do.

    aiormq fails whatever waited on a connection it gave up (missed heartbeats) with
    ``CancelledError``; that is a lost connection unless this task itself is cancelled.
    """
    if isinstance(error, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0
    if isinstance(error, ChannelClosed):
        # Closed by the server for a reason (404, 403, 405, 406): another try gets the same.
        return type(error) is ChannelClosed
    return isinstance(error, LOST)


def access_refused(error: BaseException) -> ChannelAccessRefused | None:
    """The channel's ACCESS_REFUSED (a permission the user lacks) behind ``error``.

    aiormq fails a call on a channel the server closed with the close's reason, or, when
    the call was waiting in another task, with a ``CancelledError`` carrying it.
    """
    if isinstance(error, ChannelAccessRefused):
        return error
    if isinstance(error, asyncio.CancelledError) and error.args \
            and isinstance(error.args[0], ChannelAccessRefused):
        return error.args[0]
    return None


async def _quietly(work: Awaitable[Any]) -> None:
    """Await best-effort clean-up work: its failures (a dead connection) do not matter."""
    try:
        await work
    except BaseException as exc:
        if not isinstance(exc, Exception) and not lost(exc):
            raise


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


def consumer_heartbeat(configured: int, lease_seconds: float) -> int:
    """The heartbeat of a consumer connection: at most half the lease, at least 1 s.

    RabbitMQ closes a connection it heard nothing from for two to three heartbeat
    intervals, and only then gives its unacked deliveries to other consumers. With this
    interval a paused or cut-off worker's deliveries come back within 1 to 1.5 leases
    (the contract's lease), not after the configured heartbeat's 20-30 s. A configured
    heartbeat of 0 (none) is not honoured here: without one, a paused worker would keep
    its deliveries for ever.
    """
    from_lease = max(1, int(lease_seconds // 2))
    return min(configured, from_lease) if configured > 0 else from_lease
