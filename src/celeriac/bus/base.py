"""Topics: the broadcast logs that events and remote control travel on.

A topic is an append-only log kept on the broker's own server (no extra service to run),
with bounded retention: any number of processes append records to it, any number of
readers tail it independently, each from its own position, and a reader that starts late
can read back what is still retained (``since``). Three topics exist:

- ``events``: what workers (and, with ``task_send_sent_event``, producers) report
  (``celeriac.events``); kept for minutes so that a monitor that starts late catches up;
- ``control``: requests to workers (``celeriac.control``), read from "now" by every live
  worker; kept briefly;
- ``replies``: the workers' answers, read by the client that asked; kept briefly.

Each broker carries them in its own way (``Broker.bus()``): a capped Redis Stream per
topic, a RabbitMQ stream queue per topic, a table in the SQLite file or PostgreSQL
schema, a list in memory. Brokers with no cheap broadcast log (SQS, Kafka) leave them to
the result backend's server (``ResultBackend.bus()``, chosen by ``App.bus()``).
Records are opaque bytes: what they mean is the business of the modules above.

The contract, which ``tests/contract/test_bus_contract.py`` holds every bus to:

- ``subscribe`` returns once the reader's position is fixed: every record published
  after it returns is read by that subscription, in the order each publisher published
  them (records of different publishers may interleave);
- ``since=t`` starts at the first retained record stored at or after ``t`` (Unix time);
  ``since=None`` starts after the last record stored when ``subscribe`` returned;
- one ``publish`` call of several records is one round trip to the server;
- nothing a reader does affects another reader, or the publishers.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

EVENTS = "events"
CONTROL = "control"
REPLIES = "replies"


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a topic the server keeps: records younger than ``max_age`` seconds,
    at most about ``max_records`` of them and about ``max_bytes`` of payload (a bus may
    trim lazily and approximately, never below the first two that apply).

    The byte bound is what protects the server: event records are batches whose size
    grows with the task rate, so a count alone would let a busy cluster's events fill a
    Redis server that the broker itself needs (and that must not evict)."""

    max_age: float
    max_records: int
    max_bytes: int

    def record_limit(self, average_bytes: float) -> int:
        """The records to keep for records of ``average_bytes`` (see ``RecordSizes``)."""
        by_size = int(self.max_bytes // max(average_bytes, 1.0))
        return max(MIN_RECORDS, min(self.max_records, by_size))


MIN_RECORDS = 16  # kept whatever their size, so a monitor always has a little history
MIB = 1024 * 1024

RETENTION: dict[str, Retention] = {
    # The newest 10 minutes of events, or 64 MiB of them at a high task rate.
    EVENTS: Retention(max_age=600.0, max_records=100_000, max_bytes=64 * MIB),
    CONTROL: Retention(max_age=60.0, max_records=1_000, max_bytes=4 * MIB),
    REPLIES: Retention(max_age=60.0, max_records=10_000, max_bytes=16 * MIB),
}


class RecordSizes:
    """A publisher's running average of its record sizes per topic, from which a bus
    that trims by count derives the count that keeps a topic within ``max_bytes``."""

    WEIGHT = 0.1  # of the newest record in the average

    def __init__(self) -> None:
        self._average: dict[str, float] = {}

    def limit(self, topic: str, payloads: Sequence[bytes]) -> int:
        """Note ``payloads`` (about to be published) and return ``topic``'s record limit."""
        average = self._average.get(topic)
        for payload in payloads:
            size = float(len(payload))
            average = size if average is None else average + self.WEIGHT * (size - average)
        if average is None:
            return RETENTION[topic].max_records
        self._average[topic] = average
        return RETENTION[topic].record_limit(average)


class TrimSchedule:
    """When a publisher that trims with a DELETE (the SQLite and PostgreSQL buses) trims
    a topic: once ``interval`` seconds passed, or a quarter of the topic's records (at
    most ``every``) or of its bytes were published since its last trim. A DELETE per
    publish would cost more than the publish."""

    def __init__(self, interval: float = 1.0, every: int = 10_000) -> None:
        self.interval = interval
        self.every = every
        self._trimmed_at = {topic: 0.0 for topic in RETENTION}  # monotonic time
        self._records = {topic: 0 for topic in RETENTION}  # published since the trim
        self._bytes = {topic: 0 for topic in RETENTION}  # and their bytes

    def due(self, topic: str, payloads: Sequence[bytes]) -> bool:
        """Note ``payloads`` (about to be published); whether to trim ``topic`` with them."""
        self._records[topic] += len(payloads)
        self._bytes[topic] += sum(len(p) for p in payloads)
        clock = time.monotonic()
        retention = RETENTION[topic]
        if clock - self._trimmed_at[topic] < self.interval \
                and self._records[topic] < min(self.every, max(retention.max_records // 4, 1)) \
                and self._bytes[topic] < retention.max_bytes // 4:
            return False
        self._trimmed_at[topic] = clock
        self._records[topic] = self._bytes[topic] = 0
        return True


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a topic, as a reader receives it."""

    at: float  # when the server stored it (Unix time; the publisher's clock on SQLite)
    payload: bytes


class Subscription(ABC):
    """One reader's position in one topic."""

    @abstractmethod
    async def read(self, timeout: float) -> list[Record]:
        """The records after this reader's position (advancing it), waiting up to
        ``timeout`` seconds for one to arrive; ``[]`` when none did."""

    @abstractmethod
    async def close(self) -> None:
        """Stop reading; frees whatever the server keeps for this reader."""


class Bus(ABC):
    """The topics on one broker's server. Open with ``connect``, end with ``close``."""

    scheme: str = ""

    async def connect(self) -> None:
        """Reach the server (the first publish or subscribe does it otherwise)."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection and subscription of this bus."""

    @abstractmethod
    async def publish(self, topic: str, payloads: Sequence[bytes]) -> None:
        """Append ``payloads`` to ``topic``, in order, in one round trip."""

    @abstractmethod
    async def subscribe(self, topic: str, since: float | None = None) -> Subscription:
        """A reader of ``topic`` from ``since`` (see the module's contract)."""


def check_topic(topic: str) -> None:
    if topic not in RETENTION:
        raise ValueError(f"unknown topic {topic!r}; topics: {', '.join(RETENTION)}")
