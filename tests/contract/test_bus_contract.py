"""The bus contract (``celeriac.bus.base``), held against every broker's bus.

Events and remote control rely on exactly these: a subscriber sees everything published
after ``subscribe`` returned, in each publisher's order, and nothing from before; a late
reader reads back what is retained (``since``); an idle ``read`` returns on time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Sequence

import pytest

from celeriac.brokers import Broker, create_broker
from celeriac.bus import CONTROL, EVENTS, REPLIES, RETENTION, Bus, Record, Subscription

# SQS and Kafka keep no broadcast log of their own: their broker's bus() says so (the
# last test), and events and control travel on the result backend's server (App.bus).
# conftest.py deselects these kinds from this module (not skipped: not theirs).
LEAVES_OUT = {"sqs", "kafka"}


async def _bus(broker: Broker) -> Bus:
    bus = broker.bus()
    await bus.connect()
    return bus


async def read_until(subscription: Subscription, count: int,
                     timeout: float = 10.0) -> list[Record]:
    """Read until ``count`` records arrived (or the deadline passed: then fewer)."""
    found: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and (remaining := deadline - time.monotonic()) > 0:
        found += await subscription.read(min(remaining, 1.0))
    return found


async def read_quiet(subscription: Subscription, quiet: float = 0.3) -> list[Record]:
    """Read until nothing more arrives within ``quiet`` seconds."""
    found: list[Record] = []
    while batch := await subscription.read(quiet):
        found += batch
    return found


def payloads(records: Sequence[Record]) -> list[bytes]:
    return [record.payload for record in records]


async def test_publishers_order_is_kept_and_every_subscriber_gets_everything(
        broker: Broker) -> None:
    first, second = await _bus(broker), await _bus(broker)
    try:
        readers = [await first.subscribe(EVENTS), await second.subscribe(EVENTS)]
        for batch in range(5):
            await first.publish(EVENTS, [b"a%d.%d" % (batch, i) for i in range(3)])
            await second.publish(EVENTS, [b"b%d.%d" % (batch, i) for i in range(3)])
        for reader in readers:
            got = payloads(await read_until(reader, 30))
            assert sorted(got) == sorted([b"a%d.%d" % (b, i) for b in range(5) for i in range(3)]
                                         + [b"b%d.%d" % (b, i) for b in range(5)
                                            for i in range(3)])
            for prefix in (b"a", b"b"):  # each publisher's records in its order
                mine = [p for p in got if p.startswith(prefix)]
                assert mine == sorted(mine)
            assert await reader.read(0.05) == []
    finally:
        await first.close()
        await second.close()


async def test_since_none_reads_only_what_is_published_after_subscribe(broker: Broker) -> None:
    bus = await _bus(broker)
    try:
        await bus.publish(CONTROL, [b"before-1", b"before-2"])
        reader = await bus.subscribe(CONTROL)
        await bus.publish(CONTROL, [b"after-1"])
        await bus.publish(CONTROL, [b"after-2", b"after-3"])
        got = await read_until(reader, 3)
        assert payloads(got) == [b"after-1", b"after-2", b"after-3"]
        assert await reader.read(0.1) == []
    finally:
        await bus.close()


async def test_subscribe_fixes_the_position_before_returning(broker: Broker) -> None:
    """A record published the moment subscribe returns (a control request right after the
    reply subscription was made) is read, many times over."""
    bus = await _bus(broker)
    try:
        for round in range(10):
            reader = await bus.subscribe(REPLIES)
            await bus.publish(REPLIES, [b"reply %d" % round])
            assert payloads(await read_until(reader, 1)) == [b"reply %d" % round]
            await reader.close()
    finally:
        await bus.close()


async def test_since_reads_back_retained_records(broker: Broker) -> None:
    bus = await _bus(broker)
    try:
        start = time.time()
        await bus.publish(EVENTS, [b"old-1", b"old-2"])
        everything = await bus.subscribe(EVENTS, since=start)
        old = await read_until(everything, 2)
        assert payloads(old) == [b"old-1", b"old-2"]
        while time.time() < max(r.at for r in old) + 0.005:  # (stores at ms precision)
            await asyncio.sleep(0.002)
        middle = time.time()
        await bus.publish(EVENTS, [b"new-1"])
        assert payloads(await read_until(everything, 1)) == [b"new-1"]
        late = await bus.subscribe(EVENTS, since=middle)
        got = await read_quiet(late)
        assert payloads(got) == [b"new-1"]
        assert all(record.at >= start - 0.001 for record in old + got)
        assert abs(got[0].at - time.time()) < 5  # Unix time, on this machine's clock
    finally:
        await bus.close()


async def test_idle_read_returns_nothing_after_about_the_timeout(broker: Broker) -> None:
    bus = await _bus(broker)
    try:
        reader = await bus.subscribe(CONTROL)
        began = time.monotonic()
        assert await reader.read(0.3) == []
        assert 0.25 <= time.monotonic() - began < 1.5
        began = time.monotonic()
        assert await reader.read(0) == []
        assert time.monotonic() - began < 0.5
    finally:
        await bus.close()


async def test_a_waiting_reader_wakes_for_a_record(broker: Broker) -> None:
    bus = await _bus(broker)
    try:
        reader = await bus.subscribe(CONTROL)
        waiting = asyncio.create_task(reader.read(10.0))
        await asyncio.sleep(0.1)  # let the reader start waiting: what is timed is its wake-up
        published = time.monotonic()
        await bus.publish(CONTROL, [b"ping"])
        assert payloads(await waiting) == [b"ping"]
        assert time.monotonic() - published < 1.0
    finally:
        await bus.close()


async def test_a_cancelled_read_leaves_the_subscription_reading(broker: Broker) -> None:
    """A worker shutting down cancels its waiting read; nothing is lost or garbled."""
    bus = await _bus(broker)
    try:
        reader = await bus.subscribe(CONTROL)
        waiting = asyncio.create_task(reader.read(10.0))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await bus.publish(CONTROL, [b"after the cancel"])
        assert payloads(await read_until(reader, 1)) == [b"after the cancel"]
    finally:
        await bus.close()


async def test_ten_thousand_records_arrive_complete_and_in_order(broker: Broker) -> None:
    bus = await _bus(broker)
    try:
        reader = await bus.subscribe(EVENTS)
        sent = [b"%05d" % i + b"x" * 300 for i in range(10_000)]
        for i in range(0, len(sent), 100):
            await bus.publish(EVENTS, sent[i:i + 100])
        assert payloads(await read_until(reader, len(sent), timeout=30)) == sent
    finally:
        await bus.close()


async def test_retention_keeps_at_least_max_records_and_not_many_more(
        broker: Broker) -> None:
    limit = RETENTION[CONTROL].max_records
    bus = await _bus(broker)
    try:
        start = time.time()
        sent = [b"%05d" % i + b"c" * 900 for i in range(4 * limit)]
        for i in range(0, len(sent), 100):
            await bus.publish(CONTROL, sent[i:i + 100])
        kept = payloads(await read_quiet(await bus.subscribe(CONTROL, since=start)))
        assert limit <= len(kept) <= 2 * limit  # (each bus trims lazily, by its own steps)
        assert kept == sent[-len(kept):]  # the newest, in order
    finally:
        await bus.close()


async def test_retention_keeps_large_records_within_about_max_bytes(
        broker: Broker) -> None:
    """Event records are batches that grow with the task rate: a count alone would let
    them fill the broker's server, so every bus also keeps a topic near max_bytes."""
    budget = RETENTION[CONTROL].max_bytes
    bus = await _bus(broker)
    try:
        start = time.time()
        sent = [b"%05d" % i + b"L" * (128 * 1024) for i in range(4 * budget // (128 * 1024))]
        for i in range(0, len(sent), 8):
            await bus.publish(CONTROL, sent[i:i + 8])
        kept = payloads(await read_quiet(await bus.subscribe(CONTROL, since=start)))
        assert kept  # some history is always kept
        assert sum(map(len, kept)) <= 2 * budget  # (trimmed lazily, not beyond twice)
        assert kept == sent[-len(kept):]  # the newest, in order
    finally:
        await bus.close()


async def test_unknown_topic_is_refused(broker: Broker) -> None:
    bus = await _bus(broker)
    try:
        with pytest.raises(ValueError, match="unknown topic"):
            await bus.publish("evnts", [b"x"])
        with pytest.raises(ValueError, match="unknown topic"):
            await bus.subscribe("evnts")
    finally:
        await bus.close()


async def test_closing_a_subscription_frees_it_and_leaves_others_reading(
        broker: Broker) -> None:
    bus = await _bus(broker)
    try:
        closed, kept = await bus.subscribe(EVENTS), await bus.subscribe(EVENTS)
        await bus.publish(EVENTS, [b"one"])
        assert payloads(await read_until(closed, 1)) == [b"one"]
        assert payloads(await read_until(kept, 1)) == [b"one"]
        consumers = await _server_readers(broker, bus, EVENTS)
        await closed.close()
        if consumers is not None:  # the server keeps a consumer per reader: it is gone
            assert consumers >= 2
            assert await _server_readers(broker, bus, EVENTS) == consumers - 1
        await bus.publish(EVENTS, [b"two"])
        assert payloads(await read_until(kept, 1)) == [b"two"]
    finally:
        await bus.close()


async def _server_readers(broker: Broker, bus: Bus, topic: str) -> int | None:
    """How many readers of this process the server holds, or None for the buses that
    keep nothing on a server per reader (memory, SQLite).

    Redis: the connections named as bus readers of this process (``CLIENT LIST``).
    RabbitMQ: a stream queue's declare-ok counts no consumers, so ``rabbitmqctl`` counts
    the consumers on the channels of the connections this process opened (they are named
    ``celeriac pid <pid> ...``).
    """
    if broker.scheme == "redis":
        return await _redis_readers(bus, topic)
    if broker.scheme != "amqp":
        return None
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here")
    ours = f"celeriac pid {os.getpid()} "
    connections = await _rabbitmqctl("list_connections", "pid", "client_properties")
    pids = {line.split("\t", 1)[0] for line in connections if ours in line}
    channels = await _rabbitmqctl("list_channels", "connection", "consumer_count")
    return sum(int(count) for pid, count in (line.split("\t") for line in channels)
               if pid in pids)


async def _redis_readers(bus: Bus, topic: str) -> int:
    import redis.asyncio as aioredis

    from celeriac.bus.redis import READER_NAME, RedisBus

    assert isinstance(bus, RedisBus)
    client = aioredis.Redis.from_url(bus.settings.url)
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    ours = f"{READER_NAME}:pid={os.getpid()}:"
    return sum(1 for entry in clients
               if entry.get("name", "").startswith(ours)
               and entry["name"].endswith(f"bus:{topic}"))


async def _rabbitmqctl(*args: str) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", "--no-table-headers", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return [line for line in out.decode().splitlines() if line.strip()]


def test_a_broker_without_a_bus_says_where_events_go() -> None:
    broker = create_broker("kafka://127.0.0.1:9092")
    with pytest.raises(NotImplementedError, match="result backend"):
        broker.bus()
