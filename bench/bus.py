"""How fast each broker's bus (``celeriac.bus``) carries events and control requests.

``python -m bench.bus`` measures, on every bus (``--buses`` to choose):

- *publish*: records/s of sequential ``publish`` calls of batches of 100 payloads of
  300 bytes (a worker's event batches), with a reader tailing the topic throughout;
- *latency*: publish to a reader already waiting in ``read`` (on a bus object of its
  own, as a monitor or a worker would be), p50 and p99 of a record every ~10 ms (a busy
  topic), and p50 of one after 1.5 s of quiet (a control request to idle workers).

It needs Redis on 127.0.0.1:6379 (database 13, a key prefix of its own, deleted after)
and RabbitMQ on 127.0.0.1:5672 as guest (a namespace of its own, deleted after); the
SQLite file is made in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celeriac.brokers import Broker, create_broker
from celeriac.bus import CONTROL, EVENTS, Bus, Subscription

BUSES = ("memory", "sqlite", "redis", "amqp")
BATCH = 100
PAYLOAD_BYTES = 300


@contextmanager
def broker_for(kind: str, directory: Path) -> Iterator[Broker]:
    if kind == "memory":
        yield create_broker("memory://")
    elif kind == "sqlite":
        yield create_broker(f"sqlite:///{directory / 'bus.db'}")
    elif kind == "redis":
        import redis

        prefix = f"bench-bus:{uuid.uuid4().hex[:8]}:"
        try:
            yield create_broker("redis://127.0.0.1:6379/13", {"key_prefix": prefix})
        finally:
            client = redis.Redis.from_url("redis://127.0.0.1:6379/13")
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()
    else:
        namespace = f"bench.bus.{uuid.uuid4().hex[:8]}."
        broker = create_broker("amqp://guest:guest@127.0.0.1:5672/", {"namespace": namespace})
        try:
            yield broker
        finally:
            asyncio.run(_delete_namespace(broker))


async def _delete_namespace(broker: Any) -> None:
    await broker.delete_namespace()
    await broker.close()


async def drain(reader: Subscription, count: int) -> int:
    got = 0
    while got < count:
        batch = await reader.read(5.0)
        if not batch:
            break
        got += len(batch)
    return got


async def publish_rate(broker: Broker, records: int) -> float:
    publisher, tailer = broker.bus(), broker.bus()
    await publisher.connect()
    await tailer.connect()
    try:
        reader = await tailer.subscribe(EVENTS)
        batch = [b"e" * PAYLOAD_BYTES] * BATCH
        tailing = asyncio.create_task(drain(reader, records))
        began = time.perf_counter()
        for _ in range(records // BATCH):
            await publisher.publish(EVENTS, batch)
        elapsed = time.perf_counter() - began
        got = await tailing
        assert got == records, f"the reader got {got} of {records}"
        return records / elapsed
    finally:
        await publisher.close()
        await tailer.close()


async def latencies(publisher: Bus, reader: Subscription, samples: int,
                    spacing: float) -> list[float]:
    found: list[float] = []
    for _ in range(samples):
        waiting = asyncio.create_task(reader.read(5.0))
        # The reader is waiting by now. Jittered, so that a poller (SQLite) started with
        # the read is not ticking in step with the publisher in this same loop.
        await asyncio.sleep(spacing * random.uniform(0.5, 1.5))
        await publisher.publish(CONTROL, [struct.pack("d", time.perf_counter())])
        records = await waiting
        arrived = time.perf_counter()
        assert records, "no record within 5 s"
        found.append(arrived - struct.unpack("d", records[-1].payload)[0])
    return found


async def latency(broker: Broker) -> tuple[float, float, float]:
    publisher, receiver = broker.bus(), broker.bus()
    await publisher.connect()
    await receiver.connect()
    try:
        reader = await receiver.subscribe(CONTROL)
        busy = await latencies(publisher, reader, 200, 0.01)
        idle = await latencies(publisher, reader, 4, 1.5)
        return (statistics.median(busy), statistics.quantiles(busy, n=100)[98],
                statistics.median(idle))
    finally:
        await publisher.close()
        await receiver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buses", nargs="+", choices=BUSES, default=list(BUSES))
    parser.add_argument("--records", type=int, default=30_000)
    args = parser.parse_args()
    print(f"{'bus':8} {'publish rec/s':>14} {'busy p50 ms':>12} {'busy p99 ms':>12} "
          f"{'idle p50 ms':>12}")
    with tempfile.TemporaryDirectory() as directory:
        for kind in args.buses:
            with broker_for(kind, Path(directory)) as broker:
                rate = asyncio.run(publish_rate(broker, args.records))
                p50, p99, idle = asyncio.run(latency(broker))
            print(f"{kind:8} {rate:14,.0f} {p50 * 1000:12.2f} {p99 * 1000:12.2f} "
                  f"{idle * 1000:12.2f}", flush=True)


if __name__ == "__main__":
    main()
