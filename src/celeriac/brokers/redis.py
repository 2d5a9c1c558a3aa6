"""The Redis broker: one stream per queue and priority band, leases kept in the PEL.

Key layout (``P`` is the ``key_prefix`` transport option, ``celeriac:`` by default)::

    P queues                  SET    every queue name ever published to (for stats)
    P q:<queue>:<band>        STREAM one per priority band 0-9, consumer group "celeriac";
                                     entry fields i = message id, b = body
    P eta:<queue>             ZSET   scheduled messages; score = due time (Unix ms),
                                     member = "<band>:<len(id)>:<16 hex nonce><id><body>"
    P requeued:<queue>        HASH   "<band>/<entry id>" -> times handed back unstarted
    P reclaim:<queue>         HASH   "<band>" -> XAUTOCLAIM cursor
    P dead                    STREAM dead letters: i = id, q = queue, b = body,
                                     r = reason, t = time (Unix ms)
    P epoch                   STRING a random token: the server's data for this prefix
                                     is the same as long as the token is

How the broker semantics map onto Redis:

- **Fetch** runs one Lua script (``redis_scripts.FETCH``) that moves due scheduled
  messages into their streams, then walks the queues in the order given and the bands
  from 9 down to 0, taking handed-back entries, expired leases (XAUTOCLAIM, at most
  every ``reclaim_interval``) and new entries (XREADGROUP) until ``limit`` is reached.
  When it finds nothing, the fetch blocks in XREADGROUP on every stream at once, for
  no longer than the time until the next ETA is due or the next reclaim pass, so it
  wakes for new messages, due ETAs and expired leases without polling in a loop.
- **Leases** are the stream's pending entries list: a delivery belongs to the consumer
  (one unique name per broker object and process) the PEL names, with the PEL's
  delivery counter. ``extend`` re-claims the entry for its owner, which resets the
  entry's idle time; XAUTOCLAIM hands an entry idle for longer than ``lease_seconds``
  to another consumer. Every script checks owner and counter before it acts, so a
  stale receipt cannot ack, extend, requeue or dead-letter.
- **Acks** are XACK + XDEL in one script per batch, so streams hold only waiting and
  leased entries. **Requeue** passes the entry to the ``~returned`` pseudo-consumer
  without moving it, so it keeps its place in line, and records the requeue so that
  ``delivery_count`` does not count it.
- **ETA** messages wait in a sorted set, never in a worker, and are moved by the fetch
  script (atomically, so exactly one fetch moves each) once the server's clock passes
  their due time.

All workers and producers of a queue must use the same ``lease_seconds``: a worker
reclaims what has been idle longer than its own lease time.

Sync producers (``delay()`` from a thread with no event loop) publish with
``publish_blocking``: the same script and keys, on one sync redis-py connection pool per
process (``redis_connection.BlockingClient``) instead of the app's bridge loop.

Connection loss: every call is bounded by ``connection_timeout`` as a whole (connecting,
retries and all) and raises BrokerUnavailable when the server is unreachable or silent.
A blocking publish is bounded step by step instead (connecting, then each read or write,
within the timeout; a timeout is not retried), which comes to about the same.
A connection that died (the server restarted) is replaced and the failed command
retried until the call's deadline; Lua scripts the server forgot are sent again. A
worker retries failed fetches with a capped backoff, so it resumes consuming by itself
once the server is back. With the server's append-only file on, nothing acked or leased
is lost across a restart (leases are in the PEL, which is persisted).

Durability is the server's: a queue is as durable as the server's persistence and
eviction settings make it. ``connect`` reads them and warns (or, with
``require_noeviction``, refuses); a loss that happens all the same is noticed by the
fetch and settling scripts (the ``epoch`` token changed, a stream or its group
vanished) and logged as an ERROR with the number of leases lost. What the worker holds
of the lost data it may still finish: ``extend`` reports those deliveries held, a
requeue publishes them again, a dead letter skips the lease check (``redis_durability``).

Transport options (``broker_transport_options``; ``key_prefix`` and the TLS options may
also be given in the URL's query string):

- ``key_prefix``: the prefix of every key (default ``celeriac:``);
- kombu's ``visibility_timeout``, ``global_keyprefix``, ``priority_steps``, ``sep`` and
  ``queue_order_strategy`` are answered by ``redis_celery_options``;
- ``lease_seconds``: how long a delivery is leased without being extended (default 10);
- ``reclaim_interval``: seconds between reclaim passes of one broker object, which also
  bounds how long a fetch blocks between passes (default a quarter of the lease, at
  most 1 s);
- ``connection_timeout``: every call answers or fails within about this time, so a call
  during an outage raises BrokerUnavailable instead of hanging (default 4 s); a refused
  password, an untrusted certificate or an unknown database raises BrokerRefused at once;
- ``require_noeviction``: refuse to connect (BrokerRefused) when the server could evict
  the broker's keys (default False: a WARNING only);
- ``pool_limit``: Celery's broker_pool_limit, connections per event loop and in the
  sync pool (unbounded by default: connections are opened as concurrent calls need them);
- TLS for ``rediss://`` URLs: ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``,
  ``ssl_keyfile`` and the other ``ssl_*`` options of redis-py, flat or as one ``ssl``
  mapping (the shape of Celery's ``broker_use_ssl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac.brokers import redis_celery_options as celery_options
from celeriac.brokers import redis_inspect
from celeriac.brokers.base import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueStats,
    ScheduledMessage,
    check_outgoing,
)
from celeriac.brokers.buckets_redis import RedisBuckets
from celeriac.brokers.redis_connection import (
    CONNECTION_OPTIONS,
    BlockingClient,
    LoopClients,
    RedisSettings,
    check_options,
    command,
    positive_number,
)
from celeriac.brokers.redis_durability import (
    LossWatch,
    check_server,
    log_data_lost,
    log_vanished,
    server_name,
)
from celeriac.brokers.redis_entries import (
    Malformed,
    RedisReceipt,
    entry_order,
    read_fetched,
    read_streams,
)
from celeriac.brokers.redis_failures import is_missing_group, translate_errors
from celeriac.brokers.redis_replication import REPLICATION_OPTIONS, Replication
from celeriac.brokers.redis_scripts import (
    ACK,
    DEAD_LETTER,
    ENSURE,
    EPOCH,
    EXTEND,
    FETCH,
    PRUNE,
    PUBLISH,
    REQUEUE,
)
from celeriac.bus.base import Bus
from celeriac.errors import BrokerError, BrokerRefused, BrokerUnavailable, ConfigurationError

logger = logging.getLogger("celeriac.brokers.redis")

GROUP = "celeriac"
RETURNED = "~returned"  # the pseudo-consumer holding handed-back entries
BANDS = tuple(range(MAX_PRIORITY, MIN_PRIORITY - 1, -1))  # 9 .. 0, the order they are read
OPTIONS = frozenset({"lease_seconds", "key_prefix", "reclaim_interval", *REPLICATION_OPTIONS,
                     *CONNECTION_OPTIONS})

MAX_FETCH = 1000  # deliveries per fetch script call; a bigger limit is served in part
PROMOTE_MAX = 1000  # due ETA messages moved per queue per fetch
RECLAIM_ROUNDS = 4  # XAUTOCLAIM calls per band per reclaim pass
BATCH = 500  # deliveries per ack/extend/requeue/dead-letter script call
PRUNE_EVERY = 300.0  # seconds between sweeps of ended consumers, per broker object
PRUNE_IDLE_MS = 3_600_000  # a consumer idle this long with nothing leased has ended


@dataclass
class _Plan:
    """The keys one fetch of a list of queues touches, computed once per list."""

    queues: tuple[str, ...]
    keys: list[str]  # for the fetch script
    streams: list[str]  # for the blocking read, in the fetch order
    places: dict[bytes, tuple[int, int]]  # stream key -> (queue index, band)
    next_reclaim: float = 0.0  # monotonic time of the next reclaim pass
    ensured: bool = False  # streams and groups made by this broker object
    next_prune: float = field(default_factory=lambda: time.monotonic() + PRUNE_EVERY)


class RedisBroker(Broker):
    scheme = "redis"
    supports_delay = True
    supports_priority = True
    supports_rate_limit = True
    supports_blocking_publish = True
    setting_options = frozenset({"pool_limit"})

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, celery_options.translate(options or {}))
        check_options(self.options, OPTIONS, "Redis broker transport")
        if self.lease_seconds <= 0:
            raise ConfigurationError(f"lease_seconds must be > 0, not {self.lease_seconds!r}")
        self.settings = RedisSettings.from_options(url, self.options)
        self.prefix = self.settings.key_prefix
        self.reclaim_interval = positive_number(
            self.options, "reclaim_interval", min(1.0, self.lease_seconds / 4))
        # A fetch that finds nothing blocks at most this long before its next pass of
        # the fetch script (which moves due ETAs and reclaims expired leases).
        self.max_block = self.reclaim_interval
        self._clients = LoopClients(self.settings.make_client)
        self._blocking = BlockingClient(self.settings, BrokerUnavailable, BrokerError,
                                        "Redis broker", BrokerRefused)
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._consumer = ("", -1)
        self._watch = LossWatch()
        self.replication = Replication.from_options(self.options)

    def __repr__(self) -> str:
        return f"<RedisBroker {self.settings.url} prefix={self.prefix!r}>"

    # -- naming ---------------------------------------------------------------------------

    @property
    def consumer(self) -> str:
        """This broker object's consumer name: host, process and a random part.

        Made again after a fork, so that two processes never share a name (and so each
        other's leases).
        """
        name, pid = self._consumer
        if pid != os.getpid():
            name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._consumer = (name, os.getpid())
        return name

    def stream_key(self, queue: str, band: int) -> str:
        return f"{self.prefix}q:{queue}:{band}"

    def _key(self, kind: str, queue: str) -> str:
        return f"{self.prefix}{kind}:{queue}"

    @property
    def _dead_key(self) -> str:
        return f"{self.prefix}dead"

    @property
    def _queues_key(self) -> str:
        return f"{self.prefix}queues"

    @property
    def _epoch_key(self) -> str:
        return f"{self.prefix}epoch"

    def _plan(self, queues: Sequence[str]) -> _Plan:
        names = tuple(queues)
        plan = self._plans.get(names)
        if plan is None:
            keys = [self._dead_key, self._epoch_key]
            streams: list[str] = []
            for name in names:
                bands = [self.stream_key(name, band) for band in BANDS]
                keys += [self._key("eta", name), self._key("requeued", name),
                         self._key("reclaim", name), *bands]
                streams += bands
            places = {self.stream_key(name, band).encode(): (index, band)
                      for index, name in enumerate(names) for band in BANDS}
            plan = self._plans[names] = _Plan(names, keys, streams, places)
        return plan

    # -- connections ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Reach the server, check what it may lose (see the module docstring), and note
        its epoch; BrokerRefused at once for a refusal, BrokerUnavailable after retrying
        transient failures for ``connection_timeout``."""
        client = await self._clients.get()
        with self._errors("connect"):
            async with self.settings.deadline():
                await client.ping()
                server = await check_server(
                    command(client), self.settings.url, "broker", "queued tasks",
                    expiring=False, require_noeviction=self.settings.require_noeviction,
                    refused=BrokerRefused)
                token = await EPOCH(client, [self._epoch_key], [self._watch.candidate])
        self._watch.run_id = server.run_id
        self._watch.seen(token)

    async def close(self) -> None:
        """Forget this process's consumer where it leases nothing; close this loop's client."""
        plans = list(self._plans.values())
        if plans and self._consumer[1] == os.getpid():
            streams = sorted({key for plan in plans for key in plan.streams})
            # Best effort: a consumer left behind is pruned later by other processes.
            with contextlib.suppress(BrokerError):
                await self._run(PRUNE, streams, [GROUP, -1, self.consumer], "close")
        await self._clients.close()

    def _errors(self, what: str) -> Any:
        return translate_errors(BrokerUnavailable, BrokerError, f"Redis broker {what}",
                                BrokerRefused)

    async def _run(self, script: Any, keys: Sequence[str], args: Sequence[Any],
                   what: str, extra_time: float = 0.0) -> Any:
        client = await self._clients.get()
        with self._errors(what):
            async with self.settings.deadline(extra_time):
                return await script(client, keys, args)

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        replication = self.replication
        for keys, args in self._publish_calls(messages):
            # One script per batch: the batch is stored all or none, in one round trip.
            if not replication.replicas:
                await self._run(PUBLISH, keys, args, "publish")
                continue
            # With wait_for_replicas: WAIT after the script, on its connection.
            client = await self._clients.get()
            with self._errors("publish"):
                async with self.settings.deadline(replication.timeout):
                    replies = await PUBLISH.then(client, keys, args, replication.command())
            replication.check(replies[-1], self.settings.where(), len(args) // 4)

    def publish_blocking(self, messages: Sequence[Outgoing]) -> None:
        """``publish`` for sync callers: the same script, on this process's sync pool."""
        replication = self.replication
        for keys, args in self._publish_calls(messages):
            if not replication.replicas:
                self._blocking.script("publish", PUBLISH, keys, args)
                continue
            replies = self._blocking.script_then("publish", PUBLISH, keys, args,
                                                 replication.command(),
                                                 block=replication.timeout)
            replication.check(replies[-1], self.settings.where(), len(args) // 4)

    def close_blocking(self) -> None:
        self._blocking.close()

    def _publish_calls(self, messages: Sequence[Outgoing]) -> list[tuple[list[str], list[Any]]]:
        """The keys and arguments of the PUBLISH script calls for these messages, each
        message checked first, so that a bad one stores none of the batch."""
        check_outgoing(messages)
        now = time.time()
        calls = []
        queues_key = self._queues_key
        for batch in _batches(messages):
            keys = [queues_key]
            args: list[Any] = []
            for out in batch:
                band = min(MAX_PRIORITY, max(MIN_PRIORITY, out.priority))
                message_id = out.id.encode()
                if out.eta is not None and out.eta > now:
                    keys.append(self._key("eta", out.queue))
                    member = b"%d:%d:%s%s%s" % (band, len(message_id),
                                               os.urandom(8).hex().encode(), message_id,
                                               out.body)
                    args += [out.queue, repr(out.eta * 1000), member, ""]
                else:
                    keys.append(self.stream_key(out.queue, band))
                    args += [out.queue, "", message_id, out.body]
            calls.append((keys, args))
        return calls

    # -- fetching -------------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        if limit <= 0 or not queues:
            await asyncio.sleep(max(0.0, timeout))
            return []
        plan = self._plan(queues)
        if not plan.ensured:
            await self._run(ENSURE, plan.streams, [GROUP], "fetch")
            plan.ensured = True
        limit = min(limit, MAX_FETCH)
        while True:
            found, wait = await self._take(plan, limit)
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            block = min(remaining, wait, max(0.0, plan.next_reclaim - time.monotonic()))
            woke = await self._block(plan, max(block, 0.001))
            if woke:
                return await self._trim(plan, woke, limit)

    async def _take(self, plan: _Plan, limit: int) -> tuple[list[Delivery], float]:
        """Run the fetch script; also return the seconds until the next ETA is due."""
        now = time.monotonic()
        reclaim = now >= plan.next_reclaim
        if reclaim:
            plan.next_reclaim = now + self.reclaim_interval
        if now >= plan.next_prune:
            plan.next_prune = now + PRUNE_EVERY
            await self._run(PRUNE, plan.streams, [GROUP, PRUNE_IDLE_MS, ""], "prune")
        reply = await self._run(FETCH, plan.keys, [
            GROUP, self.consumer, RETURNED, limit, max(1, round(self.lease_seconds * 1000)),
            int(reclaim), PROMOTE_MAX, RECLAIM_ROUNDS, self._watch.candidate, *plan.queues],
            "fetch")
        now_ms, next_due = int(reply[0]), int(reply[1])
        if self._watch.seen(reply[2]):
            await self._data_lost(plan.queues)
        wait = math.inf if next_due < 0 else max(0.0, (next_due - now_ms) / 1000)
        found, malformed = read_fetched(reply, plan.queues, self.consumer)
        self._watch.leased.update(d.receipt for d in found)
        if malformed:
            await self._dead_letter_malformed(malformed)
        return found, wait

    async def _block(self, plan: _Plan, seconds: float) -> list[Delivery]:
        """Wait on every stream of the plan at once for a new entry (one per stream)."""
        seconds = min(seconds, self.max_block)
        ms = max(1, math.ceil(seconds * 1000))  # BLOCK 0 would mean forever
        client = await self._clients.get()
        streams = plan.streams
        try:
            with self._errors("fetch"):
                async with self.settings.deadline(seconds):
                    reply = await command(client)(
                        "XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", 1, "BLOCK", ms,
                        "STREAMS", *streams, *[">"] * len(streams))
        except BrokerError as exc:
            if exc.__cause__ is not None and is_missing_group(exc.__cause__):
                await self._streams_lost(plan)
                return []
            raise
        found, malformed = read_streams(reply, plan.places, plan.queues, self.consumer)
        self._watch.leased.update(d.receipt for d in found)
        if malformed:
            await self._dead_letter_malformed(malformed)
        return found

    async def _dead_letter_malformed(self, malformed: Sequence[Malformed]) -> None:
        """Dead-letter entries whose broker-level fields cannot be read, and say so.

        They are settled here, inside the fetch, so that they never reach a worker's
        slots nor stay leased: the next fetch goes on with the entries behind them.
        """
        for item in malformed:
            logger.error("dead-lettered stream entry %s of queue %r (priority band %d): "
                         "it cannot be read as a celeriac message: %s", item.receipt.entry,
                         item.receipt.queue, item.receipt.band, item.reason)
        await self._dead_letter_raw([(m.as_delivery(), m.message_id, m.reason)
                                     for m in malformed])

    async def _trim(self, plan: _Plan, woke: list[Delivery], limit: int) -> list[Delivery]:
        """Put what a wake-up brought in fetch order, and hand back what overshot the limit.

        The batch is not topped up with a second script call: that would delay the first
        message after an idle spell by a round trip, and the caller fetches again for the
        rest of its budget at once anyway.
        """
        order = {name: index for index, name in enumerate(plan.queues)}
        woke.sort(key=lambda d: (order[d.queue], -d.priority, entry_order(d.receipt.entry)))
        if len(woke) > limit:  # one entry per stream at most; more than asked is rare
            await self.requeue(woke[limit:])
            del woke[limit:]
        return woke

    # -- settling -------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        ours = _ours(deliveries)
        for batch in _batches(ours):
            keys, args = self._settle_args(batch)
            await self._settle(ACK, keys, [GROUP, *args], "ack", batch)
        self._watch.settled([d.receipt for d in ours])

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        ours = _ours(deliveries)
        for batch in _batches(ours):
            live = [d for d in batch if d.receipt not in self._watch.written_off]
            if live:
                keys, args = self._settle_args(live)
                await self._settle(REQUEUE, keys, [GROUP, RETURNED, *args], "requeue", live)
            # Written off in a data loss (before, or noticed by this very call): the
            # server no longer has them, so they go back as new messages.
            lost = [d for d in batch if d.receipt in self._watch.written_off]
            if lost:
                await self.publish([Outgoing(d.id, d.queue, d.body, d.priority)
                                    for d in lost])
        self._watch.settled([d.receipt for d in ours])

    async def _settle(self, script: Any, keys: list[str], args: list[Any], what: str,
                      deliveries: Sequence[Delivery]) -> None:
        """Run a settling script, with the epoch check every such script makes."""
        reply = await self._run(script, [*keys, self._epoch_key],
                                [*args, self._watch.candidate], what)
        token = reply[0] if isinstance(reply, list) else reply
        if self._watch.seen(token):
            await self._data_lost(sorted({d.queue for d in deliveries}))

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        held: list[bool] = []
        for batch in _batches(list(deliveries)):
            ours = [d for d in batch if isinstance(d.receipt, RedisReceipt)]
            keys = [self._epoch_key]
            args: list[Any] = [GROUP, self._watch.candidate]
            for delivery in ours:
                receipt = delivery.receipt
                keys.append(self.stream_key(receipt.queue, receipt.band))
                args += [receipt.entry, receipt.consumer, receipt.counter]
            states: dict[int, int] = {}
            if ours:
                reply = await self._run(EXTEND, keys, args, "extend")
                if self._watch.seen(reply[0]):
                    await self._data_lost(sorted({d.queue for d in ours}))
                states = {id(d): int(state) for d, state in zip(ours, reply[1:], strict=True)}
                await self._vanished([d for d in ours if states[id(d)] < 0])
            held += [self._held(d, states.get(id(d), 0)) for d in batch]
        return held

    def _held(self, delivery: Delivery, state: int) -> bool:
        """Whether the worker may keep a delivery, from EXTEND's answer about it."""
        receipt = delivery.receipt
        if not isinstance(receipt, RedisReceipt):
            return False  # not a delivery of this broker: no lease here
        # Held (1), or lost with the server's data (-1, or written off before): the
        # worker keeps it, since nobody else can be delivered it.
        if state != 0 or receipt in self._watch.written_off:
            return True
        self._watch.settled([receipt])  # another worker has it now: no longer ours to count
        return False

    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> None:
        ours = [(d, reason) for d, reason in deliveries if isinstance(d.receipt, RedisReceipt)]
        await self._dead_letter_raw([(d, d.id.encode(), reason) for d, reason in ours
                                     if d.receipt not in self._watch.written_off])
        # Written off in a data loss (before, or noticed just now): no lease left to
        # check, so straight into the dead letters.
        lost = [(d, reason) for d, reason in ours if d.receipt in self._watch.written_off]
        if lost:
            await self._dead_letter_unleased(lost)
        self._watch.settled([d.receipt for d, _ in ours])

    async def _dead_letter_raw(self, items: Sequence[tuple[Delivery, bytes, str]]) -> None:
        """Dead-letter leased entries: delivery, message id (as stored), reason."""
        for batch in _batches(items):
            keys: list[str] = [self._dead_key]
            args: list[Any] = [GROUP]
            for delivery, message_id, reason in batch:
                receipt = delivery.receipt
                keys += [self.stream_key(receipt.queue, receipt.band),
                         self._key("requeued", receipt.queue)]
                args += [receipt.entry, receipt.consumer, receipt.counter,
                         f"{receipt.band}/{receipt.entry}", receipt.queue, message_id,
                         delivery.body, reason]
            await self._settle(DEAD_LETTER, keys, args, "dead_letter", [d for d, _, _ in batch])

    async def _dead_letter_unleased(self, items: Sequence[tuple[Delivery, str]]) -> None:
        client = await self._clients.get()
        pipe = client.pipeline(transaction=False)
        for delivery, reason in items:
            command(pipe)("XADD", self._dead_key, "*", "i", delivery.id, "q", delivery.queue,
                          "b", delivery.body, "r", reason, "t", int(time.time() * 1000))
        with self._errors("dead_letter"):
            async with self.settings.deadline():
                await pipe.execute()

    def _settle_args(self, deliveries: Sequence[Delivery]) -> tuple[list[str], list[Any]]:
        """Keys (stream, requeued hash) and arguments of the settling scripts."""
        keys: list[str] = []
        args: list[Any] = []
        for delivery in deliveries:
            receipt: RedisReceipt = delivery.receipt
            keys += [self.stream_key(receipt.queue, receipt.band),
                     self._key("requeued", receipt.queue)]
            args += [receipt.entry, receipt.consumer, receipt.counter,
                     f"{receipt.band}/{receipt.entry}"]
        return keys, args

    # -- data loss ------------------------------------------------------------------------

    async def _data_lost(self, queues: Sequence[str]) -> None:
        """The epoch changed: the server lost this prefix's data. Say so, once, loudly."""
        count = self._watch.write_off()
        before, after = self._watch.run_id, await self._run_id()
        self._watch.run_id = after or before
        log_data_lost(server_name(self.settings.url), self.prefix, before, after, count,
                      queues)
        for plan in self._plans.values():
            plan.ensured = False  # the fetch makes the streams and groups again

    async def _vanished(self, deliveries: Sequence[Delivery]) -> None:
        """Streams or groups gone while the epoch stayed: deleted or evicted one by one."""
        fresh = {d.receipt for d in deliveries} & self._watch.leased
        if not fresh:
            return  # already reported
        count = self._watch.write_off(fresh)
        streams = sorted({self.stream_key(r.queue, r.band) for r in fresh})
        log_vanished(server_name(self.settings.url), streams, count)
        for plan in self._plans.values():
            plan.ensured = False

    async def _streams_lost(self, plan: _Plan) -> None:
        """The blocking read found a stream or its group gone: report it, make them again.

        The whole data set gone (the epoch changed) is reported as such; otherwise, if
        this object had made these streams, they were deleted or evicted one by one.
        """
        token = await self._run(EPOCH, [self._epoch_key], [self._watch.candidate], "fetch")
        if self._watch.seen(token):
            await self._data_lost(plan.queues)
        elif plan.ensured:
            leased = {r for r in self._watch.leased if r.queue in plan.queues}
            count = self._watch.write_off(leased)
            log_vanished(server_name(self.settings.url),
                         [f"{self.prefix}q:{queue}:*" for queue in plan.queues], count)
        await self._run(ENSURE, plan.streams, [GROUP], "fetch")
        plan.ensured = True

    async def _run_id(self) -> str | None:
        """The server's run id now (best effort: only for the data-loss message)."""
        client = await self._clients.get()
        try:
            with self._errors("info"):
                async with self.settings.deadline():
                    info = await command(client)("INFO", "server")
        except BrokerError:
            return None
        value = info.get("run_id") if isinstance(info, dict) else None
        return None if value is None else str(value)

    # -- inspecting (celeriac.brokers.redis_inspect) ------------------------------------

    async def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        return await redis_inspect.queue_stats(self, queues)

    async def purge(self, queues: Sequence[str]) -> int:
        return await redis_inspect.purge(self, queues)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await redis_inspect.dead_letters(self, limit)

    async def purge_dead_letters(self) -> int:
        return await redis_inspect.purge_dead_letters(self)

    async def remove_dead_letters(self, ids: Collection[str]) -> int:
        return await redis_inspect.remove_dead_letters(self, ids)

    async def scheduled(self, limit: int = 100) -> list[ScheduledMessage]:
        return await redis_inspect.scheduled(self, limit)

    def token_buckets(self) -> RedisBuckets:
        return RedisBuckets(self.url, self.options)  # under this broker's key prefix

    def bus(self) -> Bus:
        from celeriac.bus.redis import RedisBus

        return RedisBus(self.url, self.options)  # under this broker's key prefix


class RedissBroker(RedisBroker):
    """``rediss://``: the Redis broker over TLS."""

    scheme = "rediss"


class SentinelBroker(RedisBroker):
    """``sentinel://``: the Redis broker on the master the sentinels name, following
    failovers (``redis_sentinel``); ``master_name`` in broker_transport_options."""

    scheme = "sentinel"


def _ours(deliveries: Sequence[Delivery]) -> list[Delivery]:
    """The deliveries this broker handed out (anything else has no lease here)."""
    return [d for d in deliveries if isinstance(d.receipt, RedisReceipt)]


def _batches(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i:i + BATCH] for i in range(0, len(items), BATCH)]


__all__ = ["RedisBroker", "RedisReceipt", "RedissBroker", "SentinelBroker"]

