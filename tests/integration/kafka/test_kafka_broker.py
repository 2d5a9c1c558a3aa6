"""What the Kafka broker adds to the broker contract: an order per partition key, and
the low watermark a queue's consumer group commits (where a new process starts reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import time
import uuid
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka_harness import delete_topics, kafka_url

from celeriac import App
from celeriac.brokers import Broker, Delivery, Outgoing, create_broker
from celeriac.brokers.kafka import topic_name
from celeriac.testing import ThreadedWorker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def url() -> Iterator[str]:
    url = f"{kafka_url()}?prefix=kb{uuid.uuid4().hex[:12]}."
    try:
        yield url
    finally:
        delete_topics(url)


def out(body: str, key: str | None = None, queue: str = "q") -> Outgoing:
    return Outgoing(uuid.uuid4().hex, queue, body.encode(), key=key)


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [d.body for d in deliveries]


def test_one_key_is_handed_out_one_at_a_time_in_publish_order(url: str) -> None:
    asyncio.run(_one_key_is_handed_out_one_at_a_time_in_publish_order(url))


async def _one_key_is_handed_out_one_at_a_time_in_publish_order(url: str) -> None:
    broker = create_broker(url, {"lease_seconds": 0.5})
    try:
        await broker.publish([out("a1", "a"), out("a2", "a"), out("b1", "b"), out("free"),
                              out("a3", "a")])
        first = await broker.fetch(["q"], 10, timeout=1)
        assert bodies(first) == [b"a1", b"b1", b"free"]  # a2 waits for a1
        await broker.ack(first[1:])

        await broker.requeue(first[:1])  # given back, a1 is still first of its key
        again = await broker.fetch(["q"], 10, timeout=0)
        assert bodies(again) == [b"a1"]

        await broker.ack(again)
        assert bodies(await broker.fetch(["q"], 10, timeout=1)) == [b"a2"]
        # a lease that ran out hands the same message out again, not the next of its key
        [a2] = await broker.fetch(["q"], 10, timeout=2)
        assert (a2.body, a2.delivery_count) == (b"a2", 2)
        await broker.dead_letter([(a2, "gave up")])
        assert bodies(await broker.fetch(["q"], 10, timeout=1)) == [b"a3"]
    finally:
        await broker.close()


def test_a_key_stays_in_one_partition_of_a_wider_queue(url: str) -> None:
    asyncio.run(_a_key_stays_in_one_partition_of_a_wider_queue(url))


async def _a_key_stays_in_one_partition_of_a_wider_queue(url: str) -> None:
    broker = create_broker(url, {"partitions": 3, "lease_seconds": 10})
    try:
        keys = [f"k{n}" for n in range(6)]
        await broker.publish([out(f"{key}-{n}", key) for n in range(3) for key in keys])
        seen: dict[str, list[tuple[int, bytes]]] = {}
        for _ in range(3):
            got = await broker.fetch(["q"], 100, timeout=1)
            assert len(got) == len(keys)  # one of each key at a time
            for delivery in got:
                key = delivery.body.decode().split("-")[0]
                seen.setdefault(key, []).append((delivery.receipt.partition, delivery.body))
            await broker.ack(got)
        assert {key: [body for _, body in runs] for key, runs in seen.items()} == {
            key: [f"{key}-{n}".encode() for n in range(3)] for key in keys}
        assert all(len({partition for partition, _ in runs}) == 1 for runs in seen.values())
        assert len({runs[0][0] for runs in seen.values()}) > 1  # keys spread over partitions
    finally:
        await broker.close()


def test_apply_async_partition_key_reaches_the_broker(url: str, tmp_path: Path) -> None:
    app = App("t", broker=url, backend=f"sqlite:///{tmp_path / 'results.db'}")

    @app.task
    def step(n: int) -> int:
        return n

    try:
        for n in range(3):
            step.apply_async((n,), partition_key="order-7")
        step.apply_async((9,))

        async def fetched() -> int:
            broker = create_broker(url)
            try:
                return len(await broker.fetch(["celeriac"], 10, timeout=1))
            finally:
                await broker.close()

        assert asyncio.run(fetched()) == 2  # the first of the key, and the one without
    finally:
        app.close()


async def committed(url: str, queue: str) -> int | None:
    broker = create_broker(url)
    topic = topic_name(broker.settings.prefix, queue)  # type: ignore[attr-defined]
    servers = broker.settings.servers  # type: ignore[attr-defined]
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=f"{topic}.group",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(TopicPartition(topic, 0))
        return offset
    finally:
        await consumer.stop()


def test_the_group_commits_the_oldest_unfinished_message_after_its_acks(url: str) -> None:
    asyncio.run(_the_group_commits_the_oldest_unfinished_message_after_its_acks(url))


async def _the_group_commits_the_oldest_unfinished_message_after_its_acks(url: str) -> None:
    first = create_broker(url, {"lease_seconds": 30})
    await first.publish([out(f"m{n}") for n in range(5)])
    got = await first.fetch(["q"], 5, timeout=1)
    running = got[1]
    await first.ack([d for d in got if d is not running])
    await first.close()  # (closing commits at once; a running broker does every second)
    assert await committed(url, "q") == running.receipt.offset

    # A new process reads from there: m1 is still held (its lease was not lost) ...
    second: Broker = create_broker(url, {"lease_seconds": 30})
    try:
        assert await second.fetch(["q"], 10, timeout=0.2) == []
        assert await second.extend([running]) == [True]
        await second.ack([running])
    finally:
        await second.close()
    # ... and once it is acked, nothing of the queue is read again.
    after = await committed(url, "q")
    assert after is not None
    assert after > got[-1].receipt.offset


PRODUCERS, PER_PRODUCER, CONSUMERS = 2, 400, 2


def _produce(url: str, index: int) -> None:
    async def main() -> None:
        broker = create_broker(url)
        try:
            for n in range(PER_PRODUCER):  # one send at a time, as delay() does
                await broker.publish([Outgoing(f"{index}-{n}", "q", b"x", priority=n % 3)])
        finally:
            await broker.close()

    asyncio.run(main())


def _consume(url: str, results: multiprocessing.Queue[list[str]], stop: Event) -> None:
    async def main() -> None:
        broker = create_broker(url, {"lease_seconds": 30})
        try:
            while not stop.is_set():
                got = await broker.fetch(["q"], 50, timeout=0.2)
                if got:
                    await broker.ack(got)
                    results.put([d.id for d in got])
        finally:
            await broker.close()

    asyncio.run(main())


def test_processes_racing_for_one_partition_take_every_message_once(url: str) -> None:
    """Claims race in the log: each message is won by one consumer, none is lost."""
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[list[str]] = ctx.Queue()
    stop = ctx.Event()
    consumers = [ctx.Process(target=_consume, args=(url, results, stop))
                 for _ in range(CONSUMERS)]
    producers = [ctx.Process(target=_produce, args=(url, i)) for i in range(PRODUCERS)]
    for process in consumers + producers:
        process.start()
    taken: list[str] = []
    try:
        deadline = time.monotonic() + 40
        while len(taken) < PRODUCERS * PER_PRODUCER and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                taken += results.get(timeout=1)
    finally:
        stop.set()
        for process in consumers + producers:
            process.join(10)
            if process.is_alive():
                process.kill()
    assert sorted(taken) == sorted(f"{i}-{n}" for i in range(PRODUCERS)
                                   for n in range(PER_PRODUCER))


def test_scheduled_messages_are_listed_soonest_first(url: str) -> None:
    async def main() -> None:
        broker = create_broker(url)
        try:
            now = time.time()
            later, sooner = (Outgoing(uuid.uuid4().hex, "q", b"later", eta=now + 60),
                             Outgoing(uuid.uuid4().hex, "r", b"sooner", eta=now + 30))
            await broker.publish([later, sooner, out("ready")])
            listed = await broker.scheduled()
            assert [(s.id, s.queue, s.eta) for s in listed] == [
                (sooner.id, "r", sooner.eta), (later.id, "q", later.eta)]
            assert [s.id for s in await broker.scheduled(limit=1)] == [sooner.id]
        finally:
            await broker.close()

    asyncio.run(main())


def test_a_retry_keeps_its_partition_key_and_runs_after_the_keys_earlier_sends(
        url: str, tmp_path: Path) -> None:
    """A keyed task that retries is sent again with its key: it waits behind the key's
    messages sent before the retry, and never runs beside one of them."""
    app = App("t", broker=url, backend=f"sqlite:///{tmp_path / 'results.db'}")
    runs: list[tuple[str, float, float]] = []  # (what, started, ended)

    @app.task(bind=True, max_retries=1, default_retry_delay=0)
    def charge(self: Any, name: str) -> str:
        started = time.monotonic()
        if self.request.retries == 0:
            runs.append((f"{name}#1", started, time.monotonic()))
            raise self.retry()
        runs.append((f"{name}#2", started, time.monotonic()))
        return name

    @app.task
    def refund(name: str) -> str:
        started = time.monotonic()
        time.sleep(0.3)  # long enough that a retry without its key would start meanwhile
        runs.append((name, started, time.monotonic()))
        return name

    try:
        with ThreadedWorker(app, slots=4):
            first = charge.apply_async(("a",), partition_key="order-7")
            second = refund.apply_async(("b",), partition_key="order-7")
            assert first.get(timeout=30) == "a"
            assert second.get(timeout=30) == "b"
    finally:
        app.close()
    assert [name for name, _, _ in runs] == ["a#1", "b", "a#2"]
    (_, _, _), (_, _, b_ended), (_, retry_started, _) = runs
    assert retry_started >= b_ended
