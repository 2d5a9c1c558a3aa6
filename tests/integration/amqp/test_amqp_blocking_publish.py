"""Sync producers publish from their own thread (``publish_blocking``), confirmed."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import aiormq
import pytest
from fault_proxy import FaultProxy
from pamqp import commands as spec
from rabbit_harness import Rabbit

from celeriac.brokers import Delivery, Outgoing, create_broker
from celeriac.brokers.amqp import AMQPBroker
from celeriac.brokers.amqp_blocking import BlockingConnection, Server, Unroutable
from celeriac.errors import BrokerUnavailable


@pytest.fixture
def broker(rabbit: Rabbit) -> Iterator[AMQPBroker]:
    made = create_broker(rabbit.url(), {"publish_timeout": 3, "connect_timeout": 1})
    assert isinstance(made, AMQPBroker)
    try:
        yield made
    finally:
        made.close_blocking()
        asyncio.run(made.close())


def drain(broker: AMQPBroker, queue: str, count: int, timeout: float = 10) -> list[Delivery]:
    """Fetch and ack ``count`` deliveries of ``queue``, in the order they came."""

    async def run() -> list[Delivery]:
        got: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            deliveries = await broker.fetch([queue], count - len(got), 0.5)
            await broker.ack(deliveries)
            got += deliveries
        await broker.close()  # this loop ends here, and its connection with it
        return got

    return asyncio.run(run())


def out(queue: str, body: bytes, priority: int = 0, eta: float | None = None) -> Outgoing:
    return Outgoing(uuid.uuid4().hex, queue, body, priority, eta)


def test_sync_sends_arrive_whole_by_priority_and_not_before_their_eta(
        broker: AMQPBroker) -> None:
    # Given messages sent from a plain thread, one of them due in 1.5 s (room for a
    # loaded machine between the sends and the count)
    sent_at = time.time()
    broker.publish_blocking([out("q", b"low", 1), out("q", b"x" * 300_000, 5)])
    broker.publish_blocking([out("q", b"later", 9, eta=sent_at + 1.5)])
    broker.publish_blocking([out("q", b"high", 9)])

    # Then they were stored before publish_blocking returned, and come out by priority
    (stats,) = asyncio.run(broker.queue_stats(["q"]))
    assert (stats.ready, stats.scheduled) == (3, 1)
    first = drain(broker, "q", 3)
    assert [d.body[:5] for d in first] == [b"high", b"xxxxx", b"low"]
    assert len(first[1].body) == 300_000
    # And the delayed one only once it is due
    [later] = drain(broker, "q", 1)
    assert later.body == b"later"
    assert time.time() >= sent_at + 1.5


def test_a_queue_deleted_under_a_sync_producer_is_declared_again(
        rabbit: Rabbit, broker: AMQPBroker) -> None:
    # Given a sync producer that has published to a queue
    broker.publish_blocking([out("gone", b"one")])

    # When the queue is deleted behind its back
    async def delete() -> None:
        connection = aiormq.Connection(rabbit.url())
        await connection.connect()
        channel = await connection.channel()
        await channel.queue_delete("gone")
        await connection.close()

    asyncio.run(delete())

    # Then the next publish (returned as unroutable) declares it again and is stored
    broker.publish_blocking([out("gone", b"two")])
    assert [d.body for d in drain(broker, "gone", 1)] == [b"two"]


def test_a_sync_producer_survives_a_cut_connection_and_reports_a_silent_one(
        rabbit: Rabbit, proxy: FaultProxy) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{rabbit.vhost}"
    broker = create_broker(url, {"publish_timeout": 1.5, "connect_timeout": 0.5})
    assert isinstance(broker, AMQPBroker)
    try:
        # Given a sync producer whose pooled connection is cut while it is idle
        broker.publish_blocking([out("q", b"before")])
        proxy.reset()  # cuts every proxied connection (RST)

        # Then its next publish goes through on a new connection
        broker.publish_blocking([out("q", b"after cut")])

        # When the network goes silent, a publish fails within its publish_timeout
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            broker.publish_blocking([out("q", b"silent")])
        assert time.monotonic() - started < 5

        # And once the network is back, publishing works again
        proxy.thaw()
        broker.publish_blocking([out("q", b"back")])
        bodies = {d.body for d in drain(broker, "q", 4, timeout=5)}
        # "silent" may or may not have been stored (it was never confirmed)
        assert {b"before", b"after cut", b"back"} <= bodies <= {
            b"before", b"after cut", b"silent", b"back"}
    finally:
        proxy.thaw()
        broker.close_blocking()
        asyncio.run(broker.close())


def test_threads_publishing_at_once_each_store_every_message_once(
        broker: AMQPBroker) -> None:
    # Given eight threads each publishing 50 messages one by one, at the same time
    def send(thread: int) -> None:
        for n in range(50):
            broker.publish_blocking([out("many", f"{thread}-{n}".encode())])

    threads = [threading.Thread(target=send, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every message is in the queue exactly once
    bodies = sorted(d.body for d in drain(broker, "many", 400))
    assert bodies == sorted(f"{t}-{n}".encode() for t in range(8) for n in range(50))


def test_a_blocking_connection_reports_each_returned_message(rabbit: Rabbit) -> None:
    """Returns are matched by message id; one without an id is never taken as stored."""
    broker = create_broker(rabbit.url())
    assert isinstance(broker, AMQPBroker)
    broker.publish_blocking([out("there", b"declares the queue")])
    connection = BlockingConnection(Server.from_url(rabbit.url(), "test"), 5)
    try:
        plain = spec.Basic.Properties()
        outcomes = connection.publish([
            (b"a", "", "there", spec.Basic.Properties(message_id="a")),
            (b"b", "", "nowhere", spec.Basic.Properties(message_id="b")),
            (b"c", "", "nowhere", plain),
            (b"d", "", "there", spec.Basic.Properties(message_id="d")),
        ], 5)
        assert [type(outcome) for outcome in outcomes] == [
            type(None), Unroutable, Unroutable, type(None)]
        # The connection stays usable, its confirms numbered right
        assert connection.publish([(b"e", "", "there", plain)], 5) == [None]
    finally:
        connection.close()
        broker.close_blocking()
    assert [d.body for d in drain(broker, "there", 4)] == [b"declares the queue", b"a", b"d",
                                                           b"e"]
