"""The broker interface: bytes in, bytes out, over one small async API.

A broker moves opaque message bodies between producers and workers. It knows nothing
of tasks or serializers; the layers above encode and decode. Each implementation is
one module; what it can do natively is declared as capability flags, never emulated.

Delivery semantics every implementation provides:

- ``fetch`` leases what it returns for ``lease_seconds``. A leased message is handed to
  nobody else until the lease ends. A live worker calls ``extend`` to keep its leases;
  a dead worker's leases run out and its messages are delivered again.
- Each delivery carries ``delivery_count`` (1 the first time), which the worker uses
  to dead-letter a message that keeps killing workers.
- ``ack``, ``extend``, ``requeue`` and ``dead_letter`` act on a delivery only while no
  other delivery of the same message has been made: a worker whose lease ran out
  (paused, partitioned) cannot ack over the worker that took the message over. A lease
  that ran out but whose message nobody fetched again may still be acked, requeued or
  dead-lettered; ``extend`` reports it as lost.
- A message published with ``eta`` waits in the broker, not in a worker, until then.
- Higher ``priority`` (0-9) comes out first; equal priorities come out oldest first.
- A stored message whose broker-level fields cannot be read never stops a fetch: it is
  returned as a ``Delivery`` with ``problem`` set (or dead-lettered by the broker
  itself), and everything behind it is fetched as usual.
- ``publish`` refuses (TypeError/ValueError, nothing stored) messages whose fields are
  not what ``Outgoing`` says (``check_outgoing``), so no such message is ever stored.

A broker object may be used from several event loops in different threads (the
worker's loop, and the app's bridge loop for sync producers); implementations keep
per-thread or per-loop connections, or lock, as their client library needs.

Sync producers: a broker whose client library can publish without an event loop
declares ``supports_blocking_publish`` and implements ``publish_blocking``, with the
same semantics and errors as ``publish``; the app then sends from a sync caller's own
thread in one round trip. Other brokers are driven through the app's bridge loop.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from celeriac.brokers.buckets import TokenBuckets
    from celeriac.bus.base import Bus

MIN_PRIORITY = 0
MAX_PRIORITY = 9
# The message header that carries apply_async's partition_key, so that a retry (a new
# message built from the old one) keeps its key and its place in the key's order.
PARTITION_KEY_HEADER = "celeriac-partition-key"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish: its id, destination queue, body and scheduling."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta: float | None = None  # Unix time; None or a past time means now
    # apply_async(partition_key=...): messages of one key are delivered one at a time, in
    # publish order. Only brokers that declare ``supports_partition_key`` are given one.
    key: str | None = None


def check_outgoing(messages: Sequence[Outgoing]) -> None:
    """Raise TypeError/ValueError, naming the message and field, unless every one is sound.

    Brokers call this before storing anything, so that a batch is published whole or
    not at all and no stored message has a field a fetch cannot read.
    """
    for out in messages:
        if type(out.id) is not str or not out.id:
            raise TypeError(f"message id must be a non-empty str, not {out.id!r}")
        if type(out.queue) is not str or not out.queue:
            raise TypeError(f"message {out.id}: queue must be a non-empty str, "
                            f"not {out.queue!r}")
        if not (out.id.isascii() and out.queue.isascii()):
            _check_text(out.id, "id", out.id)
            _check_text(out.queue, "queue", out.id)
        if not isinstance(out.body, bytes):
            raise TypeError(f"message {out.id}: body must be bytes, "
                            f"not {type(out.body).__name__}")
        if type(out.priority) is not int or not MIN_PRIORITY <= out.priority <= MAX_PRIORITY:
            raise ValueError(f"message {out.id}: priority must be an int "
                             f"{MIN_PRIORITY}-{MAX_PRIORITY}, not {out.priority!r}")
        if out.key is not None:
            if type(out.key) is not str or not out.key:
                raise TypeError(f"message {out.id}: key must be a non-empty str or None, "
                                f"not {out.key!r}")
            _check_text(out.key, "key", out.id)
        eta = out.eta
        if eta is not None and ((type(eta) is not float and type(eta) is not int)
                                or not math.isfinite(eta)):
            raise ValueError(f"message {out.id}: eta must be a finite Unix time or None, "
                             f"not {eta!r}")


def _check_text(value: str, name: str, message_id: str) -> None:
    """Text every server can store: UTF-8, so no lone surrogates."""
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"message {message_id!r}: {name} is not valid text "
                         f"({exc.reason} at {exc.start})") from None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed to a worker under a lease."""

    id: str
    queue: str
    body: bytes
    priority: int
    delivery_count: int
    receipt: Any  # the broker's handle for this one delivery (row + lease, stream id, tag)
    # Set when the broker could not read this delivery's own fields (an id that is not
    # text, a priority that is not a number): what is wrong, naming the field. The worker
    # then dead-letters it with this reason instead of running it, and the broker must
    # accept the delivery in ``dead_letter`` (its receipt is valid). The other fields
    # then hold readable stand-ins.
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    ready: int  # waiting to be fetched now
    scheduled: int  # waiting for an ETA or countdown
    in_flight: int  # leased to a worker
    # Seconds the oldest ready message has waited (since it was published, or came due):
    # the latency users feel. None when nothing is ready or the broker cannot tell.
    # Not compared: two readings of a queue are equal when their counts are, however
    # much time passed between them.
    oldest_age: float | None = field(default=None, compare=False)
    # Dead letters of this queue, when the broker can count them cheaply; else None.
    dead_letters: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    queue: str
    body: bytes
    reason: str
    dead_at: float
    # How many times it was delivered before it died, where the broker keeps that.
    delivery_count: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ScheduledMessage:
    """A message waiting in the broker for its eta (countdown or ETA)."""

    id: str
    queue: str
    body: bytes
    eta: float  # Unix time it comes due


