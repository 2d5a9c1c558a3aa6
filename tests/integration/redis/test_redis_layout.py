"""What the Redis broker and backend leave on the server, and many processes at once.

Streams hold only waiting and leased entries (acks delete), scheduled messages wait in a
sorted set, results carry their TTL, and ended consumers are removed from the groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import threading
import time
from multiprocessing.synchronize import Event

import pytest
import redis
from redis_harness import stream_lengths

from celeriac.backends import create_backend
from celeriac.backends.redis import RedisBackend
from celeriac.brokers import Outgoing, QueueStats, create_broker
from celeriac.brokers.redis import GROUP, RedisBroker
from celeriac.errors import BrokerError


def redis_broker(url: str, **options: object) -> RedisBroker:
    broker = create_broker(url, {"lease_seconds": 2, **options})
    assert isinstance(broker, RedisBroker)
    return broker


def test_acked_and_dead_lettered_messages_leave_the_streams(shared_redis: str) -> None:
    broker = redis_broker(shared_redis)

    async def scenario() -> None:
        # Given 100 messages over several priorities, all fetched
        await broker.publish([Outgoing(f"m{n}", "q", b"x", n % 10) for n in range(100)])
        assert sum(stream_lengths(broker, "q")) == 100
        got = await broker.fetch(["q"], 100, timeout=1)

        # When they are acked, or dead-lettered
        await broker.ack(got[:90])
        await broker.dead_letter([(d, "bad") for d in got[90:]])

        # Then no stream keeps an entry, nor a pending delivery
        assert stream_lengths(broker, "q") == [0] * 10
        client = redis.Redis.from_url(broker.settings.url)
        for band in range(10):
            assert client.xpending(broker.stream_key("q", band), GROUP)["pending"] == 0
        client.close()
        assert len(await broker.dead_letters(1000)) == 10
        await broker.close()

    asyncio.run(scenario())


def test_requeued_messages_count_as_ready_and_are_purged(shared_redis: str) -> None:
    broker = redis_broker(shared_redis)

    async def scenario() -> None:
        # Given three messages leased, one of them handed back unstarted
        await broker.publish([Outgoing(f"m{n}", "q", b"x") for n in range(4)])
        got = await broker.fetch(["q"], 3, timeout=1)
        await broker.requeue(got[:1])

        # Then it counts as ready again, not in flight
        assert await broker.queue_stats(["q"]) == [QueueStats("q", 2, 0, 2)]

        # And a purge removes it with the never-fetched one, leaving the leased ones
        assert await broker.purge(["q"]) == 2
        assert await broker.queue_stats(["q"]) == [QueueStats("q", 0, 0, 2)]
        await broker.ack(got[1:])
        assert await broker.queue_stats(["q"]) == [QueueStats("q", 0, 0, 0)]
        assert stream_lengths(broker, "q") == [0] * 10
        await broker.close()

    asyncio.run(scenario())


def test_a_purge_of_a_large_queue_works_in_chunks(shared_redis: str) -> None:
    broker = redis_broker(shared_redis)

    async def scenario() -> None:
        await broker.publish([Outgoing(f"m{n}", "q", b"x") for n in range(12_000)])
        [held] = await broker.fetch(["q"], 1, timeout=1)  # so entries must be picked one by one

        assert await broker.purge(["q"]) == 11_999

        assert await broker.queue_stats(["q"]) == [QueueStats("q", 0, 0, 1)]
        await broker.ack([held])
        await broker.close()

    asyncio.run(scenario())


def test_scheduled_messages_wait_in_a_sorted_set_until_due(shared_redis: str) -> None:
    broker = redis_broker(shared_redis)

    async def scenario() -> None:
        await broker.publish([Outgoing("later", "q", b"x", 4, eta=time.time() + 0.3)])
        client = redis.Redis.from_url(broker.settings.url)
        assert client.zcard(f"{broker.prefix}eta:q") == 1
        assert sum(stream_lengths(broker, "q")) == 0

        [got] = await broker.fetch(["q"], 10, timeout=2)

        assert (got.id, got.priority) == ("later", 4)
        assert client.zcard(f"{broker.prefix}eta:q") == 0
        client.close()
        await broker.ack([got])
        await broker.close()

    asyncio.run(scenario())


def test_a_closed_broker_leaves_no_consumer_behind(shared_redis: str) -> None:
    broker = redis_broker(shared_redis)
    client = redis.Redis.from_url(broker.settings.url, decode_responses=True)

    def consumers() -> set[str]:
        return {c["name"] for band in range(10)
                for c in client.xinfo_consumers(broker.stream_key("q", band), GROUP)}

    async def use() -> None:
        await broker.publish([Outgoing("m", "q", b"x")])
        got = await broker.fetch(["q"], 10, timeout=1)
        await broker.ack(got)
        assert consumers() == {broker.consumer}
        await broker.close()

    asyncio.run(use())
    assert consumers() == set()
    client.close()


def test_results_expire_with_result_expires(shared_redis: str) -> None:
    backend = create_backend(shared_redis)
    assert isinstance(backend, RedisBackend)
    client = redis.Redis.from_url(backend.settings.url)

    async def store() -> None:
        await backend.store_many({"a": b"1", "b": b"2"}, ttl=60)
        await backend.store("forever", b"3", ttl=None)
        await backend.close()

    asyncio.run(store())
    assert 59_000 < client.pttl(backend.result_key("a")) <= 60_000
    assert 59_000 < client.pttl(backend.result_key("b")) <= 60_000
    assert client.pttl(backend.result_key("forever")) == -1  # no TTL
    # The wake-up token of a stored result expires quickly whatever the result's TTL
    assert 0 < client.pttl(backend.ready_key("forever")) <= 10_000
    client.close()


def test_many_waiters_in_many_threads_all_wake(shared_redis: str) -> None:
    backend = create_backend(shared_redis)
    results: list[bytes | None] = []

    def wait() -> None:
        results.append(asyncio.run(backend.wait("t", timeout=10)))

    waiters = [threading.Thread(target=wait) for _ in range(8)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.2)  # most find nothing and block; a late one finds the result at once
    asyncio.run(backend.store("t", b"SUCCESS", 60))
    for waiter in waiters:
        waiter.join(10)
    assert results == [b"SUCCESS"] * 8


# -- many processes -----------------------------------------------------------------------

PRODUCERS = 4
PER_PRODUCER = 2000
CONSUMERS = 2


def _produce(url: str, index: int) -> None:
    async def main() -> None:
        broker = create_broker(url)
        for n in range(PER_PRODUCER):  # one publish per message, as delay() does
            await broker.publish([Outgoing(f"{index}-{n}", "q", b"x", priority=n % 3)])
        await broker.close()

    asyncio.run(main())


def _consume(url: str, results: multiprocessing.Queue[list[str]], stop: Event) -> None:
    async def main() -> None:
        broker = create_broker(url, {"lease_seconds": 30})
        while not stop.is_set():
            try:
                got = await broker.fetch(["q"], 100, timeout=0.2)
                if got:
                    await broker.ack(got)
            except BrokerError:  # the shared server stalled: retry, as a worker does
                await asyncio.sleep(0.1)
                continue
            if got:
                results.put([d.id for d in got])
        await broker.close()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_many_processes_consume_every_message_exactly_once(shared_redis: str) -> None:
    # Given 4 producer and 2 consumer processes on one queue
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[list[str]] = ctx.Queue()
    stop = ctx.Event()
    consumers = [ctx.Process(target=_consume, args=(shared_redis, results, stop))
                 for _ in range(CONSUMERS)]
    producers = [ctx.Process(target=_produce, args=(shared_redis, i)) for i in range(PRODUCERS)]

    # When every producer sends its messages one by one while the consumers drain
    for process in consumers + producers:
        process.start()
    seen: list[str] = []
    deadline = time.monotonic() + 45
    try:
        while len(seen) < PRODUCERS * PER_PRODUCER and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen += results.get(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        stop.set()
        for process in producers + consumers:
            process.join(10)
        results.close()

    # Then every message was consumed exactly once
    exits = [p.exitcode for p in producers + consumers]
    assert exits == [0] * (PRODUCERS + CONSUMERS), f"exit codes {exits}, {len(seen)} seen"
    expected = {f"{i}-{n}" for i in range(PRODUCERS) for n in range(PER_PRODUCER)}
    assert len(seen) == len(expected), f"{len(seen)} consumed, {len(set(seen))} distinct"
    assert set(seen) == expected


def test_a_wake_up_that_brings_more_than_the_limit_hands_the_rest_back(
        shared_redis: str) -> None:
    # A blocking read across several streams returns at most one entry per stream; a
    # server that serves several streams at once can overshoot the limit. Such extras
    # are handed back at once, uncounted.
    broker = redis_broker(shared_redis)

    async def scenario() -> None:
        await broker.publish([Outgoing("low", "b", b"x", 1), Outgoing("high", "a", b"x", 7),
                              Outgoing("mid", "a", b"x", 3)])
        plan = broker._plan(["a", "b"])
        woke = await broker.fetch(["b", "a"], 3, timeout=1)  # as a wake-up might bring

        kept = await broker._trim(plan, list(woke), 1)

        assert [d.id for d in kept] == ["high"]  # queue order, then priority
        again = await broker.fetch(["a", "b"], 10, timeout=0)
        assert [(d.id, d.delivery_count) for d in again] == [("mid", 1), ("low", 1)]
        await broker.ack(kept + again)
        await broker.close()

    asyncio.run(scenario())
