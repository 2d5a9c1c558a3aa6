"""The RabbitMQ bus beyond the contract: its stream queues, and lost connections.

A monitor or a worker's control reader must survive RabbitMQ closing its connection
(a restart, a node failover, an operator's ``close_connection``): its next read resumes
after the last record it read, and nothing still retained is missed or read twice.
"""

from __future__ import annotations

import asyncio
import os
import time

from rabbit_harness import Rabbit

from celeriac.brokers import create_broker
from celeriac.bus import EVENTS, RETENTION, Record, Subscription


async def read_until(subscription: Subscription, count: int,
                     timeout: float = 10.0) -> list[Record]:
    found: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and (remaining := deadline - time.monotonic()) > 0:
        found += await subscription.read(min(remaining, 1.0))
    return found


def close_our_connections(rabbit: Rabbit) -> int:
    """Have RabbitMQ close every connection this process opened; how many it closed."""
    ours = f"celeriac pid {os.getpid()} "
    listing = rabbit.ctl("list_connections", "-q", "--no-table-headers", "-p", rabbit.vhost,
                         "pid", "client_properties")
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if ours in line]
    for pid in pids:
        rabbit.ctl("close_connection", pid, "closed by test_amqp_bus")
    return len(pids)


def test_each_topic_is_a_stream_queue_in_the_namespace(rabbit: Rabbit) -> None:
    async def main() -> None:
        broker = create_broker(rabbit.url(), {"namespace": "ns1."})
        bus = broker.bus()
        for topic in RETENTION:
            await bus.publish(topic, [b"x"])
        await bus.close()
        listing = rabbit.ctl("list_queues", "-q", "--no-table-headers", "-p", rabbit.vhost,
                             "name", "type")
        assert {tuple(line.split("\t")) for line in listing.splitlines()} >= {
            (f"ns1.celeriac.bus.{topic}", "stream") for topic in RETENTION}
        await broker.delete_namespace()  # type: ignore[attr-defined]
        await broker.close()
        listing = rabbit.ctl("list_queues", "-q", "--no-table-headers", "-p", rabbit.vhost,
                             "name")
        assert "celeriac.bus" not in listing

    asyncio.run(main())


def test_a_reader_resumes_after_its_connection_is_closed(rabbit: Rabbit) -> None:
    async def main() -> None:
        broker = create_broker(rabbit.url())
        bus = broker.bus()
        try:
            reader = await bus.subscribe(EVENTS)
            await bus.publish(EVENTS, [b"1", b"2"])
            assert [r.payload for r in await read_until(reader, 2)] == [b"1", b"2"]
            assert await asyncio.to_thread(close_our_connections, rabbit) >= 2
            await asyncio.sleep(0.2)  # let aiormq notice the close
            await bus.publish(EVENTS, [b"3", b"4"])  # (on a new connection)
            got = await read_until(reader, 2)
            assert [r.payload for r in got] == [b"3", b"4"]
            assert await reader.read(0.2) == []
        finally:
            await bus.close()
            await broker.close()

    asyncio.run(main())


def test_a_reader_that_read_nothing_yet_resumes_from_its_subscribe(rabbit: Rabbit) -> None:
    async def main() -> None:
        broker = create_broker(rabbit.url())
        bus = broker.bus()
        try:
            await bus.publish(EVENTS, [b"before"])
            await asyncio.sleep(0.01)
            reader = await bus.subscribe(EVENTS)
            assert await asyncio.to_thread(close_our_connections, rabbit) >= 2
            await asyncio.sleep(0.2)
            await bus.publish(EVENTS, [b"after"])
            assert [r.payload for r in await read_until(reader, 1)] == [b"after"]
            assert await reader.read(0.2) == []
        finally:
            await bus.close()
            await broker.close()

    asyncio.run(main())
