"""One broker object across server trouble: data flushed, scripts forgotten, a restart.

After each, the same object works again without being reconnected by its caller:
consumer groups are made again where their streams vanished (NOGROUP), Lua scripts are
loaded again (NOSCRIPT), and dead connections are replaced.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis_harness import RedisServer

from celeriac.backends import create_backend
from celeriac.brokers import Outgoing, QueueStats, create_broker
from celeriac.brokers.redis import RedisBroker
from celeriac.errors import BrokerUnavailable


def message(n: int, queue: str = "q", priority: int = 0) -> Outgoing:
    return Outgoing(f"m{n}", queue, f"body {n}".encode(), priority)


@pytest.mark.timeout(30)
def test_the_same_broker_works_after_the_server_lost_its_data_and_scripts(
    redis_server: RedisServer,
) -> None:
    broker = create_broker(redis_server.url, {"lease_seconds": 2})
    admin = redis_server.client()

    async def scenario() -> None:
        # Given a broker that has published and fetched (its scripts and groups exist)
        await broker.publish([message(0)])
        assert [d.id for d in await broker.fetch(["q"], 10, timeout=1)] == ["m0"]

        # When the server loses every key and every cached script
        admin.flushall()
        admin.script_flush()

        # Then publishing, fetching, acking and counting all work again
        await broker.publish([message(1), message(2, priority=5)])
        got = await broker.fetch(["q"], 10, timeout=1)
        assert [d.id for d in got] == ["m2", "m1"]
        await broker.ack(got)
        assert await broker.queue_stats(["q"]) == [QueueStats("q", 0, 0, 0)]
        await broker.close()

    asyncio.run(scenario())
    admin.close()


@pytest.mark.timeout(30)
def test_a_fetch_waiting_while_the_data_is_flushed_keeps_working(
    redis_server: RedisServer,
) -> None:
    broker = create_broker(redis_server.url, {"lease_seconds": 2})
    admin = redis_server.client()

    async def scenario() -> None:
        # Given a fetch waiting on empty streams
        await broker.connect()
        waiting = asyncio.create_task(broker.fetch(["q"], 10, timeout=5))
        await asyncio.sleep(0.1)  # let it find nothing and block on the streams

        # When the streams and groups it waits on are deleted, and a message is sent
        await asyncio.to_thread(admin.flushall)
        await broker.publish([message(1)])

        # Then the waiting fetch still gets the message
        assert [d.id for d in await waiting] == ["m1"]
        await broker.close()

    asyncio.run(scenario())
    admin.close()


@pytest.mark.timeout(30)
def test_messages_published_before_any_consumer_existed_are_delivered(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        # Given a producer that published to a queue no consumer has ever read (the
        # streams exist, their consumer groups do not)
        producer = create_broker(redis_server.url)
        await producer.publish([message(n, priority=n % 3) for n in range(6)])
        await producer.close()

        # When a consumer first fetches
        consumer = create_broker(redis_server.url)
        got = await consumer.fetch(["q"], 10, timeout=1)

        # Then it gets every one of them, priorities first
        assert [d.id for d in got] == ["m2", "m5", "m1", "m4", "m0", "m3"]
        await consumer.ack(got)
        await consumer.close()

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_the_same_broker_and_backend_work_after_a_restart(redis_server: RedisServer) -> None:
    broker = create_broker(redis_server.url, {"lease_seconds": 5, "connection_timeout": 1})
    backend = create_backend(redis_server.url, {"connection_timeout": 1})

    async def before() -> None:
        await broker.publish([message(1)])
        [held] = await broker.fetch(["q"], 10, timeout=1)
        await backend.store("t1", b"done", 60)
        # A lease taken before the restart is still held after it (the PEL is persisted)
        redis_server.restart()
        assert await broker.extend([held]) == [True]
        await broker.ack([held])

    async def after() -> None:
        # The pooled connections of the old server are replaced without the caller's help
        assert await backend.load("t1") == b"done"
        await broker.publish([message(2)])
        assert [d.id for d in await broker.fetch(["q"], 10, timeout=1)] == ["m2"]
        await broker.close()
        await backend.close()

    with asyncio.Runner() as runner:
        runner.run(before())
        runner.run(after())


@pytest.mark.timeout(30)
def test_a_waiting_fetch_fails_in_time_when_the_server_dies(redis_server: RedisServer) -> None:
    broker = create_broker(redis_server.url, {"connection_timeout": 1})
    assert isinstance(broker, RedisBroker)

    async def scenario() -> float:
        await broker.connect()
        waiting = asyncio.create_task(broker.fetch(["q"], 10, timeout=30))
        await asyncio.sleep(0.1)  # let it block on the streams
        redis_server.kill()
        died = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="Redis is unavailable"):
            await waiting
        elapsed = time.monotonic() - died
        await broker.close()
        return elapsed

    assert asyncio.run(scenario()) < 1.0 + 1.0
