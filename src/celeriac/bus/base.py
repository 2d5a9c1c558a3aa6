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
topic, a RabbitMQ stream queue per topic, a table in the SQLite file, a list in memory.
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

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

EVENTS = "events"
CONTROL = "control"
REPLIES = "replies"


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a topic the server keeps: records younger than ``max_age`` seconds,
    at most about ``max_records`` of them (a bus may trim lazily, never below either)."""

    max_age: float
    max_records: int


RETENTION: dict[str, Retention] = {
    EVENTS: Retention(max_age=600.0, max_records=100_000),
    CONTROL: Retention(max_age=60.0, max_records=1_000),
    REPLIES: Retention(max_age=60.0, max_records=10_000),
}


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
