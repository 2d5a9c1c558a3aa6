"""Publishing in batches: every message confirmed or reported, in order, whole.

Both batch publishers: ``publish_confirmed`` on an aiormq channel (the link's), and
``Wire.publish`` (rpc:// results).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

import aiormq
import pytest
from aiormq.exceptions import PublishError
from fault_proxy import FaultProxy
from pamqp import commands as spec
from rabbit_harness import Rabbit

from celeriac.brokers import Outgoing, create_broker
from celeriac.brokers.amqp_blocking import Server, Unroutable
from celeriac.brokers.amqp_confirm import PUBLISH_CHUNK, Outbound, publish_confirmed
from celeriac.brokers.amqp_wire import Wire

Publish = Callable[[Sequence[Outbound], float], Awaitable[list[BaseException | None]]]
PUBLISHERS = ["aiormq", "wire"]
UNROUTABLE = {"aiormq": PublishError, "wire": Unroutable}


@contextlib.asynccontextmanager
async def publisher(kind: str, url: str) -> AsyncIterator[Publish]:
    """A confirmed batch publisher of that kind, connected to ``url``."""
    if kind == "wire":
        wire = await Wire.open(Server.from_url(url, "test"), 5, heartbeat=0, confirm=True)
        try:
            yield wire.publish
        finally:
            await wire.close()
        return
    connection = aiormq.Connection(url)
    await connection.connect()
    try:
        yield partial(publish_confirmed, await connection.channel(publisher_confirms=True))
    finally:
        await connection.close()


@pytest.mark.parametrize("kind", PUBLISHERS)
def test_a_batch_reports_each_message_and_delivers_the_routable_ones_whole(
        rabbit: Rabbit, kind: str) -> None:
    """One unroutable message fails alone; the others, big and empty ones, arrive intact."""

    async def scenario() -> None:
        connection = aiormq.Connection(rabbit.url())
        await connection.connect()
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.queue_declare("batch", durable=True)
            big = bytes(range(256)) * 2048  # 512 KiB: several body frames
            bodies = [b"first", big, b"", b"last"]
            messages = [(body, "", "batch", spec.Basic.Properties(message_id=f"m{i}"))
                        for i, body in enumerate(bodies)]
            messages.insert(2, (b"lost", "", "no-such-queue",
                                spec.Basic.Properties(message_id="unroutable")))
            async with publisher(kind, rabbit.url()) as publish:
                outcomes = await publish(messages, 10)
                assert [type(outcome) for outcome in outcomes] == [
                    type(None), type(None), UNROUTABLE[kind], type(None), type(None)]
                got = []
                for _ in bodies:
                    message = await channel.basic_get("batch", no_ack=True)
                    got.append((message.header.properties.message_id, message.body))
                assert got == [(f"m{i}", body) for i, body in enumerate(bodies)]
                # The channel still numbers its confirms right after a return.
                assert await publish(messages[:1], 10) == [None]
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_many_messages_in_one_publish_are_all_stored_in_order(rabbit: Rabbit) -> None:
    """More messages than one write carries: every one is confirmed and queued, in order."""
    count = PUBLISH_CHUNK * 3 + 7
    broker = create_broker(rabbit.url())

    async def scenario() -> list[bytes]:
        try:
            await broker.publish([Outgoing(f"id-{i}", "bulk", str(i).encode())
                                  for i in range(count)])
            (stats,) = await broker.queue_stats(["bulk"])
            assert stats.ready == count
            bodies: list[bytes] = []
            while len(bodies) < count:
                deliveries = await broker.fetch(["bulk"], 500, 5)
                assert deliveries, f"only {len(bodies)} of {count} came back"
                bodies += [delivery.body for delivery in deliveries]
                await broker.ack(deliveries)
            return bodies
        finally:
            await broker.close()

    assert asyncio.run(scenario()) == [str(i).encode() for i in range(count)]


@pytest.mark.parametrize("kind", PUBLISHERS)
def test_a_batch_on_a_connection_that_dies_fails_at_once_not_at_its_timeout(
        rabbit: Rabbit, proxy: FaultProxy, kind: str) -> None:
    async def scenario() -> None:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{rabbit.vhost}"
        connection = aiormq.Connection(rabbit.url())
        await connection.connect()
        try:
            channel = await connection.channel()
            await channel.queue_declare("doomed")
            async with publisher(kind, url) as publish:
                # Given a batch published while the network is silent (no confirm comes)
                proxy.freeze()
                messages = [(b"x", "", "doomed", spec.Basic.Properties(message_id=f"m{i}"))
                            for i in range(20)]
                started = time.monotonic()
                batch = asyncio.create_task(publish(messages, 60))
                await asyncio.sleep(0.2)
                # When the connection is cut
                proxy.thaw()
                outcomes = await asyncio.wait_for(batch, 10)
                # Then every message is reported failed (not stored for sure) within
                # seconds, by the lost connection rather than by the 60 s timeout
                assert time.monotonic() - started < 10
                assert all(outcome is not None and not isinstance(outcome, TimeoutError)
                           for outcome in outcomes), outcomes
        finally:
            await connection.close()

    asyncio.run(scenario())