class Broker(ABC):
    """The interface every broker implements. See the module docstring for semantics."""

    scheme: ClassVar[str]
    supports_delay: ClassVar[bool] = False
    supports_priority: ClassVar[bool] = False
    # Keeps token buckets on its server, so rate limits hold across all workers.
    supports_rate_limit: ClassVar[bool] = False
    # Declares queues as task_queues says (durable or transient, classic or quorum),
    # given as the "queues" transport option: {name: {"durable": bool, "type": str}}.
    supports_queue_options: ClassVar[bool] = False
    # Implements publish_blocking: sync callers publish without an event loop.
    supports_blocking_publish: ClassVar[bool] = False
    # Enforces task_delivery_limit on the server too (RabbitMQ quorum queues), given as
    # the "delivery_limit" transport option; the worker's own check stays the rule.
    supports_delivery_limit: ClassVar[bool] = False
    # Honours Outgoing.key (apply_async's partition_key): one at a time per key, in order.
    supports_partition_key: ClassVar[bool] = False
    # Transport options the app fills from Celery's broker_* settings when they are set
    # (pool_limit from broker_pool_limit, heartbeat from broker_heartbeat).
    setting_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        self.lease_seconds = float(self.options.get("lease_seconds", 10.0))

    async def connect(self) -> None:
        """Open connections and create storage. Safe to call more than once."""

    async def close(self) -> None:
        """Release connections. The broker may be connected again later."""

    @abstractmethod
    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store the messages durably (as the broker defines it) before returning."""

    def publish_blocking(self, messages: Sequence[Outgoing]) -> None:
        """``publish`` for a sync caller, in its own thread (``supports_blocking_publish``).

        Safe to call from many threads at once; raises what ``publish`` raises
        (BrokerUnavailable within the connection timeout for a server that is down).
        """
        raise NotImplementedError(f"{type(self).__name__} has no blocking publish")

    def close_blocking(self) -> None:
        """Release what ``publish_blocking`` opened in this process. Safe to call always."""

    @abstractmethod
    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages, earlier queues first.

        Waits up to ``timeout`` seconds for the first one; returns an empty list when
        none arrived in that time.
        """

    async def stop_consuming(self, queues: Sequence[str]) -> None:
        """The caller will not fetch from ``queues`` any more (``cancel_consumer``): a
        broker that pushes messages ahead of ``fetch`` (RabbitMQ's consumers) stops and
        hands back what it buffered from them. Brokers that fetch on demand need nothing."""

    @abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove the messages for good. Deliveries whose lease was lost are ignored."""

    @abstractmethod
    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Hand unstarted deliveries back at once; they do not count as delivered."""

    def holds(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` is still this process's, as far as it knows without I/O.

        A consumer asks before starting a prefetched delivery: False (its connection was
        lost, its lease ran out) is certain, and the delivery is dropped, not started,
        because another consumer has it now. True is no promise (``extend`` asks the
        server). Brokers whose leases live on the server only answer True.
        """
        return True

    @abstractmethod
    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Renew the leases; for each delivery, whether its lease is still this one's."""

    @abstractmethod
    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        """Move each delivery out of its queue into the dead letters, with its reason."""

    @abstractmethod
    async def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        """Counts for the named queues, or for every queue the broker knows."""

    @abstractmethod
    async def purge(self, queues: Sequence[str]) -> int:
        """Delete every waiting message (ready and scheduled) of the queues; return how many."""

    @abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""

    async def purge_dead_letters(self) -> int:
        """Delete every dead letter; return how many. Optional."""
        raise NotImplementedError(f"{type(self).__name__} cannot purge dead letters")

    async def remove_dead_letters(self, ids: Collection[str]) -> int:
        """Delete the dead letters of these message ids; return how many. Optional.

        Requeueing a dead letter publishes its body again first, then removes it: a
        failure in between leaves it in both places (at least once), never in neither.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot remove dead letters")

    async def scheduled(self, limit: int = 100) -> list[ScheduledMessage]:
        """The messages waiting for their eta, soonest first, at most ``limit``. Optional:
        a broker that cannot look at them without taking them (RabbitMQ's delay queues)
        raises NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} cannot list scheduled messages")

    def token_buckets(self) -> TokenBuckets | None:
        """Rate-limit buckets on this broker's server (``supports_rate_limit``), else None."""
        return None

    def bus(self) -> Bus:
        """A new ``Bus`` on this broker's server, with connections of its own: the topics
        that events and remote control travel on (``celeriac.bus``). The caller connects
        it on its own event loop and closes it."""
        raise NotImplementedError(f"{type(self).__name__} carries no event or control topics")
