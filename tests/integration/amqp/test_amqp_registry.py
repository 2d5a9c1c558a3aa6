"""The registry of queue names: any process can list celeriac's queues on RabbitMQ."""

from __future__ import annotations

import asyncio

import aiormq
from rabbit_harness import Rabbit

from celeriac.brokers import Outgoing, create_broker
from celeriac.brokers.amqp import AMQPBroker


def test_duplicate_registry_entries_are_dropped_and_the_listing_keeps_working(
        rabbit: Rabbit) -> None:
    """A race can register a queue twice; reading the registry removes the copy.

    The copy is read last here, the case in which handing the kept entries back once
    named a delivery tag already acked, and RabbitMQ closed the channel.
    """
    broker = create_broker(rabbit.url())
    other = create_broker(rabbit.url())  # a second process, knowing only the registry
    assert isinstance(broker, AMQPBroker)
    assert isinstance(other, AMQPBroker)

    async def scenario() -> tuple[list[str], list[str], int]:
        try:
            await broker.publish([Outgoing("1", "emails", b"x"), Outgoing("2", "reports", b"y")])
            connection = await aiormq.connect(rabbit.url())
            channel = await connection.channel()
            await channel.basic_publish(b"reports", routing_key=broker.topology.registry_queue)
            first = [s.queue for s in await other.queue_stats()]
            second = [s.queue for s in await other.queue_stats()]
            registry = await channel.queue_declare(broker.topology.registry_queue, passive=True)
            await connection.close()
            return first, second, registry.message_count or 0
        finally:
            await broker.close()
            await other.close()

    first, second, entries = asyncio.run(scenario())

    assert first == second == ["emails", "reports"]
    assert entries == 2  # one entry a queue: the copy is gone, the others are back
