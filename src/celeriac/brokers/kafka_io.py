"""The Kafka broker's I/O: one thread with its own event loop, holding every client.

aiokafka's clients belong to the loop that started them, while a broker object is used
from several loops (the worker's, the app's bridge loop for sync producers, and every
``asyncio.run`` of a test). Joining them all to one private loop in a thread of its own
keeps one producer, one log reader and the replayed queue state per process, whatever
loop calls; a call from any loop (or a sync caller, for ``publish_blocking``) hops over
with ``run_coroutine_threadsafe``. A forked child starts its own thread on first use.

The reader is one consumer without a group, assigned to the partitions this process has
asked about, which applies every record to its partition's ``PartitionState`` and wakes
the fetches waiting on this loop. Each queue also has a consumer group of its own, used
only to commit the queue's low watermark (the oldest unfinished message): where a new
reader starts replaying. It is committed after the ack records it follows from are in
the log, never before, so a crash loses no outcome and re-runs no finished task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)

from celeriac.brokers.kafka_log import PartitionState, state_record
from celeriac.errors import BrokerError, BrokerUnavailable

T = TypeVar("T")

# How long a process waits for the reader to reach a record it wrote before it gives up
# with BrokerError (the server is up but the log is not being read back).
READ_BACK_TIMEOUT = 30.0
# The most one fetch asks for: Tansu 0.6 answers a fetch whose reply it cannot put
# together within the fetch's wait with nothing, so large replies under a short wait
# come back empty again and again. Smaller replies are ready in time (a record larger
# than this still comes whole: a fetch returns at least one batch).
FETCH_BYTES = 512 * 1024
# A catch-up fetches records known to exist: the server may take this long to answer,
# and answers as soon as its reply is ready.
CATCH_UP_WAIT_MS = 500
# How often the low watermarks of queues whose state changed are committed.
COMMIT_INTERVAL = 1.0


class Replayed(Protocol):
    next_offset: int
    written: dict[str, int]  # the nonces of state records read -> their offsets

    def apply(self, offset: int, headers: Sequence[tuple[str, bytes]], value: bytes | None,
              timestamp: float) -> None: ...


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    servers: str  # "host:port,host2:port"
    prefix: str  # every topic and group name of this app starts with it
    partitions: int  # of each queue topic, when this broker creates it
    fetch_wait_ms: int  # a reader's long poll: how long the server may hold an empty fetch
    timeout: float  # connecting and each request


class KafkaIO:
    """The clients and the replayed state of one process (see the module docstring)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._pid = 0
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        # Everything below is touched on self.loop only.
        self.producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._catcher: AIOKafkaConsumer | None = None  # see _catch_up
        self._catching_up = False
        self._admin: AIOKafkaAdminClient | None = None
        self._groups: dict[str, AIOKafkaConsumer] = {}  # group -> its committer
        self.states: dict[TopicPartition, Replayed] = {}
        self._partitions: dict[str, list[TopicPartition]] = {}
        self._topics: set[str] = set()
        self._changed = asyncio.Event()
        self._dirty: set[TopicPartition] = set()
        self._committed: dict[TopicPartition, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- the thread -------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the I/O loop (starting it if need be); its future."""
        loop = self._ensure_thread()
        return asyncio.run_coroutine_threadsafe(coro, loop)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the I/O loop and await it from the caller's loop."""
        return await asyncio.wrap_future(self.run(coro))

    def call_blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.run(coro).result(self.settings.timeout + READ_BACK_TIMEOUT)

    def _ensure_thread(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._pid != os.getpid() or self.loop is None or self.loop.is_closed():
                self._reset()
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                                name="celeriac-kafka")
                self._thread.start()
                self.loop, self._pid = loop, os.getpid()
            return self.loop

    def _reset(self) -> None:
        """Forget what another process (before a fork) or an earlier thread left."""
        self.producer = self._reader = self._catcher = self._admin = None
        self._catching_up = False
        self._groups, self.states, self._partitions = {}, {}, {}
        self._topics, self._dirty, self._committed, self._tasks = set(), set(), {}, []
        self._changed = asyncio.Event()

    def stop(self) -> None:
        """Close the clients and end the thread (from any thread but the I/O one)."""
        with self._lock:
            loop, thread = self.loop, self._thread
            if loop is None or loop.is_closed() or self._pid != os.getpid():
                return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(
                self.settings.timeout + 5)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        with self._lock:
            loop.close()
            self.loop = None

    # -- clients ----------------------------------------------------------------------

    async def started(self) -> None:
        """Start the producer and the admin client (on the I/O loop; once)."""
        if self.producer is not None:
            return
        try:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.servers, acks="all", linger_ms=0,
                request_timeout_ms=int(self.settings.timeout * 1000),
                max_request_size=16 * 1024 * 1024)
            admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.servers,
                                        request_timeout_ms=int(self.settings.timeout * 1000))
            await asyncio.wait_for(producer.start(), self.settings.timeout)
            await asyncio.wait_for(admin.start(), self.settings.timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
            raise self.unavailable(exc) from exc
        if self.producer is not None:  # another call started them meanwhile
            await producer.stop()
            await admin.close()
            return
        self.producer, self._admin = producer, admin
        self._tasks.append(asyncio.create_task(self._committer()))

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"Kafka at {self.settings.servers} is not reachable: "
            f"{type(exc).__name__}: {exc}")

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await self._commit_watermarks()
        for client in [self._reader, self._catcher, *self._groups.values()]:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
        self._reset()

    async def ensure_topic(self, topic: str, partitions: int) -> list[TopicPartition]:
        """Create ``topic`` if it is missing; its partitions."""
        if topic in self._partitions:
            return self._partitions[topic]
        await self.started()
        assert self._admin is not None
        assert self.producer is not None
        if topic not in self._topics:
            # Kept until deleted: an unfinished message must outlive any retention time
            # (the log is the queue; finished records are only read past).
            configs = {"retention.ms": "-1"}
            try:
                response = await self._admin.create_topics(
                    [NewTopic(topic, partitions, 1, topic_configs=configs)])
            except (KafkaError, OSError) as exc:
                raise self.unavailable(exc) from exc
            for _, code, *rest in response.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise BrokerError(f"Kafka refused to create topic {topic!r}: "
                                      f"error {code} {rest[0] if rest else ''}")
            self._topics.add(topic)
        found = await self.producer.partitions_for(topic)
        tps = [TopicPartition(topic, p) for p in sorted(found)]
        self._partitions[topic] = tps
        return tps

    async def list_topics(self) -> list[str]:
        await self.started()
        assert self._admin is not None
        try:
            return list(await self._admin.list_topics())
        except (KafkaError, OSError) as exc:
            raise self.unavailable(exc) from exc

    async def delete_topics(self, topics: Sequence[str]) -> None:
        await self.started()
        assert self._admin is not None
        if topics:
            await self._admin.delete_topics(list(topics))

    # -- writing ----------------------------------------------------------------------

    async def send(self, tp: TopicPartition,
                   records: Sequence[tuple[bytes, list[tuple[str, bytes]]]],
                   key: bytes | None = None) -> list[int]:
        """Append records to one partition, in order; their offsets once stored."""
        await self.started()
        assert self.producer is not None
        try:
            futures = [await self.producer.send(tp.topic, value, key=key,
                                                partition=tp.partition, headers=headers)
                       for value, headers in records]
            metadata = await asyncio.gather(*futures)
        except (KafkaConnectionError, KafkaTimeoutError, RequestTimedOutError,
                NodeNotReadyError, OSError) as exc:
            raise self.unavailable(exc) from exc
        except KafkaError as exc:
            raise BrokerError(f"Kafka refused a write to {tp.topic}: {exc}") from exc
        return [m.offset for m in metadata]

    async def write_state(self, tp: TopicPartition, kind: str, data: dict[str, object]) -> int:
        """Append a state record and wait until it is read back and applied here; the
        offset it has in the log.

        The record is found by a nonce of its own, not by the offset the produce reply
        named: a record is only ever applied as read from the log, so every process
        applies the same records at the same offsets, whatever a server replies.
        """
        nonce = os.urandom(8).hex()
        [reported] = await self.send(tp, [state_record(kind, {**data, "n": nonce})])
        state = self.states[tp]
        deadline = time.monotonic() + READ_BACK_TIMEOUT
        target = reported + 1
        while (offset := state.written.get(nonce)) is None:
            if time.monotonic() > deadline:
                raise BrokerError(f"Kafka: a record written to {tp.topic}[{tp.partition}] "
                                  f"was not read back within {READ_BACK_TIMEOUT:.0f}s")
            if state.next_offset < target:
                if not await self._catch_up(tp, target):
                    await self.wait_change(0.05)
            else:
                target += 1  # (the reply named an offset before the record's)
        del state.written[nonce]
        return offset

    async def read_to(self, tp: TopicPartition, offset: int) -> None:
        """Wait until every record of ``tp`` before ``offset`` is applied here."""
        deadline = time.monotonic() + READ_BACK_TIMEOUT
        while self.states[tp].next_offset < offset:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(f"Kafka: {tp.topic}[{tp.partition}] was not read back up "
                                  f"to offset {offset} within {READ_BACK_TIMEOUT:.0f}s")
            if not await self._catch_up(tp, offset):
                await self.wait_change(min(remaining, 0.05))

    async def _catch_up(self, tp: TopicPartition, offset: int) -> bool:
        """Fetch the records of ``tp`` this process has not read, up to ``offset``, at once.

        They are on the server (a record after them was stored), but the reader may be
        in a long poll the server holds for ``fetch_wait_ms`` whatever arrives (Tansu
        does); a fetch for records that exist is answered at once. One catch-up at a
        time; False when another is under way (then wait for what it reads).
        """
        if self._catching_up:
            return False
        self._catching_up = True
        try:
            if self._catcher is None:
                self._catcher = AIOKafkaConsumer(
                    bootstrap_servers=self.settings.servers, group_id=None,
                    enable_auto_commit=False, fetch_max_wait_ms=CATCH_UP_WAIT_MS,
                    max_partition_fetch_bytes=FETCH_BYTES, fetch_max_bytes=FETCH_BYTES,
                    request_timeout_ms=int(self.settings.timeout * 1000))
                try:
                    await asyncio.wait_for(self._catcher.start(), self.settings.timeout)
                except (KafkaError, OSError, TimeoutError) as exc:
                    self._catcher = None
                    raise self.unavailable(exc) from exc
            catcher, state = self._catcher, self.states[tp]
            catcher.assign([tp])
            catcher.seek(tp, state.next_offset)
            deadline = time.monotonic() + 2.0
            while state.next_offset < offset and time.monotonic() < deadline:
                batches = await catcher.getmany(tp, timeout_ms=200, max_records=5000)
                records = batches.get(tp, [])
                if records and not apply_in_order(state, records):
                    catcher.seek(tp, state.next_offset)
                if records:
                    self._dirty.add(tp)
                    self.notify()
            if self._reader is not None:  # it need not read again what was caught up
                self._reader.seek(tp, state.next_offset)
            return True
        except KafkaError:
            return False  # the reader gets there too
        finally:
            if self._catcher is not None:
                self._catcher.pause(tp)  # no background fetches between catch-ups
            self._catching_up = False

    async def sync(self, tp: TopicPartition) -> None:
        """Read everything written to ``tp`` before now (a marker record, read back)."""
        await self.write_state(tp, "s", {})

    # -- reading ----------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every wait on this loop: some state changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change of any state: take it before looking at the state."""
        return self._changed

    async def wait_change(self, timeout: float, changed: asyncio.Event | None = None) -> None:
        event = self._changed if changed is None else changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, timeout))

    async def follow(self, tps: Sequence[TopicPartition],
                     make: Callable[[int], Replayed], group: str | None) -> None:
        """Read ``tps`` from here on, each from its group's committed offset (or 0)."""
        new = [tp for tp in tps if tp not in self.states]
        if not new:
            return
        await self.started()
        committer = await self._committer_for(group, new) if group else None
        for tp in new:
            start = 0
            if committer is not None:
                try:
                    start = await committer.committed(tp) or 0
                except (KafkaError, OSError) as exc:
                    raise self.unavailable(exc) from exc
            self.states[tp] = make(start)
            self._committed[tp] = start
        await self._assign()
        # Read what is already there before anyone claims: a fetch right after a publish
        # must see it, not wait for the reader's next poll.
        await asyncio.gather(*(self.sync(tp) for tp in new))

    async def _committer_for(self, group: str, tps: Sequence[TopicPartition]) -> AIOKafkaConsumer:
        consumer = self._groups.get(group)
        if consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.servers, group_id=group,
                enable_auto_commit=False,
                request_timeout_ms=int(self.settings.timeout * 1000))
            try:
                await asyncio.wait_for(consumer.start(), self.settings.timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                raise self.unavailable(exc) from exc
            self._groups[group] = consumer
        wanted = set(consumer.assignment()) | set(tps)
        consumer.assign(sorted(wanted))
        consumer.pause(*wanted)  # it only commits; the reader fetches
        return consumer

    async def _assign(self) -> None:
        if self._reader is None:
            self._reader = AIOKafkaConsumer(
                bootstrap_servers=self.settings.servers, group_id=None,
                enable_auto_commit=False, auto_offset_reset="earliest",
                fetch_max_wait_ms=self.settings.fetch_wait_ms,
                max_partition_fetch_bytes=FETCH_BYTES, fetch_max_bytes=FETCH_BYTES,
                request_timeout_ms=int(self.settings.timeout * 1000))
            try:
                await asyncio.wait_for(self._reader.start(), self.settings.timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                self._reader = None
                raise self.unavailable(exc) from exc
            self._tasks.append(asyncio.create_task(self._read()))
        self._reader.assign(list(self.states))
        for tp, state in self.states.items():
            self._reader.seek(tp, state.next_offset)

    async def _read(self) -> None:
        """The reader: apply each record to its partition's state, in order."""
        assert self._reader is not None
        reader = self._reader
        while True:
            try:
                batches = await reader.getmany(timeout_ms=100, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception:  # a lost connection: aiokafka reconnects; look again soon
                await asyncio.sleep(0.2)
                continue
            for tp, records in batches.items():
                state = self.states.get(tp)
                if state is None or not records:
                    continue
                if not apply_in_order(state, records):
                    reader.seek(tp, state.next_offset)  # read the missing ones again
                self._dirty.add(tp)
            if batches:
                self.notify()

    # -- low watermarks ---------------------------------------------------------------

    def mark_dirty(self, tp: TopicPartition) -> None:
        self._dirty.add(tp)

    async def _committer(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            with contextlib.suppress(KafkaError, OSError):
                await self._commit_watermarks()

    async def _commit_watermarks(self) -> None:
        dirty, self._dirty = self._dirty, set()
        by_group: dict[AIOKafkaConsumer, dict[TopicPartition, int]] = {}
        for tp in dirty:
            state = self.states.get(tp)
            low = getattr(state, "low_watermark", None)
            committer = self._groups.get(group_of(self.settings.prefix, tp.topic))
            if state is None or low is None or committer is None:
                continue
            offset = low()
            if offset > self._committed.get(tp, 0):
                by_group.setdefault(committer, {})[tp] = offset
        for committer, offsets in by_group.items():
            await committer.commit(offsets)
            self._committed.update(offsets)


def apply_in_order(state: Replayed, records: Sequence[Any]) -> bool:
    """Apply fetched records from the state's next offset on; False at a gap.

    Offsets of these topics have no holes (no compaction, no transactions), so a fetch
    that skips some returned records whose neighbours the server had not yet made
    visible (Tansu does, under concurrent appends): applying past them would make this
    replay differ from every other. The caller fetches again from the gap.
    """
    for record in records:
        if record.offset < state.next_offset:
            continue
        if record.offset > state.next_offset:
            return False
        state.apply(record.offset, list(record.headers or ()), record.value,
                    record.timestamp / 1000)
    return True


def group_of(prefix: str, topic: str) -> str:
    """The consumer group of a queue topic: where its low watermark is committed."""
    return f"{topic}.group" if topic.startswith(prefix) else topic


async def gather_map(items: Sequence[T], each: Callable[[T], Awaitable[Any]]) -> list[Any]:
    return list(await asyncio.gather(*(each(item) for item in items)))


def new_state(start: int) -> PartitionState:
    return PartitionState(next_offset=start)
