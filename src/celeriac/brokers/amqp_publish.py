"""Declaring queues and publishing confirmed, on a link's aiormq connection.

``Publishing`` adds to a link's connection (``amqp_connection``) the declares each
publish needs (once per connection: the shared exchanges, a queue and its registry entry,
a queue's delay ladder on its first delayed message) and ``publish``, awaited until
RabbitMQ confirms every message, retried on the next connection until its timeout (at
least once, never silently lost). ``publish_here`` publishes the copies of deliveries on
the consumer's own connection (``amqp_wire``), never on another one, so that a copy never
outlives the connection its original came on. The batch itself goes out through
``amqp_confirm.publish_confirmed``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from pamqp import commands as spec

from celeriac.brokers.amqp_blocking import last_cause, queue_full, unconfirmed
from celeriac.brokers.amqp_confirm import Outbound, publish_confirmed
from celeriac.brokers.amqp_connection import RECONNECT_BACKOFF_FIRST, Connected, Envelope, lost
from celeriac.brokers.amqp_topology import DELAY_LEVELS, QUORUM_LIMIT_ARGUMENTS
from celeriac.errors import BrokerError, BrokerRefused, BrokerUnavailable


class Publishing(Connected):
    """Declares and confirmed publishes on a link's connection."""

    # -- declaring -----------------------------------------------------------------------

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
                raise BrokerError(self._inequivalent(queue, exc)) from exc
        for queue in ladders:
            if queue not in self.ladders:
                await self._declare_ladder(queue)

    def _inequivalent(self, queue: str, error: ChannelPreconditionFailed) -> str:
        """Why RabbitMQ refused to declare ``queue`` (it exists with other arguments), and
        what to do about it."""
        spec_ = self.ctx.settings.spec(queue)
        name = self.ctx.topology.queue(queue)
        words = str(error)
        if spec_.quorum and any(f"arg '{arg}'" in words for arg in QUORUM_LIMIT_ARGUMENTS):
            if "x-delivery-limit" in words and "current is none" not in words:
                return (f"quorum queue {name!r} exists on RabbitMQ with another delivery "
                        f"limit than this process's task_delivery_limit={spec_.delivery_limit}"
                        f" (x-delivery-limit is that minus one): {words}. Every process of "
                        "the app must use the same task_delivery_limit; to change it, drain "
                        "and delete the queue so that it is declared anew")
            return (f"quorum queue {name!r} exists on RabbitMQ without the delivery limit "
                    f"and dead-letter arguments celeriac now declares ({words}). Migrate: "
                    "let the workers drain it, delete it (rabbitmqctl delete_queue "
                    f"{name}) and start again, so that it is declared anew; or keep it as "
                    "it is with broker_transport_options['quorum_delivery_limit']=False "
                    "(see docs/brokers.md, RabbitMQ quorum queues)")
        return (f"queue {name!r} exists on RabbitMQ with other arguments than celeriac "
                f"declares for it (durable={spec_.durable}, quorum={spec_.quorum}): "
                f"{words}. Delete it, or change its settings in broker_transport_options")

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

    # -- publishing ----------------------------------------------------------------------

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
                raise unconfirmed(self.ctx.safe_url, len(pending), timeout, error) \
                    from last_cause(error)
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
        if isinstance(error, DeliveryError) \
                and self.ctx.settings.spec(envelope.queue).delivery_limit is not None:
            raise queue_full(envelope.queue) from error  # (reject-publish: see queue_full)
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
