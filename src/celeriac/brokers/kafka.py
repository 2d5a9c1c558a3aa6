"""The Kafka broker: ``kafka://host:9092[,host2:9092]`` on aiokafka.

A Kafka partition cannot ack out of order and a consumer group hands a partition to one
member at a time, while a task queue needs per-message leases, delivery counts and
acks. So each queue's topic holds, after its messages, the records of what happened to
them (claims, acks, requeues, extensions, dead letters, purges), and every process
replays them in log order (``kafka_log``): the first claim of a message wins, a lease
is the claim's offset and ends at the time the claim wrote, and a delivery count is the
number of claims. All of it is in the log, so it survives any crash of any worker, and
every worker may fetch from every partition: no rebalance ever moves work around.

How the contract maps onto the log:

- durability: ``publish`` returns after the server acknowledged the records (acks=all);
- a lease: a claim record (``lease_seconds``); ``extend`` appends a later deadline; a
  lease that ran out lets the next claim win, so the message is delivered again with
  its count raised; a stale receipt's ack, requeue or dead letter replays as nothing;
- at least once: a queue's consumer group commits the queue's low watermark, the oldest
  unfinished message, only after the ack records it follows from are in the log; a new
  process replays from there, so finished tasks are not run again;
- ``eta``: the message waits, unclaimable, in the log until then (readers wake for it);
- priorities: a fetch claims the highest priority first, then the oldest;
- dead letters: a dead-letter record in the queue, then the message, its reason and its
  delivery count in the ``dlq`` topic (reason and count as headers);
- ordering: one partition per queue by default, so messages are claimed in publish
  order within a priority (``partitions`` spreads a queue wider, with no order between
  partitions).

Topics and groups of an app start with the ``prefix`` transport option or URL parameter
(``kafka://host:9092?prefix=app.``; ``celeriac.`` by default):
``<prefix>q.<queue>`` per queue (other characters than letters, digits, ``.`` and ``-``
escaped), ``<prefix>q.<queue>.group`` its group, ``<prefix>dlq`` the dead letters.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from aiokafka import TopicPartition

from celeriac.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
    ScheduledMessage,
    check_outgoing,
)
from celeriac.brokers.kafka_io import KafkaIO, KafkaSettings, gather_map, group_of, new_state
from celeriac.brokers.kafka_log import (
    H_AT,
    H_ETA,
    H_ID,
    H_KEY,
    H_KIND,
    H_NONCE,
    H_PRIORITY,
    H_QUEUE,
    Message,
    PartitionState,
)
from celeriac.errors import ConfigurationError
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.bus.base import Bus

DEFAULT_PREFIX = "celeriac."
DEFAULT_FETCH_WAIT_MS = 20  # Tansu holds an empty fetch this long, not until data comes
DEFAULT_TIMEOUT = 10.0
OPTIONS = frozenset({"lease_seconds", "prefix", "partitions", "fetch_wait_ms",
                     "connection_timeout"})


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery: the message's place in the log and the offset of the claim."""

    topic: str
    partition: int
    offset: int
    lease: int


