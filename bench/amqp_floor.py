"""What this RabbitMQ allows a W3 round trip, measured with plain aiormq and no framework.

``python -m bench.amqp_floor`` runs, for a durable queue with ``x-max-priority`` 10 as
celeriac declares them (classic queue version 1 and 2), sequential calls shaped like
W3's, against a consumer in another process:

- the client publishes a persistent message with publisher confirms and waits for the
  confirm (what ``delay()`` must do);
- the consumer publishes a reply (non-persistent, confirmed) to the client's exclusive
  reply queue, then acks (what a worker with ``rpc://`` results does);
- the client waits for the reply (what ``get()`` does).

It prints the p50 of: the confirm, the delivery to the consumer, and the whole round
trip. No work, no serialization, no framework: a floor for W3 on this server. Queues
are made in the default vhost under ``bench.floor.`` and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
VARIANTS = {"classic v1": 1, "classic v2": 2}
PERSISTENT, TRANSIENT = 2, 1


@dataclass(frozen=True, slots=True)
class Floor:
    variant: str
    confirm_ms: float
    delivered_ms: float
    round_trip_ms: float


def consume(url: str, queue: str, ready: Any, stop: Any, delivered: Any) -> None:
    """The consumer process: reply to each message, then ack it; note when it came."""

    async def main() -> None:
        connection = await aiormq.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        await channel.basic_qos(prefetch_count=10)
        stamps: list[int] = []

        async def on_message(message: DeliveredMessage) -> None:
            stamps.append(time.perf_counter_ns())
            properties = message.header.properties
            await channel.basic_publish(
                b"ok", routing_key=properties.reply_to or "",
                properties=Basic.Properties(correlation_id=properties.correlation_id,
                                            delivery_mode=TRANSIENT))
            assert message.delivery_tag is not None
            await channel.basic_ack(message.delivery_tag)

        await channel.basic_consume(queue, on_message)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        delivered.put(stamps)
        await connection.close()

    asyncio.run(main())


async def measure(url: str, variant: str, version: int, calls: int, warmup: int) -> Floor:
    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    queue = f"bench.floor.{uuid.uuid4().hex[:8]}"
    await channel.queue_declare(queue, durable=True, arguments={
        "x-max-priority": 10, "x-queue-version": version})
    replies = await channel.queue_declare("", exclusive=True, auto_delete=True)
    assert replies.queue is not None
    waiting: dict[str, asyncio.Future[None]] = {}

    async def on_reply(message: DeliveredMessage) -> None:
        future = waiting.pop(message.header.properties.correlation_id or "", None)
        if future is not None:
            future.set_result(None)

    await channel.basic_consume(replies.queue, on_reply, no_ack=True)
    context = multiprocessing.get_context("spawn")
    ready, stop, delivered = context.Event(), context.Event(), context.Queue()
    consumer = context.Process(target=consume, args=(url, queue, ready, stop, delivered))
    consumer.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the consumer process did not start")
        sent: list[int] = []
        confirms: list[float] = []
        trips: list[float] = []
        loop = asyncio.get_running_loop()
        for _ in range(warmup + calls):
            call_id = uuid.uuid4().hex
            waiting[call_id] = reply = loop.create_future()
            started = time.perf_counter_ns()
            await channel.basic_publish(b"x" * 300, routing_key=queue, properties=(
                Basic.Properties(delivery_mode=PERSISTENT, correlation_id=call_id,
                                 reply_to=replies.queue)))
            confirmed = time.perf_counter_ns()
            await asyncio.wait_for(reply, 10)
            sent.append(started)
            confirms.append((confirmed - started) / 1e6)
            trips.append((time.perf_counter_ns() - started) / 1e6)
        stop.set()
        stamps = delivered.get(timeout=30)
    finally:
        stop.set()
        consumer.join(30)
        await channel.queue_delete(queue)
        await connection.close()
    deliveries = [(got - at) / 1e6 for got, at in zip(stamps, sent, strict=True)]
    return Floor(variant, statistics.median(confirms[warmup:]),
                 statistics.median(deliveries[warmup:]), statistics.median(trips[warmup:]))


async def main(url: str, calls: int, warmup: int) -> None:
    print(f"{calls} sequential calls per variant ({warmup} untimed first), p50 in ms")
    print(f"{'queue':12} {'confirm':>8} {'delivered':>10} {'round trip':>11}")
    for variant, version in VARIANTS.items():
        floor = await measure(url, variant, version, calls, warmup)
        print(f"{floor.variant:12} {floor.confirm_ms:8.3f} {floor.delivered_ms:10.3f} "
              f"{floor.round_trip_ms:11.3f}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.calls, args.warmup))


if __name__ == "__main__":
    cli()
