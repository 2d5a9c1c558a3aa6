"""Leases on Redis: kept alive while a task runs, taken over when their consumer dies.

A lease is the entry's place in its stream's pending entries list; the worker renews it
by re-claiming the entry, and any other consumer may claim it once it has been idle for
longer than ``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis_harness import RedisDeployment

from celeriac.brokers import Broker, Outgoing, QueueStats, create_broker
from celeriac.brokers.redis import RedisBroker

LEASE = 1.0
SLACK = 0.5


@pytest.mark.timeout(60)
def test_a_task_running_three_times_its_lease_runs_exactly_once(
    deployment: RedisDeployment,
) -> None:
    # Given a worker of two processes whose leases last 1 s (the idle process reclaims
    # anything idle for longer)
    worker = deployment.start_worker(
        "-c", "2", broker_transport_options={"lease_seconds": LEASE}).wait_ready(2)

    # When a task runs for 3.5 lease times
    result = deployment.tasks.sleepy.delay("long", 3.5 * LEASE)

    # Then it runs once: its lease was extended while it ran, so nobody took it over
    assert result.get(timeout=20) == "long"
    [run] = deployment.ledger.of("long")
    assert run.delivery == 1
    assert len(deployment.ledger.of("long", "done")) == 1
    deployment.wait_for_queue(ready=0, scheduled=0, in_flight=0)
    assert "lease on" not in worker.log()  # no lease was lost on the way


async def _brokers(url: str, count: int) -> list[Broker]:
    brokers = [create_broker(url, {"lease_seconds": LEASE}) for _ in range(count)]
    for broker in brokers:
        await broker.connect()
    return brokers


def test_a_dead_consumers_leases_are_taken_over_and_its_late_acks_ignored(
    shared_redis: str,
) -> None:
    async def scenario() -> None:
        # Given two workers' broker objects (two consumers) on one queue
        dead, alive = await _brokers(shared_redis, 2)
        assert isinstance(dead, RedisBroker)
        assert isinstance(alive, RedisBroker)
        assert dead.consumer != alive.consumer
        await dead.publish([Outgoing(f"m{n}", "q", b"x") for n in range(3)])

        # When one leases everything and then stops extending (it died)
        taken = await dead.fetch(["q"], 10, timeout=1)
        assert [d.id for d in taken] == ["m0", "m1", "m2"]
        started = time.monotonic()

        # Then the other gets them all once the lease has run out, counted as redelivered
        again = await alive.fetch(["q"], 10, timeout=LEASE * 4)
        waited = time.monotonic() - started
        assert [(d.id, d.delivery_count) for d in again] == [("m0", 2), ("m1", 2), ("m2", 2)]
        assert LEASE * 0.9 <= waited < LEASE + alive.reclaim_interval + SLACK
        # And the first consumer, come back to life, can neither ack nor extend them
        await dead.ack(taken)
        assert await dead.extend(taken) == [False] * 3
        assert await alive.extend(again) == [True] * 3
        assert await alive.queue_stats(["q"]) == [QueueStats("q", 0, 0, 3)]
        await alive.ack(again)
        assert await alive.queue_stats(["q"]) == [QueueStats("q", 0, 0, 0)]
        for broker in (dead, alive):
            await broker.close()

    asyncio.run(scenario())


def test_a_lease_extended_by_its_owner_is_not_taken_over(shared_redis: str) -> None:
    async def scenario() -> None:
        # Given one consumer holding a message and another waiting for work
        owner, other = await _brokers(shared_redis, 2)
        await owner.publish([Outgoing("m", "q", b"x")])
        [held] = await owner.fetch(["q"], 10, timeout=1)

        # When the owner keeps extending its lease for three lease times
        waiting = asyncio.create_task(other.fetch(["q"], 10, timeout=3 * LEASE))
        while not waiting.done():
            assert await owner.extend([held]) == [True]
            await asyncio.sleep(LEASE / 3)

        # Then the other consumer never got the message
        assert await waiting == []
        await owner.ack([held])
        assert await other.queue_stats(["q"]) == [QueueStats("q", 0, 0, 0)]
        for broker in (owner, other):
            await broker.close()

    asyncio.run(scenario())
