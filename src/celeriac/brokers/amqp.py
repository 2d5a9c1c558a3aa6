"""The RabbitMQ broker (AMQP 0-9-1): ``amqp://user:pass@host:5672/vhost`` and ``amqps://``.

Built on **aiormq** (requirement: ``aiormq>=7.2,<8``), the asyncio AMQP client that
aio-pika itself is built on. aio-pika adds objects per message and a "robust" connection
that silently restores channels and consumers; this broker needs the opposite: to know
exactly which channel a delivery tag belongs to, so that a tag from a lost channel is
treated as stale (the lease rule) rather than acked on a new channel where it means
another message. The thinner client is also faster per message. The hottest path,
consuming and acking, does not use aiormq at all: it runs on a connection of its own
that celeriac reads itself (``amqp_wire``), at a fraction of the CPU per delivery.

URL query options: ``heartbeat`` (seconds, default 10; a consumer connection uses at most
half of ``lease_seconds``, see *Leases*), ``namespace`` (a prefix for every
queue and exchange name), and aiormq's TLS options for ``amqps://`` (``cafile``,
``certfile``, ``keyfile``, ``no_verify_ssl``). ``broker_transport_options``:
``transient_queues`` / ``quorum_queues`` (lists of queue names), ``queues``
(``{name: {"durable": bool, "type": "classic" | "quorum"}}``), ``default_queue_type``,
``namespace``, ``heartbeat``, ``connection_timeout`` (seconds to open a connection; also
read as ``connect_timeout``, its older name), ``publish_timeout``, ``lease_seconds``,
``delivery_limit`` (the app fills it from ``task_delivery_limit``) and
``quorum_delivery_limit`` (False: quorum queues declared without RabbitMQ's limit).

How the ``Broker`` contract maps onto RabbitMQ
----------------------------------------------

*Publish*: every message is published ``mandatory`` on a confirm-mode channel and
``publish`` returns only once RabbitMQ has confirmed all of them. Lost connections are
retried within ``publish_timeout``; after that ``BrokerUnavailable`` is raised. A message
is never dropped silently (it may be stored twice when a confirm is lost: at least once).

*Sync producers* (``publish_blocking``, ``supports_blocking_publish``): ``delay()`` from
a plain thread publishes on a pooled blocking socket of its own (``amqp_blocking``),
with the same confirms, retries and errors, instead of hopping to the app's bridge
loop; queues are still declared by the ``Link`` code, on a private loop, once.

*Queues*: each queue has a ``QueueSpec`` (``amqp_topology``): by default durable, with
persistent messages, ``x-max-priority=10`` and classic queue storage version 2 (it
confirms persistent messages several times sooner than version 1). A **transient**
queue is declared ``durable=False`` and its messages ``delivery_mode=1``: RabbitMQ keeps
them in memory only, and a broker restart deletes the queue and every message in it
(tested). A **quorum** queue is replicated and durable, but RabbitMQ quorum queues have
**no priorities**: their messages come out oldest first whatever their priority. It is
declared with RabbitMQ's own delivery limit and at-least-once dead-lettering
(``Topology.work_queue_arguments``; ``x-overflow=reject-publish``, so a publish to one
at a length limit is nacked: ``publish`` raises ``BrokerError`` saying it is full, at
once). A quorum queue declared before celeriac set these arguments cannot be
redeclared (RabbitMQ answers PRECONDITION_FAILED): the error says how to migrate.

*Fetch*: a ``basic.consume`` per queue on the link's consumer channel, with
``basic.qos`` prefetch = deliveries held + ``limit`` (the worker's budget, which
changes with how quick its tasks are): up when that target grows, down when it falls to
a quarter; above 32 it is rounded up to a power of two, since a change restarts the
consumers. Deliveries land in a per-queue heap, by
priority and then first-publish time, and ``fetch`` takes from the heaps in the order
the queues were named. Nothing polls: an idle fetch sleeps until a delivery arrives.
Two bounded waits make one call return what belongs together: after a consumer starts,
for the burst of messages its queue.declare said were ready (at most 0.25 s), and after
a delayed message arrives, 20 ms for others due at the same moment (so that those come
out by priority).
Prefetched deliveries are unacked on the server, so ``queue_stats`` counts this
process's buffered ones as *ready* and its handed-out ones as *in flight*; RabbitMQ does
not report unacked counts over AMQP, so other processes' in-flight messages are not seen.

*Delays*: per-level TTL queues that dead-letter down a binary ladder to the work queue
(see ``amqp_topology``): nothing waits in a worker, delays survive restarts of workers
and of RabbitMQ, and a fetch never hands out a message before its ``eta`` (one that
arrives early is sent down the ladder again). A queue's ladder is declared with its
first delayed message. A count of *scheduled* messages read while RabbitMQ moves one
between two delay queues may miss it or count it twice.

*Leases*: AMQP has none; a delivery is owned while its channel lives. The contract's
lease is kept three ways. (1) A consumer connection's heartbeat is at most half of
``lease_seconds`` (at least 1 s): RabbitMQ closes a connection it heard nothing from
for two to three heartbeats, so a paused, frozen or cut-off worker's deliveries go to
other consumers within 1 to 1.5 leases, not after the 20-30 s of the default
heartbeat. (2) On a live loop, a delivery not extended within ``lease_seconds`` is
republished and acked, so it goes to another consumer. (3) Fencing: ``extend`` answers
False for a lease that ran out, for a receipt of a lost connection, and whenever the
consumer connection cannot be shown open on the server by a round trip made within
the last half lease (it makes one, a passive declare, when the last is older; no
answer within ``max(1, min(5, lease/2))`` seconds gives the connection up). So a worker
resumed after a pause cannot store a result or ack over the one that took its task
over: its socket may look open for a while after RabbitMQ closed it, but no round
trip succeeds on it. One round trip per two thirds of a lease per process, not per
task. When a channel or connection is lost, RabbitMQ requeues what it held and every
receipt from it is stale: ``ack``/``requeue``/``dead_letter`` of a stale receipt are
no-ops (never an exception that could kill a worker) and ``extend`` answers False;
``holds`` says so without I/O, so that a consumer can drop what it prefetched on a lost
connection instead of starting it.

*Delivery count*: quorum queues count returns in ``x-delivery-count`` (added to the
count a copy carries in ``x-celeriac-deliveries``), and RabbitMQ dead-letters a message
whose returns pass ``x-delivery-limit`` (``task_delivery_limit`` minus one) itself; the
worker's check (a delivery counted above the limit is dead-lettered before it runs)
covers the counts copies carry, which RabbitMQ does not see. Classic queues
only flag a returned message ``redelivered``; celeriac keeps the count in the
``x-celeriac-deliveries`` header instead. ``requeue`` republishes a copy with the count
unchanged (a ``basic.nack`` would set the flag), so ``redelivered`` means "its channel
died while holding it": such a message is republished with the count plus one, and the
original acked, before anyone runs it. A task that kills its worker every time thus
reaches ``task_delivery_limit``. A copy that reaches the process that made it waits
until the original's ack is settled (a synchronous call after the ack), so that running
it cannot kill the process while the original is still unacked.

*Where copies go*: every copy of a delivered message sent back to its queue (counted,
reaped, handed back) is published at priority 10 (``RETURN_PRIORITY``; celeriac's own
stop at 9), its own priority kept in ``x-celeriac-priority``: it comes out before the
waiting messages, near where it was, as RabbitMQ's own requeue would place it (and as
Redis's XAUTOCLAIM does), not behind the whole backlog.

*Suspects run alone*: a message with a counted delivery (its holder died, or its lease
ran out) is a suspect. The link hands a suspect out only alone: it cancels its
consumers, sends back (uncounted, at the head) whatever else it had prefetched, waits
until everything it handed out before is settled, then hands out the suspect, and
consumes one message at a time until one that is not a suspect comes. While a suspect
runs, nothing else is unacked on its connection, so if it kills the process, only its
own count goes up. The bound: a message that never started is counted only for the
death of a *first* delivery prefetched beside it, i.e. at most once per distinct
message that killed a process (or per process killed from outside) while it waited in
a prefetch; a poison message's later deaths count nobody else. This costs a few round
trips per suspect, after a death only; the hot path is unchanged.

*Unreadable deliveries*: one whose broker-level fields cannot be read (a message id
or correlation id that is not UTF-8, a header table that does not parse, a celeriac
header such as ``x-celeriac-deliveries``/``-eta``/``-sent``/``-priority`` that is not a
whole number >= 0) is dead-lettered by the link with a reason naming the field, and
acked; the connection and every other delivery on it are unaffected.

*Dead letters*: a copy goes to the ``celeriac.dead`` exchange and queue with its reason
in ``x-celeriac-reason`` (and its queue and time), then the original is acked (a process
killed between the two leaves a second dead letter: at least once). Work
queues dead-letter there too, so whatever RabbitMQ itself rejects is kept (its reason
taken from ``x-death``; a quorum queue's ``delivery_limit`` worded as the worker words
its own, with the delivery count). ``dead_letters`` reads the queue with ``basic.get`` and puts
everything back (O(dead letters)).

*Listing queues*: AMQP cannot list queues, so a small durable registry queue receives a
queue's name when celeriac first creates it; ``queue_stats()`` reads it.

*Threads and loops*: one connection per event loop (``amqp_link.Link``), created
lazily; work on a delivery received on another loop is run on that loop.

*Connection loss*: heartbeats notice a dead peer within twice the heartbeat (10 s by
default; the consumer's heartbeat is at most half the lease, so its deliveries go to
others within 1 to 1.5 leases, see *Leases*); aiormq's connections are told to give up
that soon too; every operation reconnects
(capped exponential backoff) and redeclares what it needs; a waiting fetch notices the
lost channel and consumes again on the new connection.

*Connection errors*: a cause no retry can fix raises ``BrokerRefused`` at once, with
RabbitMQ's or the TLS library's words: a refused login (ACCESS_REFUSED), an unknown or
forbidden vhost (NOT_ALLOWED), an untrusted certificate or a failed TLS handshake, a
permission the user lacks (a channel's ACCESS_REFUSED). Anything else (a closed port,
a reset, silence) is transient: ``publish`` and ``publish_blocking`` retry it within
``publish_timeout``; ``connect`` and ``fetch`` try once (within ``connection_timeout``)
and leave retrying to the worker. Then ``BrokerUnavailable`` names the last real cause
(the socket's own error, chained as ``__cause__``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPError

from celeriac.bridge import Bridge
from celeriac.brokers.amqp_blocking import (
    BlockingConnection,
    BlockingPool,
    ConnectionLost,
    Nacked,
    Refused,
    Server,
    last_cause,
    queue_full,
    redeclare,
    refused,
    unconfirmed,
)
from celeriac.brokers.amqp_connection import CLOSE_TIMEOUT, Connected, Context, Envelope
from celeriac.brokers.amqp_deliveries import Deliveries, Receipt
from celeriac.brokers.amqp_link import Link
from celeriac.brokers.amqp_topology import (
    DELAY_LEVELS,
    HEADER_DEAD_AT,
    HEADER_DELIVERIES,
    HEADER_QUEUE,
    HEADER_REASON,
    AMQPOptions,
    QueueSpec,
    Topology,
)
from celeriac.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
    check_outgoing,
)
from celeriac.bus.amqp import queue_name as bus_queue
from celeriac.bus.base import RETENTION, Bus
from celeriac.errors import BrokerRefused, BrokerUnavailable, refused_error

T = TypeVar("T")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


class AMQPBroker(Broker):
    """RabbitMQ behind the ``Broker`` interface. See the module docstring."""

    scheme = "amqp"
    supports_delay = True
    supports_priority = True
    supports_queue_options = True
    supports_blocking_publish = True
    supports_delivery_limit = True  # quorum queues (amqp_topology.work_queue_arguments)
    setting_options = frozenset({"heartbeat"})

    def __init__(self, url: str = DEFAULT_URL, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        connection_url, url_options = split_url(url)
        self.settings = AMQPOptions.parse(self.options, url_options.get("namespace", ""))
        if "heartbeat" not in url_options:
            connection_url = _with_query(connection_url, heartbeat=str(self.settings.heartbeat))
        self.topology = Topology(self.settings.namespace)
        self._context = Context(connection_url, safe_url(url), self.settings, self.topology,
                                self.lease_seconds)
        self._links: dict[asyncio.AbstractEventLoop, Link] = {}
        self._links_lock = threading.Lock()
        # publish_blocking: pooled sockets, and a loop of its own for declaring queues.
        self._pool = BlockingPool(Server.from_url(
            connection_url, f"celeriac pid {os.getpid()} sync publisher", self.settings.tls))
        self._declarer: Bridge | None = None
        self._blocking_lock = threading.Lock()
        self._blocking_queues: set[str] = set()  # declared for blocking publishes
        self._blocking_ladders: set[str] = set()

    def queue_spec(self, queue: str) -> QueueSpec:
        """How ``queue`` lives on RabbitMQ (durable or transient, classic or quorum)."""
        return self.settings.spec(queue)

    # -- connections ----------------------------------------------------------------------

    def _link(self) -> Link:
        """This event loop's link, made on first use."""
        loop = asyncio.get_running_loop()
        with self._links_lock:
            link = self._links.get(loop)
            if link is None or link.closed:
                for gone in [other for other in self._links if other.is_closed()]:
                    del self._links[gone]  # its loop ended (asyncio.run) and took it along
                link = self._links[loop] = Link(self._context, loop)
            return link

    async def connect(self) -> None:
        link = self._link()
        await link.run(lambda: link.declare([]))

    async def close(self) -> None:
        self._pool.close()  # the sync publisher's sockets too (reopened when next used)
        with self._links_lock:
            links = list(self._links.values())
            self._links.clear()
        for link in links:
            with contextlib.suppress(Exception):
                await _on_loop(link, link.close)

    # -- the contract ---------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        check_outgoing(messages)  # a bad message stores none of the batch
        link = self._link()
        now_ms = time.time() * 1000
        envelopes = [self._context.envelope(
            out.queue, out.id, out.body, out.priority, now_ms=now_ms,
            eta_ms=None if out.eta is None else math.ceil(out.eta * 1000))
            for out in messages]
        await link.publish(envelopes, self.settings.publish_timeout)

    def publish_blocking(self, messages: Sequence[Outgoing]) -> None:
        """``publish`` in the caller's thread, on a pooled socket (``amqp_blocking``).

        Confirmed like ``publish``: returns once RabbitMQ confirmed every message; what
        a lost connection left unconfirmed is sent again on a new one (at least once);
        ``BrokerUnavailable`` when that does not succeed within ``publish_timeout``.
        """
        if not messages:
            return
        check_outgoing(messages)
        now_ms = time.time() * 1000
        envelopes = [self._context.envelope(
            out.queue, out.id, out.body, out.priority, now_ms=now_ms,
            eta_ms=None if out.eta is None else math.ceil(out.eta * 1000))
            for out in messages]
        timeout = self.settings.publish_timeout
        deadline = time.monotonic() + timeout
        pending = envelopes
        error: BaseException | None = None
        pause = 0.05
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise unconfirmed(self._context.safe_url, len(pending), timeout, error) \
                    from last_cause(error)
            try:
                connection = self._blocking_connection(pending, remaining)
            except (ConnectionLost, BrokerUnavailable, TimeoutError) as exc:
                error = exc
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(1.0, pause * 2)
                continue
            try:
                route = self._context.route
                outcomes = connection.publish(
                    [(e.body, *route(e), e.properties) for e in pending], remaining)
            except BaseException as exc:
                connection.close()
                if isinstance(exc, ConnectionLost | AMQPError | Refused):
                    if (final := refused(exc)) is not None:
                        raise final from exc
                    if redeclare(exc):
                        self._forget_blocking_declared()
                    error = exc
                    continue
                raise
            self._pool.give(connection)
            pending, error = self._blocking_failures(pending, outcomes, error)

    def _blocking_failures(self, pending: Sequence[Envelope],
                           outcomes: Sequence[Exception | None], error: BaseException | None
                           ) -> tuple[list[Envelope], BaseException | None]:
        """The envelopes to send again, and the last error; raise when a retry cannot help
        (a quorum queue refused a message: it is full)."""
        failed = []
        for envelope, outcome in zip(pending, outcomes, strict=True):
            if outcome is not None:
                if isinstance(outcome, Nacked) and \
                        self.settings.spec(envelope.queue).delivery_limit is not None:
                    raise queue_full(envelope.queue) from outcome
                if redeclare(outcome):
                    self._forget_blocking_declared()
                error = outcome
                failed.append(envelope)
        return failed, error

    def _blocking_connection(self, envelopes: Sequence[Envelope], timeout: float
                             ) -> BlockingConnection:
        """A pooled connection, once ``envelopes``' queues are declared; a refusal (wrong
        credentials, an untrusted certificate, no such vhost) raised at once."""
        try:
            self._declare_blocking(envelopes, timeout)
            return self._pool.take(min(timeout, self.settings.connect_timeout))
        except Refused as exc:
            raise refused_error(BrokerRefused, exc.authentication,
                                f"RabbitMQ at {self._context.safe_url} refused the "
                                f"connection: {exc}") from exc

    def _declare_blocking(self, envelopes: Sequence[Envelope], timeout: float) -> None:
        """Declare the queues (and delay ladders) not yet declared for blocking publishes.

        Once per queue and process, on the broker's private loop, by the same ``Link``
        code the event-loop path declares with.
        """
        now_ms = time.time() * 1000
        queues = {e.queue for e in envelopes} - self._blocking_queues
        ladders = {e.queue for e in envelopes if e.delayed(now_ms)} - self._blocking_ladders
        if not queues and not ladders:
            return
        with self._blocking_lock:
            if self._declarer is None:
                self._declarer = Bridge("celeriac-amqp-declare")
            loop = self._declarer.loop

        async def declare() -> None:
            link = self._link()
            if not (self._blocking_queues or self._blocking_ladders):
                link.forget_declared()  # maybe deleted under us: check every name again
            await link.run(lambda: link.declare(sorted(queues), sorted(ladders)))

        future = asyncio.run_coroutine_threadsafe(declare(), loop)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            # The link's own last failure (a refused or reset connection) is the news,
            # not that waiting for it took too long.
            link = self._links.get(loop)
            raise TimeoutError(f"no answer from RabbitMQ within {timeout:.3g}s (connecting "
                               "to declare queues)") from (
                link.last_error if link is not None else None)
        with self._blocking_lock:
            self._blocking_queues |= queues
            self._blocking_ladders |= ladders

    def _forget_blocking_declared(self) -> None:
        with self._blocking_lock:
            self._blocking_queues.clear()
            self._blocking_ladders.clear()

    def close_blocking(self) -> None:
        self._pool.close()
        with self._blocking_lock:
            declarer, self._declarer = self._declarer, None
            self._blocking_queues.clear()
            self._blocking_ladders.clear()
        if declarer is None:
            return
        loop = declarer.loop
        with self._links_lock:
            link = self._links.pop(loop, None)
        if link is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(link.close(), loop).result(CLOSE_TIMEOUT)
        declarer.close()

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        return await self._link().fetch(list(queues), limit, timeout)

    async def stop_consuming(self, queues: Sequence[str]) -> None:
        await self._link().stop_consuming(list(queues))

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for link, receipts in _by_link(deliveries).items():
            await _on_loop(link, partial(link.ack, receipts))

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        for link, receipts in _by_link(deliveries).items():
            await _on_loop(link, partial(link.requeue, receipts))

    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        groups: dict[Deliveries, list[tuple[Receipt, str]]] = {}
        for delivery, reason in deliveries:
            if isinstance(delivery.receipt, Receipt):
                groups.setdefault(delivery.receipt.link, []).append((delivery.receipt, reason))
        for link, pairs in groups.items():
            await _on_loop(link, partial(link.dead_letter, pairs))

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        owned = [False] * len(deliveries)
        positions: dict[Deliveries, list[int]] = {}
        for index, delivery in enumerate(deliveries):
            if isinstance(delivery.receipt, Receipt):
                positions.setdefault(delivery.receipt.link, []).append(index)
        for link, indexes in positions.items():
            receipts = [deliveries[i].receipt for i in indexes]

            async def extend_there(lk: Deliveries = link,
                                   rs: list[Receipt] = receipts) -> list[bool]:
                return await lk.extend(rs)

            answers = await _on_loop(link, extend_there)
            for index, ok in zip(indexes, answers or [False] * len(indexes), strict=True):
                owned[index] = ok
        return owned

    def holds(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` is still this process's, as far as it knows without I/O.

        False once the connection it came on is lost (RabbitMQ gives it to another
        consumer) or its lease ran out: a consumer should drop such a prefetched delivery
        rather than start it. True is no promise (``extend`` is the check that asks the
        server); False is certain.
        """
        receipt = delivery.receipt
        if not isinstance(receipt, Receipt):
            return False
        return receipt.link.holds(receipt)

    async def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        link = self._link()
        return await link.run(lambda: self._queue_stats(link, queues))

    async def _queue_stats(self, link: Link, queues: Sequence[str] | None) -> list[QueueStats]:
        await link.declare([])
        names = list(queues) if queues is not None else sorted(
            set(await self._registered(link)) | self._context.known)
        found = []
        for name in names:
            counts = await link.counts(name)
            if counts is None and queues is None:
                continue  # in the registry, but deleted since
            ready, scheduled = counts or (0, 0)
            buffered, held = self._local_counts(name)
            found.append(QueueStats(name, ready + buffered, scheduled, held))
        return found

    async def purge(self, queues: Sequence[str]) -> int:
        link = self._link()

        async def purge_all() -> int:
            return sum([await link.purge(queue) for queue in queues])

        return await link.run(purge_all)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        link = self._link()

        async def scan() -> list[DeliveredMessage]:
            await link.declare([])
            return await link.scan(self.topology.dead_queue)

        messages = await link.run(scan)
        letters = [self._dead_letter(message) for message in reversed(messages)]
        return letters[:limit]

    async def purge_dead_letters(self) -> int:
        link = self._link()

        async def purge() -> int:
            await link.declare([])
            return await link.purge_queue(self.topology.dead_queue)

        return await link.run(purge)

    async def remove_dead_letters(self, ids: Collection[str]) -> int:
        wanted = set(ids)
        link = self._link()
        removed = 0

        def keep(message: DeliveredMessage) -> bool:
            nonlocal removed
            if self._dead_letter(message).id in wanted:
                removed += 1
                return False  # acked by the scan: gone
            return True

        async def scan() -> None:
            await link.declare([])
            await link.scan(self.topology.dead_queue, keep)

        await link.run(scan)
        return removed

    def bus(self) -> Bus:
        from celeriac.bus.amqp import AMQPBus

        return AMQPBus(self._context)  # stream queues in this broker's namespace

    # -- beyond the contract --------------------------------------------------------------

    async def delete_namespace(self) -> None:
        """Delete every queue and exchange celeriac made in this broker's namespace.

        The queues named in the registry (with their delay queues), the dead letters, the
        registry and the shared exchanges; their messages are lost. For tests and
        tear-down; with the default empty namespace it clears celeriac off the vhost.
        """
        link = self._link()
        await link.run(lambda: link.declare([]))
        top = self.topology
        names = set(await self._registered(link)) | self._context.known
        queues = [top.queue(name) for name in sorted(names)]
        queues += [top.delay_queue(name, level) for name in sorted(names)
                   for level in range(DELAY_LEVELS)]
        queues += [top.dead_queue, top.registry_queue]
        queues += [bus_queue(top.namespace, topic) for topic in RETENTION]  # the bus's
        exchanges = [top.delay_exchange(level) for level in range(DELAY_LEVELS)]
        exchanges += [top.delivery_exchange, top.dead_exchange]
        await link.delete(exchanges, queues)
        self._context.known.clear()

    # -- helpers --------------------------------------------------------------------------

    async def _registered(self, link: Link) -> list[str]:
        """The queue names in the registry; duplicates (from races) are removed as read."""
        seen: set[str] = set()

        def first_time(message: DeliveredMessage) -> bool:
            name = message.body.decode("utf-8", "replace")
            fresh = name not in seen
            seen.add(name)
            return fresh

        await link.scan(self.topology.registry_queue, keep=first_time)
        return sorted(seen)

    def _local_counts(self, queue: str) -> tuple[int, int]:
        """(buffered, held) deliveries of ``queue`` in this process's links."""
        with self._links_lock:
            links = list(self._links.values())
        buffered = sum(link.buffered_counts.get(queue, 0) for link in links)
        held = sum(link.held_counts.get(queue, 0) for link in links)
        return buffered, held

    def _dead_letter(self, message: DeliveredMessage) -> DeadLetter:
        properties = message.header.properties
        headers = dict(properties.headers or {})
        reason, queue, dead_at = (headers.get(HEADER_REASON), headers.get(HEADER_QUEUE),
                                  headers.get(HEADER_DEAD_AT))
        # Deliveries counted before the copy that died (copies carry the count: see
        # *Delivery count*); the worker's dead letters count the fatal one in too.
        count = headers.get(HEADER_DELIVERIES)
        count = count if type(count) is int else None
        deaths = headers.get("x-death")
        if reason is None and isinstance(deaths, list) and deaths \
                and isinstance(deaths[0], dict):
            # Dead-lettered by RabbitMQ itself (rejected, expired, over a length or a
            # quorum queue's delivery limit): its own record says why and from where.
            death = deaths[0]
            queue = _text(death.get("queue")).removeprefix(self.topology.namespace)
            moment = death.get("time")
            dead_at = moment.timestamp() * 1000 if isinstance(moment, datetime) else None
            reason, count = self._rabbitmq_reason(_text(death.get("reason")), queue, count)
        return DeadLetter(
            id=properties.message_id or "", queue=_text(queue), body=message.body,
            reason=_text(reason) or "dead-lettered",
            dead_at=float(dead_at) / 1000 if isinstance(dead_at, int | float) else 0.0,
            delivery_count=count)

    def _rabbitmq_reason(self, reason: str, queue: str, counted: int | None
                         ) -> tuple[str, int | None]:
        """A dead letter RabbitMQ made itself: its reason in words, and its deliveries.

        A quorum queue's delivery limit (reason ``delivery_limit``) is celeriac's own
        (``task_delivery_limit``, declared as ``x-delivery-limit``), worded as the
        worker words it. The dead-lettered copy carries no ``x-delivery-count``: RabbitMQ
        made ``x-delivery-limit + 1`` deliveries of it, after those counted in its
        header (which are always none here: the worker refuses a message counted
        over the limit before RabbitMQ's count alone gets there).
        """
        if reason != "delivery_limit":
            return f"dead-lettered by RabbitMQ: {reason or 'unknown'}", None
        limit = self.settings.spec(queue).delivery_limit
        if limit is None:  # the limit came from a policy: the count is not known here
            return ("delivery limit exceeded: dead-lettered by RabbitMQ at its quorum "
                    "queue delivery limit (delivery_limit); the task may be killing its "
                    "worker"), None
        count = (counted or 0) + limit
        return (f"delivery limit exceeded: delivered {count} times (task_delivery_limit="
                f"{limit}), dead-lettered by RabbitMQ (quorum queue x-delivery-limit); the "
                "task may be killing its worker"), count


def _by_link(deliveries: Sequence[Delivery]) -> dict[Deliveries, list[Receipt]]:
    """Receipts grouped by the link that issued them; anything else is stale already."""
    groups: dict[Deliveries, list[Receipt]] = {}
    for delivery in deliveries:
        if isinstance(delivery.receipt, Receipt):
            groups.setdefault(delivery.receipt.link, []).append(delivery.receipt)
    return groups


async def _on_loop(link: Connected, work: Callable[[], Coroutine[Any, Any, T]]) -> T | None:
    """Run ``work`` on the link's own loop; None when that loop is gone."""
    loop = link.loop
    if loop is asyncio.get_running_loop():
        return await work()
    if loop.is_closed() or not loop.is_running():
        return None  # its connection died with its loop: its receipts are stale
    future = asyncio.run_coroutine_threadsafe(work(), loop)
    return await asyncio.wait_for(asyncio.wrap_future(future), CLOSE_TIMEOUT * 2)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL for aiormq (celeriac's own query options taken out) and those options."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {key: value for key, value in query if key in ("namespace", "heartbeat")}
    kept = [(key, value) for key, value in query if key != "namespace"]
    return urlunsplit(parts._replace(query=urlencode(kept))), ours


def _with_query(url: str, **values: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *values.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