def settings_from(url: str, options: Mapping[str, Any]) -> KafkaSettings:
    """Read and check the URL and the transport options, naming what is wrong."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    unknown_query = set(query) - {"prefix", "partitions", "fetch_wait_ms"}
    if unknown_query:
        raise ConfigurationError(f"kafka broker URL {safe_url(url)!r}: unknown parameter(s) "
                                 f"{sorted(unknown_query)}; known: prefix, partitions, "
                                 "fetch_wait_ms")
    options = {**options, **{k: (v if k == "prefix" else _int(k, v)) for k, v in query.items()}}
    hosts = [h for h in netloc.split(",") if h]
    if not hosts:
        raise ConfigurationError(f"kafka broker URL {safe_url(url)!r} names no host: "
                                 "use kafka://host:9092[,host2:9092]")
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigurationError(f"kafka broker URL {safe_url(url)!r}: {host!r} is not "
                                     "host:port")
    unknown = set(options) - OPTIONS - {"pool_limit", "heartbeat"}
    if unknown:
        raise ConfigurationError(f"kafka broker: unknown transport option(s) "
                                 f"{sorted(unknown)}; known: {sorted(OPTIONS)}")
    prefix = options.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not all(c.isascii() and (c.isalnum() or c in "._-")
                                              for c in prefix):
        raise ConfigurationError(f"kafka transport option prefix={prefix!r}: only letters, "
                                 "digits, '.', '_' and '-'")
    partitions = options.get("partitions", 1)
    if type(partitions) is not int or partitions < 1:
        raise ConfigurationError(f"kafka transport option partitions={partitions!r}: "
                                 "an int of at least 1")
    wait = options.get("fetch_wait_ms", DEFAULT_FETCH_WAIT_MS)
    if type(wait) is not int or not 1 <= wait <= 30000:
        raise ConfigurationError(f"kafka transport option fetch_wait_ms={wait!r}: "
                                 "an int 1-30000")
    timeout = options.get("connection_timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or not timeout > 0:
        raise ConfigurationError(f"kafka transport option connection_timeout={timeout!r}: "
                                 "seconds, more than 0")
    return KafkaSettings(",".join(hosts), prefix, partitions, wait, float(timeout))


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"kafka broker URL: {name}={value!r} is not an integer") from None


def topic_name(prefix: str, queue: str) -> str:
    """The topic of a queue: Kafka allows letters, digits, '.', '_' and '-' only, so
    every other character (and '_', the escape) is written as _XX per UTF-8 byte."""
    out = []
    for char in queue:
        if char.isascii() and (char.isalnum() or char in ".-"):
            out.append(char)
        else:
            out.extend(f"_{byte:02x}" for byte in char.encode())
    return f"{prefix}q.{''.join(out)}"


def queue_name(prefix: str, topic: str) -> str | None:
    """The queue of a topic made by ``topic_name``, or None for another topic."""
    head = f"{prefix}q."
    if not topic.startswith(head) or topic.endswith(".group"):
        return None
    raw = topic[len(head):]
    data = bytearray()
    n = 0
    while n < len(raw):
        if raw[n] == "_":
            try:
                data.append(int(raw[n + 1:n + 3], 16))
            except ValueError:
                return None
            n += 3
        else:
            data.extend(raw[n].encode())
            n += 1
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


class DeadLetterLog:
    """The ``dlq`` topic replayed: entries, removals (``rm``) and clears (``clr``)."""

    def __init__(self, start: int) -> None:
        self.next_offset = start
        self.entries: dict[str, DeadLetter] = {}  # by message id, oldest first
        self.written: dict[str, int] = {}  # sync markers' nonces -> offsets

    def apply(self, offset: int, headers: Sequence[tuple[str, bytes]], value: bytes | None,
              timestamp: float) -> None:
        if offset < self.next_offset:
            return
        self.next_offset = offset + 1
        head = {key: raw for key, raw in headers}
        kind = head.get(H_KIND, b"")
        try:
            if kind == b"dl":
                id_ = head[H_ID].decode()
                self.entries.pop(id_, None)
                count = head.get("count")
                self.entries[id_] = DeadLetter(
                    id_, head[H_QUEUE].decode(), value or b"", head["reason"].decode(),
                    float(head[H_AT]), int(count) if count else None)
            elif kind == b"rm":
                for id_ in (value or b"").decode().split("\n"):
                    self.entries.pop(id_, None)
            elif kind == b"clr":
                self.entries.clear()
            elif kind == b"s":
                nonce = json.loads(value or b"{}").get("n")
                if isinstance(nonce, str):
                    self.written[nonce] = offset
        except (KeyError, ValueError, AttributeError):
            pass  # not one of ours: nothing to list


class KafkaBroker(Broker):
    """Queues as Kafka topics whose own records carry the leases (see the docstring)."""

    scheme = "kafka"
    supports_delay = True
    supports_priority = True
    supports_blocking_publish = True  # sent on the broker's own I/O thread
    supports_partition_key = True

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.settings = settings_from(url, self.options)
        self._io = KafkaIO(self.settings)
        self._dlq = TopicPartition(f"{self.settings.prefix}dlq", 0)
        self._rotation = 0

    # -- connections --------------------------------------------------------------------

    async def connect(self) -> None:
        await self._io.call(self._io.started())

    async def close(self) -> None:
        await asyncio.to_thread(self._io.stop)  # the I/O thread's clients close there

    def close_blocking(self) -> None:
        self._io.stop()

    # -- publish --------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if messages:
            check_outgoing(messages)
            await self._io.call(self._publish(messages))

    def publish_blocking(self, messages: Sequence[Outgoing]) -> None:
        if messages:
            check_outgoing(messages)
            self._io.call_blocking(self._publish(messages))

    async def _publish(self, messages: Sequence[Outgoing]) -> None:
        now = time.time()
        by_tp: dict[TopicPartition, list[tuple[bytes, list[tuple[str, bytes]]]]] = {}
        for out in messages:
            tps = await self._topic(out.queue)
            if out.key is not None:  # one partition per key: its order is that log's
                tp = tps[zlib.crc32(out.key.encode()) % len(tps)]
            else:
                self._rotation += 1
                tp = tps[self._rotation % len(tps)]
            headers = [(H_KIND, b"m"), (H_ID, out.id.encode()), (H_QUEUE, out.queue.encode()),
                       (H_PRIORITY, str(out.priority).encode()), (H_AT, repr(now).encode()),
                       (H_NONCE, os.urandom(8).hex().encode())]
            if out.eta is not None and out.eta > now:
                headers.append((H_ETA, repr(float(out.eta)).encode()))
            if out.key is not None:
                headers.append((H_KEY, out.key.encode()))
            by_tp.setdefault(tp, []).append((out.body, headers))
        await gather_map(list(by_tp.items()), lambda item: self._io.send(*item))

    async def _topic(self, queue: str) -> list[TopicPartition]:
        return await self._io.ensure_topic(topic_name(self.settings.prefix, queue),
                                           self.settings.partitions)

    async def _follow(self, queue: str) -> list[TopicPartition]:
        tps = await self._topic(queue)
        await self._io.follow(tps, new_state, group_of(self.settings.prefix, tps[0].topic))
        return tps

    # -- fetch ----------------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        return await self._io.call(self._fetch(list(queues), limit, timeout))

    async def _fetch(self, queues: list[str], limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        tps_of = {queue: await self._follow(queue) for queue in dict.fromkeys(queues)}
        while True:
            changed = self._io.changed  # taken before looking: a change meanwhile wakes us
            taken, raced = await self._claim(queues, tps_of, limit)
            if taken or limit <= 0:
                return taken
            if raced:
                continue  # others' claims won, and are read now: look at what is left
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            timers = [t for tps in tps_of.values() for tp in tps
                      if (t := self._state(tp).next_timer()) is not None]
            if timers:
                remaining = min(remaining, max(0.001, min(timers) - time.time()))
            await self._io.wait_change(remaining, changed)

    def _state(self, tp: TopicPartition) -> Any:
        return self._io.states[tp]

    async def _claim(self, queues: list[str], tps_of: dict[str, list[TopicPartition]],
                     limit: int) -> tuple[list[Delivery], bool]:
        """What this fetch won, and whether it lost any race for a message."""
        taken: list[Delivery] = []
        raced = False
        for queue in dict.fromkeys(queues):
            want = limit - len(taken)
            if want <= 0:
                break
            now = time.time()
            found: list[tuple[TopicPartition, Message]] = []
            for tp in tps_of[queue]:
                found += [(tp, m) for m in self._state(tp).pick(want, now) if m.queue == queue]
            # Higher priority first; then log order in one partition, the publishers'
            # clocks between partitions (their logs have no order between them).
            wide = len(tps_of[queue]) > 1
            found.sort(key=lambda item: (-item[1].priority,
                                         item[1].published_at if wide else 0.0,
                                         item[1].offset))
            found = found[:want]
            chosen: dict[TopicPartition, list[Message]] = {}
            for tp, message in found:
                chosen.setdefault(tp, []).append(message)
            results = await asyncio.gather(
                *(self._claim_in(tp, batch, now) for tp, batch in chosen.items()))
            place = {(tp.partition, m.offset): n for n, (tp, m) in enumerate(found)}
            got = sorted((d for part in results for d in part),
                         key=lambda d: place[(d.receipt.partition, d.receipt.offset)])
            raced = raced or len(got) < len(found)
            taken += got
        return taken, raced

    async def _claim_in(self, tp: TopicPartition, messages: list[Message],
                        now: float) -> list[Delivery]:
        state = self._state(tp)
        offsets = [m.offset for m in messages]
        state.pending.update(offsets)
        try:
            claim = await self._io.write_state(tp, "c", {
                "at": now, "until": now + self.lease_seconds, "o": offsets})
        finally:
            state.pending.difference_update(offsets)
        outcome = state.outcomes.pop(claim, None)
        if outcome is None:
            return []
        return [Delivery(m.id, m.queue, m.body, m.priority, m.count,
                         Receipt(tp.topic, tp.partition, m.offset, claim), m.problem)
                for m, ok in zip(messages, outcome.valid, strict=True) if ok]

    # -- outcomes -------------------------------------------------------------------------

    async def _settle(self, kind: str, deliveries: Sequence[Delivery],
                      extra: dict[str, object] | None = None) -> dict[Receipt, Any]:
        """Append one ``kind`` record per partition; each receipt's outcome there."""
        by_tp: dict[TopicPartition, list[Receipt]] = {}
        for delivery in deliveries:
            receipt = _receipt(delivery)
            by_tp.setdefault(TopicPartition(receipt.topic, receipt.partition),
                             []).append(receipt)

        async def one(item: tuple[TopicPartition, list[Receipt]]) -> dict[Receipt, Any]:
            tp, receipts = item
            await self._io.follow([tp], new_state, group_of(self.settings.prefix, tp.topic))
            data: dict[str, object] = {"at": time.time(),
                                       "o": [[r.offset, r.lease] for r in receipts]}
            data.update(extra or {})
            offset = await self._io.write_state(tp, kind, data)
            self._io.mark_dirty(tp)
            outcome = self._state(tp).outcomes.pop(offset, None)
            valid = outcome.valid if outcome is not None else [False] * len(receipts)
            dead = {m.offset: m for m in outcome.dead} if outcome is not None else {}
            return {r: (ok, dead.get(r.offset)) for r, ok in zip(receipts, valid, strict=True)}

        merged: dict[Receipt, Any] = {}
        for part in await gather_map(list(by_tp.items()), one):
            merged.update(part)
        return merged

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._io.call(self._settle("a", deliveries))

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._io.call(self._settle("r", deliveries))

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []
        outcome = await self._io.call(self._settle(
            "x", deliveries, {"until": time.time() + self.lease_seconds}))
        return [bool(outcome[_receipt(d)][0]) for d in deliveries]

    def holds(self, delivery: Delivery) -> bool:
        receipt = _receipt(delivery)
        state = self._io.states.get(TopicPartition(receipt.topic, receipt.partition))
        return not isinstance(state, PartitionState) or state.held(
            receipt.offset, receipt.lease, time.time())

    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        if deliveries:
            await self._io.call(self._dead_letter(deliveries))

    async def _dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        # Filed first, then taken out of the queue: a crash in between leaves the message
        # in both places (at least once), never in neither. A filing whose delivery
        # turned out not to be ours any more (a stale receipt) is withdrawn.
        await self._io.ensure_topic(self._dlq.topic, 1)
        now = time.time()
        await self._io.send(self._dlq, [(delivery.body, [
            (H_KIND, b"dl"), (H_ID, delivery.id.encode()), (H_QUEUE, delivery.queue.encode()),
            ("reason", reason.encode()), (H_AT, repr(now).encode()),
            ("count", str(delivery.delivery_count).encode())])
            for delivery, reason in deliveries])
        outcome = await self._settle("d", [d for d, _ in deliveries])
        stale = [d.id for d, _ in deliveries if not outcome[_receipt(d)][0]]
        if stale:
            await self._io.send(self._dlq, [("\n".join(stale).encode(), [(H_KIND, b"rm")])])

    # -- looking and cleaning -------------------------------------------------------------

    async def _queues(self) -> list[str]:
        names = [queue_name(self.settings.prefix, t) for t in await self._io.list_topics()]
        return sorted(n for n in names if n is not None)

    async def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        return await self._io.call(self._queue_stats(queues))

    async def _queue_stats(self, queues: Sequence[str] | None) -> list[QueueStats]:
        known = await self._queues()
        names = list(queues) if queues is not None else known
        stats = []
        for name in names:
            if name not in known:
                stats.append(QueueStats(name, 0, 0, 0))
                continue
            tps = await self._follow(name)
            await gather_map(tps, self._io.sync)
            now = time.time()
            ready = scheduled = held = 0
            ages: list[float] = []
            for tp in tps:
                r, s, h, age = self._state(tp).counts(name, now)
                ready, scheduled, held = ready + r, scheduled + s, held + h
                if age is not None:
                    ages.append(age)
            stats.append(QueueStats(name, ready, scheduled, held,
                                    oldest_age=max(ages) if ages and ready else None))
        return stats

    async def purge(self, queues: Sequence[str]) -> int:
        return await self._io.call(self._purge(queues)) if queues else 0

    async def _purge(self, queues: Sequence[str]) -> int:
        known = await self._queues()
        total = 0
        for name in dict.fromkeys(queues):
            if name not in known:
                continue
            for tp in await self._follow(name):
                offset = await self._io.write_state(tp, "p", {"at": time.time()})
                self._io.mark_dirty(tp)
                outcome = self._state(tp).outcomes.pop(offset, None)
                total += outcome.count if outcome is not None else 0
        return total

    async def _dead_log(self) -> DeadLetterLog:
        await self._io.ensure_topic(self._dlq.topic, 1)
        await self._io.follow([self._dlq], DeadLetterLog, None)
        await self._io.sync(self._dlq)
        log: DeadLetterLog = self._io.states[self._dlq]  # type: ignore[assignment]
        return log

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        async def listed() -> list[DeadLetter]:
            entries = list((await self._dead_log()).entries.values())
            return entries[::-1][:limit]
        return await self._io.call(listed())

    async def purge_dead_letters(self) -> int:
        async def purged() -> int:
            count = len((await self._dead_log()).entries)
            await self._io.send(self._dlq, [(b"", [(H_KIND, b"clr")])])
            return count
        return await self._io.call(purged())

    async def remove_dead_letters(self, ids: Collection[str]) -> int:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0

        async def removed() -> int:
            present = [i for i in wanted if i in (await self._dead_log()).entries]
            if present:
                await self._io.send(self._dlq, [("\n".join(present).encode(),
                                                 [(H_KIND, b"rm")])])
            return len(present)
        return await self._io.call(removed())

    async def scheduled(self, limit: int = 100) -> list[ScheduledMessage]:
        async def listed() -> list[ScheduledMessage]:
            found: list[ScheduledMessage] = []
            for name in await self._queues():
                tps = await self._follow(name)
                await gather_map(tps, self._io.sync)
                now = time.time()
                found += [ScheduledMessage(m.id, m.queue, m.body, m.eta)
                          for tp in tps for m in self._state(tp).scheduled(now)]
            found.sort(key=lambda s: s.eta)
            return found[:limit]
        return await self._io.call(listed())

    async def delete_topics(self) -> None:
        """Delete every topic of this broker's prefix (tests' clean-up)."""
        async def deleted() -> None:
            topics = [t for t in await self._io.list_topics()
                      if t.startswith(self.settings.prefix)]
            await self._io.delete_topics(topics)
        await self._io.call(deleted())

    def bus(self) -> Bus:
        raise NotImplementedError(
            "the kafka broker carries no event or control topics of its own: events and "
            "remote control travel on the result backend's server")


def _receipt(delivery: Delivery) -> Receipt:
    if not isinstance(delivery.receipt, Receipt):
        raise TypeError(f"delivery {delivery.id!r} did not come from a kafka broker")
    return delivery.receipt


