"""Topics on the AMQP broker's RabbitMQ: one stream queue per topic.

For the broker's namespace ``ns``::

    queue  ns+celeriac.bus.<topic>   x-queue-type=stream, x-max-age and
                                     x-max-length-bytes from RETENTION

A stream queue is an append-only log that any number of consumers read, each from an
offset of its own, without taking records from each other: exactly a topic (RabbitMQ
3.9+, feature flag ``stream_queue``). ``AMQPBroker.delete_namespace`` deletes them.

**Publishing**: to the default exchange, in confirm mode, the batch written at once and
every confirm awaited (``amqp_confirm.publish_confirmed``): one round trip. Each record
carries its publish time in microseconds (header ``celeriac-at``; also the ``timestamp``
property, whole seconds): ``Record.at`` is the publisher's clock, as on SQLite.

**Reading**: a consumer per subscription, on a channel of its own on the bus's reader
connection (publishing has its own connection, so a flow-controlled publisher and a busy
reader do not hold each other up), with ``basic.qos`` prefetch and acks after each read
(a stream consumer needs them to get more credit; nothing is removed by an ack).

- ``since=None`` consumes from offset ``next``: RabbitMQ attaches the reader to the end
  of the log before it answers ``consume-ok``, which ``subscribe`` awaits, so every
  record confirmed after ``subscribe`` returns is read, and none confirmed before.
- ``since=t``: RabbitMQ attaches at the first chunk it stamped at or after a timestamp,
  in whole seconds, by *its* clock, which is not ours: another host's, or the Erlang
  VM's own, which after a jump of the machine's clock converges slowly and was seen
  here 1.3 s behind it. So the reader asks for ``SINCE_MARGIN`` seconds earlier and
  drops the records whose ``celeriac-at`` (the publisher's clock) is before ``t``.

A lost reader connection is reopened on the next ``read``, and the consumer resumes
after the last offset it read (RabbitMQ tells each delivery's offset), so nothing still
retained is missed or read twice.

Retention: a stream drops whole segments, and only when it starts a new one. The count
is turned into bytes (``RECORD_BYTES`` per record, a little more than an event), the
segment size is a quarter of that, and the length limit one segment more, so RabbitMQ
keeps between ``max_records`` and 1.5 times as many records of that size (fewer of
larger ones: the count is approximate here). ``x-max-age`` likewise drops a segment
once all of it is older than the age.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from celeriac.brokers.amqp_confirm import Outbound, publish_confirmed
from celeriac.brokers.amqp_connection import CLOSE_TIMEOUT, Connected, Context, quietly
from celeriac.bus.base import RETENTION, Bus, Record, Subscription, check_topic
from celeriac.errors import BrokerError, BrokerUnavailable

# Bytes a record is reckoned at, to turn a count into a stream's length in bytes (events
# are a few hundred bytes; control requests and replies smaller or larger).
RECORD_BYTES = 1024
# Deliveries a consumer may hold unacked: the largest batch one read returns.
PREFETCH = 1_000
SINCE_MARGIN = 10.0  # seconds a since= reader attaches early, for the server's clock
HEADER_AT = "celeriac-at"  # publish time, microseconds since the epoch
HEADER_OFFSET = "x-stream-offset"  # set by RabbitMQ on every delivery from a stream


def queue_name(namespace: str, topic: str) -> str:
    return f"{namespace}celeriac.bus.{topic}"


def stream_arguments(topic: str) -> dict[str, Any]:
    retention = RETENTION[topic]
    length = min(retention.max_records * RECORD_BYTES, retention.max_bytes)
    segment = max(length // 4, 64 * 1024)
    return {
        "x-queue-type": "stream",
        "x-max-age": f"{max(1, int(retention.max_age))}s",
        # RabbitMQ drops the oldest whole segment while the stream is longer than this:
        # one segment more than the count, so that it never keeps fewer.
        "x-max-length-bytes": length + segment,
        "x-stream-max-segment-size-bytes": segment,
    }


class AMQPBus(Bus):
    """The topics on the RabbitMQ server of the broker whose ``Context`` this is."""

    scheme = "amqp"

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._publisher: Connected | None = None
        self._reader: Connected | None = None
        self._declared: set[str] = set()  # topics declared on the publisher's connection
        self._subscriptions: set[_AMQPSubscription] = set()

    def queue(self, topic: str) -> str:
        return queue_name(self._ctx.topology.namespace, topic)

    def _connected(self, which: str) -> Connected:
        current = self._publisher if which == "publisher" else self._reader
        if current is None:
            current = Connected(self._ctx, asyncio.get_running_loop())
            if which == "publisher":
                self._publisher = current
            else:
                self._reader = current
        return current

    async def connect(self) -> None:
        await self._connected("publisher").ready()

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        for connected in (self._publisher, self._reader):
            if connected is None:
                continue
            connected.closed = True  # (a closing connection is not "lost": no warning)
            connection = connected.connection
            if connection is not None:
                await quietly(asyncio.wait_for(connection.close(), CLOSE_TIMEOUT))
        self._publisher = self._reader = None
        self._declared.clear()

    async def _channel(self, topic: str) -> AbstractChannel:
        """The publisher's confirm-mode channel, ``topic``'s stream declared on it."""
        connected = self._connected("publisher")
        connection = await connected.ready()
        if connected.publisher is None or connected.publisher.is_closed:
            connected.publisher = await connection.channel(publisher_confirms=True)
            self._declared.clear()
        channel = connected.publisher
        if topic not in self._declared:
            await channel.queue_declare(self.queue(topic), durable=True,
                                        arguments=stream_arguments(topic))
            self._declared.add(topic)
        return channel

    async def publish(self, topic: str, payloads: Sequence[bytes]) -> None:
        check_topic(topic)
        if not payloads:
            return
        now = time.time()
        properties = spec.Basic.Properties(
            headers={HEADER_AT: int(now * 1_000_000)}, delivery_mode=2,
            timestamp=datetime.datetime.fromtimestamp(int(now), datetime.UTC))
        messages: list[Outbound] = [(bytes(p), "", self.queue(topic), properties)
                                    for p in payloads]
        connected = self._connected("publisher")

        async def attempt() -> None:
            channel = await self._channel(topic)
            outcomes = await publish_confirmed(channel, messages,
                                               self._ctx.settings.publish_timeout)
            failed = next((outcome for outcome in outcomes if outcome is not None), None)
            if failed is not None:
                raise failed

        try:
            await connected.run(attempt)
        except (BrokerError, BrokerUnavailable):
            raise
        except Exception as exc:
            raise BrokerError(f"RabbitMQ at {self._ctx.safe_url}: publishing to the "
                              f"{topic} topic failed: {exc!r}") from exc

    async def subscribe(self, topic: str, since: float | None = None) -> Subscription:
        check_topic(topic)
        await self._channel(topic)  # the stream must exist before anyone consumes it
        subscription = _AMQPSubscription(self, topic, since)
        await subscription.start()
        subscription.started_at = time.time()
        self._subscriptions.add(subscription)
        return subscription


class _AMQPSubscription(Subscription):
    def __init__(self, bus: AMQPBus, topic: str, since: float | None) -> None:
        self._bus = bus
        self._topic = topic
        self._since = since
        self._next_offset: int | None = None  # after the last record read
        self._channel: AbstractChannel | None = None
        self._arrived: deque[DeliveredMessage] = deque()  # of the current channel
        self._signal = asyncio.Event()  # set when a delivery arrives
        self.started_at = 0.0  # when consume-ok came: where a reader that read nothing
        # before its connection was lost resumes
        self._acks: set[asyncio.Task[None]] = set()

    def _offset(self) -> Any:
        if self._next_offset is not None:
            return self._next_offset
        if self._since is None:
            return "next"
        # The server's clock may be behind ours (see the module): early, filtered on read.
        start = max(int(self._since - SINCE_MARGIN), 0)
        return datetime.datetime.fromtimestamp(start, datetime.UTC)

    async def start(self) -> None:
        """Consume, awaiting ``consume-ok``: from then on the position is fixed."""
        connected = self._bus._connected("reader")

        async def attempt() -> None:
            connection = await connected.ready()
            channel = await connection.channel(publisher_confirms=False)
            await channel.basic_qos(prefetch_count=PREFETCH)
            arrived = self._arrived = deque()  # (an older channel's must not feed it)
            signal = self._signal

            async def on_message(message: DeliveredMessage) -> None:
                arrived.append(message)
                signal.set()

            await channel.basic_consume(self._bus.queue(self._topic), on_message,
                                        no_ack=False,
                                        arguments={HEADER_OFFSET: self._offset()})
            self._channel = channel

        await connected.run(attempt)

    async def read(self, timeout: float) -> list[Record]:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            if self._channel is None or self._channel.is_closed:
                await self._resume()
            messages = self._drain()
            if not messages:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                await self._wait(remaining)
                continue
            records = self._records(messages)
            self._ack(messages[-1])
            if records:
                return records

    async def _wait(self, timeout: float) -> None:
        """Until a delivery arrives, the channel closes (resumed by the caller), or
        ``timeout``. Deliveries stay in ``_arrived`` throughout: a cancelled read
        loses none."""
        assert self._channel is not None
        self._signal.clear()
        waiter = asyncio.ensure_future(self._signal.wait())
        try:
            await asyncio.wait((waiter, self._channel.closing), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    def _drain(self) -> list[DeliveredMessage]:
        count = min(len(self._arrived), PREFETCH)
        return [self._arrived.popleft() for _ in range(count)]

    def _records(self, messages: list[DeliveredMessage]) -> list[Record]:
        records: list[Record] = []
        for message in messages:
            headers = message.header.properties.headers or {}
            offset = headers.get(HEADER_OFFSET)
            if isinstance(offset, int):
                self._next_offset = offset + 1
            at_us = headers.get(HEADER_AT)
            if isinstance(at_us, int):
                at = at_us / 1_000_000
            else:  # published by something else: the timestamp property, if any
                stamp = message.header.properties.timestamp
                at = stamp.timestamp() if stamp is not None else time.time()
            if self._since is not None and at < self._since:
                continue  # before the start (RabbitMQ attached a little early)
            records.append(Record(at, bytes(message.body)))
        return records

    def _ack(self, last: DeliveredMessage) -> None:
        """Ack up to ``last``, for more credit, in a task of its own: a read cancelled
        now must not lose the records it took (an ack is one-way, nothing waits for it)."""
        channel, tag = last.channel, last.delivery_tag
        if channel.is_closed or tag is None:
            return
        task = asyncio.ensure_future(quietly(channel.basic_ack(tag, multiple=True)))
        self._acks.add(task)  # (a lost channel is reopened by the next read)
        task.add_done_callback(self._acks.discard)

    async def _resume(self) -> None:
        """Consume again on a new channel, after the last record read."""
        old, self._channel = self._channel, None
        if old is not None:
            await quietly(old.close())
        if self._next_offset is None and self._since is None:
            # Nothing read yet: "next" now could skip records published while the old
            # consumer was gone; start from when it was made instead.
            self._since = self.started_at
        await self.start()

    async def close(self) -> None:
        self._bus._subscriptions.discard(self)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            # Closing the channel cancels its consumer on the server.
            await quietly(asyncio.wait_for(channel.close(), CLOSE_TIMEOUT))
